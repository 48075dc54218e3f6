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
from proxy.http1 import BadRequest, RequestHead, serialize_head, text_body
from proxy.reports import ReportRefused, check_media_type, media_type, parse_reports
from proxy.state import ServingState

ALLOW = "POST, OPTIONS"
# Browsers deliver reports from any page, cross-origin included (Reporting API §3.3: the
# upload is a CORS request, preflighted since its type is not CORS-safelisted), without
# credentials; so any origin may post, and no cookie is ever involved.
_CORS_ANSWER = (("Access-Control-Allow-Origin", "*"),)
_PREFLIGHT_ANSWER = _CORS_ANSWER + (
    ("Access-Control-Allow-Methods", ALLOW),
    ("Access-Control-Allow-Headers", "Content-Type"),
    ("Access-Control-Max-Age", "86400"),
)


async def collect(state: ServingState, conn: ClientConnection, head: RequestHead) -> bool:
    """Serve one request to the collector path; True when the connection may carry another."""
    settings = state.config.reports
    assert settings is not None
    if head.method == "OPTIONS":
        # A preflight (or a plain OPTIONS): what may be posted here, from any origin.
        return _respond(conn, head, 204, "", body_read=False, extra=_PREFLIGHT_ANSWER + (("Allow", ALLOW),))
    if head.method != "POST":
        return _refuse(state, conn, head, 405, f"method-not-allowed: the report collector takes {ALLOW}",
                       body_read=False, extra=(("Allow", ALLOW),))
    content_type = media_type(_header(head, "content-type"))
    try:
        # The type is checked before the body is read: a wrong one is refused unread.
        check_media_type(content_type)
        if head.content_length is not None and head.content_length > settings.max_body_bytes:
            raise ReportRefused(413, f"body-too-large: over {settings.max_body_bytes} bytes")
    except ReportRefused as refused:
        return _refuse(state, conn, head, refused.status, refused.reason, body_read=False)

    try:
        async with asyncio.timeout(state.config.limits.header_timeout):
            body = await _read_body(conn, head, settings.max_body_bytes)
    except TimeoutError:
        return _refuse(state, conn, head, 408, "request-timeout: the report body did not arrive in time",
                       body_read=False)
    except BadRequest as bad:  # bad chunk framing, or over the limit while streaming
        reason = f"body-too-large: over {settings.max_body_bytes} bytes" if bad.status == 413 else bad.reason
        return _refuse(state, conn, head, bad.status, reason, body_read=False)

    try:
        reports = parse_reports(content_type, body, _header(head, "user-agent"))
    except ReportRefused as refused:
        return _refuse(state, conn, head, refused.status, refused.reason, body_read=True)
    for report in reports:
        events.report(state.log, state.metrics, report._asdict(), report.metric_labels())
    return _respond(conn, head, 204, "", body_read=True, extra=_CORS_ANSWER)


async def _read_body(conn: ClientConnection, head: RequestHead, max_bytes: int) -> bytes:
    """The whole body, at most `max_bytes` (BadRequest 413 beyond, checked while it streams)."""
    pieces = bytearray()

    def send_continue() -> None:
        if head.expect_continue:
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async for piece in conn.body(head, max_bytes, send_continue):
        pieces += piece
    return bytes(pieces)


def _header(head: RequestHead, name: str) -> str | None:
    for field, value in head.headers:
        if field.lower() == name:
            return value
    return None


def _refuse(state: ServingState, conn: ClientConnection, head: RequestHead, status: int, reason: str,
            body_read: bool, extra: tuple[tuple[str, str], ...] = ()) -> bool:
    events.report_rejected(state.log, status, reason.split(":", 1)[0], head.method, conn.peer_ip)
    return _respond(conn, head, status, reason, body_read, extra + _CORS_ANSWER)


def _respond(conn: ClientConnection, head: RequestHead, status: int, text: str, body_read: bool,
             extra: tuple[tuple[str, str], ...]) -> bool:
    """Write the answer; the connection stays open only when no unread body is left on it
    (unread bytes would be parsed as the next request)."""
    body = text_body(text)
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))] if body else []
    headers += extra
    keep_alive = head.keep_alive and (body_read or not head.has_body) and conn.body_complete
    if not keep_alive:
        headers.append(("Connection", "close"))
    conn.write(serialize_head(status, headers) + body)
    return keep_alive
