"""WebSocket upgrades: the handshake is forwarded and edited, then bytes are piped both ways.

A byte tunnel rather than a WebSocket client and server back to back: subprotocols, extensions
and frames reach each side untouched. CORS headers do not apply to the 101 (browsers do not use
CORS for WebSockets); `enforce` already refused denied origins before we get here.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Callable

import httptools

from proxy.connection import ClientConnection
from proxy.forwarding import UpstreamFailure, is_trusted, upstream_headers, upstream_ssl_context
from proxy.http1 import RequestHead, list_elements, serialize_fields, serialize_head
from proxy.model import Upstream
from proxy.policy import Decision, EditResult, apply_edits
from proxy.upstream import MAX_RESPONSE_HEAD, UpstreamConnectError, connecting, repair_head

if TYPE_CHECKING:
    from proxy.server import ServingState

PIPE_CHUNK = 64 * 1024


async def open_tunnel(
    state: "ServingState",
    conn: ClientConnection,
    head: RequestHead,
    upstream: Upstream,
    decision: Decision,
    scheme: str,
    own_origin: str,
    on_answer: Callable[[int, EditResult], None],
) -> tuple[int, EditResult]:
    """Forward the handshake and pipe the connection; the status sent and the header edits made
    (also given to `on_answer` as soon as the upstream answered).

    Raises UpstreamFailure, before anything reached the client, when the upstream cannot be
    reached or gives no valid response head in time.
    """
    settings = state.config.proxy
    headers = upstream_headers(head, settings, upstream, conn.peer_ip, scheme, is_trusted(conn.peer_ip, settings.trusted_proxies))
    # The protocol is named by coxp itself: the client's line was checked to say exactly this.
    headers += [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    request = f"{head.method} {head.target} HTTP/1.1\r\n".encode("latin-1") + serialize_fields(headers)
    tls = upstream_ssl_context(settings) if upstream.tls else None
    try:
        async with connecting(settings.connect_timeout):
            reader, writer = await asyncio.open_connection(
                upstream.host, upstream.port, ssl=tls, server_hostname=upstream.host if tls else None,
                limit=MAX_RESPONSE_HEAD,
            )
    except UpstreamConnectError as failure:
        raise UpstreamFailure(failure.status, failure.reason, failure.detail) from failure
    try:
        writer.write(request)
        status, response_headers = await _response_head(reader, settings.read_timeout)
        if status == 101 and not _switches_to_websocket(response_headers):
            # A tunnel to anything but WebSocket would carry traffic no route has seen (RFC 9110 §7.8).
            raise UpstreamFailure(502, "upstream-invalid-response", "101 without Upgrade: websocket")
        kept = [(n, v) for n, v in response_headers if n.lower() not in ("connection", "upgrade")]
        edited = apply_edits(decision.edits, kept, own_origin)
        on_answer(status, edited)
        out = edited.headers
        if status == 101:
            out += [("Connection", "Upgrade"), ("Upgrade", "websocket")]
        else:
            out.append(("Connection", "close"))
        conn.write(serialize_head(status, out))
        conn.piping = status == 101
        await _pipe(conn, reader, writer, upgraded=conn.piping)
        return status, edited
    finally:
        writer.close()


def _switches_to_websocket(headers: list[tuple[str, str]]) -> bool:
    """The 101 names `websocket` and nothing else in its Upgrade field(s)."""
    return [protocol for n, v in headers if n.lower() == "upgrade" for protocol in list_elements(v)] == ["websocket"]


class _HeadFields:
    """httptools callbacks that keep the header fields of a response head."""

    def __init__(self) -> None:
        self.fields: list[tuple[str, str]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.decode("latin-1"), value.decode("latin-1")))


async def _response_head(reader: asyncio.StreamReader, read_timeout: float) -> tuple[int, list[tuple[str, str]]]:
    """The upstream's response head, parsed by llhttp as for every other response."""
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), read_timeout)
    except TimeoutError as failure:
        raise UpstreamFailure(504, "upstream-response-timeout", f"no response head within {read_timeout} s") from failure
    except asyncio.LimitOverrunError as failure:
        raise UpstreamFailure(502, "upstream-head-too-large", f"response head over {MAX_RESPONSE_HEAD} bytes") from failure
    except (asyncio.IncompleteReadError, ConnectionError) as failure:
        raise UpstreamFailure(502, "upstream-closed-without-response", str(failure)) from failure
    head = _HeadFields()
    parser = httptools.HttpResponseParser(head)
    try:
        parser.feed_data(repair_head(raw))
    except httptools.HttpParserUpgrade:
        pass  # a 101 ends the HTTP part of the connection
    except httptools.HttpParserError as failure:
        raise UpstreamFailure(502, "upstream-invalid-response", str(failure)) from failure
    return parser.get_status_code(), head.fields


async def _pipe(conn: ClientConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upgraded: bool) -> None:
    async def client_to_upstream() -> None:
        while data := await conn.read_some():
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def upstream_to_client() -> None:
        while data := await reader.read(PIPE_CHUNK):
            conn.write(data)
            await conn.drain()

    tasks = [asyncio.ensure_future(upstream_to_client())]
    if upgraded:
        tasks.append(asyncio.ensure_future(client_to_upstream()))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
