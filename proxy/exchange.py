"""One request/response exchange: route, decide, then answer or forward, and log the decision.

Every response, whether the proxy makes it or the upstream does, gets its policy headers from
`proxy.policy` — the same code `coxp explain` runs.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING, AsyncIterator

from proxy.buffering import read_ahead
from proxy.collector import collect
from proxy.connection import ClientConnection, ClientGone
from proxy.forwarding import (
    UpstreamAborted,
    UpstreamFailure,
    first_value,
    is_trusted,
    upstream_headers,
)
from proxy.http1 import BadRequest, RequestHead, no_body_status, serialize_head
from proxy.memo import MAX_KEY_CHARS, LruCache
from proxy.model import Header, Route
from proxy.plan import Answer, Tunnel, answer_response, plan
from proxy.policy import Decision, EditResult, apply_edits, decide, request_info, routing_method
from proxy.shadow import shadow_decision
from proxy.tunnel import open_tunnel

if TYPE_CHECKING:
    from proxy.server import ServingState

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Logged for a request whose client went away before its response was complete (nginx's code).
CLIENT_CLOSED_REQUEST = 499
# A proxy-made answer (a synthesized preflight, an `enforce` 403...) is the same bytes every time
# for one decision, and `decide` hands out the same Decision object for a repeated request: the
# serialized answer is remembered by the decision's identity. Each entry holds its decision, so
# that identity cannot be reused while the entry lives; a reload makes new decisions, so the
# old config's entries are never hit again and age out.
_ANSWERS: LruCache[tuple[Decision, bytes, tuple[str, ...], tuple[str, ...]]] = LruCache(1024)


@dataclass(slots=True)
class Outcome:
    """What the decision log records about a finished exchange."""

    status: int
    upstream_status: int | None
    headers_set: list[str]
    headers_removed: list[str]
    response_headers: Sequence[Header] = ()  # the upstream's head as edited (the console log's cookie check)

    def record(self, upstream_status: int, edited: EditResult) -> None:
        """The upstream answered `upstream_status`, its head edited as `edited`."""
        self.upstream_status = upstream_status
        self.headers_set, self.headers_removed = edited.set_names, edited.removed_names
        self.response_headers = edited.headers


async def exchange(state: "ServingState", conn: ClientConnection, head: RequestHead) -> bool:
    """Serve one request; True when the connection may carry another."""
    started = time.perf_counter()
    config = state.config
    if config.reports is not None and head.path == config.reports.path:
        return await collect(state, conn, head)
    trusted = is_trusted(conn.peer_ip, config.proxy.trusted_proxies)
    scheme, host = conn.scheme, head.host
    if trusted:
        # Behind a trusted load balancer the request's own origin is the one it received.
        scheme = first_value(head.headers, "x-forwarded-proto") or scheme
        host = first_value(head.headers, "x-forwarded-host") or host
    info = request_info(head.method, head.headers, scheme, host)
    # Where redirects to the upstream are pointed instead: the request's own origin, port as sent.
    own_origin = f"{scheme}://{host}"
    try:
        route = state.router.match(head.host, head.path, routing_method(info), head.normal_path)
    except BadRequest as ambiguous:  # refused before routing, like a malformed head
        state.refuse(conn, ambiguous)
        return False
    decision = decide(route, info, websocket=head.websocket)
    shadow = shadow_decision(route, info, websocket=head.websocket)  # for the log only
    # What the upstream answered, as soon as it did: a client that leaves before the response is
    # complete is logged 499, with the upstream's status and the edits made to its head.
    answered = Outcome(CLIENT_CLOSED_REQUEST, None, [], [])
    try:
        outcome, keep_alive = await _respond(state, conn, head, route, decision, scheme, own_origin, trusted, answered)
    except (ClientGone, asyncio.CancelledError):
        # Still exactly one log line for the request.
        state.log_request(head, info, decision, shadow, answered, started)
        raise
    state.log_request(head, info, decision, shadow, outcome, started)
    return keep_alive


async def _respond(
    state: "ServingState",
    conn: ClientConnection,
    head: RequestHead,
    route: Route,
    decision: Decision,
    scheme: str,
    own_origin: str,
    trusted: bool,
    answered: Outcome,
) -> tuple[Outcome, bool]:
    """Answer from the proxy or forward: the outcome, and whether the connection may stay open."""
    config = state.config
    keep_alive = head.keep_alive and not state.stopping()
    # A proxy-made answer leaves the request body unread, and unread bytes would be parsed
    # as the next request: such a connection ends with the answer.
    reusable = keep_alive and not head.has_body

    if not state.admit():
        return answer(conn, decision, 503, "overloaded: too many requests in flight", False, (("Retry-After", "1"),)), False
    action = plan(config, route, decision, head)
    if type(action) is Answer:
        reusable = reusable and not action.closes
        return send_answer(conn, decision, action, reusable), reusable
    upstream = action.upstream
    if type(action) is Tunnel:
        try:
            status, edited = await open_tunnel(state, conn, head, upstream, decision, scheme, own_origin, answered.record)
        except UpstreamFailure as failure:
            return upstream_failed(state, conn, head, upstream, decision, failure), False
        return Outcome(status, status, edited.set_names, edited.removed_names), False
    return await forward(state, conn, head, upstream, decision, scheme, own_origin, trusted, keep_alive, answered)


def answer(
    conn: ClientConnection,
    decision: Decision,
    status: int,
    text: str,
    keep_alive: bool,
    extra: tuple[tuple[str, str], ...] = (),
) -> Outcome:
    """Send a response the proxy makes itself; the route's policy headers apply to it too."""
    return send_answer(conn, decision, Answer(status, text, extra), keep_alive)


def send_answer(conn: ClientConnection, decision: Decision, action: Answer, keep_alive: bool) -> Outcome:
    key = (id(decision), action, keep_alive)
    cached = _ANSWERS.get(key)
    if cached is not None and cached[0] is decision:
        _, response, set_names, removed_names = cached
    else:
        edited, body = answer_response(decision, action)
        headers = edited.headers
        if not keep_alive:
            headers.append(("Connection", "close"))
        response = serialize_head(action.status, headers) + body
        set_names, removed_names = tuple(edited.set_names), tuple(edited.removed_names)
        if len(decision.origin or "") <= MAX_KEY_CHARS:
            _ANSWERS.put(key, (decision, response, set_names, removed_names))
    conn.write(response)
    return Outcome(action.status, None, list(set_names), list(removed_names))


def upstream_failed(
    state: "ServingState", conn: ClientConnection, head: RequestHead, upstream, decision: Decision, failure: UpstreamFailure
) -> Outcome:
    """The upstream gave no response: log why, and answer 502/504 naming the reason."""
    state.log.warning("upstream_error", upstream=upstream.url, reason=failure.reason, detail=failure.detail,
                      method=head.method, path=head.path)
    state.metrics.upstream_errors.labels(decision.route, failure.reason).inc()
    return answer(conn, decision, failure.status, f"{failure.status} {failure.reason}", False)


async def forward(
    state: "ServingState",
    conn: ClientConnection,
    head: RequestHead,
    upstream,
    decision: Decision,
    scheme: str,
    own_origin: str,
    trusted: bool,
    keep_alive: bool,
    answered: Outcome,
) -> tuple[Outcome, bool]:
    config = state.config
    headers = upstream_headers(head, config.proxy, upstream, conn.peer_ip, scheme, trusted)
    refused: list[BadRequest] = []
    body: bytes | AsyncIterator[bytes] | None = None
    if head.has_body:
        body = _guarded_body(conn, head, config.limits.max_body_bytes, refused)
        if config.limits.request_buffer:
            try:
                body = await read_ahead(body, config.limits.request_buffer)
            except BadRequest as bad:
                return answer(conn, decision, bad.status, bad.reason, False), False
            if isinstance(body, bytes) and head.content_length is None:
                headers.append(("Content-Length", str(len(body))))  # the chunked body, whole
    try:
        response = await state.client.send(upstream, head.method, head.target, headers, body)
    except (UpstreamFailure, ClientGone, OSError) as failure:
        if refused:
            return answer(conn, decision, refused[0].status, refused[0].reason, False), False
        if isinstance(failure, ClientGone):
            raise
        if not isinstance(failure, UpstreamFailure):
            failure = UpstreamFailure(502, "upstream-error", str(failure))
        return upstream_failed(state, conn, head, upstream, decision, failure), False

    try:
        edited = apply_edits(decision.edits, response.headers, own_origin)
        out = edited.headers
        status = response.status
        answered.record(status, edited)
        no_body = no_body_status(status, head.method)
        # Most responses are whole by the time their head is here: one write, with a length.
        whole = None if no_body else response.buffered_body()
        chunked = False
        if no_body:
            if status < 200 or status == 204:
                out = [h for h in out if h[0].lower() != "content-length"]
        elif whole is not None:
            if response.content_length is None:
                out.append(("Content-Length", str(len(whole))))
        elif response.content_length is None:
            if head.http_minor >= 1:
                out.append(("Transfer-Encoding", "chunked"))
                chunked = True
            else:
                keep_alive = False  # HTTP/1.0 without a length: the end is marked by closing
        # A body the upstream answered before reading to its end leaves the stream unframed;
        # a SIGTERM that came while we waited means this is the connection's last response,
        # which RFC 9112 §9.6 says to announce with `Connection: close`.
        keep_alive = keep_alive and conn.body_complete and not state.stopping()
        if not keep_alive:
            out.append(("Connection", "close"))
        elif head.http_minor == 0:
            out.append(("Connection", "keep-alive"))
        outcome = Outcome(status, status, edited.set_names, edited.removed_names, edited.headers)
        if whole is not None:
            conn.write(serialize_head(status, out) + whole)
        else:
            conn.write(serialize_head(status, out))
        if not no_body and whole is None:
            try:
                await _relay_body(conn, response.chunks(), chunked)
            except UpstreamAborted as broken:
                state.log.warning("upstream_error", upstream=upstream.url, reason="upstream-response-aborted",
                                  detail=str(broken), method=head.method, path=head.path)
                state.metrics.upstream_errors.labels(decision.route, "upstream-response-aborted").inc()
                conn.abort()
                return outcome, False
        response.release()
        return outcome, keep_alive
    finally:
        response.close()


async def _relay_body(conn: ClientConnection, chunks: AsyncIterator[bytes], chunked: bool) -> None:
    async for data in chunks:
        if not data:
            continue
        conn.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
        await conn.drain()
    if chunked:
        conn.write(b"0\r\n\r\n")


async def _guarded_body(
    conn: ClientConnection, head: RequestHead, max_bytes: int, refused: list[BadRequest]
) -> AsyncIterator[bytes]:
    """The request body for the upstream; a framing or size error is kept for the answer."""

    def send_continue() -> None:
        if head.expect_continue:
            conn.write(_CONTINUE)

    try:
        async for piece in conn.body(head, max_bytes, send_continue):
            yield piece
    except BadRequest as bad:
        refused.append(bad)
        raise
