"""Helpers of the end-to-end tests: real sockets on loopback, coxp as a subprocess.

* `Loop`     -- one asyncio loop in a background thread; every in-process upstream runs on it,
                so test bodies stay plain synchronous code talking through blocking sockets.
* `Upstream` -- an aiohttp server that records the head of every request it receives (raw path,
                raw header lines, the client port of the connection) and answers with
                `upstream.handler` (replaceable per test; the default reads the body and answers
                `200 ok`).
* `Coxp`     -- a running `python -m proxy run -c FILE` with the JSON lines it printed.
* `Reader`, `request_bytes`, `exchange`, `get` -- send exact bytes, parse the exact response.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable


# --------------------------------------------------------------------------------------------
# the background event loop
# --------------------------------------------------------------------------------------------


class Loop:
    """An asyncio loop in a daemon thread; `run` executes a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------
# the recording upstream
# --------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    raw_path: str
    headers: list[tuple[str, str]]  # raw header lines, order and case kept
    client_port: int  # the port of the connection it arrived on (same port = same connection)
    body: bytes = b""

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def value(self, name: str) -> str | None:
        found = self.values(name)
        assert len(found) <= 1, f"{name} sent {len(found)} times: {found}"
        return found[0] if found else None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SEEN = web.RequestKey("seen", Seen)


async def read_and_answer_ok(request: web.Request) -> web.StreamResponse:
    request[SEEN].body = await request.read()
    return web.Response(text="ok")


class Upstream:
    def __init__(self, loop: Loop, ssl_context=None) -> None:
        self.loop = loop
        self.seen: list[Seen] = []
        self.handler: Handler = read_and_answer_ok
        self.arrived = threading.Condition()
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._record)
        # handler_cancellation: a handler sees CancelledError when its client (coxp) goes away.
        # Large line bounds: coxp forwards fields of any size up to its own head limit.
        self.runner = web.AppRunner(
            app, handle_signals=False, access_log=None, handler_cancellation=True,
            max_line_size=64 * 1024, max_field_size=64 * 1024,
        )
        self.port = free_port()
        self.scheme = "https" if ssl_context else "http"

        async def start() -> None:
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=ssl_context).start()

        loop.run(start())

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def _record(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = Seen(
            method=request.method,
            raw_path=request.raw_path,
            headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.raw_headers],
            client_port=peer[1] if peer else 0,
        )
        request[SEEN] = seen
        with self.arrived:
            self.seen.append(seen)
            self.arrived.notify_all()
        return await self.handler(request)

    def reset(self) -> None:
        """Forget what was seen and answer with the default handler again (for a shared upstream)."""
        with self.arrived:
            self.seen.clear()
        self.handler = read_and_answer_ok

    def wait_seen(self, count: int = 1, timeout: float = 10.0) -> list[Seen]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.seen) >= count, timeout), f"upstream saw {len(self.seen)} requests"
            return list(self.seen)

    def close(self) -> None:
        self.loop.run(self.runner.cleanup())


class RawUpstream:
    """A TCP server that answers with exact bytes: `serve(reader, writer, head)` per connection.

    For upstream behaviour aiohttp would never produce (truncated bodies, huge heads, hop-by-hop
    response headers). `heads` are the request heads received, as bytes.
    """

    def __init__(self, loop: Loop, serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]) -> None:
        self.loop = loop
        self.serve = serve
        self.heads: list[bytes] = []

        async def start() -> asyncio.base_events.Server:
            return await asyncio.start_server(self._connection, "127.0.0.1", 0)

        self.server = loop.run(start())
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            await self.serve(reader, writer, head)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        self.loop.run(stop())


def answer_with(data: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]:
    """A RawUpstream behaviour: send `data`, then close the connection."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        writer.write(data)
        await writer.drain()

    return serve


# --------------------------------------------------------------------------------------------
# coxp as a subprocess
# --------------------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def toml_table(name: str, values: dict[str, Any]) -> str:
    return f"[{name}]\n" + "".join(f"{key} = {toml_value(v)}\n" for key, v in values.items())


def config_text(upstream: str | None = None, proxy: dict | None = None, limits: dict | None = None, extra: str = "") -> str:
    """A coxp config: JSON log on stdout, a free port, the given [proxy]/[limits] keys, then `extra`."""
    settings = {"listen": "127.0.0.1:0", **({"upstream": upstream} if upstream else {}), **(proxy or {})}
    parts = [toml_table("proxy", settings), toml_table("log", {"format": "json", "level": "info"})]
    if limits:
        parts.append(toml_table("limits", limits))
    return "\n".join(parts) + "\n" + extra


def start_coxp(directory: Path, text: str, name: str = "coxp.toml") -> "Coxp":
    """Write `text` to `directory/name` and start coxp with it."""
    path = directory / name
    path.write_text(text)
    return Coxp(path, directory / f"{name}.stderr")


class Coxp:
    """A running `coxp run` process and the JSON lines it has printed so far."""

    def __init__(self, config_path: Path, stderr_path: Path) -> None:
        self.config_path = config_path
        self.stderr_path = stderr_path
        self.lines: list[dict] = []
        self.changed = threading.Condition()
        self.process = subprocess.Popen(
            [PYTHON, "-m", "proxy", "run", "-c", str(config_path)],
            cwd=str(config_path.parent),
            stdout=subprocess.PIPE,
            stderr=stderr_path.open("wb"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        listening = self.wait_event("listening", timeout=20)
        host, _, port = listening["listen"].rpartition(":")
        self.address = (host, int(port))

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "<not json>", "line": line.decode("latin-1")}
            with self.changed:
                self.lines.append(event)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    @property
    def pid(self) -> int:
        return self.process.pid

    def forget(self) -> None:
        """Drop the lines logged so far (for a process shared by several tests)."""
        with self.changed:
            self.lines.clear()

    def settle(self) -> None:
        """Make one request and wait for its log line: the lines of earlier requests came first."""
        get(self, "/__settle__")
        self.wait_event("request", path="/__settle__")

    def events(self, name: str, **match: Any) -> list[dict]:
        with self.changed:
            return [e for e in self.lines if e.get("event") == name and all(e.get(k) == v for k, v in match.items())]

    def wait_event(self, name: str, count: int = 1, timeout: float = 10.0, **match: Any) -> dict:
        """The `count`-th event called `name` (with the given fields), waiting for it to be logged."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(found := self.events(name, **match)) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError(f"no {name} event {match} (count {count}); log: {self.lines[-10:]}; stderr: {self.stderr()}")
                self.changed.wait(remaining)
            return found[count - 1]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        """VmRSS of the proxy process, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(5)
            self.reader.join(5)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(self.address, timeout=timeout)


def fresh_log(process: Coxp, upstream: Upstream):
    """A shared coxp whose log starts empty for the test; after it, the late lines are waited for."""
    assert process.process.poll() is None, "the shared coxp died in an earlier test"
    process.forget()
    yield process
    upstream.reset()
    process.settle()


# --------------------------------------------------------------------------------------------
# exact-bytes HTTP/1.1 client
# --------------------------------------------------------------------------------------------


class Aborted(Exception):
    """The connection ended before the response did."""


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    raw_head: bytes = b""
    chunked: bool = False
    extra: dict = field(default_factory=dict)

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def value(self, name: str) -> str | None:
        found = self.values(name)
        assert len(found) <= 1, f"{name} sent {len(found)} times: {found}"
        return found[0] if found else None

    def names(self) -> set[str]:
        return {n.lower() for n, _ in self.headers}


class Reader:
    """Reads HTTP/1.1 responses from a socket, strictly, one after another (keep-alive)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(256 * 1024)
        if not data:
            raise Aborted(f"connection closed with {len(self.buffer)} unread bytes")
        self.buffer += data

    def _until(self, marker: bytes) -> bytes:
        while (end := self.buffer.find(marker)) < 0:
            self._fill()
        out = bytes(self.buffer[: end + len(marker)])
        del self.buffer[: end + len(marker)]
        return out

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out

    def head(self) -> Response:
        raw = self._until(b"\r\n\r\n")
        lines = raw[:-4].decode("latin-1").split("\r\n")
        version, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        assert version == "HTTP/1.1", lines[0]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        return Response(int(status), reason, headers, raw_head=raw)

    def response(self, method: str = "GET") -> Response:
        """The next complete response (skipping none: a 1xx is returned as is)."""
        return self.read_body(self.head(), method)

    def read_body(self, response: Response, method: str = "GET") -> Response:
        """Read the body that `response` (a head) announces; Aborted when it ends short."""
        if method == "HEAD" or response.status < 200 or response.status in (204, 304):
            return response
        if "chunked" in ",".join(response.values("transfer-encoding")).lower():
            response.chunked = True
            response.body = self._chunked()
        elif (length := response.value("content-length")) is not None:
            response.body = self._exactly(int(length))
        else:
            response.body = self.rest()
        return response

    def _chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int(self._until(b"\r\n")[:-2].split(b";")[0], 16)
            if size == 0:
                while self._until(b"\r\n") != b"\r\n":
                    pass
                return bytes(body)
            body += self._exactly(size)
            assert self._exactly(2) == b"\r\n"

    def rest(self) -> bytes:
        """Everything until the peer closes."""
        while True:
            try:
                self._fill()
            except Aborted:
                out = bytes(self.buffer)
                self.buffer.clear()
                return out

    def closed(self) -> bool:
        """True when the peer closed the connection (EOF or reset) without sending anything more."""
        try:
            data = self.sock.recv(1)
        except ConnectionResetError:
            return True
        return data == b""


def request_bytes(method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b"", host: str | None = "example.test") -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{n}: {v}" for n, v in headers or []]
    if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers or []):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def exchange(proxy: Coxp, raw: bytes, method: str | None = None, timeout: float = 10.0) -> Response:
    """Send exact bytes on a new connection, read one response."""
    with proxy.connect(timeout) as sock:
        sock.sendall(raw)
        return Reader(sock).response(method or raw.split(b" ", 1)[0].decode())


def get(proxy: Coxp, target: str = "/", headers: list[tuple[str, str]] | None = None, method: str = "GET", body: bytes = b"") -> Response:
    return exchange(proxy, request_bytes(method, target, headers, body), method)
