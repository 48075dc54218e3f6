"""proxy.plan: answer, tunnel or forward, as a table (config, request facts -> action)."""
from __future__ import annotations

from typing import NamedTuple

import pytest

from harness import Reader, config_text, request_bytes
from proxy.config import load_config_text
from proxy.http1 import field_lines
from proxy.plan import (
    BODY_TOO_LARGE,
    NO_UPSTREAM,
    OPTIONS_ASTERISK,
    Answer,
    Forward,
    Tunnel,
    answer_response,
    plan,
    relayed_head,
)
from proxy.policy import apply_edits, decide, request_info

CONFIG = """
[proxy]
upstream = "http://127.0.0.1:3000"
[limits]
max_body_bytes = 10
[[routes]]
name = "cors"
paths = ["/cors/*"]
upstream = "http://127.0.0.1:4000"
[routes.cors]
allow_origins = ["https://app.test"]
[[routes]]
name = "enforce"
paths = ["/enforce/*"]
[routes.cors]
allow_origins = ["https://app.test"]
enforce = true
"""
NO_UPSTREAM_CONFIG = """
[[routes]]
name = "only"
paths = ["/only/*"]
upstream = "http://127.0.0.1:4000"
"""
APP = ("Origin", "https://app.test")
EVIL = ("Origin", "https://evil.test")
PREFLIGHT = [APP, ("Access-Control-Request-Method", "POST")]


class Facts(NamedTuple):
    target: str = "/"
    websocket: bool = False
    content_length: int | None = None


def planned(text: str, method: str, path: str, headers=(), websocket=False, content_length=None):
    config = load_config_text(text)
    route = next((r for r in config.routes if r.path_matches is not None and r.path_matches(path)),
                 config.default_route)
    decision = decide(route, request_info(method, list(headers), "https", "proxy.test"), websocket=websocket)
    target = "*" if path == "*" else path
    return decision, plan(config, route, decision, Facts(target, websocket, content_length))


UPSTREAM_4000 = "http://127.0.0.1:4000"
UPSTREAM_3000 = "http://127.0.0.1:3000"

ROWS = [
    # id, config, method, path, headers, websocket, content_length, expected action
    ("get-forwarded", CONFIG, "GET", "/cors/a", [APP], False, None, ("forward", UPSTREAM_4000)),
    ("default-route-uses-proxy-upstream", CONFIG, "GET", "/x", [], False, None, ("forward", UPSTREAM_3000)),
    ("body-at-limit-forwarded", CONFIG, "POST", "/cors/a", [], False, 10, ("forward", UPSTREAM_4000)),
    ("body-over-limit-413", CONFIG, "POST", "/cors/a", [APP], False, 11, (413, "body-too-large", True)),
    ("preflight-204-before-413", CONFIG, "OPTIONS", "/cors/a", PREFLIGHT, False, 11, (204, "", False)),
    ("enforce-403-before-413", CONFIG, "POST", "/enforce/a", [EVIL], False, 11, (403, "origin-not-allowed: CORS request denied", False)),
    ("websocket-tunnelled", CONFIG, "GET", "/cors/ws", [APP], True, None, ("tunnel", UPSTREAM_4000)),
    ("websocket-denied-by-enforce-403", CONFIG, "GET", "/enforce/ws", [EVIL], True, None,
     (403, "origin-not-allowed: CORS request denied", False)),
    ("options-asterisk-204", CONFIG, "OPTIONS", "*", [], False, None, (204, "", False)),
    ("no-upstream-404", NO_UPSTREAM_CONFIG, "GET", "/elsewhere", [], False, None,
     (404, "not-found: no route matches and no upstream is configured", True)),
    ("no-upstream-but-route-has-one", NO_UPSTREAM_CONFIG, "GET", "/only/a", [], False, None, ("forward", UPSTREAM_4000)),
]


@pytest.mark.parametrize("config, method, path, headers, websocket, length, expected",
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_plan(config, method, path, headers, websocket, length, expected):
    _, action = planned(config, method, path, headers, websocket, length)
    if expected[0] in ("forward", "tunnel"):
        assert type(action) is (Forward if expected[0] == "forward" else Tunnel)
        assert action.upstream.url == expected[1]
    else:
        assert isinstance(action, Answer)
        assert (action.status, action.body, action.closes) == expected


def test_options_asterisk_answer_names_the_methods_coxp_relays():
    decision, action = planned(CONFIG, "OPTIONS", "*")
    assert action is OPTIONS_ASTERISK
    headers, body = answer_response(decision, action)
    assert ("Allow", "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH") in headers.headers
    assert body == b"" and "allow" not in headers.set_names


def test_413_and_404_carry_the_routes_policy_headers_and_a_text_body():
    decision, action = planned(CONFIG, "POST", "/cors/a", [APP], content_length=11)
    assert action is BODY_TOO_LARGE
    headers, body = answer_response(decision, action)
    assert body == b"body-too-large\n"
    assert ("Access-Control-Allow-Origin", "https://app.test") in headers.headers
    assert ("Content-Length", str(len(body))) in headers.headers

    decision, action = planned(NO_UPSTREAM_CONFIG, "GET", "/x")
    assert action is NO_UPSTREAM


def test_websocket_handshake_gets_no_cors_headers():
    """The 101 of an allowed WebSocket handshake carries no CORS headers (browsers do not use
    CORS for WebSockets): the tunnel's edits are the header tables' only."""
    decision, action = planned(CONFIG, "GET", "/cors/ws", [APP], websocket=True)
    assert type(action) is Tunnel
    assert all(edit.table != "cors" for edit in decision.edits)


def allowed_edits():
    decision, _ = planned(CONFIG, "GET", "/cors/a", [APP])
    return decision.edits


def test_a_relayed_head_is_the_upstream_head_without_hop_by_hop_fields_edited_and_serialized():
    edits = allowed_edits()
    upstream = [("Date", "one"), ("Connection", "keep-alive, X-Internal"), ("Keep-Alive", "timeout=5"),
                ("X-Internal", "1"), ("Access-Control-Allow-Origin", "*"), ("ETag", "a")]
    edited, lines = relayed_head(edits, upstream, None)
    assert edited == apply_edits(edits, [("Date", "one"), ("Access-Control-Allow-Origin", "*"), ("ETag", "a")])
    assert lines == field_lines(edited.headers)


def test_a_remembered_relay_plan_takes_each_response_own_values():
    """The second response with the same header names is relayed from the remembered plan; its
    own values are kept, and a Vary (whose value is merged) is never planned by name."""
    edits = allowed_edits()
    first, _ = relayed_head(edits, [("Date", "one"), ("Access-Control-Allow-Origin", "*"), ("ETag", "a")], None)
    second, lines = relayed_head(edits, [("Date", "two"), ("Access-Control-Allow-Origin", "*"), ("ETag", "b")], None)
    assert second.headers == [("Date", "two"), ("ETag", "b")] + first.headers[2:]
    assert (second.set_names, second.removed_names) == (first.set_names, first.removed_names)
    assert ("Access-Control-Allow-Origin", "https://app.test") in second.headers
    assert lines == field_lines(second.headers)
    for upstream_vary in ("Accept-Encoding", "Cookie", "Origin"):
        edited, lines = relayed_head(edits, [("Date", "x"), ("Vary", upstream_vary)], None)
        expected = upstream_vary if upstream_vary == "Origin" else f"{upstream_vary}, Origin"
        assert [v for n, v in edited.headers if n == "Vary"] == [expected]
        assert lines == field_lines(edited.headers)


def test_a_relay_plan_is_not_used_for_a_head_whose_connection_names_other_fields():
    """Connection's value decides which fields are hop-by-hop (RFC 9110 §7.6.1): a plan made for
    `Connection: keep-alive` must not relay a field that another response's Connection names."""
    edits = allowed_edits()
    names = ("Date", "Connection", "X-Internal")
    plain, _ = relayed_head(edits, list(zip(names, ("one", "keep-alive", "1"), strict=True)), None)
    assert ("X-Internal", "1") in plain.headers
    named, lines = relayed_head(edits, list(zip(names, ("two", "X-Internal", "2"), strict=True)), None)
    assert [h for h in named.headers if h[0] in names] == [("Date", "two")]
    assert b"X-Internal" not in lines


# --- through real sockets: each upstream response relayed from its own values -------------------


def sequence_upstream(raw_upstream, answers: list[bytes]):
    """A RawUpstream answering the requests it gets, on whatever connections, with `answers` in
    order; it closes a connection after an answer that says `Connection: close`."""
    pending = iter(answers)

    async def serve(reader, writer, head) -> None:
        for answer in pending:
            writer.write(answer)
            await writer.drain()
            if b"\r\nConnection: close\r\n" in answer:
                return
            await reader.readuntil(b"\r\n\r\n")

    return raw_upstream(serve)


CORS = '[[routes]]\nname = "api"\npaths = ["/*"]\n[routes.cors]\nallow_origins = ["https://a.test"]\n'
GET_A = request_bytes("GET", "/r", [("Origin", "https://a.test")], host="proxy.test")


def test_responses_with_the_same_field_names_are_relayed_each_from_its_own_connection_values(coxp, raw_upstream):
    """The same names, in the same order, five times (one remembered relay plan); each
    Connection value names its own hop-by-hop fields, `close` ends only the upstream connection,
    repeated fields keep their own values and order."""
    connections = ["X-A", "X-B", "keep-alive", "close", "x-a, keep-alive"]
    answers = [(f"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: {connection}\r\nX-A: a{i}\r\nX-B: b{i}\r\n"
                f"X-D: d{i}\r\nX-D: e{i}\r\n\r\n{i}").encode() for i, connection in enumerate(connections)]
    server = sequence_upstream(raw_upstream, answers)
    proxy = coxp(config_text(server.url, extra=CORS))
    with proxy.connect() as sock:
        reader = Reader(sock)
        for i, connection in enumerate(connections):
            sock.sendall(GET_A)
            response = reader.response()
            dropped = {t.strip().lower() for t in connection.split(",")}
            expected = [(name, f"{name[-1].lower()}{i}") for name in ("X-A", "X-B") if name.lower() not in dropped]
            assert [h for h in response.headers if h[0] in ("X-A", "X-B")] == expected, connection
            assert (response.values("x-d"), response.body) == ([f"d{i}", f"e{i}"], str(i).encode()), connection
            assert response.value("access-control-allow-origin") == "https://a.test"
            assert response.value("connection") is None, connection  # the client's connection stays
    assert len(server.heads) == 2  # the upstream's close ended its first connection


def test_vary_set_cookie_and_location_are_edited_from_each_response_own_values(coxp, raw_upstream):
    cookies = '[routes.cookies]\nsamesite = "none"\nsecure = true\n'
    answers: list[bytes] = []
    server = sequence_upstream(raw_upstream, answers)
    own = f"http://127.0.0.1:{server.port}"
    for vary, cookie, location in (("Accept", "a=1; Path=/", f"{own}/one"), ("Cookie", "b=2", "/two"),
                                   ("Accept-Language", "c=3; HttpOnly", f"{own}/three?x")):
        answers.append(f"HTTP/1.1 302 Found\r\nContent-Length: 0\r\nVary: {vary}\r\nSet-Cookie: {cookie}\r\n"
                       f"Location: {location}\r\n\r\n".encode())
    expected = [("Accept, Origin", "a=1; Path=/; SameSite=None; Secure", "http://proxy.test/one"),
                ("Cookie, Origin", "b=2; SameSite=None; Secure", "/two"),
                ("Accept-Language, Origin", "c=3; HttpOnly; SameSite=None; Secure", "http://proxy.test/three?x")]
    proxy = coxp(config_text(server.url, extra=CORS + cookies))
    with proxy.connect() as sock:
        reader = Reader(sock)
        for vary, cookie, location in expected:
            sock.sendall(GET_A)
            response = reader.response()
            got = (response.values("vary"), response.values("set-cookie"), response.values("location"))
            assert got == ([vary], [cookie], [location])


def test_200_304_204_with_the_same_field_names_keep_their_framing(coxp, raw_upstream):
    """A 304 and a 204 after a 200 with the same names: neither gets a body, the 204 loses its
    Content-Length (RFC 9110 §8.6), and the connection carries the next 200 intact."""
    answers = [b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nETag: \"%d\"\r\n\r\n" % (status, length, i) + body
               for i, (status, length, body) in enumerate([(200, 3, b"abc"), (304, 3, b""), (204, 0, b""),
                                                          (200, 2, b"de")])]
    server = sequence_upstream(raw_upstream, answers)
    proxy = coxp(config_text(server.url, extra=CORS))
    with proxy.connect() as sock:
        reader = Reader(sock)
        got = []
        for _ in answers:
            sock.sendall(GET_A)
            response = reader.response()
            got.append((response.status, response.values("content-length"), response.value("etag"), response.body))
    assert got == [(200, ["3"], '"0"', b"abc"), (304, ["3"], '"1"', b""), (204, [], '"2"', b""),
                   (200, ["2"], '"3"', b"de")]
    assert len(server.heads) == 1


def test_a_known_head_is_relayed_from_memory_per_edits_and_own_origin():
    """A head whose fields object is remembered (`UpstreamResponse.known_fields`) is relayed from
    memory: the same as without, for each edits (allowed, denied) and each own origin (a
    redirect to the upstream points at the request's own origin)."""
    known = (("Location", "http://127.0.0.1:4000/next"), ("Vary", "Accept"), ("Date", "x"))
    allowed, denied = allowed_edits(), planned(CONFIG, "GET", "/cors/a", [EVIL])[0].edits
    for edits in (allowed, denied):
        for own_origin in ("https://one.test", "https://two.test"):
            expected = relayed_head(edits, list(known), own_origin)
            for _ in range(2):  # the second from memory
                assert relayed_head(edits, list(known), own_origin, known) == expected
    relayed, _ = relayed_head(allowed, list(known), "https://two.test", known)
    assert ("Location", "https://two.test/next") in relayed.headers
    assert ("Vary", "Accept, Origin") in relayed.headers


def test_one_known_upstream_head_is_relayed_to_each_request_own_origin(coxp, raw_upstream):
    """Byte-identical upstream heads (remembered by their bytes, relayed from memory) answering
    byte-identical requests but for their Host (no Origin: one decision's edits serve them all),
    alternating: each Location points at its own request's origin."""
    answers: list[bytes] = []
    server = sequence_upstream(raw_upstream, answers)
    head = (f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{server.port}/next\r\nVary: Accept\r\n"
            "Content-Length: 0\r\n\r\n").encode()
    hosts = ["a.test", "b.test:8080", "a.test", "b.test:8080"]
    answers.extend([head] * len(hosts))
    proxy = coxp(config_text(server.url, extra=CORS))
    with proxy.connect() as sock:
        reader = Reader(sock)
        for host in hosts:
            sock.sendall(request_bytes("GET", "/r", host=host))
            assert reader.response().values("location") == [f"http://{host}/next"]
