"""`ClientConnection` on its own: a fake handler and an in-memory transport, no sockets.

The connection only reads (heads with their timeouts, bodies with flow control) and reports
to the `ConnectionHandler` it was given; these tests play that handler.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from proxy.connection import ClientConnection
from proxy.http1 import BadRequest, RequestHead
from proxy.model import Limits


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.reading = True

    def get_extra_info(self, name, default=None):
        return ("192.0.2.7", 50000) if name == "peername" else default

    def write(self, data) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return 0  # everything written is "in the kernel" at once

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class FakeHandler:
    """Answers every request `200` with the body it read; records what the connection reported."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.stopping = False
        self._limits = limits or Limits()
        self.open: set[ClientConnection] = set()
        self.heads: list[RequestHead] = []
        self.bodies: list[bytes] = []
        self.refused: list[BadRequest] = []
        self.finished = asyncio.Event()

    def limits(self) -> Limits:
        return self._limits

    def opened(self, conn: ClientConnection) -> bool:
        self.open.add(conn)
        return True

    def closed(self, conn: ClientConnection) -> None:
        self.open.discard(conn)
        self.finished.set()

    async def handle(self, conn: ClientConnection, head: RequestHead) -> bool:
        self.heads.append(head)
        body = b"".join([piece async for piece in conn.body(head, 0, lambda: None)]) if head.has_body else b""
        self.bodies.append(body)
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return head.keep_alive

    def refuse(self, conn: ClientConnection, refused: BadRequest) -> None:
        self.refused.append(refused)


def serve(*pieces: bytes, handler: FakeHandler | None = None) -> tuple[FakeHandler, FakeTransport]:
    """Feed `pieces` to a new connection (one `data_received` each), then EOF; wait until it closes."""

    async def main() -> tuple[FakeHandler, FakeTransport]:
        nonlocal handler
        handler = handler or FakeHandler()
        transport = FakeTransport()
        conn = ClientConnection(handler, tls=False)
        conn.connection_made(transport)
        for piece in pieces:
            conn.data_received(piece)
            await asyncio.sleep(0)
        conn.eof_received()
        async with asyncio.timeout(5):
            while not transport.closed:
                await asyncio.sleep(0.01)
        conn.connection_lost(None)
        return handler, transport

    # Its own thread and loop: the browser suite's Playwright keeps a loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


def test_pipelined_requests_are_handled_in_order_with_their_bodies():
    handler, transport = serve(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel",
        b"loGET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert [h.target for h in handler.heads] == ["/a", "/b", "/c"]
    assert handler.bodies == [b"", b"hello", b""]
    assert transport.written.count(b"HTTP/1.1 200 OK") == 3
    assert handler.open == set() and handler.refused == []


def test_a_malformed_head_is_refused_through_the_handler_and_the_connection_closes():
    handler, transport = serve(b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [(r.status, r.reason) for r in handler.refused] == [(400, "repeated-host")]
    assert handler.heads == [] and transport.closed


def test_reading_pauses_beyond_the_high_water_mark_and_resumes_when_the_body_is_read():
    body = b"b" * (600 * 1024)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    handler = FakeHandler()

    async def main() -> tuple[bool, bool]:
        transport = FakeTransport()
        conn = ClientConnection(handler, tls=False)
        conn.connection_made(transport)
        conn.data_received(head + body)  # all of it at once, before the handler reads any
        paused = not transport.reading
        async with asyncio.timeout(5):
            while not handler.bodies:  # the body read, the connection waits for the next head
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.01)
            reading = transport.reading
            conn.eof_received()
            while not transport.closed:
                await asyncio.sleep(0.01)
        return paused, reading

    with ThreadPoolExecutor(1) as pool:
        paused, reading_after = pool.submit(asyncio.run, main()).result()
    assert paused and reading_after
    assert handler.bodies == [body]
