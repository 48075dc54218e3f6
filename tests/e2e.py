"""End-to-end harness: coxp as a real subprocess in front of a real, recording aiohttp upstream.

Imported by the policy/CLI/admin/log test modules (`from e2e import ...`; pytest puts
`tests/` on `sys.path`). It complements `harness.py`/`conftest.py` (byte-exact forwarding tests):
here the upstream is driven by the request's query, so one shared proxy per config serves a
whole table of cases, and `Coxp` also runs `dev` and `demo` and reads console-format output. Nothing here sleeps to wait for something: every wait is on an event (a log line,
a queue item, a process exit) with a bound.

* `Upstream`  -- an aiohttp server on its own event-loop thread. It records every request
  (method, raw target, headers) and answers as the request's query asks:
  `?h=Name:value` (repeatable) adds a response header, `status=N` sets the status,
  `sleep=S` waits S seconds before answering. The query is part of the target, which coxp
  passes byte for byte, and path globs ignore it, so tests can drive the upstream per request.
  `Upstream.closed_port()` gives a port where nothing listens (for 502s).
* `Coxp`      -- `python -m proxy run -c FILE [args]` started on a free port; its stdout is read
  by a thread into `lines`/`events` (JSON lines). `request()` sends one request over a fresh
  connection and returns status, headers (as received, repeated ones kept), body and the
  decision-log `request` event the proxy wrote for it.
* `CoxpPool`  -- one `Coxp` per distinct config text, reused across tests (a session fixture),
  so a table of 100 cases does not start 100 processes.
"""
from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from aiohttp import web
from multidict import CIMultiDict

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
WAIT = 10.0  # seconds: the bound of every wait in the end-to-end tests

# Headers about the transport, not the policy: left out of the "exact header set" comparisons.
TRANSPORT = frozenset({"date", "server", "connection", "keep-alive", "transfer-encoding", "content-length",
                       "content-type"})

_ids = itertools.count(1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def policy_view(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers that are not about the transport, names lower-cased, in a canonical order
    (repeated names keep their relative order)."""
    kept = [(n.lower(), v) for n, v in headers if n.lower() not in TRANSPORT]
    return sorted(kept, key=lambda h: h[0])


def norm(expected) -> list[tuple[str, str]]:
    """Expected headers given as a dict or pairs, in `policy_view`'s form."""
    pairs = expected.items() if isinstance(expected, dict) else expected
    return sorted(((n.lower(), v) for n, v in pairs), key=lambda h: h[0])


# --------------------------------------------------------------------------------------------
# The upstream


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class Upstream:
    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="upstream", daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        self.port = self._call(self._start())
        self.url = f"http://127.0.0.1:{self.port}"

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(WAIT)

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        body = await request.read()
        self.requests.append(Seen(request.method, request.raw_path, list(request.raw_headers_str()), body))
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
        if delay:
            await asyncio.sleep(delay)
        if "Content-Type" not in headers:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        text = b"" if status in (204, 304) or request.method == "HEAD" else b"upstream " + request.method.encode()
        return web.Response(status=status, headers=headers, body=text)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """An echo WebSocket; `?h=` adds headers to its 101 as for any other answer."""
        self.requests.append(Seen(request.method, request.raw_path, list(request.raw_headers_str()), b""))
        query = parse_qsl(urlsplit(request.raw_path).query, keep_blank_values=True)
        ws = web.WebSocketResponse()
        for key, value in query:
            if key == "h":
                name, _, v = value.partition(":")
                ws.headers.add(name, v.strip())
        await ws.prepare(request)
        async for message in ws:
            if message.type == web.WSMsgType.TEXT:
                await ws.send_str("echo " + message.data)
        return ws

    def saw(self, marker: str) -> list[Seen]:
        """The requests whose target contains `marker` (tests put a unique id in the query)."""
        return [r for r in self.requests if marker in r.target]

    def close(self) -> None:
        if self._runner is not None:
            self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)


def _raw_headers_str(self: web.Request) -> list[tuple[str, str]]:
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.raw_headers]


web.Request.raw_headers_str = _raw_headers_str  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# The proxy


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    event: dict | None = None  # the decision-log `request` event for this request

    def header(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    @property
    def policy(self) -> list[tuple[str, str]]:
        return policy_view(self.headers)


@dataclass
class Coxp:
    """A running `coxp` process (any subcommand that serves: run, dev, demo)."""

    argv: list[str]
    cwd: Path
    listen: str | None = None
    lines: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _stderr: list[str] = field(default_factory=list)
    _cursor: int = 0

    def start(self, ready=lambda e: e.get("event") == "listening") -> "Coxp":
        self.proc = subprocess.Popen(
            [PYTHON, *self.argv], cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True).start()
        if ready is not None:
            listening = self.wait_event(ready)
            self.listen = listening.get("listen")
            self._cursor = len(self.events)
        return self

    def _read(self, stream, is_stdout: bool) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
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
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self._stderr)

    def wait_line(self, predicate, timeout: float = WAIT) -> str:
        """The first stdout line (text) for which `predicate` is true."""
        with self._cond:
            found = self._cond.wait_for(lambda: next((l for l in self.lines if predicate(l)), None)
                                        or self.proc.poll() is not None, timeout)
            hit = next((l for l in self.lines if predicate(l)), None)
        assert hit is not None, f"no such line (found={found!r}); stdout:\n" + "\n".join(self.lines[-20:]) + \
            "\nstderr:\n" + self.stderr[-2000:]
        return hit

    def wait_event(self, predicate, start: int = 0, timeout: float = WAIT) -> dict:
        """The first event at index >= `start` for which `predicate` is true."""

        def find():
            return next((e for e in self.events[start:] if predicate(e)), None)

        with self._cond:
            self._cond.wait_for(lambda: find() is not None or self.proc.poll() is not None, timeout)
            hit = find()
        assert hit is not None, (
            f"no matching event; exit={self.proc.poll()}; stdout:\n" + "\n".join(self.lines[-20:])
            + "\nstderr:\n" + self.stderr[-2000:]
        )
        return hit

    def wait_for(self, condition, timeout: float = WAIT) -> bool:
        """Wait until `condition()` (called with the log lock held) is true; False on timeout."""
        with self._cond:
            return self._cond.wait_for(condition, timeout)

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def request(self, method: str, target: str, headers=(), body: bytes | None = None,
                host: str | None = None, port: int | None = None) -> Response:
        """One request on a fresh connection; waits for its `request` log event (when logging JSON)."""
        mark = self.mark()
        response = http_request(port or self.port, method, target, headers, body,
                                host if host is not None else f"127.0.0.1:{port or self.port}")
        if port is None:
            response.event = self.wait_event(lambda e: e.get("event") == "request", start=mark)
        return response

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        return self.proc.returncode


def http_request(port: int, method: str, target: str, headers=(), body: bytes | None = None,
                 host: str | None = None) -> Response:
    """Send one request with exactly the given headers (repeats kept, order kept) and read the answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        raw = conn.getresponse()
        data = raw.read()
        return Response(raw.status, raw.reason, list(raw.getheaders()), data)
    finally:
        conn.close()


def websocket_handshake(port: int, target: str, headers=(), host: str | None = None):
    """Send a WebSocket upgrade; returns (status, headers, socket) -- the socket stays open
    for frames when the status is 101 (the caller closes it)."""
    import base64

    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {target} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{n}: {v}" for n, v in headers]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    parsed = [tuple(part.strip() for part in line.split(":", 1)) for line in head[1:] if line]
    return status, parsed, sock


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


def write_config(directory: Path, text: str, name: str | None = None) -> Path:
    path = directory / (name or f"coxp-{next(_ids)}.toml")
    path.write_text(text)
    return path


class CoxpPool:
    """One running proxy per distinct config text; all stopped at the end of the session."""

    def __init__(self, directory: Path, upstream: Upstream) -> None:
        self.directory = directory
        self.upstream = upstream
        self._running: dict[str, Coxp] = {}

    def get(self, text: str) -> Coxp:
        text = text.replace("{upstream}", self.upstream.url)
        proxy = self._running.get(text)
        if proxy is None or proxy.proc.poll() is not None:
            proxy = start_coxp(self.directory, text)
            self._running[text] = proxy
        return proxy

    def close(self) -> None:
        for proxy in self._running.values():
            proxy.stop()


def start_coxp(directory: Path, text: str, *args: str) -> Coxp:
    """Write `text` to a file and `coxp run -c` it (plus `args`), waiting for `listening`."""
    path = write_config(directory, text)
    return Coxp(["-m", "proxy", "run", "-c", str(path), *args], cwd=directory).start()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = WAIT) -> subprocess.CompletedProcess:
    """`python -m proxy ARGS` to completion."""
    return subprocess.run([PYTHON, "-m", "proxy", *args], cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------------------------
# Fixtures (imported by the test modules that use them)


@pytest.fixture(scope="session")
def query_upstream():
    """The query-driven recording upstream (see `Upstream`), shared by the whole session."""
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="session")
def coxp_pool(query_upstream, tmp_path_factory):
    pool = CoxpPool(tmp_path_factory.mktemp("coxp-pool"), query_upstream)
    yield pool
    pool.close()


@pytest.fixture
def coxp_proc(tmp_path):
    """A factory for a private proxy process (for tests that signal it or read its whole log)."""
    started: list[Coxp] = []

    def start(text: str, *args: str, ready=lambda e: e.get("event") == "listening") -> Coxp:
        path = write_config(tmp_path, text, "coxp.toml")
        proxy = Coxp(["-m", "proxy", "run", "-c", str(path), *args], cwd=tmp_path)
        started.append(proxy)
        return proxy.start(ready)

    yield start
    for proxy in started:
        proxy.stop()


def unique() -> str:
    """A marker for one request (put in its query), to find it at the upstream."""
    return f"id={next(_ids)}-{os.getpid()}"
