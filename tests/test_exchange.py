"""proxy.exchange: what a request head decides is remembered per head, serving state, client
address and scheme, and never handed to another of them."""
from __future__ import annotations

import asyncio
import signal
import socket
from types import SimpleNamespace
from typing import Any

import pytest

from harness import WAIT, Coxp, Reader, config_text, request_bytes, unique, websocket_echo
from proxy.config import load_config_text
from proxy.exchange import prepared
from proxy.http1 import parse_head
from proxy.routing import Router
from proxy.state import ServingState

CONFIG = """
[proxy]
upstream = "http://127.0.0.1:3000"
[[routes]]
name = "api"
paths = ["/api/*"]
[routes.cors]
allow_origins = ["{origin}"]
"""
HEAD = b"GET /api/a HTTP/1.1\r\nHost: proxy.test\r\nOrigin: https://app.test\r\n\r\n"


def state(origin: str = "https://app.test") -> ServingState:
    config = load_config_text(CONFIG.replace("{origin}", origin))
    none: Any = None
    return ServingState(config=config, router=Router(config), client=none, log=none, metrics=none,
                        stopping=lambda: False, admit=lambda: True, refuse=none)


def client(peer_ip: str, scheme: str = "http") -> Any:
    return SimpleNamespace(peer_ip=peer_ip, scheme=scheme)


def test_a_repeated_head_is_prepared_once_per_client_address_and_scheme():
    serving = state()
    head = parse_head(HEAD, serving.config.limits)
    first = prepared(serving, client("10.0.0.1"), head)
    assert prepared(serving, client("10.0.0.1"), head) is first
    assert first.decision.cors == "allowed" and first.upstream_head is not None
    assert b"\r\nX-Forwarded-For: 10.0.0.1\r\n" in first.upstream_head
    other = prepared(serving, client("10.0.0.2"), head)
    assert other.upstream_head is not None and b"\r\nX-Forwarded-For: 10.0.0.2\r\n" in other.upstream_head
    tls = prepared(serving, client("10.0.0.1", "https"), head)
    assert tls.upstream_head is not None and b"\r\nX-Forwarded-Proto: https\r\n" in tls.upstream_head
    assert tls.own_origin == "https://proxy.test" and first.own_origin == "http://proxy.test"


def test_a_reloaded_state_prepares_the_same_head_again():
    before, after = state(), state("https://other.test")
    head = parse_head(HEAD, before.config.limits)
    assert prepared(before, client("10.0.0.1"), head).decision.cors == "allowed"
    assert prepared(after, client("10.0.0.1"), head).decision.cors == "denied"


def test_a_head_with_long_fields_is_not_remembered():
    serving = state()
    head = parse_head(HEAD.replace(b"\r\n\r\n", b"\r\nX-Long: " + b"a" * 2000 + b"\r\n\r\n"), serving.config.limits)
    first = prepared(serving, client("10.0.0.1"), head)
    again = prepared(serving, client("10.0.0.1"), head)
    assert again == first and again is not first


# --- through real sockets: nothing a remembered head decided outlives a reload or crosses clients ---


def connect_from(proxy: Coxp, source_ip: str) -> socket.socket:
    """A connection to coxp from `source_ip` (any 127.0.0.0/8 address is this machine's)."""
    return socket.create_connection(proxy.address, timeout=WAIT, source_address=(source_ip, 0))


def reload_with(proxy: Coxp, text: str) -> None:
    mark = proxy.mark()
    proxy.config_path.write_text(text)
    proxy.signal(signal.SIGHUP)
    proxy.wait_event("config_reloaded", start=mark)


ROUTE = '[[routes]]\nname = "{name}"\npaths = ["{paths}"]\n[routes.cors]\nallow_origins = ["{origin}"]\n'
GET_API = request_bytes("GET", "/api/x", [("Origin", "https://a.test")], host="proxy.test")


def api_config(upstream: str, name: str = "api", paths: str = "/api/*", origin: str = "https://a.test",
               proxy: dict | None = None, limits: dict | None = None) -> str:
    return config_text(upstream, proxy, limits, ROUTE.format(name=name, paths=paths, origin=origin))


@pytest.mark.parametrize("change", ["allow_origins", "routes", "upstream", "forwarded_headers", "max_body_bytes",
                                    "max_headers"])
def test_a_reload_between_byte_identical_requests_applies_to_the_second(coxp, upstream, query_upstream, change):
    """The same head bytes after a reload, on the kept-alive connection and on a new one, are
    decided by the new config: nothing remembered for the old one is used."""
    before, after, request = {
        "allow_origins": (api_config(upstream.url), api_config(upstream.url, origin="https://b.test"), GET_API),
        "routes": (api_config(upstream.url), api_config(upstream.url, name="other", paths="/api/x"), GET_API),
        "upstream": (api_config(upstream.url), api_config(query_upstream.url), GET_API),
        "forwarded_headers": (api_config(upstream.url),
                              api_config(upstream.url, proxy={"forwarded_headers": False}), GET_API),
        "max_body_bytes": (api_config(upstream.url), api_config(upstream.url, limits={"max_body_bytes": 4}),
                           request_bytes("POST", "/api/x", [("Origin", "https://a.test")], b"12345", "proxy.test")),
        "max_headers": (api_config(upstream.url), api_config(upstream.url, limits={"max_headers": 2}), GET_API
                        .replace(b"\r\n\r\n", b"\r\nAccept: */*\r\n\r\n")),
    }[change]
    proxy = coxp(before)
    kept = proxy.connect()
    reader = Reader(kept)

    def send(sock_reader: Reader) -> tuple:
        mark = proxy.mark()
        sock_reader.sock.sendall(request)
        response = sock_reader.response()
        event = proxy.wait_event("request" if response.status != 431 else "bad_request", start=mark)
        return response, event

    with kept:
        first, first_event = send(reader)
        assert (first.status, first.value("access-control-allow-origin")) == (200, "https://a.test")
        assert (first_event["route"], first_event["cors"]) == ("api", "allowed")
        [seen] = upstream.wait_seen()
        assert seen.values("x-forwarded-for") == ["127.0.0.1"]
        reload_with(proxy, after)
        for connection in ("kept", "new"):
            upstream.reset()
            if connection == "kept":
                response, event = send(reader)
            else:
                with proxy.connect() as fresh:
                    response, event = send(Reader(fresh))
            if change == "allow_origins":
                assert (response.status, response.value("access-control-allow-origin")) == (200, None), connection
                assert event["cors"] == "denied"
            elif change == "routes":
                assert event["route"] == "other", connection
            elif change == "upstream":
                assert response.body == b"upstream GET", connection
                assert upstream.seen == []
            elif change == "forwarded_headers":
                assert upstream.wait_seen()[0].values("x-forwarded-for") == [], connection
            elif change == "max_headers":
                assert (response.status, event["reason"]) == (431, "too-many-headers"), connection
                assert upstream.seen == []
            else:
                assert (response.status, response.value("connection")) == (413, "close"), connection
                assert upstream.seen == []
                if connection == "kept":
                    assert reader.closed()


def test_identical_heads_from_two_client_addresses_are_forwarded_each_with_its_own(coxp, upstream):
    """Byte-identical heads from 127.0.0.1 (untrusted) and 127.0.0.2 (a trusted proxy),
    alternating: X-Forwarded-For/-Proto and the request's own origin are each client's own."""
    proxy = coxp(config_text(upstream.url, {"trusted_proxies": ["127.0.0.2"]},
                             extra='[defaults.cors]\nallow_origins = ["https://other.test"]\n'))
    head = request_bytes("GET", "/p", [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https"),
                                       ("Origin", "https://app.test")], host="app.test")
    clients = {ip: connect_from(proxy, ip) for ip in ("127.0.0.1", "127.0.0.2")}
    readers = {ip: Reader(sock) for ip, sock in clients.items()}
    expected = {
        "127.0.0.1": (["127.0.0.1"], ["http"], "denied"),  # its X-Forwarded-* are replaced
        "127.0.0.2": (["203.0.113.7, 127.0.0.2"], ["https"], "same-origin"),  # believed
    }
    try:
        for round_ in range(3):
            for ip in ("127.0.0.1", "127.0.0.2"):
                upstream.reset()
                mark = proxy.mark()
                clients[ip].sendall(head)
                assert readers[ip].response().status == 200
                seen = upstream.wait_seen()[0]
                event = proxy.wait_event("request", start=mark)
                got = (seen.values("x-forwarded-for"), seen.values("x-forwarded-proto"), event["cors"])
                assert got == expected[ip], (round_, ip)
    finally:
        for sock in clients.values():
            sock.close()


def test_the_second_of_two_identical_requests_is_logged_with_its_own_outcome(coxp, raw_upstream):
    """Identical heads whose upstream answers differ (status, body size, time): each `request`
    event has its own status, upstream_status, duration and timestamp."""
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
               b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope"]

    async def serve(reader, writer, head) -> None:
        for answer in answers:
            if answer is not answers[0]:
                await asyncio.sleep(0.3)  # the second request cannot take less: its own duration
            writer.write(answer)
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")

    server = raw_upstream(serve)
    proxy = coxp(config_text(server.url))
    with proxy.connect() as sock:
        reader = Reader(sock)
        responses = []
        for _ in answers:
            sock.sendall(request_bytes("GET", "/same", host="app.test"))
            responses.append(reader.response())
    assert [(r.status, r.body) for r in responses] == [(200, b"ok"), (404, b"nope")]
    first = proxy.wait_event("request", path="/same")
    second = proxy.wait_event("request", 2, path="/same")
    assert (first["status"], first["upstream_status"], second["status"], second["upstream_status"]) == (200, 200, 404, 404)
    assert first["timestamp"] < second["timestamp"] and second["duration_ms"] >= 300
    assert len(server.heads) == 1  # one upstream connection: the second request came on it too


def test_the_shadow_decision_of_identical_heads_follows_the_reload(coxp, upstream):
    shadow = ('[[routes]]\nname = "api"\npaths = ["/api/*"]\n[routes.cors]\nallow_origins = ["https://a.test"]\n'
              '[routes.cors.shadow]\nallow_origins = ["{candidate}"]\n')
    proxy = coxp(config_text(upstream.url, extra=shadow.format(candidate="https://a.test")))
    with proxy.connect() as sock:
        reader = Reader(sock)
        for candidate, expected in (("https://a.test", "allowed"), ("https://b.test", "denied")):
            if candidate != "https://a.test":
                reload_with(proxy, config_text(upstream.url, extra=shadow.format(candidate=candidate)))
            mark = proxy.mark()
            sock.sendall(GET_API)
            assert reader.response().status == 200
            event = proxy.wait_event("request", start=mark)
            assert (event["cors"], event["shadow_cors"]) == ("allowed", expected)


def test_pipelined_identical_heads_carry_each_their_own_body(proxy, upstream):
    """The same head bytes, pipelined with different bodies (a length and a chunked framing):
    the upstream gets each body once, in order, and HEAD after GET gets no body."""
    length = [request_bytes("POST", "/b", [("Content-Length", "5")], host="app.test") + body
              for body in (b"aaaaa", b"bbbbb")]
    chunked = [request_bytes("POST", "/b", [("Transfer-Encoding", "chunked")], host="app.test")
               + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) for body in (b"ccc", b"dddddd")]
    get_then_head = [request_bytes(method, "/b", host="app.test") for method in ("GET", "HEAD", "GET")]
    with proxy.connect() as sock:
        sock.sendall(b"".join(length + chunked + get_then_head))
        reader = Reader(sock)
        statuses = [reader.response(method).status for method in ["POST"] * 4 + ["GET", "HEAD", "GET"]]
    assert statuses == [200] * 7
    seen = upstream.wait_seen(7)
    assert [(s.method, s.body) for s in seen] == [
        ("POST", b"aaaaa"), ("POST", b"bbbbb"), ("POST", b"ccc"), ("POST", b"dddddd"),
        ("GET", b""), ("HEAD", b""), ("GET", b"")]


def test_an_upgrade_head_one_byte_from_a_websocket_handshake_is_an_ordinary_request(coxp, query_upstream):
    """The same handshake bytes but one (`websockeu`): forwarded as a plain GET without its
    Upgrade, between two real handshakes that each get their tunnel."""
    proxy = coxp(config_text(query_upstream.url))
    marker = unique()

    def handshake(upgrade: str) -> tuple[socket.socket, int]:
        sock = proxy.connect()
        sock.sendall(request_bytes("GET", f"/ws?m={marker}", [
            ("Upgrade", upgrade), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13")], host="app.test"))
        return sock, Reader(sock).head().status

    for upgrade, status in (("websocket", 101), ("websockeu", 200), ("websocket", 101)):
        sock, got = handshake(upgrade)
        with sock:
            assert got == status, upgrade
            if status == 101:
                assert websocket_echo(sock, upgrade) == f"echo {upgrade}"
    seen = query_upstream.saw(marker)
    assert [s.values("upgrade") for s in seen] == [["websocket"], [], ["websocket"]]


@pytest.mark.parametrize("version, connection, answered", [
    ("1.1", None, None), ("1.0", "keep-alive", "keep-alive"), ("1.0", None, "close"), ("1.1", "close", "close")])
def test_an_answer_the_proxy_makes_tells_an_http_1_0_client_to_keep_the_connection(coxp, version, connection, answered):
    """A preflight coxp answers itself says the connection's fate as a relayed response does
    (RFC 9112 §9.3: an HTTP/1.0 client keeps it only when told); the same decision, remembered,
    for HTTP/1.1 and 1.0 clients."""
    cors = ROUTE.format(name="api", paths="/*", origin="https://a.test") + 'allow_methods = ["PUT"]\n'
    proxy = coxp(config_text(proxy={"upstream": "http://127.0.0.1:9"}, extra=cors))
    fields = [("Origin", "https://a.test"), ("Access-Control-Request-Method", "PUT")]
    preflight = request_bytes("OPTIONS", "/x", fields + ([("Connection", connection)] if connection else []),
                              host="proxy.test").replace(b" HTTP/1.1\r\n", f" HTTP/{version}\r\n".encode(), 1)
    with proxy.connect() as sock:
        reader = Reader(sock)
        for _ in range(2 if answered != "close" else 1):
            sock.sendall(preflight)
            response = reader.response("OPTIONS")
            assert (response.status, response.value("connection")) == (204, answered)
        if answered == "close":
            assert reader.closed()
