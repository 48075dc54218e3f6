"""WebSocket tunnels: the upstream's answer to a handshake is relayed, then bytes piped both ways.

A byte tunnel rather than a WebSocket client and server back to back: subprotocols, extensions
and frames reach each side untouched. CORS headers do not apply to the 101 (browsers do not use
CORS for WebSockets); `enforce` already refused denied origins before we get here.
"""
from __future__ import annotations

import asyncio

from proxy.connection import ClientConnection
from proxy.events import RequestRecord
from proxy.forwarding import UPGRADE_TO_WEBSOCKET
from proxy.http1 import serialize_head
from proxy.policy import PolicyEdit, apply_edits
from proxy.upstream import Handshake, UpstreamFailure

PIPE_CHUNK = 64 * 1024


async def tunnel(conn: ClientConnection, handshake: Handshake, edits: tuple[PolicyEdit, ...], own_origin: str,
                 record: RequestRecord, idle_timeout: float) -> None:
    """Relay the upstream's answer to the handshake (its head edited by `edits`, redirects to the
    upstream pointed at `own_origin`). After a 101, pipe bytes until one side closes or nothing
    moved for `idle_timeout` seconds; any other answer is relayed whole and ends both connections
    (the caller closes them), however long the upstream would keep its own open."""
    kept = [(n, v) for n, v in handshake.headers if n.lower() not in ("connection", "upgrade")]
    edited = apply_edits(edits, kept, own_origin)
    record.upstream_answered(handshake.status, edited)
    out = edited.headers
    if handshake.status != 101:
        out.append(("Connection", "close"))
        conn.write(serialize_head(handshake.status, out))
        try:
            async for data in handshake.refused_body():
                conn.write(data)
                await conn.drain()
        except UpstreamFailure:
            conn.abort()  # cut short: the client must not take it for the whole answer
            return
        record.status = handshake.status
        return
    out += UPGRADE_TO_WEBSOCKET
    conn.write(serialize_head(101, out))
    conn.piping = True
    await _pipe(conn, handshake.reader, handshake.writer, idle_timeout)
    record.status = 101


async def _pipe(conn: ClientConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                idle_timeout: float) -> None:
    loop = asyncio.get_running_loop()
    last = loop.time()  # of the last byte in either direction

    async def client_to_upstream() -> None:
        nonlocal last
        while data := await conn.read_some():
            last = loop.time()
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def upstream_to_client() -> None:
        nonlocal last
        while data := await reader.read(PIPE_CHUNK):
            last = loop.time()
            conn.write(data)
            await conn.drain()

    async def idle() -> None:
        # One sleep per idle period, not a timer per byte: traffic only moves `last`.
        while (left := last + idle_timeout - loop.time()) > 0:
            await asyncio.sleep(left)

    tasks = [asyncio.ensure_future(upstream_to_client()), asyncio.ensure_future(client_to_upstream()),
             asyncio.ensure_future(idle())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
