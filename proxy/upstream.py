"""Everything coxp says to an upstream, and the one place its failures become 502 or 504.

A lean HTTP/1.1 client: keep-alive pool on asyncio protocols, llhttp parser. It does only what
a reverse proxy needs -- send a head and a streamed body, hand back the response head and a
stream of body pieces, open a WebSocket handshake -- with none of a general client's
per-request work (URL objects, cookie jars, auto headers, redirects). Measured against aiohttp's
client in bench/NOTES.md. Header transforms (what is sent, what is relayed) are pure functions
in `proxy.forwarding`; the bytes on the wire are written by `proxy.http1`.

Whatever goes wrong leaves this module as an `UpstreamFailure`: the status coxp answers with
when no response has started (502 or 504, README "Forwarding behaviour") and a reason code for
the log.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

import httptools

from proxy.aio import Deadline
from proxy.http1 import LAST_CHUNK, chunk, list_elements, serialize_request_head
from proxy.memo import LruCache
from proxy.model import ProxySettings
from proxy.standards import TOKEN

CLOSED_WITHOUT_RESPONSE = "upstream-closed-without-response"
MAX_RESPONSE_HEAD = 64 * 1024  # a larger upstream response head is refused (502)
HIGH_WATER = 64 * 1024  # pause reading the upstream beyond this many body bytes not yet taken (per connection)
MAX_IDLE_PER_ORIGIN = 512
IDLE_SECONDS = 30.0  # kept below the common server keep-alive timeouts (nginx: 75 s)
# What is read, after a failed write, of a response the upstream sent before it stopped reading.
EARLY_RESPONSE_LIMIT = 1024 * 1024

# RFC 9112 §5.1: "A proxy MUST remove any such whitespace [between a field name and its colon]
# from a response message before forwarding the message downstream." llhttp refuses such a
# head, so a head that fails where a field name meets whitespace is collected whole, repaired
# and parsed again; every other head is parsed as it arrives.
_SPACE_BEFORE_COLON = re.compile(rb"^(" + TOKEN.encode() + rb")[ \t]+:", re.MULTILINE)
_NAME_THEN_SPACE = re.compile(rb"\n" + TOKEN.encode() + rb"[ \t]")
_INTERIM_STATUS_LINE = re.compile(rb"HTTP/1\.[01] 1[0-9][0-9]")


def repair_head(head: bytes) -> bytes:
    """`head` (response heads only, never body bytes) without whitespace before field colons."""
    return _SPACE_BEFORE_COLON.sub(rb"\1:", head)


# Upstreams repeat their response heads byte for byte (a static file's head changes with its
# Date, once a second). The fields llhttp reported for a head are remembered by the head's bytes
# (short heads that came whole in the response's first read), and a head seen before is fed to a
# parser that reports no fields: the same llhttp checks and framing, without a Python call and
# two decodes per field. Bounded by entries and by head size.
_KNOWN_HEADS: LruCache[tuple[tuple[tuple[str, str], ...], int | None]] = LruCache(128)  # fields, Content-Length
MAX_KNOWN_HEAD = 1024


def _final_head_end(data: bytes | bytearray) -> int:
    """Where the first non-1xx response head in `data` ends (after its blank line), or -1."""
    start = 0
    while (end := data.find(b"\r\n\r\n", start)) >= 0:
        if not _INTERIM_STATUS_LINE.match(data, start):
            return end + 4
        start = end + 4
    return -1


class UpstreamFailure(Exception):
    """The upstream gave no usable response: `status` (502 or 504) is what the client is answered
    when nothing was sent yet, `reason` the code in the log and the answer's body."""

    def __init__(self, status: int, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.status = status
        self.reason = reason
        self.detail = detail


def invalid(reason: str, detail: str) -> UpstreamFailure:
    """The upstream broke HTTP/1.1 (malformed or oversized head, closed too early): 502."""
    return UpstreamFailure(502, reason, detail)


def response_timeout(read_timeout: float) -> UpstreamFailure:
    return UpstreamFailure(504, "upstream-response-timeout", f"no response head within {read_timeout} s")


class UpstreamConnection(asyncio.Protocol):
    """One connection to the upstream, carrying one exchange at a time."""

    # Slots: the exchange reads and writes these attributes many times per request.
    __slots__ = ("transport", "key", "loop", "deadline", "closed", "idle_since", "_fields_parser", "_parser",
                 "_known_parser", "ignore_body", "_repaired", "_spare", "head_future", "status", "headers",
                 "content_length", "known_fields", "head_bytes", "head_size", "head_done", "complete", "keep_alive",
                 "error", "received_any", "_head_pieces", "_head_key", "_repairing", "_body", "_buffered",
                 "_body_waiter", "_paused", "_drain_waiter", "__weakref__")
    transport: asyncio.Transport  # set by connection_made, before the pool hands it out

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        # Kept once, as `proxy.connection` does: a `get_running_loop()` is a system call on 3.11.
        self.loop = asyncio.get_running_loop()
        self.deadline = Deadline(self.loop)  # of the wait for the response head, then for each body piece
        self.closed = False
        self.idle_since = 0.0
        # The parser of the response in progress: `_fields_parser` (reports each field), or
        # `_known_parser` (reports none) for a head in _KNOWN_HEADS. Each stays at a message
        # boundary while the other is in use.
        self._fields_parser = self._parser = httptools.HttpResponseParser(self)
        self._known_parser: httptools.HttpResponseParser | None = None
        self.ignore_body = False
        self._repaired = False
        self._spare: socket.socket | None = None
        self._reset()

    def _reset(self) -> None:
        """Fresh per-exchange state; llhttp itself is ready for the next response once one ends,
        except after a HEAD, whose announced body it would still wait for."""
        if self.ignore_body or self._repaired:
            self._fields_parser = httptools.HttpResponseParser(self)
            self._known_parser = None
        self._parser = self._fields_parser
        self._close_spare()
        self.head_future: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.content_length: int | None = None
        # The remembered fields `headers` came from (the same object for every response whose
        # head had the same bytes), None when the head is not remembered.
        self.known_fields: tuple[tuple[str, str], ...] | None = None
        self.head_bytes = 0
        self.head_size = len("HTTP/1.1 200 \r\n\r\n")
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None
        self.received_any = False
        self.ignore_body = False  # HEAD: llhttp cannot be told, so the message ends at its head
        self._head_pieces: list[bytes] = []  # what was fed before the head was complete
        self._head_key: bytes | None = None  # the head's bytes, to remember its fields by (_KNOWN_HEADS)
        self._repairing: bytearray | None = None  # a head collected whole, to be repaired
        self._repaired = False
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._body_waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self._repairing is not None:
            self._repairing += data
            self._parse_repaired(self._repairing)
            return
        if not self.head_done:
            if not self.head_bytes:
                self._start_head(data)
            self.head_bytes += len(data)
            self._head_pieces.append(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            seen = b"".join(self._head_pieces)
            if self.head_done or self._repaired or not _NAME_THEN_SPACE.search(seen):
                self._fail(invalid("upstream-invalid-response", str(error)))
                return
            self._repairing = bytearray(seen)
            self._parse_repaired(self._repairing)
            return
        # Bytes seen before the head is complete bound a head still arriving; the field sizes
        # bound one that arrived whole in a single read.
        if self.head_size > MAX_RESPONSE_HEAD or (not self.head_done and self.head_bytes > MAX_RESPONSE_HEAD):
            self._fail(invalid("upstream-head-too-large", f"response head over {MAX_RESPONSE_HEAD} bytes"))

    def _start_head(self, data: bytes) -> None:
        """The response's first bytes: a head known by its bytes is parsed without its fields."""
        end = data.find(b"\r\n\r\n", 0, MAX_KNOWN_HEAD)
        if end < 0:
            return
        head = data[: end + 4]
        known = _KNOWN_HEADS.get(head)
        if known is None:
            self._head_key = head
            return
        fields, self.content_length = known
        self.headers = list(fields)
        self.known_fields = fields
        if self._known_parser is None:
            self._known_parser = httptools.HttpResponseParser(_KnownFields(self))
        self._parser = self._known_parser

    def _parse_repaired(self, data: bytearray) -> None:
        """Parse the collected head `data` again, without whitespace before colons, once it is whole."""
        end = _final_head_end(data)
        if end < 0:
            if len(data) > MAX_RESPONSE_HEAD:
                self._fail(invalid("upstream-head-too-large", f"response head over {MAX_RESPONSE_HEAD} bytes"))
            return
        head = bytes(data[:end])
        repaired = repair_head(head)
        self._repairing = None
        if repaired == head:
            self._fail(invalid("upstream-invalid-response", "malformed response head"))
            return
        self._repaired = True  # the next exchange starts with fresh parsers
        self._parser = self._fields_parser = httptools.HttpResponseParser(self)
        self.headers = []
        self.head_size = len("HTTP/1.1 200 \r\n\r\n")
        self.head_bytes = 0
        self._head_pieces.clear()
        self.data_received(repaired + bytes(data[end:]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._spare is not None:
            if exc is not None and not self.complete:
                self._read_early_response(self._spare)
            self._close_spare()
        self.deadline.close()
        if self.head_done and not self.complete and self._close_delimited() and exc is None:
            self.complete = True  # RFC 9112 §6.3 item 8: the body ends when the connection does
            self._wake_body()
        elif not self.complete:
            reason = "upstream-response-aborted" if self.head_done else CLOSED_WITHOUT_RESPONSE
            self._fail(invalid(reason, str(exc) if exc else "the upstream closed the connection"))
        self._wake_drain()

    # --- a response the upstream sent before it stopped reading the request body -------------
    def keep_spare_descriptor(self) -> None:
        """Hold a second descriptor of the socket while a request body is sent.

        An upstream may answer before it has read the whole body (a `413` to an upload) and
        then close or reset. If a body write fails before that answer was read, the transport
        closes its descriptor at once; the answer is still in the kernel's receive queue, and
        this one reads it (nginx loses it: "broken pipe while sending request to upstream").
        Plain TCP only: behind TLS the queued bytes are records only the closed TLS layer could
        decrypt."""
        if self._spare is None and self.transport is not None and self.key[0] == "http":
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                self._spare = socket.socket(fileno=os.dup(sock.fileno()))
                self._spare.setblocking(False)

    def _read_early_response(self, spare: socket.socket) -> None:
        received = 0
        while not self.complete and self.error is None and received < EARLY_RESPONSE_LIMIT:
            try:
                data = spare.recv(65536)
            except OSError:
                return
            if not data:
                return
            received += len(data)
            self.data_received(data)

    def _close_spare(self) -> None:
        if self._spare is not None:
            self._spare.close()
            self._spare = None

    def pause_writing(self) -> None:
        self._drain_waiter = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake_drain()

    # --- httptools callbacks ----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        # After the head, llhttp reports a chunked body's trailer fields here: they are dropped
        # (the body is re-framed without them), never merged into the head (RFC 9110 §6.5.1).
        if not self.head_done:
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        # The heads' sizes counted by their fields ("name: value\r\n") are at most twice the
        # bytes received (`n:\n` counts 5 for 3): a final head is counted only when more than
        # half the limit's bytes came in, so the usual short head costs no counting at all.
        if status < 200 or self.head_bytes > MAX_RESPONSE_HEAD // 2:
            self.head_size += sum([len(name) + len(value) + 4 for name, value in self.headers])
            if self.head_size > MAX_RESPONSE_HEAD:
                return  # reported by data_received, which can stop the exchange
        self.status = status
        if status < 200:
            # 1xx interim responses (100 Continue, 103 Early Hints) are not relayed.
            self.headers = []
            self._head_key = None  # the bytes remembered would be the interim head's
            return
        self.head_done = True
        self._head_pieces.clear()
        if self._parser is not self._known_parser:
            self.content_length = _content_length(self.headers)
        if self._head_key is not None:
            if not self._repaired:
                self.known_fields = tuple(self.headers)
                _KNOWN_HEADS.put(self._head_key, (self.known_fields, self.content_length))
            self._head_key = None
        # Asked now: llhttp forgets the message's Connection semantics once it completes.
        self.keep_alive = self._parser.should_keep_alive()
        if self.ignore_body:
            self.complete = True
            self._close_spare()
        if self.head_future is not None and not self.head_future.done():
            self.head_future.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.ignore_body:
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake_body()

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.complete = True
            self._close_spare()
            self._wake_body()

    # --- exchange ---------------------------------------------------------------------------
    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        if self.head_future is not None and not self.head_future.done():
            self.head_future.set_exception(error)
        self._wake_body()
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    def _wake_body(self) -> None:
        if self._body_waiter is not None and not self._body_waiter.done():
            self._body_waiter.set_result(None)

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        self._drain_waiter = None

    def _close_delimited(self) -> bool:
        names = {n.lower() for n, _ in self.headers}
        return "content-length" not in names and "transfer-encoding" not in names

    async def drain(self, timeout: float) -> None:
        """Wait until the upstream takes more of the body; TimeoutError when it reads nothing for
        `timeout` seconds (an upstream that stopped reading cannot hold the exchange forever)."""
        if self._drain_waiter is not None and not self.closed:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._drain_waiter)

    def start(self, head_only: bool) -> asyncio.Future[None]:
        self.ignore_body = head_only
        self.head_future = self.loop.create_future()
        return self.head_future

    def _consumed(self, size: int) -> None:
        """`size` buffered body bytes were handed on: reading resumes once below half the mark.

        Every path that takes bytes out of the buffer goes through here; a connection left
        paused would go back to the pool deaf, and the next request on it would time out."""
        self._buffered -= size
        if self._paused and self._buffered < HIGH_WATER // 2:
            self._paused = False
            self.transport.resume_reading()

    async def body(self, read_timeout: float) -> AsyncGenerator[bytes, None]:
        while True:
            if self._body:
                data = self._body.popleft()
                try:
                    yield data
                finally:
                    # Taken only once the consumer is back for more, i.e. has written the piece and
                    # waited for the client to take it: until then reading stays paused, so a slow
                    # client holds one upstream read per stream, not that one plus the next.
                    self._consumed(len(data))
                # Let go of the piece before waiting for the next one: held until then, each
                # stream kept its last read (up to 256 KiB) while the upstream sent nothing.
                del data
                continue
            if self.complete:
                return
            if self.error is not None:
                raise self.error
            waiter = self._body_waiter = self.loop.create_future()
            self.deadline.start(waiter, self.loop.time() + read_timeout)
            try:
                await waiter
            except TimeoutError:
                raise UpstreamFailure(504, "upstream-read-timeout", f"no body bytes within {read_timeout} s") from None
            finally:
                self._body_waiter = None
                self.deadline.stop()

    def drop_body(self) -> None:
        """The exchange was abandoned: the body bytes held back are not wanted any more."""
        self._body.clear()
        self._buffered = 0

    def take_whole_body(self) -> bytes | None:
        if not self.complete or self.error is not None:
            return None
        body = b"".join(self._body)
        self._body.clear()
        self._consumed(len(body))
        return body

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None


@contextlib.asynccontextmanager
async def connecting(timeout: float) -> AsyncIterator[None]:
    """Bound a connection attempt to the upstream and name its failure for the log."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError as error:
        raise UpstreamFailure(504, "upstream-connect-timeout", f"no connection within {timeout} s") from error
    except ssl.SSLCertVerificationError as error:
        raise UpstreamFailure(
            502, "upstream-tls-verification-failed", f"certificate verify failed: {error.verify_message}"
        ) from error
    except ssl.SSLError as error:
        raise UpstreamFailure(502, "upstream-tls-error", str(error)) from error
    except OSError as error:
        raise UpstreamFailure(502, "upstream-unreachable", error.strerror or str(error)) from error


class ConnectionPool:
    """Idle keep-alive connections per (scheme, host, port); newest first."""

    def __init__(self, tls: ssl.SSLContext, connect_timeout: float) -> None:
        self._idle: dict[tuple, list[UpstreamConnection]] = {}
        self._tls = tls
        self._connect_timeout = connect_timeout

    def take_idle(self, key: tuple) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.loop.time() - conn.idle_since < IDLE_SECONDS:
                conn._reset()
                return conn
            conn.transport.close()
        return None

    async def connect(self, key: tuple) -> UpstreamConnection:
        scheme, host, port = key
        tls = self._tls if scheme == "https" else None
        async with connecting(self._connect_timeout):
            _, conn = await asyncio.get_running_loop().create_connection(
                lambda: UpstreamConnection(key), host, port, ssl=tls, server_hostname=host if tls else None
            )
        return conn

    def give_back(self, conn: UpstreamConnection) -> None:
        if not conn.reusable():
            if conn.transport is not None:
                conn.transport.close()
            return
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        elif len(idle) >= MAX_IDLE_PER_ORIGIN:
            conn.transport.close()
            return
        conn.idle_since = conn.loop.time()
        idle.append(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.transport.close()
        self._idle.clear()


class _KnownFields:
    """An UpstreamConnection's httptools callbacks but `on_header`: a parser made with this one
    reports no fields, for a head whose fields are known from its bytes."""

    __slots__ = ("on_headers_complete", "on_body", "on_message_complete")

    def __init__(self, conn: UpstreamConnection) -> None:
        self.on_headers_complete = conn.on_headers_complete
        self.on_body = conn.on_body
        self.on_message_complete = conn.on_message_complete


class UpstreamResponse:
    """A response head from the upstream, with its body still to read.

    `headers` are as the upstream sent them (hop-by-hop ones included: `proxy.forwarding`
    decides what is relayed). The reason phrase is not kept: coxp sends the standard one."""

    __slots__ = ("status", "headers", "content_length", "known_fields", "_conn", "_pool", "_read_timeout", "_writer",
                 "_done")

    def __init__(
        self, conn: UpstreamConnection, pool: ConnectionPool, read_timeout: float, writer: asyncio.Future | None
    ) -> None:
        self.status = conn.status
        self.headers = conn.headers
        self.content_length = conn.content_length
        self.known_fields = conn.known_fields  # see UpstreamConnection.known_fields
        self._conn = conn
        self._pool = pool
        self._read_timeout = read_timeout
        self._writer = writer  # still streaming the request body when the upstream answered early
        self._done = False

    def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives; UpstreamFailure when it breaks off or stalls `read_timeout`."""
        return self._conn.body(self._read_timeout)

    def buffered_body(self) -> bytes | None:
        """The whole body when it has already arrived, else None (then stream `chunks()`)."""
        return self._conn.take_whole_body()

    def release(self) -> None:
        """The body was read to its end: the connection may serve another request."""
        if self._done:
            return
        self._done = True
        if self._writer is None or (self._writer.done() and not self._writer.cancelled() and self._writer.exception() is None):
            self._pool.give_back(self._conn)
        else:
            self._abandon()

    def close(self) -> None:
        """Abandon the exchange (error, client gone): the connection cannot be reused."""
        if not self._done:
            self._done = True
            self._abandon()

    def _abandon(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        self._conn.drop_body()
        if self._conn.transport is not None:
            self._conn.transport.abort()


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length":
            return int(value)  # llhttp has already refused malformed or conflicting values
    return None


class Handshake:
    """The upstream's answer to a WebSocket handshake, on a connection of its own (never pooled):
    after a `101`, `reader`/`writer` carry the WebSocket bytes; else `refused_body()` is the
    answer's body."""

    __slots__ = ("status", "headers", "reader", "writer", "_parsed", "_parser", "_read_timeout")

    def __init__(self, head: _HeadFields, parser: httptools.HttpResponseParser, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, read_timeout: float) -> None:
        self.status, self.headers = parser.get_status_code(), head.fields
        self.reader, self.writer = reader, writer
        self._parsed, self._parser, self._read_timeout = head, parser, read_timeout

    async def refused_body(self) -> AsyncIterator[bytes]:
        """The body of an answer other than 101, as the upstream framed it (to be relayed with
        its framing headers), up to the end of that message: the connection is not kept after it."""
        while not self._parsed.complete:
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
                # that arrives as the read completes (CPython gh-86296), and a client that left
                # would then wait out read_timeout.
                async with asyncio.timeout(self._read_timeout):
                    data = await self.reader.read(64 * 1024)
            except TimeoutError:
                raise UpstreamFailure(504, "upstream-read-timeout", f"no body bytes within {self._read_timeout} s") from None
            if not data:
                return  # close-delimited, or cut short: the client's connection ends here too
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError as error:
                raise invalid("upstream-invalid-response", str(error)) from None
            yield data

    def close(self) -> None:
        self.writer.close()


def upstream_ssl_context(settings: ProxySettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.upstream_ca)
    if not settings.upstream_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class UpstreamClient:
    """One per worker (rebuilt when a reload changes the upstream settings): sends requests on
    pooled connections and opens WebSocket handshakes."""

    def __init__(self, tls: ssl.SSLContext, connect_timeout: float, read_timeout: float,
                 settings: ProxySettings | None = None) -> None:
        self.settings = settings
        self.pool = ConnectionPool(tls, connect_timeout)
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    @classmethod
    def for_settings(cls, settings: ProxySettings) -> UpstreamClient:
        return cls(upstream_ssl_context(settings), settings.connect_timeout, settings.read_timeout, settings)

    async def send(
        self,
        key: tuple[str, str, int],
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> UpstreamResponse:
        """`body`: None, the whole body (sent with the head; `headers` hold its Content-Length),
        or a stream (sent chunked unless `headers` hold a Content-Length)."""
        chunked = body is not None and not isinstance(body, bytes) and not any(
            n.lower() == "content-length" for n, _ in headers
        )
        head = serialize_request_head(method, target, [*headers, ("Transfer-Encoding", "chunked")] if chunked else headers)
        return await self.send_head(key, method, head, body, chunked)

    async def send_head(
        self,
        key: tuple[str, str, int],
        method: str,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None = None,
        chunked: bool = False,
    ) -> UpstreamResponse:
        """`send` with the request head already serialized (`proxy.http1.serialize_request_head`;
        with `Transfer-Encoding: chunked` when `chunked`, the framing of a streamed `body`)."""
        streamed = body is not None and not isinstance(body, bytes)
        try:
            conn = self.pool.take_idle(key)
            if conn is not None:
                try:
                    return await self._exchange(conn, method, head, body, chunked)
                except UpstreamFailure as failure:
                    # A kept-alive connection the upstream closed as we reused it: nothing of the
                    # request can have been processed, so one retry on a new connection is safe
                    # (RFC 9112 §9.3.1) — unless a body was already streamed from the client.
                    if failure.reason != CLOSED_WITHOUT_RESPONSE or conn.received_any or streamed:
                        raise
            conn = await self.pool.connect(key)
            return await self._exchange(conn, method, head, body, chunked)
        except OSError as error:  # anything the exchanges below did not name
            raise invalid("upstream-error", str(error)) from error

    async def _exchange(
        self, conn: UpstreamConnection, method: str, head: bytes, body: bytes | AsyncIterator[bytes] | None,
        chunked: bool,
    ) -> UpstreamResponse:
        head_received = conn.start(head_only=method == "HEAD")
        writer = None
        if isinstance(body, bytes):
            conn.transport.write(head + body)
            # Written in one go, the request cannot fail a later write; only what the kernel did
            # not take at once can (a 413 may be waiting by then).
            if conn.transport.get_write_buffer_size():
                conn.keep_spare_descriptor()
        else:
            conn.transport.write(head)
            if body is not None:
                conn.keep_spare_descriptor()
                writer = asyncio.ensure_future(_send_body(conn, body, chunked, self.read_timeout))
                writer.add_done_callback(_retrieve)
        # read_timeout bounds the wait for the response head from the moment the request, body
        # included, was sent: a slow upload is bounded by body_timeout between its pieces instead.
        loop = conn.loop
        if writer is None:
            conn.deadline.start(head_received, loop.time() + self.read_timeout)
        else:

            def start_timer(_: object) -> None:
                if not head_received.done():
                    conn.deadline.start(head_received, loop.time() + self.read_timeout)

            writer.add_done_callback(start_timer)
        try:
            await head_received
        except BaseException as error:
            conn.transport.abort()
            if writer is not None:
                writer.cancel()
            if isinstance(error, TimeoutError):
                raise response_timeout(self.read_timeout) from None
            raise
        finally:
            if writer is not None:
                writer.remove_done_callback(start_timer)
            conn.deadline.stop()
        # A response that arrived is relayed even when the body could not be sent whole: the
        # upstream answered (RFC 9112 §9.5: a server may answer before it reads the body).
        return UpstreamResponse(conn, self.pool, self.read_timeout, writer)

    async def open_websocket(self, key: tuple[str, str, int], target: str, headers: list[tuple[str, str]]) -> Handshake:
        """Send a WebSocket handshake (`headers` name the upgrade) on a new connection and read
        the answer's head. A `101` that does not switch to `websocket` is a failure: a tunnel to
        anything else would carry traffic no route has seen (RFC 9110 §7.8)."""
        scheme, host, port = key
        tls = self.tls if scheme == "https" else None
        async with connecting(self.connect_timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=host if tls else None, limit=MAX_RESPONSE_HEAD
            )
        try:
            writer.write(serialize_request_head("GET", target, headers))
            head, parser = await _handshake_head(reader, self.read_timeout)
            if parser.get_status_code() == 101 and not _switches_to_websocket(head.fields):
                raise invalid("upstream-invalid-response", "101 without Upgrade: websocket")
        except BaseException:
            writer.close()
            raise
        return Handshake(head, parser, reader, writer, self.read_timeout)

    def close(self) -> None:
        self.pool.close()


def _switches_to_websocket(headers: list[tuple[str, str]]) -> bool:
    """The 101 names `websocket` and nothing else in its Upgrade field(s)."""
    return [protocol for n, v in headers if n.lower() == "upgrade" for protocol in list_elements(v)] == ["websocket"]


class _HeadFields:
    """httptools callbacks that keep the header fields of a response head (and see its end)."""

    def __init__(self) -> None:
        self.fields: list[tuple[str, str]] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_message_complete(self) -> None:
        self.complete = True


async def _handshake_head(reader: asyncio.StreamReader, read_timeout: float) -> tuple[_HeadFields, httptools.HttpResponseParser]:
    """The answer's head, parsed by llhttp (and repaired) as every other response head."""
    try:
        async with asyncio.timeout(read_timeout):  # not wait_for: see Handshake.refused_body
            raw = await reader.readuntil(b"\r\n\r\n")
    except TimeoutError:
        raise response_timeout(read_timeout) from None
    except asyncio.LimitOverrunError:
        raise invalid("upstream-head-too-large", f"response head over {MAX_RESPONSE_HEAD} bytes") from None
    except (asyncio.IncompleteReadError, ConnectionError) as failure:
        raise invalid(CLOSED_WITHOUT_RESPONSE, str(failure)) from None
    head = _HeadFields()
    parser = httptools.HttpResponseParser(head)
    try:
        parser.feed_data(repair_head(raw))
    except httptools.HttpParserUpgrade:
        pass  # a 101 ends the HTTP part of the connection
    except httptools.HttpParserError as failure:
        raise invalid("upstream-invalid-response", str(failure)) from None
    return head, parser


def _retrieve(task: asyncio.Future) -> None:
    # The body writer's failure is reported through the exchange (the connection fails);
    # reading it here keeps asyncio from logging it a second time.
    if not task.cancelled():
        task.exception()


async def _send_body(conn: UpstreamConnection, body: AsyncIterator[bytes], chunked: bool, read_timeout: float) -> None:
    try:
        async for piece in body:
            if conn.closed:
                return  # the upstream stopped reading: its response, if one came, is the answer
            if not piece:
                continue
            conn.transport.write(chunk(piece) if chunked else piece)
            try:
                await conn.drain(read_timeout)
            except TimeoutError:
                stalled = f"the upstream read none of the body for {read_timeout} s"
                conn._fail(UpstreamFailure(504, "upstream-write-timeout", stalled))
                raise
        if chunked:
            conn.transport.write(LAST_CHUNK)
    except BaseException as error:
        # The client's body broke off or was refused: the upstream must not take a partial
        # body for a whole one, so the exchange is abandoned.
        conn._fail(invalid("request-body-not-completed", repr(error)))
        raise
