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
from proxy.upstream import Handshake

PIPE_CHUNK = 64 * 1024


async def tunnel(conn: ClientConnection, handshake: Handshake, edits: tuple[PolicyEdit, ...], own_origin: str,
                 record: RequestRecord) -> None:
    """Relay the upstream's answer to the handshake (its head edited by `edits`, redirects to the
    upstream pointed at `own_origin`); after a 101, pipe the connection until one side closes."""
    kept = [(n, v) for n, v in handshake.headers if n.lower() not in ("connection", "upgrade")]
    edited = apply_edits(edits, kept, own_origin)
    record.upstream_answered(handshake.status, edited)
    upgraded = handshake.status == 101
    out = edited.headers
    if upgraded:
        out += UPGRADE_TO_WEBSOCKET
    else:
        out.append(("Connection", "close"))
    conn.write(serialize_head(handshake.status, out))
    conn.piping = upgraded
    await _pipe(conn, handshake.reader, handshake.writer, upgraded)
    record.status = handshake.status


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
