"""Helpers of the end-to-end tests: real sockets on loopback, coxp as a subprocess.

One module for all of them (the fixtures built on these are in `conftest.py`). Nothing here
sleeps to wait for something: every wait is on an event (a log line, a condition, a process
exit) with a bound.

* `Loop`        -- one asyncio loop in a background thread; every in-process upstream runs on it,
                   so test bodies stay plain synchronous code talking through blocking sockets.
* `Upstream`    -- an aiohttp server that records the head of every request it receives (raw
                   path, raw header lines, the client port of the connection) as a `Seen`, and
                   answers with `upstream.handler` (replaceable per test). Two ready behaviours:
                   `read_and_answer_ok` (the default) and `answer_as_query_asks`, driven by the
                   request's query so that one shared proxy serves a whole table of cases.
* `RawUpstream` -- a TCP server answering with exact bytes, for what aiohttp would never send.
* `StaticNginx` -- a real nginx serving a directory's files, as an upstream.
* `Coxp`        -- a running `python -m proxy ARGS` (run, dev, demo) with the stdout lines it
                   printed and the JSON ones among them as `events`; waits for lines and events,
                   signals, stops. `start_coxp` writes a config and `coxp run -c`s it.
* `Reader`, `request_bytes`, `exchange`, `get`, `http_request` -- send exact bytes, parse the
                   exact response (`Response`); `websocket_handshake`/`websocket_echo`.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web
from multidict import CIMultiDict

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable
WAIT = 10.0  # seconds: the bound of every wait in the end-to-end tests

# Headers about the transport, not the policy: left out of the "exact header set" comparisons.
TRANSPORT = frozenset({"date", "server", "connection", "keep-alive", "transfer-encoding", "content-length",
                       "content-type"})

_ids = itertools.count(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unique() -> str:
    """A marker for one request (put in its query), to find it at the upstream."""
    return f"id={next(_ids)}-{os.getpid()}"


def policy_view(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers that are not about the transport, names lower-cased, in a canonical order
    (repeated names keep their relative order)."""
    kept = [(n.lower(), v) for n, v in headers if n.lower() not in TRANSPORT]
    return sorted(kept, key=lambda h: h[0])


def norm(expected) -> list[tuple[str, str]]:
    """Expected headers given as a dict or pairs, in `policy_view`'s form."""
    pairs = expected.items() if isinstance(expected, dict) else expected
    return sorted(((n.lower(), v) for n, v in pairs), key=lambda h: h[0])


class HeaderLines:
    """Raw header lines (order and case kept) looked up by name, case-insensitively."""

    headers: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def value(self, name: str) -> str | None:
        found = self.values(name)
        assert len(found) <= 1, f"{name} sent {len(found)} times: {found}"
        return found[0] if found else None


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


# --------------------------------------------------------------------------------------------
# the recording upstream
# --------------------------------------------------------------------------------------------


@dataclass
class Seen(HeaderLines):
    """One request as the upstream received it."""

    method: str
    raw_path: str
    headers: list[tuple[str, str]]  # raw header lines, order and case kept
    client_port: int  # the port of the connection it arrived on (same port = same connection)
    body: bytes = b""


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SEEN = web.RequestKey("seen", Seen)


async def read_and_answer_ok(request: web.Request) -> web.StreamResponse:
    request[SEEN].body = await request.read()
    return web.Response(text="ok")


async def answer_as_query_asks(request: web.Request) -> web.StreamResponse:
    """Answer as the request's query asks: `?h=Name:value` (repeatable) adds a response header,
    `status=N` sets the status, `sleep=S` waits S seconds first; a WebSocket upgrade gets an echo
    socket (with the `h` headers on its 101). The query is part of the target, which coxp passes
    byte for byte, and path globs ignore it, so tests drive the upstream per request."""
    query = parse_qsl(urlsplit(request.raw_path).query, keep_blank_values=True)
    headers: CIMultiDict[str] = CIMultiDict()
    status, delay = 200, 0.0
    for key, value in query:
        if key == "h":
            name, _, v = value.partition(":")
            headers.add(name, v.strip())
        elif key == "status":
            status = int(value)
        elif key == "sleep":
            delay = float(value)
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await _echo_websocket(request, headers)
    request[SEEN].body = await request.read()
    if delay:
        await asyncio.sleep(delay)
    if "Content-Type" not in headers:
        headers["Content-Type"] = "text/plain; charset=utf-8"
    text = b"" if status in (204, 304) or request.method == "HEAD" else b"upstream " + request.method.encode()
    return web.Response(status=status, headers=headers, body=text)


async def _echo_websocket(request: web.Request, headers: CIMultiDict[str]) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    ws.headers.extend(headers)
    await ws.prepare(request)
    async for message in ws:
        if message.type == web.WSMsgType.TEXT:
            await ws.send_str("echo " + message.data)
    return ws


class Upstream:
    def __init__(self, loop: Loop, ssl_context=None, handler: Handler = read_and_answer_ok) -> None:
        self.loop = loop
        self.seen: list[Seen] = []
        self.default_handler = handler
        self.handler: Handler = handler
        self.arrived = threading.Condition()
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._record)
        # handler_cancellation: a handler sees CancelledError when its client (coxp) goes away.
        # Large line bounds: coxp forwards fields of any size up to its own head limit.
        # auto_decompress off: the handler sees the body bytes coxp forwarded.
        self.runner = web.AppRunner(
            app, handle_signals=False, access_log=None, handler_cancellation=True, auto_decompress=False,
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
        self.handler = self.default_handler

    def saw(self, marker: str) -> list[Seen]:
        """The requests whose target contains `marker` (tests put a `unique()` id in the query)."""
        with self.arrived:
            return [s for s in self.seen if marker in s.raw_path]

    def wait_seen(self, count: int = 1, timeout: float = WAIT) -> list[Seen]:
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


class StaticNginx:
    """nginx (one worker, keep-alive) serving the files of `root` on a free loopback port.

    With `access_log`, every request line nginx received (as sent, `$request`) and its
    X-Forwarded-For are written to `work/access.log`; `requests()` reads them back."""

    def __init__(self, root: Path, work: Path, access_log: bool = False) -> None:
        self.port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        self.access_log = work / "access.log"
        # As root, nginx's worker would drop to `nobody`, who cannot read pytest's private tmp dirs.
        user = "user root root;" if os.geteuid() == 0 else ""
        conf = work / "nginx.conf"
        logging = (f" log_format seen '$request\\t$http_x_forwarded_for';\n access_log {self.access_log} seen;\n"
                   if access_log else " access_log off;\n")
        conf.write_text(
            f"{user}\nworker_processes 1;\npid {work}/nginx.pid;\nerror_log {work}/error.log warn;\n"
            "events { worker_connections 256; }\n"
            "http {\n default_type application/octet-stream;\n merge_slashes on;\n" + logging
            + "".join(f" {kind}_temp_path {work}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + f" server {{ listen 127.0.0.1:{self.port}; root {root}; location / {{ }} }}\n}}\n"
        )
        nginx = next((p for p in ("/usr/sbin/nginx", "/usr/bin/nginx") if os.path.exists(p)), "nginx")
        self.process = subprocess.Popen([nginx, "-p", str(work), "-e", str(work / "error.log"), "-c", str(conf),
                                         "-g", "daemon off;"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError as error:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    stderr = self.process.stderr.read().decode(errors="replace")
                    raise AssertionError(f"nginx did not start: {stderr}") from error
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[tuple[str, str]]:
        """(request line, X-Forwarded-For or "-") of every request logged so far."""
        if not self.access_log.exists():
            return []
        return [tuple(line.split("\t", 1)) for line in self.access_log.read_text().splitlines()]  # type: ignore[misc]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: workers exit with the master
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(WAIT)


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


def start_coxp(directory: Path, text: str, *args: str, name: str | None = None,
               ready: str | None = "listening") -> Coxp:
    """Write `text` to `directory/name` (a fresh name by default), `coxp run -c` it (plus `args`)
    and wait for its `ready` event."""
    path = directory / (name or f"coxp-{next(_ids)}.toml")
    path.write_text(text)
    return Coxp(["-m", "proxy", "run", "-c", str(path), *args], cwd=directory, config_path=path).start(ready)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = WAIT) -> subprocess.CompletedProcess:
    """`python -m proxy ARGS` to completion."""
    return subprocess.run([PYTHON, "-m", "proxy", *args], cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


class Coxp:
    """A running `python -m proxy ARGS` process (any subcommand that serves: run, dev, demo):
    the stdout lines it printed so far (`lines`), the JSON objects among them (`events`), its stderr."""

    def __init__(self, argv: list[str], cwd: Path, config_path: Path | None = None) -> None:
        self.argv = argv
        self.cwd = cwd
        self.config_path = config_path  # the file given with -c, if any
        self.lines: list[str] = []
        self.events: list[dict] = []
        self.listen: str | None = None  # the address of the `ready` event, as logged
        self.process: subprocess.Popen | None = None
        self.changed = threading.Condition()
        self._stderr: list[str] = []
        self._readers: list[threading.Thread] = []
        self._streams_at_eof = 0

    def start(self, ready: str | None = "listening") -> Coxp:
        """Start the process; unless `ready` is None, wait for that event and take its `listen`."""
        self.process = subprocess.Popen(
            [PYTHON, *self.argv], cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._readers = [threading.Thread(target=self._read, args=(stream, is_stdout), daemon=True)
                         for stream, is_stdout in ((self.process.stdout, True), (self.process.stderr, False))]
        for reader in self._readers:
            reader.start()
        if ready is not None:
            self.listen = self.wait_event(ready, timeout=20)["listen"]
        return self

    def _read(self, stream, is_stdout: bool) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.changed:
                if is_stdout:
                    self.lines.append(line)
                    try:
                        event = json.loads(line)
                    except ValueError:
                        event = None
                    if isinstance(event, dict):
                        self.events.append(event)
                else:
                    self._stderr.append(line)
                self.changed.notify_all()
        with self.changed:
            self._streams_at_eof += 1
            self.changed.notify_all()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def stderr(self) -> str:
        with self.changed:
            return "\n".join(self._stderr)

    def _finished(self) -> bool:
        """The process has exited and everything it printed has been read."""
        return self.process.poll() is not None and self._streams_at_eof == len(self._readers)

    def _diagnosis(self) -> str:
        return (f"exit={self.process.poll()}; stdout:\n" + "\n".join(self.lines[-20:])
                + "\nstderr:\n" + self.stderr[-2000:])

    def forget(self) -> None:
        """Drop the lines logged so far (for a process shared by several tests)."""
        with self.changed:
            self.lines.clear()
            self.events.clear()

    def mark(self) -> int:
        """The number of events so far: `wait_event(..., start=mark)` looks only after it."""
        with self.changed:
            return len(self.events)

    def events_named(self, name: str, start: int = 0, where: Callable[[dict], bool] | None = None,
                     **match: Any) -> list[dict]:
        """The events at index >= `start` called `name`, with the given fields, for which `where` holds."""
        with self.changed:
            return [e for e in self.events[start:] if e.get("event") == name
                    and all(e.get(k) == v for k, v in match.items()) and (where is None or where(e))]

    def wait_event(self, name: str, count: int = 1, start: int = 0, timeout: float = WAIT,
                   where: Callable[[dict], bool] | None = None, **match: Any) -> dict:
        """The `count`-th event of `events_named(name, start, where, **match)`, waiting for it to be logged."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.events_named(name, start, where, **match)) >= count
                                  or self._finished(), timeout)
            found = self.events_named(name, start, where, **match)
            if len(found) < count:
                raise AssertionError(f"no {name} event {match} (count {count}); {self._diagnosis()}")
            return found[count - 1]

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = WAIT) -> str:
        """The first stdout line (text) for which `predicate` is true."""
        with self.changed:
            self.changed.wait_for(lambda: any(predicate(line) for line in self.lines) or self._finished(), timeout)
            hit = next((line for line in self.lines if predicate(line)), None)
            if hit is None:
                raise AssertionError(f"no such line; {self._diagnosis()}")
            return hit

    def wait_for(self, condition: Callable[[], bool], timeout: float = WAIT) -> bool:
        """Wait until `condition()` (called with the log lock held) is true; False on timeout."""
        with self.changed:
            return self.changed.wait_for(condition, timeout)

    def settle(self) -> None:
        """Make one request and wait for its log line: the lines of earlier requests came first."""
        get(self, "/__settle__")
        self.wait_event("request", path="/__settle__")

    def request(self, method: str, target: str, headers=(), body: bytes | None = None,
                host: str | None = None, port: int | None = None) -> Response:
        """One request on a fresh connection (to `port`, by default coxp's own); for coxp's own
        port, waits for the `request` log event and returns it as `response.event`."""
        mark = self.mark()
        response = http_request(port or self.port, method, target, headers, body,
                                host if host is not None else f"127.0.0.1:{port or self.port}")
        if port is None:
            response.event = self.wait_event("request", start=mark)
        return response

    def rss_kib(self) -> int:
        """VmRSS of the proxy process, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for the exit status; then every line it printed has been read."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(5)
            for reader in self._readers:
                reader.join(5)

    def connect(self, timeout: float = WAIT) -> socket.socket:
        return socket.create_connection(self.address, timeout=timeout)


def fresh_log(process: Coxp, upstream: Upstream):
    """A shared coxp whose log starts empty for the test; after it, the late lines are waited for."""
    assert process.process.poll() is None, "the shared coxp died in an earlier test"
    process.forget()
    yield process
    upstream.reset()
    process.settle()


class CoxpPool:
    """One running proxy per distinct config text (`{upstream}` replaced); all stopped by `close`."""

    def __init__(self, directory: Path, upstream: Upstream) -> None:
        self.directory = directory
        self.upstream = upstream
        self._running: dict[str, Coxp] = {}

    def get(self, text: str) -> Coxp:
        text = text.replace("{upstream}", self.upstream.url)
        proxy = self._running.get(text)
        if proxy is None or proxy.process.poll() is not None:
            proxy = start_coxp(self.directory, text)
            self._running[text] = proxy
        return proxy

    def close(self) -> None:
        for proxy in self._running.values():
            proxy.stop()


# --------------------------------------------------------------------------------------------
# exact-bytes HTTP/1.1 client
# --------------------------------------------------------------------------------------------


class Aborted(Exception):
    """The connection ended before the response did."""


@dataclass
class Response(HeaderLines):
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    raw_head: bytes = b""
    chunked: bool = False
    event: dict | None = None  # the decision-log `request` event for this request (`Coxp.request`)

    def names(self) -> set[str]:
        return {n.lower() for n, _ in self.headers}

    @property
    def policy(self) -> list[tuple[str, str]]:
        return policy_view(self.headers)


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


def request_bytes(method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                  host: str | None = "example.test") -> bytes:
    """A request head with exactly the given headers (repeats and order kept) after `Host`, plus
    `Content-Length` for a non-empty body that has no framing header of its own."""
    headers = list(headers or [])
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{n}: {v}" for n, v in headers]
    if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def send(address: tuple[str, int], raw: bytes, method: str | None = None, timeout: float = WAIT) -> Response:
    """Send exact bytes on a new connection to `address`, read one response."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(raw)
        return Reader(sock).response(method or raw.split(b" ", 1)[0].decode())


def exchange(proxy: Coxp, raw: bytes, method: str | None = None, timeout: float = WAIT) -> Response:
    """Send exact bytes to coxp on a new connection, read one response."""
    return send(proxy.address, raw, method, timeout)


def get(proxy: Coxp, target: str = "/", headers: list[tuple[str, str]] | None = None, method: str = "GET",
        body: bytes = b"") -> Response:
    return exchange(proxy, request_bytes(method, target, headers, body), method)


def http_request(port: int, method: str, target: str, headers=(), body: bytes | None = None,
                 host: str | None = None) -> Response:
    """One request to 127.0.0.1:`port` with exactly the given headers and `Host` (none when None);
    a `body` (even empty) is sent with its Content-Length."""
    headers = list(headers)
    if body is not None:
        headers.append(("Content-Length", str(len(body))))
    return send(("127.0.0.1", port), request_bytes(method, target, headers, body or b"", host), method)


def websocket_handshake(port: int, target: str, headers=(), host: str | None = None, upgrade: str = "websocket"):
    """Send a WebSocket upgrade (`Upgrade: <upgrade>`); returns (status, headers, socket) -- the
    socket stays open for frames when the status is 101 (the caller closes it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    key = base64.b64encode(os.urandom(16)).decode()
    fields = [("Upgrade", upgrade), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
               ("Sec-WebSocket-Version", "13"), *headers]
    sock.sendall(request_bytes("GET", target, fields, host=host or f"127.0.0.1:{port}"))
    head = Reader(sock).head()  # nothing follows a 101 before the client's first frame
    return head.status, head.headers, sock


def websocket_echo(sock: socket.socket, text: str) -> str:
    """Send one masked text frame, read one unmasked text frame back (short messages only)."""
    payload = text.encode()
    mask = os.urandom(4)
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    header = sock.recv(2)
    size = header[1] & 0x7F
    data = b""
    while len(data) < size:
        data += sock.recv(size - len(data))
    return data.decode()


def upload_while_reading(sock: socket.socket, target: str, size: int, host: str | None = "example.test"):
    """POST `size` bytes on `sock` from a thread (its send errors ignored: the server may stop
    reading) while the response is read, as browsers and curl do; the response. Closes `sock`."""
    head = request_bytes("POST", target, [("Content-Length", str(size))], host=host)

    def send_body() -> None:
        try:
            sock.sendall(head)
            piece = b"u" * 65536
            for start in range(0, size, len(piece)):
                sock.sendall(piece[: size - start])
        except OSError:
            pass

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    try:
        return Reader(sock).response("POST")
    finally:
        sock.close()
        sender.join(10)
