"""The built-in report collector (`[reports]`): browsers' violation reports, on the proxy listener.

Requests to the collector path, on any host, are answered here and never forwarded: no route
policy applies and no `request` event is logged; each report becomes one `report` event and
counts in `coxp_reports_total`. A body is read only up to `max_body_bytes` and within one
deadline (`[limits] header_timeout`: a report is small, like a head), so no client can make the
collector hold memory or a connection for long. A refused body is logged as one
`report_rejected` event naming the reason, never with its content.
"""
from __future__ import annotations

import asyncio

from proxy import events
from proxy.connection import ClientConnection
from proxy.http1 import BadRequest, RequestHead, serialize_head
from proxy.reports import (
    CORS_ANSWER,
    CollectorAnswer,
    ReportRefused,
    answer_before_body,
    collector_response,
    field_value,
    media_type,
    parse_reports,
    too_large,
)
from proxy.state import ServingState

OVERLOADED = CollectorAnswer(503, "overloaded: too many requests in flight",
                             CORS_ANSWER + (("Retry-After", "1"),))


async def collect(state: ServingState, conn: ClientConnection, head: RequestHead) -> bool:
    """Serve one request to the collector path; True when the connection may carry another."""
    settings = state.config.reports
    assert settings is not None
    if not state.admit():
        # Under overload reports are the first thing to shed; browsers retry later.
        _log_rejected(state, conn, head, OVERLOADED.status, OVERLOADED.reason)
        return _respond(conn, head, OVERLOADED, body_read=False, closes=True)
    content_type = field_value(head.headers, "content-type")
    early = answer_before_body(head.method, content_type, head.content_length, settings.max_body_bytes)
    if early is not None:  # judged by the head: the body, if any, is left unread
        if early.status >= 400:
            _log_rejected(state, conn, head, early.status, early.reason)
        return _respond(conn, head, early, body_read=False)

    try:
        async with asyncio.timeout(state.config.limits.header_timeout):
            body = await _read_body(conn, head, settings.max_body_bytes)
        reports = parse_reports(media_type(content_type), body, field_value(head.headers, "user-agent"))
    except TimeoutError:
        return _refuse(state, conn, head, 408, "request-timeout: the report body did not arrive in time", False)
    except BadRequest as bad:  # bad chunk framing, or over the limit while streaming
        return _refuse(state, conn, head, bad.status, too_large(settings.max_body_bytes) if bad.status == 413
                       else bad.reason, False)
    except ReportRefused as refused:
        return _refuse(state, conn, head, refused.status, refused.reason, True)
    for report in reports:
        events.report(state.log, state.metrics, report._asdict(), report.metric_labels())
    return _respond(conn, head, CollectorAnswer(204, "", CORS_ANSWER), body_read=True)


async def _read_body(conn: ClientConnection, head: RequestHead, max_bytes: int) -> bytes:
    """The whole body, at most `max_bytes` (BadRequest 413 beyond, checked while it streams)."""
    pieces = bytearray()

    def send_continue() -> None:
        if head.expect_continue:
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async for piece in conn.body(head, max_bytes, send_continue):
        pieces += piece
    return bytes(pieces)


def _log_rejected(state: ServingState, conn: ClientConnection, head: RequestHead, status: int, reason: str) -> None:
    events.report_rejected(state.log, status, reason.split(":", 1)[0], head.method, conn.peer_ip)


def _refuse(state: ServingState, conn: ClientConnection, head: RequestHead, status: int, reason: str,
            body_read: bool) -> bool:
    _log_rejected(state, conn, head, status, reason)
    return _respond(conn, head, CollectorAnswer(status, reason, CORS_ANSWER), body_read)


def _respond(conn: ClientConnection, head: RequestHead, answer: CollectorAnswer, body_read: bool,
             closes: bool = False) -> bool:
    """Write the answer; the connection stays open only when no unread body is left on it
    (unread bytes would be parsed as the next request) and the answer does not close it."""
    headers, body = collector_response(answer)
    keep_alive = not closes and head.keep_alive and (body_read or not head.has_body) and conn.body_complete
    if not keep_alive:
        headers.append(("Connection", "close"))
    conn.write(serialize_head(answer.status, headers) + body)
    return keep_alive
