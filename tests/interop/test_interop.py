"""The interop matrix: the same request sent to a real server directly and through coxp gets the
same status, the same body bytes and the same headers, policy and framing headers aside.

Servers: Apache 2.4 and lighttpd (static files + CGI), Python's http.server on HTTP/1.0,
gunicorn, a Node `http` server (chunked responses). Cases: methods, response sizes 0 B - 2 MiB in turn on one
kept-alive connection, uploads (Content-Length, chunked, Expect: 100-continue), 204/304/HEAD,
several Set-Cookie, gzip passed through, redirects (rewritten to coxp), an early 413 (Node).
"""
from __future__ import annotations

import http.client
import socket

import pytest

from backends import SIZES, WebServer
from harness import upload_while_reading

# Headers about the connection or the moment, not the resource: not compared.
FRAMING = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "date"})
POLICY_HEADER = ("cross-origin-resource-policy", "same-site")  # what the coxp in front sets
REDIRECT_HEADERS = frozenset({"location", "content-location", "refresh"})
TIMEOUT = 30.0
EARLY_UPLOAD = 8 * 1024 * 1024  # far beyond what a server reads before it answers 413


class Got:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = [(n.lower(), v) for n, v in response.getheaders()]
        self.body = response.read()

    def compared(self) -> list[tuple[str, str]]:
        return [h for h in self.headers if h[0] not in FRAMING and h != POLICY_HEADER]


def send(conn: http.client.HTTPConnection, method: str, path: str, body=None, headers=None, chunked=False) -> Got:
    conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
    return Got(conn.getresponse())


def connections(pair) -> tuple[http.client.HTTPConnection, http.client.HTTPConnection]:
    host, port = pair.proxy.address
    return (http.client.HTTPConnection("127.0.0.1", pair.backend.port, timeout=TIMEOUT),
            http.client.HTTPConnection(host, port, timeout=TIMEOUT))


def assert_same(direct: Got, proxied: Got, rewritten: dict[str, str] | None = None) -> None:
    """Same status, body and headers; the policy header added by coxp; `rewritten` values expected
    instead of the direct ones (redirects)."""
    assert proxied.status == direct.status
    assert proxied.body == direct.body
    expected = [(n, (rewritten or {}).get(n, v)) for n, v in direct.compared()]
    assert proxied.compared() == expected
    assert POLICY_HEADER in proxied.headers


def local_port(conn: http.client.HTTPConnection) -> int:
    return conn.sock.getsockname()[1]


def test_response_sizes_in_turn_on_one_kept_alive_connection(pair):
    direct, proxied = connections(pair)
    ports = set()
    for size in SIZES:
        path = pair.backend.path("size", n=size)
        expected = send(direct, "GET", path)
        assert (expected.status, len(expected.body)) == (200, size), pair.backend.log()
        assert_same(expected, send(proxied, "GET", path))
        ports.add(local_port(proxied))
    assert len(ports) == 1, "the client connection to coxp was not kept alive"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_methods(pair, method):
    direct, proxied = connections(pair)
    path = pair.backend.path("echo")
    body = b"payload" if method not in ("GET", "OPTIONS") else None
    expected = send(direct, method, path, body)
    assert expected.status == 200
    assert_same(expected, send(proxied, method, path, body))


UPLOADS = [(mode, size) for mode in ("content-length", "chunked", "expect") for size in (0, 10, 60_000, 300_000)]


@pytest.mark.parametrize("mode, size", UPLOADS, ids=[f"{m}-{s}" for m, s in UPLOADS])
def test_uploads(pair, mode, size):
    if mode == "chunked" and size > 65536 and not pair.backend.reads_chunked:
        pytest.skip("beyond request_buffer a chunked body streams chunked, which this server cannot read")
    direct, proxied = connections(pair)
    path = pair.backend.path("echo")
    body = bytes(i % 253 for i in range(size))
    # Directly, always with a Content-Length: the body as the server should read it.
    expected = send(direct, "POST", path, body)
    assert expected.body.startswith(f"POST {size} ".encode()), expected.body
    if mode == "chunked":
        got = send(proxied, "POST", path, (body[i:i + 7000] for i in range(0, size, 7000)), chunked=True)
    else:
        got = send(proxied, "POST", path, body, {"Expect": "100-continue"} if mode == "expect" else None)
    assert_same(expected, got)


def test_bodyless_responses_keep_the_connection_usable(pair):
    direct, proxied = connections(pair)
    backend = pair.backend
    cases = [("GET", backend.path("status", code=204), {}), ("HEAD", backend.path("size", n=1000), {})]
    if isinstance(backend, WebServer):
        # A real 304: the static file's own validator, sent back.
        etag = dict(send(direct, "GET", backend.path("size", n=1000)).headers)["etag"]
        cases.append(("GET", backend.path("size", n=1000), {"If-None-Match": etag}))
    else:
        cases.append(("GET", backend.path("status", code=304), {}))
    for method, path, headers in cases:
        expected = send(direct, method, path, headers=headers)
        assert expected.status in (200, 204, 304) and expected.body == b""
        assert_same(expected, send(proxied, method, path, headers=headers))
        # The next response on the same connection is read correctly: nothing was left over.
        assert_same(send(direct, "GET", backend.path("size", n=10)), send(proxied, "GET", backend.path("size", n=10)))


def test_several_set_cookie_lines_pass_in_order(pair):
    direct, proxied = connections(pair)
    expected = send(direct, "GET", pair.backend.path("cookies"))
    assert len([n for n, _ in expected.headers if n == "set-cookie"]) >= 3
    assert_same(expected, send(proxied, "GET", pair.backend.path("cookies")))


def test_gzip_is_passed_through_as_sent(pair):
    direct, proxied = connections(pair)
    path, accept = pair.backend.path("gzip"), {"Accept-Encoding": "gzip"}
    expected = send(direct, "GET", path, headers=accept)
    assert dict(expected.headers).get("content-encoding") == "gzip" and expected.body[:2] == b"\x1f\x8b"
    assert_same(expected, send(proxied, "GET", path, headers=accept))


def test_redirects_to_the_backend_are_pointed_at_coxp(pair):
    direct, proxied = connections(pair)
    path = pair.backend.path("redirect")
    expected = send(direct, "GET", path)
    assert expected.status == 302
    coxp_origin = f"http://127.0.0.1:{pair.proxy.port}"
    rewritten = {n: v.replace(pair.backend.url, coxp_origin) for n, v in expected.headers if n in REDIRECT_HEADERS}
    assert rewritten["location"].startswith(coxp_origin + "/")
    assert_same(expected, send(proxied, "GET", path), rewritten)


def test_an_early_413_from_node_reaches_every_client(interop_pairs):
    pair = interop_pairs("node")
    for attempt in range(10):
        direct = upload_while_reading(socket.create_connection(("127.0.0.1", pair.backend.port), timeout=TIMEOUT),
                                      f"/limit?attempt={attempt}", EARLY_UPLOAD, host=f"127.0.0.1:{pair.backend.port}")
        proxied = upload_while_reading(socket.create_connection(pair.proxy.address, timeout=TIMEOUT),
                                       f"/limit?attempt={attempt}", EARLY_UPLOAD, host="{}:{}".format(*pair.proxy.address))
        assert (direct.status, direct.body) == (413, b"too large\n")
        assert (proxied.status, proxied.body) == (413, b"too large\n"), f"attempt {attempt}"
