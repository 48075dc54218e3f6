"""Harness for the headless-Chromium end-to-end suite.

What lives here:

* ``tls``       -- a throw-away ``trustme`` CA and one leaf certificate for every test host name;
                   Chromium trusts the leaf through ``--ignore-certificate-errors-spki-list`` (only
                   that key is accepted; every other certificate error still fails).
* ``loop``      -- one asyncio loop in a background thread on which all aiohttp test servers run
                   (Playwright's sync API owns the main thread).
* ``pages``     -- an aiohttp page server (session-wide) serving blank HTML documents and a PNG.
                   ``?h=Name:value`` adds response headers (so a test can make the *upstream* send a
                   policy header that coxp must then remove or keep).
* ``upstream``  -- an aiohttp API upstream (per test) that records every request it sees.
* ``ws_echo``   -- an aiohttp WebSocket echo upstream (per test), recording every connection.
* ``coxp``      -- a factory that writes a TOML config to ``tmp_path``, starts ``coxp run -c`` as a
                   subprocess on a free loopback port, waits for the ``listening`` event on stdout,
                   collects the decision log and stops it with SIGTERM at teardown.
* ``browser``   -- one Debian ``/usr/bin/chromium`` per session (Playwright, headless); ``context``
                   and ``page`` are fresh per test.

Every host name ending in ``.test`` resolves to 127.0.0.1 inside Chromium
(``--host-resolver-rules``). Plain-http origins under ``*.example.test`` and ``*.other.test`` count
as secure contexts (``--unsafely-treat-insecure-origin-as-secure``); the isolation scenarios also
run over coxp's own TLS with the trustme certificate.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shlex
import signal
import ssl
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("COXP_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]

from e2e_helpers import PW_TIMEOUT_MS, TEST_HOSTS, free_port  # noqa: E402  (tests/browser is on sys.path)

# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def _png(width: int, height: int) -> bytes:
    """A valid RGB PNG of the given size (solid colour)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\x20\x80\xe0" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


# Distinctive size so "loaded" is unambiguous (naturalWidth 0 means the image did not decode).
PNG_W, PNG_H = 7, 5
PNG = _png(PNG_W, PNG_H)


def blank_html(title: str = "coxp e2e") -> bytes:
    return f"<!doctype html><html><head><meta charset=utf-8><title>{title}</title></head><body>{title}</body></html>".encode()


# --------------------------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------------------------

@dataclass
class TLS:
    cert_file: Path  # leaf + CA chain, PEM
    key_file: Path
    ca_file: Path
    spki_sha256_b64: str

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx


@pytest.fixture(scope="session")
def tls(tmp_path_factory) -> TLS:
    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca = trustme.CA()
    leaf = ca.issue_cert(*TEST_HOSTS, "*.example.test", "*.other.test", "127.0.0.1")
    d = tmp_path_factory.mktemp("tls")
    cert_file, key_file, ca_file = d / "cert.pem", d / "key.pem", d / "ca.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key_file.write_bytes(leaf.private_key_pem.bytes())
    ca.cert_pem.write_to_path(str(ca_file))
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return TLS(cert_file, key_file, ca_file, base64.b64encode(hashlib.sha256(spki).digest()).decode())


# --------------------------------------------------------------------------------------------
# background asyncio loop for the aiohttp servers
# --------------------------------------------------------------------------------------------

class Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="e2e-servers", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 15):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="session")
def loop():
    lp = Loop()
    yield lp
    lp.close()


class Server:
    """An aiohttp application bound to 127.0.0.1 on a random port, run on the background loop."""

    def __init__(self, loop: Loop, app, ssl_context: ssl.SSLContext | None = None) -> None:
        from aiohttp import web

        self._loop = loop
        self.scheme = "https" if ssl_context else "http"

        async def start():
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
            await site.start()
            return runner, site._server.sockets[0].getsockname()[1]

        self._runner, self.port = loop.run(start())

    @property
    def origin_for_coxp(self) -> str:
        """What coxp's ``upstream`` key should say to reach this server."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def url(self, host: str, path: str = "/") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def origin(self, host: str) -> str:
        return f"{self.scheme}://{host}:{self.port}"

    def close(self) -> None:
        self._loop.run(self._runner.cleanup())


def _extra_headers(request) -> dict[str, str]:
    extra = {}
    for item in request.query.getall("h", []):
        name, _, value = item.partition(":")
        extra[name.strip()] = value.strip()
    return extra


def make_page_app():
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        headers = _extra_headers(request)
        if request.path.endswith(".png"):
            return web.Response(body=PNG, content_type="image/png", headers=headers)
        return web.Response(body=blank_html(request.path), content_type="text/html", headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@pytest.fixture(scope="session")
def pages(loop):
    """Plain-http page server: ``pages.url(APP, "/")`` is a blank document on app.example.test."""
    srv = Server(loop, make_page_app())
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def tls_pages(loop, tls):
    """The same page server over https (trustme leaf), for checks that need no proxy."""
    srv = Server(loop, make_page_app(), ssl_context=tls.server_context())
    yield srv
    srv.close()


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    server: Server
    requests: list[Seen] = field(default_factory=list)

    @property
    def coxp_upstream(self) -> str:
        return self.server.origin_for_coxp

    def methods(self) -> list[str]:
        return [r.method for r in self.requests]

    def seen(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        return [r for r in self.requests if (method is None or r.method == method) and (path is None or r.path == path)]


def make_api_app(record: list[Seen]):
    """The API upstream. Every request is recorded before it is answered.

    /api/data      JSON {"hello": "world", "n": 42}
    /api/echo      JSON with what arrived: method, headers (lower-case names), cookie, body
    /api/reqid     JSON, with response header X-Request-Id: req-4711
    *.png          a PNG image
    anything else  JSON {"path": ...}
    """
    from aiohttp import web

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers: dict[str, str] = {}
        for k, v in request.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        record.append(Seen(request.method, request.path, request.query_string, headers, body))
        extra = _extra_headers(request)
        path = request.path
        if path.endswith(".png"):
            return web.Response(body=PNG, content_type="image/png", headers=extra)
        if path == "/api/data":
            return web.json_response({"hello": "world", "n": 42}, headers=extra)
        if path == "/api/echo":
            return web.json_response(
                {
                    "method": request.method,
                    "headers": headers,
                    "cookie": headers.get("cookie"),
                    "body": body.decode("utf-8", "replace"),
                },
                headers=extra,
            )
        if path == "/api/reqid":
            return web.json_response({"ok": True}, headers={"X-Request-Id": "req-4711", **extra})
        return web.json_response({"path": path}, headers=extra)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@pytest.fixture
def upstream(loop):
    record: list[Seen] = []
    srv = Server(loop, make_api_app(record))
    yield Upstream(srv, record)
    srv.close()


@dataclass
class WsEcho:
    server: Server
    connections: list[dict[str, str]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    @property
    def coxp_upstream(self) -> str:
        return self.server.origin_for_coxp


@pytest.fixture
def ws_echo(loop):
    from aiohttp import WSMsgType, web

    echo = WsEcho(server=None)  # type: ignore[arg-type]

    async def handler(request: web.Request):
        echo.connections.append({k.lower(): v for k, v in request.headers.items()})
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                echo.messages.append(msg.data)
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    echo.server = Server(loop, app)
    yield echo
    echo.server.close()


# --------------------------------------------------------------------------------------------
# coxp as a subprocess
# --------------------------------------------------------------------------------------------

def coxp_command() -> list[str]:
    """``python -m proxy`` of the checkout these tests live in (``COXP_CMD`` overrides, e.g. ``coxp``)."""
    if os.environ.get("COXP_CMD"):
        return shlex.split(os.environ["COXP_CMD"])
    return [sys.executable, "-m", "proxy"]


def coxp_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    return env


class Coxp:
    def __init__(self, config_path: Path, port: int, scheme: str, stderr_path: Path) -> None:
        self.config_path = config_path
        self.port = port
        self.scheme = scheme
        self.stderr_path = stderr_path
        self.events: list[dict] = []
        self.raw_lines: list[str] = []
        self._listening = threading.Event()
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(
            coxp_command() + ["run", "-c", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=str(config_path.parent),
            env=coxp_env(),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.raw_lines.append(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict):
                self.events.append(ev)
                if ev.get("event") == "listening":
                    self._listening.set()

    def wait_listening(self, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._listening.wait(0.05):
                return True
            if self.proc.poll() is not None:
                self._reader.join(1)
                return self._listening.is_set()
        return False

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text("utf-8", "replace")

    def url(self, host: str, path: str = "/") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def origin(self, host: str) -> str:
        return f"{self.scheme}://{host}:{self.port}"

    def requests(self, **match) -> list[dict]:
        """Decision-log ``request`` events, optionally filtered by field values."""
        out = []
        for ev in self.events:
            if ev.get("event") != "request":
                continue
            if all(ev.get(k) == v for k, v in match.items()):
                out.append(ev)
        return out

    def wait_requests(self, timeout: float = 3.0, **match) -> list[dict]:
        """Like ``requests`` but waits (briefly) for a matching event: a log line may trail the response."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.requests(**match)
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(12)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)
        self._stderr.close()
        return self.proc.returncode


@pytest.fixture
def coxp(tmp_path, tls):
    """Factory: ``coxp(body, upstream=None, tls=False) -> Coxp``.

    ``body`` is TOML appended after a generated ``[proxy]`` table (listen on a free loopback
    port, ``upstream`` if given, the trustme certificate if ``tls``) and ``[log]`` (json, info).
    It may use any other table of the configuration (``[[routes]]``, ``[defaults.*]``...).
    """
    started: list[Coxp] = []

    def start(body: str, upstream: str | None = None, tls_on: bool = False) -> Coxp:
        last_err = ""
        for attempt in range(3):
            port = free_port()
            lines = ["[proxy]", f'listen = "127.0.0.1:{port}"']
            if upstream:
                lines.append(f'upstream = "{upstream}"')
            if tls_on:
                lines.append(f'tls_cert = "{tls.cert_file}"')
                lines.append(f'tls_key = "{tls.key_file}"')
            lines += ["connect_timeout = 2.0", "read_timeout = 10.0", "", "[log]", 'format = "json"', 'level = "info"', ""]
            text = "\n".join(lines) + "\n" + body.strip() + "\n"
            n = len(started) + 1
            cfg = tmp_path / f"coxp-{n}-{attempt}.toml"
            cfg.write_text(text)
            proc = Coxp(cfg, port, "https" if tls_on else "http", tmp_path / f"coxp-{n}-{attempt}.stderr")
            if proc.wait_listening():
                started.append(proc)
                return proc
            proc.stop()
            last_err = proc.stderr()
            if "in use" not in last_err.lower():
                break
        pytest.fail(
            f"coxp did not print a 'listening' event for {cfg}:\n--- config ---\n{text}\n"
            f"--- stdout ---\n" + "\n".join(proc.raw_lines[-20:]) + f"\n--- stderr ---\n{last_err[-3000:]}",
            pytrace=False,
        )

    yield start
    for proc in started:
        proc.stop()


# --------------------------------------------------------------------------------------------
# Chromium via Playwright
# --------------------------------------------------------------------------------------------

def chromium_args(tls: TLS) -> list[str]:
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        # every *.test name is loopback; the port in the URL is kept
        "--host-resolver-rules=MAP *.test 127.0.0.1",
        # plain-http test origins are secure contexts (needed for COOP/COEP over http)
        "--unsafely-treat-insecure-origin-as-secure=*.example.test,*.other.test",
        # trust exactly the trustme leaf key (honoured because Playwright passes a fresh --user-data-dir)
        f"--ignore-certificate-errors-spki-list={tls.spki_sha256_b64}",
    ]


@pytest.fixture(scope="session")
def browser(tls):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found: run `make sysdeps` (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=chromium_args(tls),
            timeout=30_000,
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def launch_chromium(browser, tls):
    """Factory: ``launch_chromium(*switches)`` starts another Chromium, with extra command-line
    switches, through the session's Playwright (one sync Playwright per thread); close it after."""

    def launch(*switches: str):
        return browser.browser_type.launch(executable_path=CHROMIUM, headless=True,
                                           args=[*chromium_args(tls), *switches], timeout=30_000)

    return launch


@pytest.fixture
def context(browser):
    ctx = browser.new_context()
    ctx.set_default_timeout(PW_TIMEOUT_MS)
    ctx.set_default_navigation_timeout(PW_TIMEOUT_MS)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    pg = context.new_page()
    pg.console_messages_seen = []  # type: ignore[attr-defined]
    pg.on("console", lambda m: pg.console_messages_seen.append(m.text))  # type: ignore[attr-defined]
    return pg
