"""The server around the exchange: limits, timeouts, signals, reload, TLS (README, "`[limits]`", "Command line").

coxp runs as a subprocess; clients are raw sockets, so every limit is probed at exactly N and N+1.
"""
from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import time

import pytest
import trustme
from aiohttp import web

from harness import WAIT, Reader, Upstream, config_text, exchange, free_port, fresh_log, get, request_bytes, start_coxp

LIMITS = {"max_request_line": 100, "max_header_bytes": 400, "max_headers": 5, "max_body_bytes": 10}
REQUEST_LINE_OVERHEAD = len("GET  HTTP/1.1")  # the request line is this plus the target
HEAD_OVERHEAD = len("GET / HTTP/1.1\r\nHost: example.test\r\nX-Pad: \r\n\r\n")  # plus the X-Pad value


@pytest.fixture(scope="module")
def limited_proxy(tmp_path_factory, shared_upstream):
    process = start_coxp(tmp_path_factory.mktemp("limited"), config_text(shared_upstream.url, limits=LIMITS))
    yield process
    process.stop()


@pytest.fixture
def limited(limited_proxy, upstream):
    """coxp with small limits (LIMITS) in front of `upstream`."""
    yield from fresh_log(limited_proxy, upstream)


def refused(proxy, raw: bytes, status: int, reason: str, upstream) -> None:
    """`raw` is answered `status` before routing: logged as bad_request, never forwarded."""
    response = exchange(proxy, raw)
    assert (response.status, response.value("connection")) == (status, "close")
    assert reason.encode() in response.body
    event = proxy.wait_event("bad_request")
    assert (event["status"], event["reason"]) == (status, reason)
    assert proxy.events_named("request") == [] and upstream.seen == []


# --- request line, head, header count --------------------------------------------------------------


def test_request_line_of_exactly_max_request_line_is_served(limited, upstream):
    target = "/" + "a" * (LIMITS["max_request_line"] - REQUEST_LINE_OVERHEAD - 1)
    assert len(f"GET {target} HTTP/1.1") == LIMITS["max_request_line"]
    assert get(limited, target).status == 200
    assert upstream.wait_seen()[0].raw_path == target


def test_request_line_one_byte_over_is_414(limited, upstream):
    target = "/" + "a" * (LIMITS["max_request_line"] - REQUEST_LINE_OVERHEAD)
    refused(limited, request_bytes("GET", target), 414, "request-line-too-long", upstream)


def test_request_line_over_the_limit_is_refused_before_its_end_arrives(limited, upstream):
    with limited.connect() as sock:
        sock.sendall(b"GET /" + b"a" * 200)  # no CRLF yet: coxp must not wait for one
        assert Reader(sock).response().status == 414


def head_with_pad(size: int) -> bytes:
    return request_bytes("GET", "/", [("X-Pad", "p" * (size - HEAD_OVERHEAD))])


def test_head_of_exactly_max_header_bytes_is_served(limited, upstream):
    raw = head_with_pad(LIMITS["max_header_bytes"])
    assert len(raw) == LIMITS["max_header_bytes"]
    assert exchange(limited, raw).status == 200
    assert upstream.wait_seen()[0].value("x-pad") == "p" * (LIMITS["max_header_bytes"] - HEAD_OVERHEAD)


def test_head_one_byte_over_is_431(limited, upstream):
    refused(limited, head_with_pad(LIMITS["max_header_bytes"] + 1), 431, "request-head-too-large", upstream)


def test_a_16_kib_header_in_a_head_under_the_limit_is_forwarded(proxy, upstream):
    assert get(proxy, "/", [("X-Big", "b" * 16384)]).status == 200
    assert len(upstream.wait_seen()[0].value("x-big")) == 16384


def test_max_headers_counts_host(limited, upstream):
    others = [(f"X-{i}", "v") for i in range(LIMITS["max_headers"] - 1)]
    assert get(limited, "/", others).status == 200
    limited.wait_event("request")
    limited.forget()
    upstream.reset()
    refused(limited, request_bytes("GET", "/", others + [("X-Last", "v")]), 431, "too-many-headers", upstream)


# --- body size --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_of_max_body_bytes_is_forwarded(limited, upstream, chunked):
    body = b"b" * LIMITS["max_body_bytes"]
    framing = [("Transfer-Encoding", "chunked")] if chunked else []
    wire = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if chunked else body
    assert exchange(limited, request_bytes("POST", "/", framing, wire)).status == 200
    assert upstream.wait_seen()[0].body == body


def test_content_length_one_over_max_body_bytes_is_413_and_not_forwarded(limited, upstream):
    response = exchange(limited, request_bytes("POST", "/", body=b"b" * (LIMITS["max_body_bytes"] + 1)))
    assert (response.status, response.value("connection")) == (413, "close")
    assert b"body-too-large" in response.body
    assert limited.wait_event("request")["status"] == 413
    assert upstream.seen == []


def test_chunked_body_one_over_max_body_bytes_is_413_while_streaming(limited, upstream):
    body = b"b" * (LIMITS["max_body_bytes"] + 1)
    wire = b"5\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (body[:5], len(body) - 5, body[5:])
    response = exchange(limited, request_bytes("POST", "/", [("Transfer-Encoding", "chunked")], wire))
    assert (response.status, response.value("connection")) == (413, "close")
    assert limited.wait_event("request")["status"] == 413
    # The head may have gone upstream (the body streams), the whole body never did.
    assert all(len(seen.body) < len(body) for seen in upstream.seen)


# --- timeouts ---------------------------------------------------------------------------------------


def closed_after(sock: socket.socket, started: float) -> float:
    """Seconds from `started` until the peer closed `sock`; it must send nothing before that."""
    assert Reader(sock).closed(), "coxp sent bytes instead of closing"
    return time.monotonic() - started


def test_half_a_head_is_cut_off_after_header_timeout(coxp, upstream):
    proxy = coxp(config_text(upstream.url, limits={"header_timeout": 0.5}))
    with proxy.connect() as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: exa")
        assert 0.4 <= closed_after(sock, started) < 3
    assert upstream.seen == []


def test_a_head_dripping_in_is_cut_off_after_header_timeout(coxp, upstream):
    proxy = coxp(config_text(upstream.url, limits={"header_timeout": 0.5}))
    drip = b"GET / HTTP/1.1\r\n" + b"X-Slow: " + b"s" * 1000
    with proxy.connect() as sock:
        started = time.monotonic()
        try:
            for byte in drip:  # one byte every 50 ms: activity must not extend the deadline
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert 0.4 <= closed_after(sock, started) < 3


def test_idle_keep_alive_connection_is_closed_after_keepalive_timeout(coxp, upstream):
    proxy = coxp(config_text(upstream.url, limits={"keepalive_timeout": 0.5, "header_timeout": 5.0}))
    with proxy.connect() as sock:
        sock.sendall(request_bytes("GET", "/"))
        assert Reader(sock).response().status == 200
        assert 0.4 <= closed_after(sock, time.monotonic()) < 3


def test_a_started_head_on_a_kept_alive_connection_gets_header_timeout(coxp, upstream):
    proxy = coxp(config_text(upstream.url, limits={"keepalive_timeout": 0.3, "header_timeout": 1.5}))
    with proxy.connect() as sock:
        sock.sendall(request_bytes("GET", "/"))
        reader = Reader(sock)
        assert reader.response().status == 200
        started = time.monotonic()
        sock.sendall(b"GET /next HTTP/1.1\r\n")
        assert 1.2 <= closed_after(sock, started) < 5


# --- in-flight limit and signals --------------------------------------------------------------------


class Gate:
    """An upstream handler that holds every request until `open()` is called from the test thread."""

    def __init__(self, loop) -> None:
        self.loop = loop
        self.event = loop.run(self._make())

    @staticmethod
    async def _make() -> asyncio.Event:
        return asyncio.Event()

    async def handler(self, request):
        await self.event.wait()
        return web.Response(text="released")

    def open(self) -> None:
        self.loop.loop.call_soon_threadsafe(self.event.set)


def test_beyond_max_in_flight_is_503_with_retry_after(coxp, upstream, loop):
    gate = Gate(loop)
    upstream.handler = gate.handler
    proxy = coxp(config_text(upstream.url, limits={"max_in_flight": 1}))
    with proxy.connect() as held:
        held.sendall(request_bytes("GET", "/held"))
        upstream.wait_seen()
        response = get(proxy, "/second")
        assert (response.status, response.value("retry-after"), response.value("connection")) == (503, "1", "close")
        gate.open()
        assert Reader(held).response().body == b"released"
    assert [s.raw_path for s in upstream.seen] == ["/held"]
    assert get(proxy, "/third").status == 200  # the slot is free again


def wait_until_refused(address, timeout: float = 5.0) -> None:
    """Connect until the listener is gone (coxp closes it when it starts draining)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(address, timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.05)
    raise AssertionError("coxp kept accepting connections")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_lets_the_request_in_flight_finish_then_exits_0(coxp, upstream, loop, signum):
    gate = Gate(loop)
    upstream.handler = gate.handler
    proxy = coxp(config_text(upstream.url))
    with proxy.connect() as idle, proxy.connect() as busy:
        busy.sendall(request_bytes("GET", "/slow"))
        upstream.wait_seen()
        proxy.signal(signum)
        wait_until_refused(proxy.address)
        assert Reader(idle).closed(), "an idle connection is closed at once"
        gate.open()
        response = Reader(busy).response()
        assert (response.status, response.body, response.value("connection")) == (200, b"released", "close")
    assert proxy.process.wait(15) == 0
    assert proxy.wait_event("request")["status"] == 200


# --- reload -----------------------------------------------------------------------------------------


def test_sighup_with_a_valid_config_changes_behaviour(coxp, upstream):
    proxy = coxp(config_text(upstream.url))
    assert get(proxy).value("cross-origin-resource-policy") is None
    proxy.config_path.write_text(config_text(upstream.url, extra='[defaults.corp]\npolicy = "same-origin"\n'))
    proxy.signal(signal.SIGHUP)
    proxy.wait_event("config_reloaded")
    assert get(proxy).value("cross-origin-resource-policy") == "same-origin"


def test_remembered_preflight_answers_follow_origin_framing_and_reload(coxp, upstream):
    """Synthesized preflights are served from a cache: each origin still gets its own answer,
    a request with a body still gets `Connection: close`, and a reload forgets them all."""
    cors = '[[routes]]\nname = "api"\npaths = ["/api/*"]\n[routes.cors]\nallow_origins = [{}]\nallow_methods = ["PUT"]\n'
    proxy = coxp(config_text(upstream.url, extra=cors.format('"https://a.test", "https://b.test"')))

    def ask(origin: str, body: bytes = b""):
        return get(proxy, "/api/x", [("Origin", origin), ("Access-Control-Request-Method", "PUT")], "OPTIONS", body)

    for _ in range(3):
        for origin in ("https://a.test", "https://b.test"):
            response = ask(origin)
            assert (response.status, response.value("access-control-allow-origin")) == (204, origin)
            assert response.value("connection") is None
    with_body = ask("https://a.test", b"x")
    assert (with_body.status, with_body.value("connection")) == (204, "close")
    assert ask("https://a.test").value("connection") is None
    proxy.config_path.write_text(config_text(upstream.url, extra=cors.format('"https://b.test"')))
    proxy.signal(signal.SIGHUP)
    proxy.wait_event("config_reloaded")
    assert (ask("https://a.test").status, ask("https://b.test").status) == (403, 204)
    proxy.wait_event("request", cors="preflight-denied", origin="https://a.test")
    assert upstream.seen == []


def test_sighup_with_an_invalid_config_keeps_the_old_one(coxp, upstream):
    proxy = coxp(config_text(upstream.url, extra='[defaults.corp]\npolicy = "same-origin"\n'))
    proxy.config_path.write_text(config_text(upstream.url, limits={"max_bodyy": 1}))
    proxy.signal(signal.SIGHUP)
    error = proxy.wait_event("config_error")
    assert any("limits.max_bodyy" in line for line in error["errors"]), error
    assert proxy.events_named("config_reloaded") == []
    response = get(proxy)
    assert (response.status, response.value("cross-origin-resource-policy")) == (200, "same-origin")


def test_sighup_with_a_toml_syntax_error_keeps_the_old_one(coxp, upstream):
    proxy = coxp(config_text(upstream.url))
    proxy.config_path.write_text("[proxy\n")
    proxy.signal(signal.SIGHUP)
    assert proxy.wait_event("config_error")["errors"]
    assert get(proxy).status == 200


# --- TLS --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def certs(ca, tmp_path_factory):
    """PEM files: the CA, a leaf for 127.0.0.1/localhost, and an unrelated CA."""
    directory = tmp_path_factory.mktemp("tls")
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key", "other_ca")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    trustme.CA().cert_pem.write_to_path(str(paths["other_ca"]))
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture
def tls_upstream(loop, ca):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = Upstream(loop, ssl_context=context)
    yield server
    server.close()


def test_tls_termination(coxp, upstream, certs, ca):
    proxy = coxp(config_text(upstream.url, {"tls_cert": certs["cert"], "tls_key": certs["key"]}))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with proxy.connect() as raw, context.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(request_bytes("GET", "/tls", host="localhost"))
        assert Reader(sock).response().body == b"ok"
    assert upstream.wait_seen()[0].value("x-forwarded-proto") == "https"
    assert proxy.wait_event("listening")["tls"] is True


def test_plain_http_to_a_tls_listener_gets_no_http_answer(coxp, upstream, certs):
    proxy = coxp(config_text(upstream.url, {"tls_cert": certs["cert"], "tls_key": certs["key"]}))
    with proxy.connect() as sock:
        sock.sendall(request_bytes("GET", "/"))
        assert not Reader(sock).rest().startswith(b"HTTP/")
    assert upstream.seen == []


def test_https_upstream_verified_with_upstream_ca(coxp, tls_upstream, certs):
    proxy = coxp(config_text(tls_upstream.url, {"upstream_ca": certs["ca"]}))
    assert get(proxy, "/secure").body == b"ok"
    assert tls_upstream.wait_seen()[0].raw_path == "/secure"


def test_https_upstream_with_the_wrong_ca_is_502_with_the_reason_logged(coxp, tls_upstream, certs):
    proxy = coxp(config_text(tls_upstream.url, {"upstream_ca": certs["other_ca"]}))
    response = get(proxy)
    assert response.status == 502
    assert b"upstream-tls-verification-failed" in response.body
    error = proxy.wait_event("upstream_error")
    assert error["reason"] == "upstream-tls-verification-failed"
    assert "certificate verify failed" in error["detail"]
    assert tls_upstream.seen == []


def test_upstream_verify_false_accepts_an_unknown_ca(coxp, tls_upstream, certs):
    proxy = coxp(config_text(tls_upstream.url, {"upstream_ca": certs["other_ca"], "upstream_verify": False}))
    assert get(proxy).status == 200


def test_a_reload_that_adds_an_admin_table_or_moves_the_listener_is_a_warning_naming_them(coxp, upstream):
    """Read at start only: a reload that adds `[admin]` or changes `listen` applies the rest of
    the file, starts no listener, and its `config_reloaded` is a warning naming what waits for
    a restart; a later reload back to the start's settings is an ordinary one again."""
    text = config_text(upstream.url)
    proxy = coxp(text)
    admin_port = free_port()
    changed = (config_text(upstream.url, extra=f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
                           '[defaults.corp]\npolicy = "same-origin"\n')
               .replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{free_port()}"'))
    for config, level, restart in ((changed, "warning", ["proxy.listen", "admin"]), (text, "info", [])):
        mark = proxy.mark()
        proxy.config_path.write_text(config)
        proxy.signal(signal.SIGHUP)
        reloaded = proxy.wait_event("config_reloaded", start=mark)
        assert (reloaded["level"], reloaded["restart_needed"]) == (level, restart)
        corp = get(proxy).value("cross-origin-resource-policy")  # served on the start's listener
        assert corp == ("same-origin" if restart else None)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", admin_port), timeout=WAIT).close()
