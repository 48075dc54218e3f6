"""One client connection: buffered reads with flow control, timed request heads, body streams.

An asyncio.Protocol rather than streams: the request path reads straight from one buffer,
pauses the socket when the consumer (the upstream) is slower than the client, and cancels the
request in flight the moment the client goes away.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol, cast

from proxy.aio import Deadline, expire
from proxy.http1 import BadRequest, ChunkedDecoder, RequestHead, head_end, parse_head
from proxy.model import Limits

READ_HIGH_WATER = 256 * 1024  # pause reading the socket beyond this many buffered bytes
READ_CHUNK = 256 * 1024  # largest body piece handed on at once


class ClientGone(Exception):
    """The client closed or reset the connection."""


class ConnectionHandler(Protocol):
    """What a client connection needs from the server that accepted it (`ProxyServer` is one;
    the tests use a fake). The connection reads; the handler decides and answers."""

    @property
    def stopping(self) -> bool:
        """No further request is read once this is true (SIGTERM)."""
        ...

    def limits(self) -> Limits:
        """The limits of the config serving now (a reload may change them between requests)."""
        ...

    def opened(self, conn: ClientConnection) -> bool:
        """A connection was accepted; False when it is one too many (it is closed at once)."""
        ...

    def closed(self, conn: ClientConnection) -> None: ...

    async def handle(self, conn: ClientConnection, head: RequestHead) -> bool:
        """Serve one request; True when the connection may carry another."""
        ...

    def refuse(self, conn: ClientConnection, refused: BadRequest) -> None:
        """Answer (and log) a request refused before routing; the connection then closes."""
        ...


class ClientConnection(asyncio.Protocol):
    transport: asyncio.Transport  # set by connection_made, before anything else runs
    # The loop the connection runs in, kept once: on Python 3.11 every `get_running_loop()` is a
    # `getpid()` system call (CPython checks for a fork), and the request path would ask several
    # times per request.
    loop: asyncio.AbstractEventLoop

    def __init__(self, handler: ConnectionHandler, tls: bool):
        self.handler = handler
        self.scheme = "https" if tls else "http"
        self.peer_ip = ""
        self.buffer = bytearray()
        self.eof = False
        self.lost = False
        self.busy = False  # a request is being handled (SIGTERM waits for it, disconnect cancels it)
        # Bytes are piped both ways (an upgraded WebSocket): the client's EOF is a half-close to
        # pass on, not a departure.
        self.piping = False
        self.body_complete = True  # the current request's body was read to its end
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._paused_writing = False
        self._task: asyncio.Task[None] | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.loop = asyncio.get_running_loop()
        self._deadline = Deadline(self.loop)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if isinstance(peer, tuple) else ""
        if not self.handler.opened(self):
            transport.close()  # beyond max_connections: the ones already open keep being served
            return
        self._task = self.loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_HIGH_WATER and not self._paused_reading:
            self._paused_reading = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        if self.body_complete and not self.piping:
            # A client that closes while its request is in flight has given up on it (browsers
            # and HTTP clients close, they do not half-close); nginx reads it the same way.
            self._cancel_request()
        return True  # keep our side open: a tunnel's other direction may still be flowing

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.handler.closed(self)
        self._wake_reader()
        self._deadline.close()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ClientGone())
        self._cancel_request()

    def _cancel_request(self) -> None:
        if self.busy and self._task is not None:
            # A client that goes away cancels its upstream request (README, "Forwarding behaviour").
            self._task.cancel()

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # --- reading ----------------------------------------------------------------------------
    def _wake_reader(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    async def _receive(self, deadline: float | None = None) -> None:
        """Wait until more bytes arrive; ClientGone when none ever will, TimeoutError at `deadline`."""
        if self.lost or self.eof:
            raise ClientGone()
        if self._paused_reading:
            self._paused_reading = False
            self.transport.resume_reading()
        waiter = self._data_waiter = self.loop.create_future()
        if deadline is not None:
            # Not an asyncio.timeout() context nor a timer handle per wait: this runs for every request.
            self._deadline.start(waiter, deadline)
        try:
            await waiter
        finally:
            self._data_waiter = None
            self._deadline.stop()
        if self.lost or (self.eof and not self.buffer):
            raise ClientGone()

    async def read_head(self, limits: Limits, first: bool) -> RequestHead | None:
        """The next request head, or None when the client closes or idles out between requests.

        A new connection must deliver a whole head within `header_timeout`; on a kept-alive
        one `keepalive_timeout` runs until the first byte, then `header_timeout` for the head.
        After each wait the head is judged by the limits serving then (`handler.limits()`): a
        reload while the connection waited applies to the head it was waiting for.
        """
        loop = self.loop
        try:
            self._skip_empty_lines()
            if not self.buffer and not first:
                await self._receive(loop.time() + limits.keepalive_timeout)
                limits = self.handler.limits()
            deadline = loop.time() + limits.header_timeout
            while True:
                self._skip_empty_lines()
                end = head_end(self.buffer, limits) if self.buffer else -1
                if end >= 0:
                    head = bytes(self.buffer[:end])
                    del self.buffer[:end]
                    return parse_head(head, limits)
                await self._receive(deadline)
                limits = self.handler.limits()
        except (TimeoutError, ClientGone):
            return None

    def _skip_empty_lines(self) -> None:
        # RFC 9112 §2.2: ignore empty lines before a request line.
        while self.buffer.startswith(b"\r\n"):
            del self.buffer[:2]

    async def body(self, head: RequestHead, max_bytes: int, on_start: Callable[[], None]) -> AsyncIterator[bytes]:
        """Stream the request body; BadRequest(400/413) on bad framing or size mid-stream,
        BadRequest(408) when the client pauses longer than `body_timeout` between reads."""
        self.body_complete = False
        on_start()
        pause = self.handler.limits().body_timeout
        received = 0
        if head.chunked:
            decoder = ChunkedDecoder()
            while not decoder.done:
                if not self.buffer:
                    await self._receive_body(pause)
                for piece in decoder.feed(self.buffer):
                    received += len(piece)
                    if max_bytes and received > max_bytes:
                        raise BadRequest(413, "body-too-large")
                    yield piece
        else:
            remaining = head.content_length or 0
            while remaining:
                if not self.buffer:
                    await self._receive_body(pause)
                take = min(remaining, len(self.buffer), READ_CHUNK)
                piece = bytes(self.buffer[:take])
                del self.buffer[:take]
                remaining -= take
                yield piece
        self.body_complete = True

    async def _receive_body(self, pause: float) -> None:
        try:
            await self._receive(self.loop.time() + pause)
        except TimeoutError:
            raise BadRequest(408, "body-timeout") from None

    async def read_some(self) -> bytes:
        """Whatever bytes are there (waiting for some); b"" once the client has finished sending."""
        if not self.buffer:
            try:
                await self._receive()
            except ClientGone:
                return b""
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    # --- writing ----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.lost:
            self.transport.write(data)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until the transport takes more writes; TimeoutError after `timeout` seconds."""
        if self.lost:
            raise ClientGone()
        if self._paused_writing:
            loop = self.loop
            waiter = self._drain_waiter = loop.create_future()
            timer = loop.call_later(timeout, expire, waiter) if timeout is not None else None
            try:
                await waiter
            finally:
                self._drain_waiter = None
                if timer is not None:
                    timer.cancel()

    async def flushed(self, timeout: float) -> bool:
        """Wait until every byte written so far was handed to the kernel; False after `timeout`."""
        if self.transport is None or not self.transport.get_write_buffer_size():
            return not self.lost
        # With a high-water mark of 0 the transport reports (resume_writing) only once its
        # buffer is empty; the usual marks come back after.
        self.transport.set_write_buffer_limits(high=0)
        try:
            await self.drain(timeout)
        except TimeoutError:
            return False
        finally:
            if not self.lost:
                self.transport.set_write_buffer_limits()
        return True

    def abort(self) -> None:
        """Close without a clean end, so the client sees an aborted response, not a short one."""
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # --- the request loop -------------------------------------------------------------------
    async def _serve(self) -> None:
        first = True
        try:
            while not self.handler.stopping:
                try:
                    head = await self.read_head(self.handler.limits(), first)
                except BadRequest as refused:
                    self.handler.refuse(self, refused)
                    break
                if head is None:
                    break
                first = False
                self.busy = True
                try:
                    keep_alive = await self.handler.handle(self, head)
                finally:
                    self.busy = False
                if not keep_alive or not self.body_complete:
                    break
                # Backpressure: the next pipelined request is read only once this response is in
                # the kernel's hands, so a client that never reads cannot make coxp queue answers
                # (its own or the upstream's). One that reads nothing for `keepalive_timeout` is cut off.
                # Usually the transport's buffer is already empty (the write went straight to the
                # socket): then there is nothing to wait for, and no coroutine is made per request.
                if (self.lost or self.transport.get_write_buffer_size()) and not await self.flushed(
                    self.handler.limits().keepalive_timeout
                ):
                    self.abort()
                    break
        except (ClientGone, asyncio.CancelledError):
            pass
        finally:
            self.close()

