#!/usr/bin/env python3
"""Soak and leak check: many mixed requests through one coxp, then what it holds is compared
with what it held after warm-up (`make soak`: 100,000 requests; `make test` runs 10,000).

The mix, through real sockets, from CONCURRENCY clients at once (keep-alive where it applies):
  ok            GET, 2 KiB answer                       200
  post          POST 16 KiB body, echoed length         200
  preflight     OPTIONS with Origin + ACRM (coxp)       204
  abort-body    head + part of a 64 KiB body, close     (client gone)
  abort-resp    GET 1 MiB answer, read 16 KiB, close    (client gone)
  reset         the upstream resets the connection      502
  timeout       the upstream answers after read_timeout 504
  body-timeout  part of a body, then silence            408
  websocket     handshake, one echo, close              101

Pass when every answer had its expected status, and after the run coxp's open descriptors and
its connections to the upstream are back to their warm-up level and its RSS grew by less than
10 MiB. Prints the figures; exits 1 when a check fails. Bounded in time (--deadline).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ORIGIN = "https://app.test"
RSS_GROWTH_LIMIT_KIB = 10 * 1024
READ_TIMEOUT = 1.0
BODY_TIMEOUT = 0.5
CONCURRENCY = 32

# (name, weight): rare slow kinds keep the run short while still being exercised thousands of times.
MIX = [("ok", 50), ("post", 12), ("preflight", 20), ("abort-body", 4), ("abort-resp", 4), ("reset", 4),
       ("timeout", 1), ("body-timeout", 1), ("websocket", 4)]
EXPECTED = {"ok": 200, "post": 200, "preflight": 204, "reset": 502, "timeout": 504, "body-timeout": 408,
            "websocket": 101, "abort-body": None, "abort-resp": None}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------- upstream

async def upstream_app() -> web.Application:
    async def ok(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"o" * int(request.query.get("size", "2048")))

    async def post(request: web.Request) -> web.StreamResponse:
        return web.Response(text=str(len(await request.read())))

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(16):
            await response.write(b"b" * 65536)
        return response

    async def reset(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:  # RST rather than FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            transport.abort()
        raise asyncio.CancelledError

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(READ_TIMEOUT * 3)
        return web.Response(text="late")

    async def ws(request: web.Request) -> web.StreamResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        async for message in socket_:
            if message.type == web.WSMsgType.TEXT:
                await socket_.send_str(message.data)
        return socket_

    app = web.Application(client_max_size=0)
    app.router.add_get("/ok", ok)
    app.router.add_post("/post", post)
    app.router.add_route("*", "/abort-body", post)
    app.router.add_get("/big", big)
    app.router.add_get("/reset", reset)
    app.router.add_get("/slow", slow)
    app.router.add_get("/ws", ws)
    return app


# ----------------------------------------------------------------------------------------- client

class Conn:
    """One keep-alive client connection, reading responses strictly."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size + 2))
            body = b"".join(p[:-2] for p in parts)
        return status, headers, body

    def close(self) -> None:
        self.writer.close()


def request(method: str, target: str, headers: tuple[tuple[str, str], ...] = (), body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: soak.test", *(f"{n}: {v}" for n, v in headers)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


POST_BODY = b"p" * 16384
PREFLIGHT = request("OPTIONS", "/ok", (("Origin", ORIGIN), ("Access-Control-Request-Method", "PUT"),
                                       ("Access-Control-Request-Headers", "x-custom")))


async def one(kind: str, port: int, kept: list[Conn | None]) -> int | None:
    """Run one request of `kind`; the status coxp answered (None for the client aborts)."""
    if kind in ("ok", "post", "preflight"):
        conn = kept[0] or await Conn.open(port)
        kept[0] = None
        data = {"ok": request("GET", "/ok", (("Origin", ORIGIN),)), "post": request("POST", "/post", body=POST_BODY),
                "preflight": PREFLIGHT}[kind]
        conn.writer.write(data)
        status, headers, body = await conn.response()
        if kind == "post" and body != str(len(POST_BODY)).encode():
            raise AssertionError(f"post echoed {body[:20]!r}")
        if headers.get("connection", "").lower() == "close":
            conn.close()
        else:
            kept[0] = conn  # reused by the next keep-alive kind
        return status
    conn = await Conn.open(port)
    try:
        if kind == "abort-body":
            conn.writer.write(request("POST", "/abort-body", (("Content-Length", "65536"),)) + b"a" * 4096)
            await conn.writer.drain()
            return None
        if kind == "abort-resp":
            conn.writer.write(request("GET", "/big"))
            await conn.reader.readexactly(16384)
            return None
        if kind == "body-timeout":
            conn.writer.write(request("POST", "/post", (("Content-Length", "100"),)) + b"x" * 10)
            return (await conn.response())[0]
        if kind == "websocket":
            key = base64.b64encode(os.urandom(16)).decode()
            conn.writer.write(request("GET", "/ws", (("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                                     ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13"))))
            head = await conn.reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ")[1])
            if status == 101:
                mask = os.urandom(4)
                payload = b"soak"
                conn.writer.write(bytes([0x81, 0x80 | len(payload)]) + mask
                                  + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
                echoed = await conn.reader.readexactly(2 + len(payload))
                if echoed[2:] != payload:
                    raise AssertionError(f"websocket echoed {echoed!r}")
            return status
        target = {"reset": "/reset", "timeout": "/slow"}[kind]
        conn.writer.write(request("GET", target))
        return (await conn.response())[0]
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------- figures

def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def upstream_connections(upstream_port: int) -> int:
    """Established TCP connections whose remote end is the upstream's port: coxp's side of them."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == upstream_port:
                count += 1
    return count


def snapshot(pid: int, upstream_port: int) -> dict[str, int]:
    return {"fds": fds(pid), "upstream_connections": upstream_connections(upstream_port), "rss_kib": rss_kib(pid)}


# ------------------------------------------------------------------------------------------- main

async def run_load(port: int, total: int, deadline: float, seed: int, only: str | None = None
                   ) -> tuple[collections.Counter, list[str]]:
    rng = random.Random(seed)
    kinds = [only] if only else [k for k, w in MIX for _ in range(w)]
    plan = [rng.choice(kinds) for _ in range(total)]
    outcomes: collections.Counter = collections.Counter()
    problems: list[str] = []
    index = 0

    async def client() -> None:
        nonlocal index
        kept: list[Conn | None] = [None]
        while index < len(plan) and time.monotonic() < deadline:
            kind = plan[index]
            index += 1
            try:
                status = await asyncio.wait_for(one(kind, port, kept), READ_TIMEOUT * 10)
            except Exception as error:  # noqa: BLE001 - every failure is counted and reported
                if kept[0] is not None:
                    kept[0].close()
                    kept[0] = None
                problems.append(f"{kind}: {type(error).__name__}: {error}")
                outcomes[(kind, "error")] += 1
                continue
            outcomes[(kind, status)] += 1
            if EXPECTED[kind] is not None and status != EXPECTED[kind]:
                problems.append(f"{kind}: status {status}, expected {EXPECTED[kind]}")
        if kept[0] is not None:
            kept[0].close()

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return outcomes, problems


async def settle(pid: int, port: int, upstream_port: int, seconds: float) -> dict[str, int]:
    """Let in-flight work drain (timeouts, aborted exchanges), fill coxp's pool of idle upstream
    connections the same way each time (CONCURRENCY requests at once, three times), then take
    the figures: the pool is a bounded cache whose size depends on the last burst."""
    await asyncio.sleep(seconds)
    for _ in range(3):
        await asyncio.gather(*(one("ok", port, [None]) for _ in range(CONCURRENCY)))
    await asyncio.sleep(0.5)
    return snapshot(pid, upstream_port)


async def main_async(args: argparse.Namespace) -> int:
    runner = web.AppRunner(await upstream_app(), handle_signals=False, access_log=None, handler_cancellation=True)
    await runner.setup()
    upstream_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", upstream_port).start()
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="coxp-soak-"))
    config = work / "soak.toml"
    config.write_text(f"""[proxy]
listen = "127.0.0.1:{port}"
upstream = "http://127.0.0.1:{upstream_port}"
read_timeout = {READ_TIMEOUT}
connect_timeout = 2.0

[log]
format = "json"

[limits]
body_timeout = {BODY_TIMEOUT}
tunnel_idle_timeout = 5.0

[defaults.cors]
allow_origins = ["{ORIGIN}"]
allow_methods = ["PUT"]
allow_headers = ["x-custom"]
""")
    log = open(work / "coxp.log", "wb")
    coxp = subprocess.Popen([sys.executable, "-m", "proxy", "run", "-c", str(config)], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    started = time.monotonic()
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if coxp.poll() is not None or time.monotonic() - started > 20:
                    print((work / "coxp.log").read_text()[-2000:], file=sys.stderr)
                    print("soak: coxp did not start", file=sys.stderr)
                    return 1
                await asyncio.sleep(0.05)
        deadline = time.monotonic() + args.deadline
        warm = max(1000, args.requests // 10)
        _, problems = await run_load(port, warm, deadline, args.seed, args.only)
        baseline = await settle(coxp.pid, port, upstream_port, READ_TIMEOUT * 3)
        began = time.monotonic()
        outcomes, more = await run_load(port, args.requests, deadline, args.seed + 1, args.only)
        elapsed = time.monotonic() - began
        problems += more
        after = await settle(coxp.pid, port, upstream_port, READ_TIMEOUT * 3)
    finally:
        coxp.send_signal(signal.SIGTERM)
        try:
            coxp.wait(15)
        except subprocess.TimeoutExpired:
            coxp.kill()
            coxp.wait(5)
        log.close()
        await runner.cleanup()

    done = sum(outcomes.values())
    print(f"soak: {done:,} requests after {warm:,} warm-up ones, in {elapsed:.1f} s ({done / elapsed:,.0f}/s), "
          f"{CONCURRENCY} clients at once")
    for kind, _ in MIX:
        statuses = ", ".join(f"{status}: {n:,}" for (k, status), n in sorted(outcomes.items(), key=str) if k == kind)
        print(f"  {kind:13s} {statuses}")
    print(f"  open fds:              {baseline['fds']} after warm-up -> {after['fds']} after the run")
    print(f"  upstream connections:  {baseline['upstream_connections']} -> {after['upstream_connections']}")
    growth = after["rss_kib"] - baseline["rss_kib"]
    print(f"  RSS:                   {baseline['rss_kib'] / 1024:.1f} MiB -> {after['rss_kib'] / 1024:.1f} MiB "
          f"(growth {growth / 1024:+.1f} MiB, limit {RSS_GROWTH_LIMIT_KIB / 1024:.0f} MiB)")
    failures = []
    if done < args.requests:
        failures.append(f"only {done} of {args.requests} requests ran within {args.deadline} s")
    if problems:
        failures.append(f"{len(problems)} unexpected outcomes, e.g. " + "; ".join(problems[:5]))
    if after["fds"] > baseline["fds"] + 2:
        failures.append(f"descriptors grew: {baseline['fds']} -> {after['fds']}")
    if after["upstream_connections"] > baseline["upstream_connections"] + 2:
        failures.append(f"upstream connections grew: {baseline['upstream_connections']} -> {after['upstream_connections']}")
    if growth >= RSS_GROWTH_LIMIT_KIB:
        failures.append(f"RSS grew {growth / 1024:.1f} MiB")
    for failure in failures:
        print(f"soak: FAIL: {failure}", file=sys.stderr)
    print("soak: PASS" if not failures else "soak: FAIL")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000, help="requests after warm-up (default 100,000)")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds the load may take at most (default 900)")
    parser.add_argument("--seed", type=int, default=1, help="the mix's random seed")
    parser.add_argument("--only", choices=[kind for kind, _ in MIX], help="one kind of request instead of the mix")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
