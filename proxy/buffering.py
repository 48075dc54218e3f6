"""Request buffering: the first part of a request body is read before the upstream is contacted.

Reading ahead means a small body's framing is checked whole before anything is forwarded (bad
chunk framing is a `400` the upstream never sees), a slow small upload holds no upstream
connection while it trickles in, and a body that fits is sent with a `Content-Length`: RFC 9112
§6.1 forbids a chunked request to a server not known to speak HTTP/1.1, and a CGI program reads
exactly CONTENT_LENGTH bytes (RFC 3875 §4.1.2), so an HTTP/1.0 or CGI backend given a chunked
body sees none. A larger body is streamed from its first byte (memory stays bounded by
`request_buffer`).
"""
from __future__ import annotations

from collections.abc import AsyncIterator


async def read_ahead(body: AsyncIterator[bytes], limit: int) -> bytes | AsyncIterator[bytes]:
    """Read `body` until it ends or more than `limit` bytes have arrived: the whole body, or
    a stream of all of it (the bytes read so far first) when it is larger.

    Raises what reading `body` raises (a framing or size refusal, the client leaving)."""
    pieces: list[bytes] = []
    size = 0
    async for piece in body:
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            return _resumed(pieces, body)
    return b"".join(pieces)


async def _resumed(read: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    while read:
        yield read.pop(0)
    async for piece in rest:
        yield piece
