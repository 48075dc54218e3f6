"""Bounded resources end to end: every wait has a timeout, every buffer a bound (README "Limits").

coxp runs as a subprocess in front of a real upstream; clients are raw sockets that behave as
hostile or broken clients do (never read, stall mid-body, hold connections), and each test also
checks that other clients are still served.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
from aiohttp import web

from harness import SEEN, WAIT, Reader, config_text, get, request_bytes, websocket_echo, websocket_handshake


def closed_by_peer(sock: socket.socket, timeout: float = WAIT) -> bool:
    """True when the peer closes `sock` (EOF or reset) within `timeout` seconds, skipping data."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


async def sized(request: web.Request) -> web.StreamResponse:
    """`?size=N` answers N bytes; a body is read (and kept) first."""
    request[SEEN].body = await request.read()
    return web.Response(body=b"s" * int(request.query.get("size", "0")))


# --- backpressure ---------------------------------------------------------------------------------


def pipeline_without_reading(proxy, request: bytes, count: int) -> int:
    """Send `count` pipelined requests on one connection that never reads, as fast as coxp
    takes them (stopping when it has taken none for 3 s); then wait until coxp has stopped
    answering them. Returns the number of answers coxp logged."""
    mark = proxy.mark()
    with proxy.connect() as greedy:
        greedy.setblocking(False)
        sent, stalled_since = 0, None
        while sent < count:
            try:
                greedy.send(request)
                sent += 1
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 3:
                    break
                time.sleep(0.01)
        answered, deadline = -1, time.monotonic() + 30
        while time.monotonic() < deadline:
            now = len(proxy.events_named("request", start=mark))
            if now == answered:
                break
            answered = now
            time.sleep(1.5)
        assert get(proxy, "/other").status == 200  # everybody else is still served meanwhile
    return answered


def test_a_client_that_pipelines_and_never_reads_cannot_make_coxp_queue_responses(coxp, upstream):
    upstream.handler = sized
    proxy = coxp(config_text(upstream.url))
    get(proxy, "/warm?size=30000")
    before = proxy.rss_kib()
    # 3,000 requests for 30 KB each: 90 MB of answers if coxp took every request it could read.
    answered = pipeline_without_reading(proxy, request_bytes("GET", "/r?size=30000"), 3000)
    grown = proxy.rss_kib() - before
    assert answered < 1500, f"coxp answered {answered} requests of a client that reads nothing"
    assert grown < 30 * 1024, f"RSS grew {grown // 1024} MiB"


def test_pipelined_preflights_are_answered_one_flushed_answer_at_a_time(coxp, upstream):
    """Answers coxp makes itself obey the same rule: a pipelined request is read only once the
    previous answer is in the kernel, so what one client holds is bounded."""
    headers = [f"x-header-{i:03d}" for i in range(150)]  # ~2 KB in every answer
    routes = f"""
[[routes]]
name = "api"
[routes.cors]
allow_origins = ["https://app.test"]
allow_methods = ["PUT"]
allow_headers = {json.dumps(headers)}
"""
    proxy = coxp(config_text(upstream.url, extra=routes))
    preflight = request_bytes("OPTIONS", "/p", [("Origin", "https://app.test"), ("Access-Control-Request-Method", "PUT"),
                                                ("Access-Control-Request-Headers", "x-header-001")])
    before = proxy.rss_kib()
    # 20,000 preflights of ~150 bytes: 40 MB of answers if coxp answered all it could read.
    answered = pipeline_without_reading(proxy, preflight, 20000)
    grown = proxy.rss_kib() - before
    assert answered < 10000, f"coxp answered {answered} preflights of a client that reads nothing"
    assert grown < 20 * 1024, f"RSS grew {grown // 1024} MiB"


# --- body_timeout -----------------------------------------------------------------------------------


def test_a_body_that_stops_arriving_is_408_after_body_timeout_and_never_reaches_the_upstream(coxp, upstream):
    proxy = coxp(config_text(upstream.url, limits={"body_timeout": 0.5}))
    with proxy.connect() as stalled:
        stalled.sendall(request_bytes("POST", "/upload", [("Content-Length", "10")]) + b"abc")
        response = Reader(stalled).response()
    assert (response.status, response.value("connection")) == (408, "close")
    assert b"body-timeout" in response.body
    assert proxy.wait_event("request", path="/upload")["status"] == 408
    assert get(proxy, "/after").status == 200
    assert [s.raw_path for s in upstream.wait_seen()] == ["/after"]


def test_stalled_bodies_free_their_in_flight_slots_after_body_timeout(coxp, upstream):
    proxy = coxp(config_text(upstream.url, limits={"body_timeout": 1.0, "max_in_flight": 4}))
    stalled = [proxy.connect() for _ in range(8)]
    try:
        for sock in stalled:
            sock.sendall(request_bytes("POST", "/stall", [("Content-Length", "10")]))
        statuses = [Reader(sock).response().status for sock in stalled]
        assert statuses.count(408) >= 4 and set(statuses) <= {408, 503}
    finally:
        for sock in stalled:
            sock.close()
    assert get(proxy, "/after").status == 200  # the slots came back


def test_a_body_stalling_after_the_upstream_started_is_408_and_the_upstream_request_cancelled(coxp, upstream, loop):
    cancelled = asyncio.Event()

    async def reading(request: web.Request) -> web.StreamResponse:
        try:
            await request.read()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return web.Response(text="read")

    upstream.handler = reading
    proxy = coxp(config_text(upstream.url, limits={"body_timeout": 0.5, "request_buffer": 0}))
    with proxy.connect() as stalled:
        stalled.sendall(request_bytes("POST", "/streamed", [("Content-Length", "100")]) + b"x" * 10)
        upstream.wait_seen()
        response = Reader(stalled).response()
    assert response.status == 408
    assert loop.run(asyncio.wait_for(cancelled.wait(), WAIT)) is True


# --- read_timeout starts when the request was sent ---------------------------------------------------


def test_an_upload_slower_than_read_timeout_succeeds(coxp, upstream):
    upstream.handler = sized
    proxy = coxp(config_text(upstream.url, {"read_timeout": 1.0}, limits={"request_buffer": 0}))
    pieces = [b"p" * 1000] * 6
    with proxy.connect() as sock:
        sock.sendall(request_bytes("POST", "/slow-upload?size=2", [("Content-Length", str(6000))]))
        for piece in pieces:  # 6 x 0.4 s: the upload takes longer than read_timeout
            time.sleep(0.4)
            sock.sendall(piece)
        response = Reader(sock).response()
    assert (response.status, response.body) == (200, b"ss")
    assert upstream.wait_seen()[0].body == b"".join(pieces)


# --- WebSocket tunnels --------------------------------------------------------------------------------


async def echo(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == web.WSMsgType.TEXT:
            await ws.send_str("echo " + message.data)
    return ws


def test_an_idle_tunnel_is_closed_after_tunnel_idle_timeout_and_a_busy_one_is_not(coxp, upstream):
    upstream.handler = echo
    proxy = coxp(config_text(upstream.url, limits={"tunnel_idle_timeout": 1.0}))
    status, _, idle = websocket_handshake(proxy.port, "/idle")
    status_busy, _, busy = websocket_handshake(proxy.port, "/busy")
    with idle, busy:
        assert (status, status_busy) == (101, 101)
        started = time.monotonic()
        while time.monotonic() - started < 2.0:  # twice the idle timeout, with traffic every 0.3 s
            assert websocket_echo(busy, "ping") == "echo ping"
            time.sleep(0.3)
        assert closed_by_peer(idle)
        assert websocket_echo(busy, "still") == "echo still"
    status, _, again = websocket_handshake(proxy.port, "/again")
    with again:
        assert status == 101 and websocket_echo(again, "new") == "echo new"


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\nX-Why: no\r\n\r\nnope",
    b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\nX-Why: no\r\n\r\n4\r\nnope\r\n0\r\n\r\n",
], ids=["content-length", "chunked"])
def test_a_refused_handshake_is_relayed_and_both_connections_closed_at_once(coxp, raw_upstream, answer):
    upstream_closed = []

    async def refuse_and_hold(reader, writer, head):
        writer.write(answer)
        await writer.drain()
        # Keep the connection open (as aiohttp does for 75 s): coxp must close it, not wait.
        upstream_closed.append(await reader.read() == b"")

    proxy = coxp(config_text(raw_upstream(refuse_and_hold).url))
    status, headers, sock = websocket_handshake(proxy.port, "/ws")
    with sock:
        assert status == 403 and ("X-Why", "no") in headers
        assert closed_by_peer(sock, timeout=3)
    deadline = time.monotonic() + 3
    while not upstream_closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream_closed == [True]
    assert proxy.wait_event("request", path="/ws")["status"] == 403


# --- max_connections ------------------------------------------------------------------------------


def test_beyond_max_connections_new_ones_are_closed_the_others_served_and_it_recovers(coxp, upstream):
    proxy = coxp(config_text(upstream.url, limits={"max_connections": 3}))
    held = [proxy.connect() for _ in range(3)]
    try:
        get_on = held[0]
        get_on.sendall(request_bytes("GET", "/held"))
        assert Reader(get_on).response().status == 200  # all three are accepted and served
        with proxy.connect() as extra:
            assert closed_by_peer(extra, timeout=3)
        held[1].sendall(request_bytes("GET", "/still"))
        assert Reader(held[1]).response().status == 200
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + WAIT
    while True:  # the closes reach coxp asynchronously
        try:
            assert get(proxy, "/recovered").status == 200
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_an_upstream_that_stops_reading_the_body_is_504_after_read_timeout(coxp, raw_upstream):
    finished, returned = threading.Event(), threading.Event()

    async def read_nothing(reader, writer, head):
        while not finished.is_set():  # never reads the body, never answers
            await asyncio.sleep(0.05)
        returned.set()

    proxy = coxp(config_text(raw_upstream(read_nothing).url, {"read_timeout": 1.0}, limits={"request_buffer": 0}))
    size = 64 * 1024 * 1024  # far more than the kernel's buffers between coxp and the upstream hold
    with proxy.connect() as sock:
        sock.sendall(request_bytes("POST", "/upload", [("Content-Length", str(size))]))

        def upload() -> None:
            try:
                for _ in range(size // 65536):
                    sock.sendall(b"u" * 65536)
            except OSError:
                pass  # coxp closed the connection after answering

        sender = threading.Thread(target=upload, daemon=True)
        sender.start()
        response = Reader(sock).response()
    finished.set()
    assert returned.wait(WAIT)  # the upstream's handler is done before the test's loop may close
    assert response.status == 504 and b"upstream-write-timeout" in response.body
    assert proxy.wait_event("upstream_error")["reason"] == "upstream-write-timeout"


def test_a_body_stalling_after_the_response_started_closes_both_connections(coxp, raw_upstream):
    upstream_closed = threading.Event()

    async def answer_early(reader, writer, head):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"r" * 10)
        await writer.drain()
        while await reader.read(65536):  # what coxp forwards of the body, until it gives up
            pass
        upstream_closed.set()

    proxy = coxp(config_text(raw_upstream(answer_early).url, limits={"body_timeout": 0.5, "request_buffer": 0}))
    with proxy.connect() as sock:
        sock.sendall(request_bytes("POST", "/early", [("Content-Length", "100")]) + b"x" * 10)
        assert Reader(sock).head().status == 200  # the response has started: no 408 can follow
        assert closed_by_peer(sock)
    assert upstream_closed.wait(WAIT), "the upstream request was not cancelled"
    assert proxy.wait_event("request", path="/early")["status"] == 200
