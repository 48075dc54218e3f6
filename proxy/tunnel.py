"""WebSocket upgrades: the handshake is forwarded and edited, then bytes are piped both ways.

A byte tunnel rather than a WebSocket client and server back to back: subprotocols, extensions
and frames reach each side untouched. CORS headers do not apply to the 101 (browsers do not use
CORS for WebSockets); `enforce` already refused denied origins before we get here.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from proxy.connection import ClientConnection
from proxy.forwarding import MAX_RESPONSE_HEAD, UpstreamFailure, is_trusted, upstream_headers, upstream_ssl_context
from proxy.http1 import RequestHead, serialize_fields, serialize_head
from proxy.model import Upstream
from proxy.policy import Decision, apply_edits

if TYPE_CHECKING:
    from proxy.exchange import Outcome
    from proxy.server import ServingState

PIPE_CHUNK = 64 * 1024


async def open_tunnel(
    state: "ServingState", conn: ClientConnection, head: RequestHead, upstream: Upstream, decision: Decision, scheme: str
) -> "Outcome":
    from proxy.exchange import Outcome, answer

    settings = state.config.proxy
    headers = upstream_headers(head, settings, upstream, conn.peer_ip, scheme, is_trusted(conn.peer_ip, settings.trusted_proxies))
    headers += [("Connection", "Upgrade"), ("Upgrade", next(v for n, v in head.headers if n.lower() == "upgrade"))]
    request = f"{head.method} {head.target} HTTP/1.1\r\n".encode("latin-1") + serialize_fields(headers)
    try:
        reader, writer = await _connect(upstream, settings)
    except UpstreamFailure as failure:
        state.log.warning("upstream_error", upstream=upstream.url, reason=failure.reason, detail=failure.detail,
                          method=head.method, path=head.path)
        return answer(conn, decision, failure.status, f"{failure.status} {failure.reason}", False)
    try:
        writer.write(request)
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), settings.read_timeout)
            status, reason, response_headers = _parse_response_head(raw)
        except (asyncio.TimeoutError, TimeoutError):
            return answer(conn, decision, 504, "504 upstream-response-timeout", False)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError) as failure:
            state.log.warning("upstream_error", upstream=upstream.url, reason="upstream-invalid-response",
                              detail=str(failure), method=head.method, path=head.path)
            return answer(conn, decision, 502, "502 upstream-invalid-response", False)
        kept = [(n, v) for n, v in response_headers if n.lower() not in ("connection", "upgrade")]
        edited = apply_edits(decision.edits, kept)
        out = edited.headers
        if status == 101:
            out += [("Connection", "Upgrade"), ("Upgrade", next((v for n, v in response_headers if n.lower() == "upgrade"), "websocket"))]
        else:
            out.append(("Connection", "close"))
        conn.write(serialize_head(status, out, reason))
        conn.piping = status == 101
        await _pipe(conn, reader, writer, upgraded=conn.piping)
        return Outcome(status, status, edited.set_names, edited.removed_names)
    finally:
        writer.close()


async def _connect(upstream: Upstream, settings) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    tls = upstream_ssl_context(settings) if upstream.tls else None
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(upstream.host, upstream.port, ssl=tls, limit=MAX_RESPONSE_HEAD),
            settings.connect_timeout,
        )
    except (asyncio.TimeoutError, TimeoutError) as failure:
        raise UpstreamFailure(504, "upstream-connect-timeout") from failure
    except OSError as failure:
        raise UpstreamFailure(502, "upstream-unreachable", str(failure)) from failure


def _parse_response_head(raw: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    lines = raw[:-4].decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit() or len(code) != 3:
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise ValueError(f"malformed header line: {line[:80]!r}")
        headers.append((name, value.strip(" \t")))
    return int(code), reason, headers


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
