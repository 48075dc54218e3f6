"""One request/response exchange: route, decide, plan, then answer, forward or tunnel; one log line.

Every response, whether the proxy makes it or the upstream does, gets its policy headers from
`proxy.policy`, and how a request is answered is `proxy.plan`'s decision: the same code
`coxp explain` runs.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import NamedTuple

from proxy import events
from proxy.buffering import read_ahead
from proxy.collector import collect
from proxy.connection import ClientConnection, ClientGone
from proxy.events import RequestRecord
from proxy.forwarding import UPGRADE_TO_WEBSOCKET, first_value, is_trusted, upstream_headers
from proxy.http1 import (
    LAST_CHUNK,
    BadRequest,
    RequestHead,
    chunk,
    field_lines,
    no_body_status,
    serialize_fields,
    serialize_head,
    serialize_request_head,
    status_line,
)
from proxy.memo import MAX_KEY_CHARS, LruCache
from proxy.model import Header, Upstream
from proxy.plan import Answer, Forward, Tunnel, answer_response, plan, relayed_head
from proxy.policy import Decision, RequestInfo, decide, request_info, routing_method
from proxy.reports import is_collector_path
from proxy.shadow import shadow_decision
from proxy.state import ServingState
from proxy.tunnel import tunnel
from proxy.upstream import UpstreamFailure

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
OVERLOADED = Answer(503, "overloaded: too many requests in flight", (("Retry-After", "1"),), closes=True)
# A proxy-made answer (a synthesized preflight, an `enforce` 403...) is the same bytes every time
# for one decision, and `decide` hands out the same Decision object for a repeated request: the
# serialized answer is remembered by the decision's identity. Each entry holds its decision, so
# that identity cannot be reused while the entry lives; a reload makes new decisions, so the
# old config's entries are never hit again and age out.
_ANSWERS: LruCache[tuple[Decision, bytes, tuple[str, ...], tuple[str, ...]]] = LruCache(1024)


class Prepared(NamedTuple):
    """What a request head decides on one serving state, for one client address and scheme:
    the policy decision, the plan and, for a request forwarded without a body, the head the
    upstream gets. Pure, so remembered for a repeated head (`_PREPARED`)."""

    head: RequestHead
    state: ServingState
    info: RequestInfo
    decision: Decision
    shadow: Decision | None  # the route's candidate (shadow) CORS table's decision, for the log
    action: Answer | Forward | Tunnel
    scheme: str  # the request's own, as received (behind a trusted proxy: X-Forwarded-Proto)
    own_origin: str  # where redirects to the upstream are pointed instead
    trusted: bool  # the peer is a trusted proxy
    upstream_head: bytes | None  # the request head for the upstream (forwarded without a body)


# Clients repeat their heads byte for byte, `proxy.http1.parse_head` then hands out the same
# RequestHead object, and what `_prepare` makes of it depends on that object, the serving state
# (a reload makes a new one) and the connection's address and scheme only: it is remembered by
# the head's identity. Each entry holds its head and state, so those identities cannot be reused
# while it lives; heads with long fields are not remembered (bounded memory).
_PREPARED: LruCache[Prepared] = LruCache(256)


def prepared(state: ServingState, conn: ClientConnection, head: RequestHead) -> Prepared:
    """`_prepare`, remembered; BadRequest when the request is refused before routing."""
    key = (id(head), conn.peer_ip, conn.scheme)
    known = _PREPARED.get(key)
    if known is not None and known.head is head and known.state is state:
        return known
    known = _prepare(state, conn, head)
    if sum([len(name) + len(value) for name, value in head.headers]) <= MAX_KEY_CHARS:
        _PREPARED.put(key, known)
    return known


def _prepare(state: ServingState, conn: ClientConnection, head: RequestHead) -> Prepared:
    config = state.config
    trusted = is_trusted(conn.peer_ip, config.proxy.trusted_proxies)
    scheme, host = conn.scheme, head.host
    if trusted:
        # Behind a trusted load balancer the request's own origin is the one it received.
        scheme = first_value(head.headers, "x-forwarded-proto") or scheme
        host = first_value(head.headers, "x-forwarded-host") or host
    info = request_info(head.method, head.headers, scheme, host)
    # Where redirects to the upstream are pointed instead: the request's own origin, port as sent.
    own_origin = f"{scheme}://{host}"
    route = state.router.match(head.host, head.path, routing_method(info), head.normal_path)
    decision = decide(route, info, websocket=head.websocket)
    shadow = shadow_decision(route, info, websocket=head.websocket)  # for the log only
    action = plan(config, route, decision, head)
    upstream_head = None
    if isinstance(action, Forward) and not head.has_body:
        headers = upstream_headers(head, config.proxy, action.upstream, conn.peer_ip, scheme, trusted)
        upstream_head = serialize_request_head(head.method, head.target, headers)
    return Prepared(head, state, info, decision, shadow, action, scheme, own_origin, trusted, upstream_head)


async def exchange(state: ServingState, conn: ClientConnection, head: RequestHead) -> bool:
    """Serve one request; True when the connection may carry another."""
    if is_collector_path(state.config.reports, head.path):
        return await collect(state, conn, head)
    try:
        request = prepared(state, conn, head)
    except BadRequest as ambiguous:  # refused before routing, like a malformed head
        state.refuse(conn, ambiguous)
        return False
    decision, action = request.decision, request.action
    record = RequestRecord(head, request.info, decision, request.shadow)
    try:
        # Answer from the proxy, tunnel or forward; whether the connection may stay open.
        keep_alive = head.keep_alive and not state.stopping()
        if not state.admit():
            return send_answer(conn, decision, OVERLOADED, False, record)
        if isinstance(action, Answer):
            # A proxy-made answer leaves the request body unread, and unread bytes would be parsed
            # as the next request: such a connection ends with the answer.
            return send_answer(conn, decision, action, keep_alive and not head.has_body and not action.closes, record)
        if isinstance(action, Tunnel):
            return await _tunnel(state, conn, request, action.upstream, record)
        return await forward(state, conn, request, action.upstream, keep_alive, record)
    finally:
        # Exactly one log line per request, also when the client went away (499).
        events.request(state.log, state.metrics, record, state.console)


def send_answer(conn: ClientConnection, decision: Decision, action: Answer, keep_alive: bool, record: RequestRecord) -> bool:
    """Send a response the proxy makes itself (the route's policy headers apply to it too)."""
    # RFC 9112 §9.3: the connection's fate, said as for a relayed response; an HTTP/1.0 client
    # keeps its connection only when told `keep-alive`.
    connection = "close" if not keep_alive else "keep-alive" if record.head.http_minor == 0 else None
    key = (id(decision), action, connection)
    cached = _ANSWERS.get(key)
    if cached is not None and cached[0] is decision:
        _, response, set_names, removed_names = cached
    else:
        edited, body = answer_response(decision, action)
        headers = edited.headers
        if connection is not None:
            headers.append(("Connection", connection))
        response = serialize_head(action.status, headers) + body
        set_names, removed_names = tuple(edited.set_names), tuple(edited.removed_names)
        if len(decision.origin or "") <= MAX_KEY_CHARS:
            _ANSWERS.put(key, (decision, response, set_names, removed_names))
    conn.write(response)
    record.answered(action.status, list(set_names), list(removed_names))
    return keep_alive


def upstream_failed(
    state: ServingState, conn: ClientConnection, head: RequestHead, upstream: Upstream, decision: Decision,
    failure: UpstreamFailure, record: RequestRecord,
) -> bool:
    """The upstream gave no response: log why, and answer 502/504 naming the reason."""
    events.upstream_error(state.log, state.metrics, decision.route, upstream.url, failure.reason, failure.detail,
                          head.method, head.path)
    return send_answer(conn, decision, Answer(failure.status, f"{failure.status} {failure.reason}"), False, record)


async def _tunnel(
    state: ServingState, conn: ClientConnection, request: Prepared, upstream: Upstream, record: RequestRecord,
) -> bool:
    head, decision = request.head, request.decision
    headers = upstream_headers(head, state.config.proxy, upstream, conn.peer_ip, request.scheme, request.trusted)
    try:
        handshake = await state.client.open_websocket(upstream.key, head.target, [*headers, *UPGRADE_TO_WEBSOCKET])
    except UpstreamFailure as failure:
        return upstream_failed(state, conn, head, upstream, decision, failure, record)
    try:
        await tunnel(conn, handshake, decision.edits, request.own_origin, record, state.config.limits.tunnel_idle_timeout)
    finally:
        handshake.close()
    return False


async def forward(
    state: ServingState, conn: ClientConnection, request: Prepared, upstream: Upstream, keep_alive: bool,
    record: RequestRecord,
) -> bool:
    head, decision = request.head, request.decision
    refused: list[BadRequest] = []
    if request.upstream_head is not None:
        sending = state.client.send_head(upstream.key, head.method, request.upstream_head)
    else:
        config = state.config
        headers = upstream_headers(head, config.proxy, upstream, conn.peer_ip, request.scheme, request.trusted)
        body: bytes | AsyncIterator[bytes] | None = None
        if head.has_body:
            body = _guarded_body(conn, head, config.limits.max_body_bytes, refused)
            if config.limits.request_buffer:
                try:
                    body = await read_ahead(body, config.limits.request_buffer)
                except BadRequest as bad:
                    return send_answer(conn, decision, Answer(bad.status, bad.reason), False, record)
                if isinstance(body, bytes) and head.content_length is None:
                    headers.append(("Content-Length", str(len(body))))  # the chunked body, whole
        sending = state.client.send(upstream.key, head.method, head.target, headers, body)
    try:
        response = await sending
    except (UpstreamFailure, ClientGone) as failure:
        if refused:
            return send_answer(conn, decision, Answer(refused[0].status, refused[0].reason), False, record)
        if isinstance(failure, ClientGone):
            raise
        return upstream_failed(state, conn, head, upstream, decision, failure, record)

    try:
        edited, fields = relayed_head(decision.edits, response.headers, request.own_origin, response.known_fields)
        status = response.status
        record.upstream_answered(status, edited)
        no_body = no_body_status(status, head.method)
        # Most responses are whole by the time their head is here: one write, with a length.
        whole = None if no_body else response.buffered_body()
        chunked = False
        framing: list[Header] = []  # written after the relayed fields
        if no_body:
            if status < 200 or status == 204:
                fields = field_lines([h for h in edited.headers if h[0].lower() != "content-length"])
        elif whole is not None:
            if response.content_length is None:
                framing.append(("Content-Length", str(len(whole))))
        elif response.content_length is None:
            if head.http_minor >= 1:
                framing.append(("Transfer-Encoding", "chunked"))
                chunked = True
            else:
                keep_alive = False  # HTTP/1.0 without a length: the end is marked by closing
        # A body the upstream answered before reading to its end leaves the stream unframed;
        # a SIGTERM that came while we waited means this is the connection's last response,
        # which RFC 9112 §9.6 says to announce with `Connection: close`.
        keep_alive = keep_alive and conn.body_complete and not state.stopping()
        if not keep_alive:
            framing.append(("Connection", "close"))
        elif head.http_minor == 0:
            framing.append(("Connection", "keep-alive"))
        response_head = status_line(status) + fields + (serialize_fields(framing) if framing else b"\r\n")
        conn.write(response_head + whole if whole is not None else response_head)
        if not no_body and whole is None:
            try:
                await _relay_body(conn, response.chunks(), chunked)
            except UpstreamFailure as broken:
                events.upstream_error(state.log, state.metrics, decision.route, upstream.url,
                                      "upstream-response-aborted", str(broken), head.method, head.path)
                conn.abort()
                record.status = status
                return False
        response.release()
        record.status = status
        return keep_alive
    finally:
        response.close()


async def _relay_body(conn: ClientConnection, chunks: AsyncGenerator[bytes, None], chunked: bool) -> None:
    # Closed however the relay ends (a client gone mid-body included), so the body's buffered
    # pieces are let go at once rather than when the generator is collected.
    async with contextlib.aclosing(chunks):
        async for data in chunks:
            if not data:
                continue
            conn.write(chunk(data) if chunked else data)
            del data  # handed to the transport: not held while the client drains and the next piece comes
            await conn.drain()
    if chunked:
        conn.write(LAST_CHUNK)


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
