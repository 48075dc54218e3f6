"""Forwarding through real sockets (README, "Forwarding behaviour").

Each test starts a real upstream on loopback and coxp as a subprocess, and asserts the exact
bytes and headers on both sides.
"""
from __future__ import annotations

import asyncio
import gzip
import os
import socket
import struct
import threading
import zlib

import aiohttp
import pytest
from aiohttp import web

from harness import Aborted, Reader, answer_with, config_text, exchange, free_port, get, request_bytes, websocket_handshake

REQUEST_FIELDS = {
    "event", "timestamp", "level", "route", "method", "path", "origin", "cors", "reason",
    "headers_set", "headers_removed", "status", "upstream_status", "duration_ms",
    "preflight_method", "preflight_headers", "credentials",
}


# --- methods and bodies -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE", "PROPFIND"])
def test_any_method_is_forwarded_with_its_body(proxy, upstream, method):
    response = get(proxy, "/m", method=method, body=b"payload")
    assert (response.status, response.body) == (200, b"ok")
    [seen] = upstream.wait_seen()
    assert (seen.method, seen.body, seen.value("content-length")) == (method, b"payload", "7")


def test_a_custom_method_is_forwarded_as_is(coxp, raw_upstream):
    # aiohttp's server only parses registered methods, hence an upstream that answers with bytes.
    server = raw_upstream(answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    response = get(coxp(config_text(server.url)), "/m", method="FROB-NICATE_1", body=b"payload")
    assert (response.status, response.body) == (200, b"ok")
    assert server.heads[0].startswith(b"FROB-NICATE_1 /m HTTP/1.1\r\n")


def test_chunked_request_body_is_decoded_and_sent_with_one_framing(proxy, upstream):
    body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    response = exchange(proxy, request_bytes("POST", "/c", [("Transfer-Encoding", "chunked")], body))
    assert response.status == 200
    [seen] = upstream.wait_seen()
    assert seen.body == b"hello world"
    framing = [n.lower() for n, _ in seen.headers if n.lower() in ("content-length", "transfer-encoding")]
    assert len(framing) == 1, seen.headers


def test_expect_continue_gets_100_before_the_body_is_sent(proxy, upstream):
    with proxy.connect() as sock:
        sock.sendall(request_bytes("POST", "/e", [("Content-Length", "4"), ("Expect", "100-continue")]))
        reader = Reader(sock)
        interim = reader.head()
        assert interim.status == 100
        sock.sendall(b"data")
        assert reader.response("POST").status == 200
    assert upstream.wait_seen()[0].body == b"data"
    assert upstream.seen[0].value("expect") is None


def test_gzip_response_is_passed_byte_for_byte(proxy, upstream):
    compressed = gzip.compress(os.urandom(3000) + b"x" * 50000)

    async def handler(request):
        return web.Response(body=compressed, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    upstream.handler = handler
    response = get(proxy, "/z", [("Accept-Encoding", "gzip")])
    assert response.body == compressed
    assert response.value("content-encoding") == "gzip"
    assert response.value("content-length") == str(len(compressed))
    assert upstream.wait_seen()[0].value("accept-encoding") == "gzip"


@pytest.mark.parametrize(
    "target",
    [
        "/a%2Fb",
        "//double//slash/",
        "/p;x=1/%7e/./../q?x=%2F&y=a+b&z=%zz&&=&%E2%82%AC",
        "/search?q='\"<>{}|^`",
        "/?",
    ],
)
def test_path_and_query_reach_the_upstream_byte_for_byte(proxy, upstream, target):
    assert get(proxy, target).status == 200
    assert upstream.wait_seen()[0].raw_path == target
    request = proxy.wait_event("request")
    assert request["path"] == target.split("?", 1)[0]


def test_repeated_headers_survive_both_ways(proxy, upstream):
    async def handler(request):
        response = web.Response(text="ok")
        response.headers.add("Set-Cookie", "a=1; Path=/; HttpOnly")
        response.headers.add("Set-Cookie", "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT")
        return response

    upstream.handler = handler
    response = get(proxy, "/", [("X-Multi", "one"), ("X-Multi", "two"), ("Cookie", "c=3")])
    assert response.values("set-cookie") == ["a=1; Path=/; HttpOnly", "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT"]
    assert upstream.wait_seen()[0].values("x-multi") == ["one", "two"]


# --- hop-by-hop -------------------------------------------------------------------------------------

HOP_BY_HOP_REQUEST = [
    ("Connection", "keep-alive, X-Foo"),
    ("X-Foo", "named by Connection"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Connection", "keep-alive"),
    ("TE", "trailers"),
    ("Trailer", "X-T"),
    ("Upgrade", "h2c"),
    ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
    ("X-Kept", "yes"),
]


def test_hop_by_hop_request_headers_are_not_forwarded(proxy, upstream):
    assert get(proxy, "/", HOP_BY_HOP_REQUEST).status == 200
    [seen] = upstream.wait_seen()
    names = {n.lower() for n, _ in seen.headers}
    assert not names & {"x-foo", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "proxy-authorization"}
    assert seen.values("connection") in ([], ["keep-alive"])  # aiohttp's own, to the upstream
    assert seen.value("x-kept") == "yes"


def test_hop_by_hop_response_headers_are_not_forwarded(coxp, raw_upstream):
    body = b"hello"
    server = raw_upstream(answer_with(
        b"HTTP/1.1 200 OK\r\nConnection: X-Bar\r\nX-Bar: secret\r\nKeep-Alive: timeout=5\r\n"
        b"Proxy-Authenticate: Basic\r\nTrailer: X-T\r\nUpgrade: h2c\r\nProxy-Connection: close\r\n"
        b"X-Kept: yes\r\nContent-Length: 5\r\n\r\n" + body
    ))
    proxy = coxp(config_text(server.url))
    response = get(proxy)
    assert response.body == body
    assert response.names() == {"x-kept", "content-length"}


# --- forwarded headers ------------------------------------------------------------------------------

SPOOFED = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "lb.example.test")]


def forwarded(seen) -> tuple:
    return seen.values("x-forwarded-for"), seen.values("x-forwarded-proto"), seen.values("x-forwarded-host"), seen.values("host")


def test_forwarded_headers_from_an_untrusted_peer_are_replaced(proxy, upstream):
    exchange(proxy, request_bytes("GET", "/", SPOOFED, host="app.test:8080"))
    seen = upstream.wait_seen()[0]
    assert forwarded(seen) == (["127.0.0.1"], ["http"], ["app.test:8080"], [f"127.0.0.1:{upstream.port}"])


def test_forwarded_headers_are_added_when_absent(proxy, upstream):
    exchange(proxy, request_bytes("GET", "/", host="app.test"))
    assert forwarded(upstream.wait_seen()[0]) == (["127.0.0.1"], ["http"], ["app.test"], [f"127.0.0.1:{upstream.port}"])


def test_forwarded_headers_from_a_trusted_peer_are_kept_and_extended(coxp, upstream):
    proxy = coxp(config_text(upstream.url, {"trusted_proxies": ["127.0.0.1"]}))
    exchange(proxy, request_bytes("GET", "/", SPOOFED, host="app.test:8080"))
    seen = upstream.wait_seen()[0]
    assert forwarded(seen) == (["203.0.113.7, 127.0.0.1"], ["https"], ["lb.example.test"], [f"127.0.0.1:{upstream.port}"])


def test_trusted_forwarded_proto_and_host_define_the_requests_own_origin(coxp, upstream):
    cors = '[defaults.cors]\nallow_origins = ["https://other.test"]\n'
    proxy = coxp(config_text(upstream.url, {"trusted_proxies": ["127.0.0.0/8"]}, extra=cors))
    exchange(proxy, request_bytes("GET", "/", SPOOFED + [("Origin", "https://lb.example.test")], host="app.test"))
    assert proxy.wait_event("request")["cors"] == "same-origin"


def test_forwarded_headers_off_neither_adds_nor_touches(coxp, upstream):
    proxy = coxp(config_text(upstream.url, {"forwarded_headers": False}))
    exchange(proxy, request_bytes("GET", "/", SPOOFED, host="app.test"))
    exchange(proxy, request_bytes("GET", "/", host="app.test"))
    spoofed, plain = upstream.wait_seen(2)
    assert forwarded(spoofed)[:3] == (["203.0.113.7"], ["https"], ["lb.example.test"])
    assert forwarded(plain)[:3] == ([], [], [])


def test_preserve_host_sends_the_clients_host(coxp, upstream):
    proxy = coxp(config_text(upstream.url, {"preserve_host": True}))
    exchange(proxy, request_bytes("GET", "/", host="App.Test:8080"))
    assert upstream.wait_seen()[0].values("host") == ["App.Test:8080"]


# --- connections ------------------------------------------------------------------------------------


def test_upstream_connections_are_kept_alive_and_reused(proxy, upstream):
    with proxy.connect() as sock:
        reader = Reader(sock)
        for index in range(3):
            sock.sendall(request_bytes("GET", f"/{index}"))
            assert reader.response().body == b"ok"
    get(proxy, "/other-client")
    ports = {seen.client_port for seen in upstream.wait_seen(4)}
    assert len(ports) == 1, ports


def test_client_keep_alive_and_pipelining(proxy, upstream):
    with proxy.connect() as sock:
        sock.sendall(request_bytes("GET", "/1") + request_bytes("POST", "/2", body=b"abc") + request_bytes("GET", "/3"))
        reader = Reader(sock)
        assert [reader.response(m).status for m in ("GET", "POST", "GET")] == [200, 200, 200]
    assert [s.raw_path for s in upstream.wait_seen(3)] == ["/1", "/2", "/3"]


def test_head_204_304_have_no_body_and_keep_the_connection_usable(proxy, upstream):
    async def handler(request):
        status = int(request.query.get("status", "200"))
        if status == 200:
            return web.Response(body=b"12345")
        return web.Response(status=status, headers={"ETag": '"e"'})

    upstream.handler = handler
    with proxy.connect() as sock:
        reader = Reader(sock)
        for method, target, status in [("HEAD", "/", 200), ("GET", "/?status=204", 204), ("GET", "/?status=304", 304)]:
            sock.sendall(request_bytes(method, target))
            response = reader.response(method)
            assert response.status == status
            if method == "HEAD":
                assert response.value("content-length") == "5"
            else:
                assert response.value("transfer-encoding") is None
        sock.sendall(request_bytes("GET", "/"))
        # Had any of the three carried a body, this would read its bytes instead of the 200.
        assert (reader.response().status, reader.buffer) == (200, bytearray())


def test_response_without_length_is_chunked_to_the_client(coxp, raw_upstream):
    server = raw_upstream(answer_with(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close"))
    response = get(coxp(config_text(server.url)))
    assert (response.chunked, response.body) == (True, b"until close")


# --- upstream failures ------------------------------------------------------------------------------


def test_closed_port_is_502_with_the_reason(coxp):
    proxy = coxp(config_text(f"http://127.0.0.1:{free_port()}"))
    response = get(proxy, "/x")
    assert response.status == 502
    assert response.value("content-type").startswith("text/plain")
    assert b"upstream-unreachable" in response.body and len(response.body) < 200
    assert proxy.wait_event("upstream_error")["reason"] == "upstream-unreachable"
    request = proxy.wait_event("request")
    assert (request["status"], request["upstream_status"]) == (502, None)


def test_hanging_upstream_is_504(coxp, upstream):
    async def never(request):
        await asyncio.Event().wait()

    upstream.handler = never
    proxy = coxp(config_text(upstream.url, {"read_timeout": 0.5}))
    response = get(proxy, "/slow")
    assert response.status == 504
    assert b"upstream-response-timeout" in response.body
    assert proxy.wait_event("request")["status"] == 504


def test_upstream_closing_without_response_is_502(coxp, raw_upstream):
    proxy = coxp(config_text(raw_upstream(answer_with(b"")).url))
    response = get(proxy)
    assert response.status == 502
    assert b"upstream-closed-without-response" in response.body


def test_malformed_upstream_response_is_502(coxp, raw_upstream):
    proxy = coxp(config_text(raw_upstream(answer_with(b"HTTP/1.1 2OO OK\r\n\r\n")).url))
    assert get(proxy).status == 502


@pytest.mark.parametrize(
    "head",
    [
        b"X-Big: " + b"a" * (70 * 1024) + b"\r\n",
        b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(70)),
    ],
    ids=["one-long-line", "many-lines"],
)
def test_upstream_head_over_64_kib_is_502(coxp, raw_upstream, head):
    server = raw_upstream(answer_with(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 2\r\n\r\nok"))
    assert get(coxp(config_text(server.url))).status == 502


def test_upstream_head_under_64_kib_passes(coxp, raw_upstream):
    server = raw_upstream(answer_with(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (60 * 1024) + b"\r\nContent-Length: 2\r\n\r\nok"))
    response = get(coxp(config_text(server.url)))
    assert (response.status, len(response.value("x-big"))) == (200, 60 * 1024)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_truncated_upstream_body_aborts_the_client_response(coxp, raw_upstream, answer):
    assert_get_is_aborted_after_its_head(coxp(config_text(raw_upstream(answer_with(answer)).url)))


def test_upstream_stalling_mid_body_aborts_the_client_response_after_read_timeout(coxp, raw_upstream):
    async def stall(reader, writer, head):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
        await reader.read()  # until coxp gives up and closes

    proxy = coxp(config_text(raw_upstream(stall).url, {"read_timeout": 0.5}))
    assert_get_is_aborted_after_its_head(proxy)
    assert proxy.wait_event("request")["status"] == 200


def assert_get_is_aborted_after_its_head(proxy) -> None:
    """The 200 head reaches the client, then the body breaks off as an abort, never a clean end."""
    with proxy.connect() as sock:
        sock.sendall(request_bytes("GET", "/"))
        reader = Reader(sock)
        head = reader.head()
        assert head.status == 200
        with pytest.raises(Aborted):
            reader.read_body(head)
    assert proxy.wait_event("upstream_error")["reason"] == "upstream-response-aborted"


def close_with_fin(sock: socket.socket) -> None:
    sock.close()


def close_with_rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("leave", [close_with_fin, close_with_rst], ids=["fin", "rst"])
def test_client_disconnect_cancels_the_upstream_request(proxy, upstream, leave):
    cancelled = threading.Event()

    async def slow(request):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    upstream.handler = slow
    sock = proxy.connect()
    sock.sendall(request_bytes("GET", "/slow"))
    upstream.wait_seen()
    leave(sock)
    assert cancelled.wait(10), "the upstream handler was not cancelled"
    request = proxy.wait_event("request")
    assert (request["path"], request["status"], request["upstream_status"]) == ("/slow", 499, None)


# --- WebSocket --------------------------------------------------------------------------------------


def test_websocket_echo_through_the_proxy(coxp, upstream, loop):
    async def echo(request):
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        return ws

    upstream.handler = echo
    proxy = coxp(config_text(upstream.url))

    async def talk():
        url = f"http://127.0.0.1:{proxy.address[1]}/ws"
        async with aiohttp.ClientSession() as session, session.ws_connect(url, protocols=("chat",)) as ws:
            await ws.send_str("hi")
            text = await ws.receive_str(timeout=5)
            await ws.send_bytes(b"\x00\x01\x02")
            data = await ws.receive_bytes(timeout=5)
            return ws.protocol, text, data

    assert loop.run(talk()) == ("chat", "echo:hi", b"\x02\x01\x00")
    request = proxy.wait_event("request")
    assert (request["status"], request["upstream_status"], request["path"]) == (101, 101, "/ws")


# --- CONNECT and Upgrade: what could open a tunnel past the routes ---------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: example.test\r\n\r\n"


@pytest.mark.parametrize("method, target", [("CONNECT", "/api/x"), ("CONNECT", "a.test:443"),
                                            ("CONNECT", "http://a.test/"), ("CONNECT", "*"), ("connect", "/api/x")])
def test_connect_is_405_never_forwarded_and_leaves_the_pooled_connection_clean(proxy, upstream, method, target):
    with proxy.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request_bytes("GET", "/before"))
        assert reader.response().status == 200
    response = exchange(proxy, request_bytes(method, target, [("Content-Length", str(len(SMUGGLED)))], SMUGGLED))
    assert (response.status, response.value("connection")) == (405, "close")
    assert "GET" in response.value("allow") and "CONNECT" not in response.value("allow").upper()
    assert (proxy.wait_event("bad_request")["reason"], proxy.events_named("request", path=target)) == ("connect-not-allowed", [])
    assert get(proxy, "/after").body == b"ok"
    seen = upstream.wait_seen(2)
    assert [s.raw_path for s in seen] == ["/before", "/after"]
    assert seen[0].client_port == seen[1].client_port  # the same pooled connection, not poisoned


UPGRADE_REFUSED = {
    "h2c-then-websocket": [("Upgrade", "h2c"), ("Upgrade", "websocket")],
    "websocket-then-h2c": [("Upgrade", "websocket"), ("Upgrade", "h2c")],
    "two-websocket-lines": [("Upgrade", "websocket"), ("Upgrade", "websocket")],
    "mixed-list": [("Upgrade", "h2c, websocket")],
}


@pytest.mark.parametrize("lines", UPGRADE_REFUSED.values(), ids=UPGRADE_REFUSED.keys())
def test_several_upgrade_lines_or_a_mixed_list_are_400(proxy, upstream, lines):
    raw = request_bytes("GET", "/ws", [("Connection", "Upgrade"), *lines, ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                       ("Sec-WebSocket-Version", "13")])
    response = exchange(proxy, raw)
    assert (response.status, response.value("connection")) == (400, "close")
    assert proxy.wait_event("bad_request")["status"] == 400
    get(proxy, "/after")
    assert [s.raw_path for s in upstream.wait_seen()] == ["/after"]


@pytest.mark.parametrize("method, connection, upgrade", [
    ("GET", "Upgrade, HTTP2-Settings", "h2c"),  # h2c is never tunnelled
    ("POST", "Upgrade, HTTP2-Settings", "websocket"),  # only a GET is a WebSocket handshake
    ("GET", "keep-alive, HTTP2-Settings", "websocket"),  # no `upgrade` in Connection
])
def test_other_upgrades_are_dropped_and_the_request_forwarded_as_an_ordinary_one(proxy, upstream, method, connection, upgrade):
    extra = [("Connection", connection), ("Upgrade", upgrade), ("HTTP2-Settings", "AAMAAABkAAQCAAAAAAIAAAAA")]
    with proxy.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request_bytes(method, "/plain", extra, body=b"x" if method == "POST" else b""))
        first = reader.response(method)
        sock.sendall(request_bytes("GET", "/next"))
        second = reader.response()
    assert (first.status, first.body, second.status) == (200, b"ok", 200)  # an ordinary, kept-alive exchange
    seen = upstream.wait_seen(2)[0]
    assert (seen.method, seen.value("upgrade"), seen.value("http2-settings")) == (method, None, None)
    assert "upgrade" not in (seen.value("connection") or "").lower()


def test_the_upstream_is_asked_for_exactly_websocket(coxp, raw_upstream):
    switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    upstream = raw_upstream(answer_with(switching))
    proxy = coxp(config_text(upstream.url))
    status, headers, sock = websocket_handshake(proxy.port, "/ws", [("X-Case", "1")], upgrade="WebSocket")
    sock.close()
    assert status == 101
    assert [v for n, v in headers if n.lower() == "upgrade"] == ["websocket"]
    sent = upstream.heads[0].decode("latin-1").split("\r\n")
    assert [line for line in sent if line.lower().startswith("upgrade:")] == ["Upgrade: websocket"]


@pytest.mark.parametrize("upgrade", [b"", b"Upgrade: h2c\r\n", b"Upgrade: websocket, h2c\r\n"],
                         ids=["no-upgrade", "h2c", "websocket-and-h2c"])
def test_a_101_that_does_not_switch_to_websocket_is_502(coxp, raw_upstream, upgrade):
    switching = b"HTTP/1.1 101 Switching Protocols\r\n" + upgrade + b"Connection: Upgrade\r\n\r\nPRI * HTTP/2.0"
    proxy = coxp(config_text(raw_upstream(answer_with(switching)).url))
    status, headers, sock = websocket_handshake(proxy.port, "/ws")
    with sock:
        assert Reader(sock).closed()
    assert status == 502
    assert proxy.wait_event("upstream_error")["reason"] == "upstream-invalid-response"
    assert proxy.wait_event("request")["status"] == 502


# --- malformed requests -----------------------------------------------------------------------------

MALFORMED = {
    "content-length-with-transfer-encoding": request_bytes("POST", "/", [("Content-Length", "5"), ("Transfer-Encoding", "chunked")], b"0\r\n\r\n"),
    "conflicting-content-length": request_bytes("POST", "/", [("Content-Length", "5"), ("Content-Length", "6")], b"hello!"),
    "conflicting-content-length-in-one-line": request_bytes("POST", "/", [("Content-Length", "5, 6")], b"hello!"),
    "transfer-encoding-not-chunked": request_bytes("POST", "/", [("Transfer-Encoding", "chunked, gzip")], b"0\r\n\r\n"),
    "transfer-encoding-identity": request_bytes("POST", "/", [("Transfer-Encoding", "identity")], b"x"),
    "malformed-content-length": request_bytes("POST", "/", [("Content-Length", "+5")], b"hello"),
    "control-character-in-header-value": request_bytes("GET", "/", [("X-A", "a\x01b")]),
    "nul-in-header-value": request_bytes("GET", "/", [("X-A", "a\x00b")]),
    "obsolete-line-folding": b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: one\r\n two\r\n\r\n",
    "missing-host": request_bytes("GET", "/", host=None),
    "repeated-host": request_bytes("GET", "/", [("Host", "b.test")]),
    "absolute-form": request_bytes("GET", "http://a.test/"),
    "asterisk-not-options": request_bytes("GET", "*"),
    "space-before-colon": b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A : 1\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: a.test\n\n",
    "bare-cr-in-head": b"GET / HTTP/1.1\r\nHost: a.test\rX: 1\r\n\r\n",
    "lower-case-version": b"GET / http/1.1\r\nHost: a.test\r\n\r\n",
    "fragment-in-target": request_bytes("GET", "/a#b"),
    "two-spaces": b"GET  / HTTP/1.1\r\nHost: a.test\r\n\r\n",
}

BAD_CHUNKS = {
    "no-crlf-after-data": b"5\r\nhelloXX0\r\n\r\n",
    "size-not-hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "negative-size": b"-5\r\nhello\r\n0\r\n\r\n",
    "lf-only": b"5\nhello\n0\n\n",
    "size-too-long": b"1" * 17 + b"\r\n",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_are_400_and_never_forwarded(proxy, upstream, raw):
    response = exchange(proxy, raw)
    assert response.status == 400
    assert response.value("connection") == "close"
    event = proxy.wait_event("bad_request")
    assert (event["status"], event["peer"]) == (400, "127.0.0.1") and event["reason"]
    assert proxy.events_named("request") == []
    assert upstream.seen == []


@pytest.mark.parametrize("chunks", BAD_CHUNKS.values(), ids=BAD_CHUNKS.keys())
def test_bad_chunk_framing_is_400_and_the_upstream_never_gets_a_complete_request(proxy, upstream, chunks):
    response = exchange(proxy, request_bytes("POST", "/", [("Transfer-Encoding", "chunked")], chunks))
    assert response.status == 400
    assert b"bad-chunk-framing" in response.body
    # The head may already be on its way upstream (bodies are streamed), but never a whole,
    # well-framed request: the handler, which reads the whole body, never finishes.
    assert all(seen.body == b"" for seen in upstream.seen)


def test_options_asterisk_is_not_400(proxy, upstream):
    response = exchange(proxy, request_bytes("OPTIONS", "*"))
    assert response.status != 400
    assert proxy.wait_event("request")["method"] == "OPTIONS"


def test_unsupported_version_is_505(proxy, upstream):
    response = exchange(proxy, b"GET / HTTP/2.0\r\nHost: a.test\r\n\r\n")
    assert response.status == 505
    assert proxy.wait_event("bad_request")["reason"] == "http-version-not-supported"
    assert upstream.seen == []


# --- the decision log -------------------------------------------------------------------------------


def test_exactly_one_request_event_per_request_with_every_field(coxp, upstream):
    cors = '[defaults.cors]\nallow_origins = ["https://app.test"]\n'
    proxy = coxp(config_text(upstream.url, extra=cors))
    with proxy.connect() as sock:
        reader = Reader(sock)
        sock.sendall(request_bytes("GET", "/a?q=1", [("Origin", "https://app.test")]))
        assert reader.response().status == 200
        sock.sendall(request_bytes("OPTIONS", "/b", [("Origin", "https://evil.test"), ("Access-Control-Request-Method", "PUT")]))
        assert reader.response("OPTIONS").status == 403
        sock.sendall(request_bytes("POST", "/c", body=b"x"))
        assert reader.response("POST").status == 200
    events = [proxy.wait_event("request", count=n) for n in (1, 2, 3)]
    get(proxy, "/sync")  # a fourth request, logged after the three: nothing more came before it
    proxy.wait_event("request", count=4)
    assert len(proxy.events_named("request")) == 4
    for event in events:
        assert set(event) == REQUEST_FIELDS, set(event) ^ REQUEST_FIELDS
        assert event["level"] == "info" and event["route"] == "default"
        assert isinstance(event["duration_ms"], (int, float)) and event["timestamp"].startswith("20")
    first, preflight, post = events
    assert (first["method"], first["path"], first["origin"], first["cors"], first["reason"]) == ("GET", "/a", "https://app.test", "allowed", None)
    assert (first["status"], first["upstream_status"]) == (200, 200)
    assert "access-control-allow-origin" in first["headers_set"] and "vary" in first["headers_set"]
    assert (preflight["cors"], preflight["reason"], preflight["status"], preflight["upstream_status"]) == (
        "preflight-denied", "origin-not-allowed", 403, None)
    assert (post["origin"], post["cors"], post["headers_removed"]) == (None, "not-cors", [])


# --- streaming: 1 GiB each way with flat memory ---------------------------------------------------

GIB = 1 << 30
BLOCK = os.urandom(1 << 20)
RSS_LIMIT_KIB = 100 * 1024


def stream_crc(total: int = GIB) -> int:
    crc = 0
    for _ in range(total // len(BLOCK)):
        crc = zlib.crc32(BLOCK, crc)
    return crc


class RssSampler:
    """Samples the proxy's VmRSS every 50 ms while a transfer runs; `peak_kib` is the highest."""

    def __init__(self, proxy) -> None:
        self.proxy = proxy
        self.peak_kib = proxy.rss_kib()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_kib = max(self.peak_kib, self.proxy.rss_kib())
            self.samples += 1

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_1_gib_request_body_streams_with_flat_memory(proxy, upstream):
    received = {}

    async def count(request):
        size, crc = 0, 0
        async for data in request.content.iter_any():
            size += len(data)
            crc = zlib.crc32(data, crc)
        received.update(size=size, crc=crc)
        return web.Response(text="counted")

    upstream.handler = count
    with proxy.connect(timeout=60) as sock, RssSampler(proxy) as rss:
        sock.sendall(request_bytes("PUT", "/upload", [("Content-Length", str(GIB))]))
        for _ in range(GIB // len(BLOCK)):
            sock.sendall(BLOCK)
        response = Reader(sock).response("PUT")
    print(f"proxy VmRSS peak during a 1 GiB request body: {rss.peak_kib / 1024:.1f} MiB ({rss.samples} samples)")
    assert (response.status, response.body) == (200, b"counted")
    assert received == {"size": GIB, "crc": stream_crc()}
    assert rss.samples > 10 and rss.peak_kib < RSS_LIMIT_KIB


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_1_gib_response_body_streams_with_flat_memory(proxy, upstream):
    async def produce(request):
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = GIB
        await response.prepare(request)
        for _ in range(GIB // len(BLOCK)):
            await response.write(BLOCK)
        return response

    upstream.handler = produce
    size, crc = 0, 0
    with proxy.connect(timeout=60) as sock, RssSampler(proxy) as rss:
        sock.sendall(request_bytes("GET", "/download"))
        reader = Reader(sock)
        head = reader.head()
        data = bytes(reader.buffer)  # what came with the head
        while True:
            size += len(data)
            crc = zlib.crc32(data, crc)
            if size >= GIB or not (data := sock.recv(1 << 20)):
                break
    print(f"proxy VmRSS peak during a 1 GiB response body: {rss.peak_kib / 1024:.1f} MiB ({rss.samples} samples)")
    assert (head.status, head.value("content-length")) == (200, str(GIB))
    assert (size, crc) == (GIB, stream_crc())
    assert rss.samples > 10 and rss.peak_kib < RSS_LIMIT_KIB


async def _silent(reader, writer, head):
    await reader.read()  # reads the handshake, never answers


@pytest.mark.parametrize(
    "upstream_kind, status, reason",
    [("closed-port", 502, "upstream-unreachable"), ("silent", 504, "upstream-response-timeout"),
     ("not-http", 502, "upstream-invalid-response")],
)
def test_websocket_handshake_the_upstream_cannot_answer(coxp, raw_upstream, upstream_kind, status, reason):
    url = {
        "closed-port": lambda: f"http://127.0.0.1:{free_port()}",
        "silent": lambda: raw_upstream(_silent).url,
        "not-http": lambda: raw_upstream(answer_with(b"SSH-2.0-OpenSSH\r\n\r\n")).url,
    }[upstream_kind]()
    proxy = coxp(config_text(url, {"read_timeout": 0.5}))
    answered, headers, sock = websocket_handshake(proxy.address[1], "/ws")
    sock.close()
    assert answered == status
    assert proxy.wait_event("upstream_error")["reason"] == reason
    request = proxy.wait_event("request")
    assert (request["status"], request["upstream_status"]) == (status, None)


def test_websocket_handshake_refused_by_the_upstream_is_relayed_and_closed(coxp, raw_upstream):
    refusal = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\nX-Why: no\r\n\r\nnope"
    proxy = coxp(config_text(raw_upstream(answer_with(refusal)).url))
    upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
               ("Sec-WebSocket-Version", "13")]
    with proxy.connect() as sock:
        sock.sendall(request_bytes("GET", "/ws", upgrade))
        reader = Reader(sock)
        head = reader.head()
        rest = reader.rest()
    assert head.status == 403
    assert head.value("x-why") == "no" and head.value("connection") == "close"
    assert rest == b"nope"
    assert proxy.wait_event("request")["status"] == 403
