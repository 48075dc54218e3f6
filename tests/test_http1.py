"""The strict request-head parser and chunked decoder (`proxy.http1`), as tables and properties."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http1 import BadRequest, ChunkedDecoder, head_end, no_body_status, parse_head
from proxy.model import Limits

LIMITS = Limits(max_request_line=64, max_header_bytes=256, max_headers=4)


def parse(raw: bytes, limits: Limits = LIMITS):
    """`parse_head`, checked to give the same result (or refusal) line by line as on its fast path."""
    end = head_end(raw, limits)
    assert end == len(raw), f"head ends at {end} of {len(raw)}"
    try:
        line_by_line = parse_head(raw, limits, fast_path=False)
    except BadRequest as refused:
        with pytest.raises(BadRequest) as also_refused:
            parse_head(raw, limits)
        assert (also_refused.value.status, also_refused.value.reason) == (refused.status, refused.reason)
        raise
    assert parse_head(raw, limits) == line_by_line
    return line_by_line


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- well-formed heads ------------------------------------------------------------------------------

ACCEPTED = [
    # raw head, (method, target, path, host, content_length, chunked, keep_alive, websocket)
    (head("GET / HTTP/1.1", "Host: a.test"), ("GET", "/", "/", "a.test", None, False, True, False)),
    (head("GET /a%2Fb//c?x=%2F&& HTTP/1.1", "Host: a.test:8080"),
     ("GET", "/a%2Fb//c?x=%2F&&", "/a%2Fb//c", "a.test:8080", None, False, True, False)),
    (head("POST /p HTTP/1.1", "host: a.test", "Content-Length: 5"), ("POST", "/p", "/p", "a.test", 5, False, True, False)),
    (head("POST /p HTTP/1.1", "Host: a.test", "Content-Length: 5", "Content-Length: 5"),
     ("POST", "/p", "/p", "a.test", 5, False, True, False)),
    (head("POST /p HTTP/1.1", "Host: a.test", "Transfer-Encoding: Chunked"), ("POST", "/p", "/p", "a.test", None, True, True, False)),
    (head("GET / HTTP/1.1", "Host: a.test", "Connection: close"), ("GET", "/", "/", "a.test", None, False, False, False)),
    (head("GET / HTTP/1.0", "Host: a.test"), ("GET", "/", "/", "a.test", None, False, False, False)),
    (head("GET / HTTP/1.0", "Host: a.test", "Connection: Keep-Alive"), ("GET", "/", "/", "a.test", None, False, True, False)),
    (head("GET /ws HTTP/1.1", "Host: a.test", "Connection: keep-alive, Upgrade", "Upgrade: websocket"),
     ("GET", "/ws", "/ws", "a.test", None, False, True, True)),
    (head("OPTIONS * HTTP/1.1", "Host: a.test"), ("OPTIONS", "*", "*", "a.test", None, False, True, False)),
    (head("FROB-NICATE_1 /x HTTP/1.1", "Host: a.test"), ("FROB-NICATE_1", "/x", "/x", "a.test", None, False, True, False)),
    # RFC 9110 §5.6.1: empty list elements are ignored.
    (head("POST /p HTTP/1.1", "Host: a.test", "Transfer-Encoding: , chunked"), ("POST", "/p", "/p", "a.test", None, True, True, False)),
    (head("POST /p HTTP/1.1", "Host: a.test", "Transfer-Encoding: chunked,"), ("POST", "/p", "/p", "a.test", None, True, True, False)),
    (head("POST /p HTTP/1.1", "Host: a.test", "Content-Length: \t5 "), ("POST", "/p", "/p", "a.test", 5, False, True, False)),
    # Hosts: a DNS-style name (with "_"), IPv4, [IPv6], a trailing dot, each with or without a port.
    (head("GET / HTTP/1.1", "Host: my_host.a-b.test.:80"), ("GET", "/", "/", "my_host.a-b.test.:80", None, False, True, False)),
    (head("GET / HTTP/1.1", "Host: 192.0.2.1"), ("GET", "/", "/", "192.0.2.1", None, False, True, False)),
    (head("GET / HTTP/1.1", "Host: [::1]:8080"), ("GET", "/", "/", "[::1]:8080", None, False, True, False)),
]


@pytest.mark.parametrize("raw, expected", ACCEPTED)
def test_accepted_heads(raw, expected):
    parsed = parse(raw)
    assert (parsed.method, parsed.target, parsed.path, parsed.host, parsed.content_length, parsed.chunked,
            parsed.keep_alive, parsed.websocket) == expected


def test_header_values_keep_case_and_inner_spaces_but_lose_outer_whitespace():
    parsed = parse(head("GET / HTTP/1.1", "Host: a.test", "X-A: \t one  Two \t", "x-b:", "X-C: caf\xe9"))
    assert parsed.headers == [("Host", "a.test"), ("X-A", "one  Two"), ("x-b", ""), ("X-C", "caf\xe9")]


def test_expect_continue_and_connection_tokens():
    parsed = parse(head("PUT / HTTP/1.1", "Host: a", "Content-Length: 1", "Expect: 100-Continue", "Connection: X-Foo, keep-alive"))
    assert parsed.expect_continue and parsed.connection_tokens == {"x-foo", "keep-alive"}


# --- refused heads ----------------------------------------------------------------------------------

REFUSED = [
    (head("GET / HTTP/1.1"), 400, "missing-host"),
    (head("GET / HTTP/1.1", "Host: a", "Host: b"), 400, "repeated-host"),
    (head("GET / HTTP/1.1", "Host: a", "HOST: a"), 400, "repeated-host"),
    (head("POST / HTTP/1.1", "Host: a", "Content-Length: 1", "Transfer-Encoding: chunked"), 400, "content-length-with-transfer-encoding"),
    (head("POST / HTTP/1.1", "Host: a", "Content-Length: 1", "Content-Length: 2"), 400, "conflicting-content-length"),
    (head("POST / HTTP/1.1", "Host: a", "Content-Length: 1, 2"), 400, "conflicting-content-length"),
    (head("POST / HTTP/1.1", "Host: a", "Content-Length: -1"), 400, "malformed-content-length"),
    (head("POST / HTTP/1.1", "Host: a", "Content-Length: 0x10"), 400, "malformed-content-length"),
    (head("POST / HTTP/1.1", "Host: a", "Content-Length: \xb2"), 400, "malformed-content-length"),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: gzip"), 400, "transfer-encoding-not-chunked"),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked, identity"), 400, "transfer-encoding-not-chunked"),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: gzip, chunked"), 501, "transfer-coding-not-supported"),
    (head("POST / HTTP/1.0", "Host: a", "Transfer-Encoding: chunked"), 400, "transfer-encoding-in-http-1.0"),
    (head("GET / HTTP/1.1", "Host: a", "X: a\x01b"), 400, "control-character-in-header-value"),
    (head("GET / HTTP/1.1", "Host: a", "X: a\x7fb"), 400, "control-character-in-header-value"),
    (head("GET / HTTP/1.1", "Host: a", "X: a", " folded"), 400, "obsolete-line-folding"),
    (head("GET / HTTP/1.1", "Host: a", "X: a", "\tfolded"), 400, "obsolete-line-folding"),
    (head("GET / HTTP/1.1", "Host: a", "X : a"), 400, "malformed-header-field"),
    (head("GET / HTTP/1.1", "Host: a", "no colon"), 400, "malformed-header-field"),
    (head("GET / HTTP/1.1", "Host: a", ": empty name"), 400, "malformed-header-field"),
    (head("GET / HTTP/1.1", "Host: a", "X\x00: a"), 400, "malformed-header-field"),
    (head("GET http://a/ HTTP/1.1", "Host: a"), 400, "request-target-not-origin-form"),
    (head("GET * HTTP/1.1", "Host: a"), 400, "request-target-not-origin-form"),
    (head("GET /a#f HTTP/1.1", "Host: a"), 400, "malformed-request-target"),
    (head("GET /\xe9 HTTP/1.1", "Host: a"), 400, "malformed-request-target"),
    (head("GET / HTTP/1.1 extra", "Host: a"), 400, "malformed-request-line"),
    (head("GET  / HTTP/1.1", "Host: a"), 400, "malformed-request-line"),
    (head("G(T / HTTP/1.1", "Host: a"), 400, "malformed-method"),
    (head("GET / HTTP/1.10", "Host: a"), 400, "malformed-http-version"),
    (head("GET / http/1.1", "Host: a"), 400, "malformed-http-version"),
    (head("GET / HTTP/2.0", "Host: a"), 505, "http-version-not-supported"),
    (head("GET / HTTP/1.2", "Host: a"), 505, "http-version-not-supported"),
    (head("GET / HTTP/1.9", "Host: a"), 505, "http-version-not-supported"),
    (head("GET / HTTP/1.1", "Host: a", "X: \rb"), 400, "bare-cr-or-lf"),
    (head("GET / HTTP/1.1", "Host: a", "A: 1", "B: 2", "C: 3", "D: 4"), 431, "too-many-headers"),
    # CONNECT in any form, before anything else is judged (even a missing Host).
    (head("CONNECT a:443 HTTP/1.1", "Host: a"), 405, "connect-not-allowed"),
    (head("CONNECT /api/x HTTP/1.1", "Host: a", "Content-Length: 5"), 405, "connect-not-allowed"),
    (head("CONNECT http://a/ HTTP/1.1", "Host: a"), 405, "connect-not-allowed"),
    (head("CONNECT * HTTP/1.1"), 405, "connect-not-allowed"),
    (head("connect /x HTTP/1.1", "Host: a"), 405, "connect-not-allowed"),
    # Upgrade: one line, and websocket alone when it is named at all.
    (head("GET / HTTP/1.1", "Host: a", "Connection: upgrade", "Upgrade: h2c", "Upgrade: websocket"), 400, "repeated-upgrade"),
    (head("GET / HTTP/1.1", "Host: a", "Upgrade: websocket", "Upgrade: websocket"), 400, "repeated-upgrade"),
    (head("POST / HTTP/1.1", "Host: a", "Upgrade: foo", "Upgrade: bar"), 400, "repeated-upgrade"),
    (head("GET / HTTP/1.1", "Host: a", "Connection: upgrade", "Upgrade: h2c, websocket"), 400, "ambiguous-upgrade"),
    (head("GET / HTTP/1.1", "Host: a", "Connection: upgrade", "Upgrade: websocket, websocket"), 400, "ambiguous-upgrade"),
    # Field values are trimmed of SP and HTAB only (RFC 9110 §5.6.3), never of \xa0 or \x85.
    (head("POST / HTTP/1.1", "Host: a", "Content-Length: 5\xa0"), 400, "malformed-content-length"),
    (head("POST / HTTP/1.1", "Host: a", "Content-Length: \xa05"), 400, "malformed-content-length"),
    (head("POST / HTTP/1.1", "Host: a", "Content-Length: 5\x85"), 400, "malformed-content-length"),
    (head("POST / HTTP/1.1", "Host: a", "Content-Length: 5, "), 400, "malformed-content-length"),
    (head("POST / HTTP/1.1", "Host: a", "Content-Length: "), 400, "malformed-content-length"),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: \xa0chunked"), 400, "transfer-encoding-not-chunked"),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked\x85"), 400, "transfer-encoding-not-chunked"),
    # A Transfer-Encoding with no coding at all: absent to some servers, chunked to others.
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: ,"), 400, "transfer-encoding-without-coding"),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding:"), 400, "transfer-encoding-without-coding"),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: \t, ,"), 400, "transfer-encoding-without-coding"),
    (head("POST / HTTP/1.1", "Host: a", "Content-Length: 3", "Transfer-Encoding: ,"), 400, "transfer-encoding-without-coding"),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding:", "Content-Length: 3"), 400, "transfer-encoding-without-coding"),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding:", "Transfer-Encoding: chunked"), 400, "transfer-encoding-without-coding"),
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked", "Transfer-Encoding: ,"), 400, "transfer-encoding-without-coding"),
    # A line with no coding beside one that names `chunked`: llhttp refuses what coxp would read.
    (head("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: ,", "Transfer-Encoding: chunked,"), 400, "transfer-encoding-without-coding"),
    # Host is host[:port] and nothing else.
    (head("GET / HTTP/1.1", "Host: x@a.test"), 400, "invalid-host"),
    (head("GET / HTTP/1.1", "Host: a.test,b.test"), 400, "invalid-host"),
    (head("GET / HTTP/1.1", "Host: a.test, evil.example"), 400, "invalid-host"),
    (head("GET / HTTP/1.1", "Host: a b"), 400, "invalid-host"),
    (head("GET / HTTP/1.1", "Host:"), 400, "invalid-host"),
    (head("GET / HTTP/1.1", "Host: :80"), 400, "invalid-host"),
    (head("GET / HTTP/1.1", "Host: a.test:"), 400, "invalid-host"),
    (head("GET / HTTP/1.1", "Host: a.test:80x"), 400, "invalid-host"),
    (head("GET / HTTP/1.1", "Host: a%2ftest"), 400, "invalid-host"),
    (head("GET / HTTP/1.1", "Host: caf\xe9.test"), 400, "invalid-host"),
    (head("GET / HTTP/1.1", "Host: [v1.x]"), 400, "invalid-host"),
    (head("GET / HTTP/1.1", "Host: ::1"), 400, "invalid-host"),
    # A "%" in the path that is not "%XX"; the query is not the path's business.
    (head("GET /a%zz HTTP/1.1", "Host: a"), 400, "bad-escape"),
    (head("GET /a%2 HTTP/1.1", "Host: a"), 400, "bad-escape"),
    (head("GET /a% HTTP/1.1", "Host: a"), 400, "bad-escape"),
]


def test_connect_is_answered_405_with_an_allow_that_does_not_name_it():
    with pytest.raises(BadRequest) as refused:
        parse(head("CONNECT a:443 HTTP/1.1", "Host: a"))
    allow = dict(refused.value.headers)["Allow"]
    assert "GET" in allow and "CONNECT" not in allow.upper()


WEBSOCKET = [
    # (method, Connection, Upgrade) -> is it a WebSocket handshake?
    (("GET", "Upgrade", "websocket"), True),
    (("GET", "keep-alive, UPGRADE", "WebSocket"), True),
    (("GET", "upgrade", " websocket ,"), True),
    (("POST", "upgrade", "websocket"), False),
    (("GET", "keep-alive", "websocket"), False),
    (("GET", "upgrade", "h2c"), False),
    (("GET", "upgrade", "websocket/13"), False),
    (("GET", "upgrade", ""), False),
]


@pytest.mark.parametrize("request_, websocket", WEBSOCKET, ids=["|".join(r) for r, _ in WEBSOCKET])
def test_a_websocket_handshake_is_a_get_with_upgrade_in_connection_and_websocket_alone(request_, websocket):
    method, connection, upgrade = request_
    assert parse(head(f"{method} /ws HTTP/1.1", "Host: a", f"Connection: {connection}", f"Upgrade: {upgrade}")).websocket is websocket


@pytest.mark.parametrize("raw, status, reason", REFUSED, ids=[r for _, _, r in REFUSED])
def test_refused_heads(raw, status, reason):
    with pytest.raises(BadRequest) as refused:
        parse(raw)
    assert (refused.value.status, refused.value.reason) == (status, reason)


@pytest.mark.parametrize("target, path, normal_path", [
    ("/a/b?x=%zz", "/a/b", "/a/b"),
    ("/%61dmin/x", "/%61dmin/x", "/admin/x"),
    ("/api/..%2fadmin/x?q", "/api/..%2fadmin/x", "/admin/x"),
    ("*", "*", "*"),
])
def test_the_path_and_its_normalised_view(target, path, normal_path):
    parsed = parse(head(f"OPTIONS {target} HTTP/1.1", "Host: a"))
    assert (parsed.target, parsed.path, parsed.normal_path) == (target, path, normal_path)


def test_max_headers_counts_host_and_allows_exactly_the_limit():
    assert len(parse(head("GET / HTTP/1.1", "Host: a", "A: 1", "B: 2", "C: 3")).headers) == LIMITS.max_headers


# --- where a head ends, and the size limits --------------------------------------------------------


def line_of(length: int) -> bytes:
    return b"GET /" + b"a" * (length - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"


def test_head_end_waits_for_the_blank_line():
    assert head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", LIMITS) == -1
    assert head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET", LIMITS) == len(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


@pytest.mark.parametrize("complete", [True, False], ids=["whole-line", "line-still-arriving"])
def test_request_line_limit_is_exact(complete):
    tail = b"\r\nHost: a\r\n\r\n" if complete else b"\r"
    assert head_end(line_of(LIMITS.max_request_line) + tail, LIMITS) in (-1, LIMITS.max_request_line + len(tail))
    with pytest.raises(BadRequest) as refused:
        head_end(line_of(LIMITS.max_request_line + 1) + tail, LIMITS)
    assert refused.value.status == 414


def test_head_size_limit_is_exact():
    start = b"GET / HTTP/1.1\r\nHost: a\r\nX: "
    exact = start + b"v" * (LIMITS.max_header_bytes - len(start) - 4) + b"\r\n\r\n"
    assert head_end(exact, LIMITS) == LIMITS.max_header_bytes
    with pytest.raises(BadRequest) as refused:
        head_end(exact[:-4] + b"v\r\n\r\n", LIMITS)
    assert refused.value.status == 431
    with pytest.raises(BadRequest):  # refused before the end arrives: never buffered past the limit
        head_end(start + b"v" * LIMITS.max_header_bytes, LIMITS)


def test_bare_lf_in_the_request_line_is_refused_at_once():
    with pytest.raises(BadRequest) as refused:
        head_end(b"GET / HTTP/1.1\nHost: a\n\n", LIMITS)
    assert refused.value.reason == "bare-lf"


# --- chunked bodies ---------------------------------------------------------------------------------

CHUNKED_OK = [
    (b"0\r\n\r\n", b""),
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5;name=value\r\nhello\r\n6 ; a = \"q\\\"\" ;b\r\n world\r\n0\r\n\r\n", b"hello world"),
    (b"A\r\n0123456789\r\n0\r\nX-Trailer: t\r\nY: u\r\n\r\n", b"0123456789"),
    (b"000001\r\nx\r\n0\r\n\r\n", b"x"),
]

CHUNKED_BAD = [
    (b"5\r\nhelloXX", "bad-chunk-framing"),
    (b"zz\r\n", "bad-chunk-framing"),
    (b"-1\r\n", "bad-chunk-framing"),
    (b"\r\n", "bad-chunk-framing"),
    (b"5\nhello\n", "bad-chunk-framing"),
    (b"5\r\nhello\n\r\n", "bad-chunk-framing"),
    (b"1" * 17 + b"\r\n", "bad-chunk-framing"),
    (b"5 ;\rx\r\n", "bad-chunk-framing"),
    (b"f" * 5000, "bad-chunk-framing"),
    # RFC 9112 §7.1.1: whitespace only before ";", extensions are token[=token/quoted-string].
    (b"5 \r\nhello\r\n", "bad-chunk-framing"),
    (b"5;a\x00\r\nhello\r\n", "bad-chunk-framing"),
    (b"5;a=\x01\r\nhello\r\n", "bad-chunk-framing"),
    (b"5;a=\"x\x00\"\r\nhello\r\n", "bad-chunk-framing"),
    (b"5;\r\nhello\r\n", "bad-chunk-framing"),
    (b"5 x\r\nhello\r\n", "bad-chunk-framing"),
    (b"5;a=b c\r\nhello\r\n", "bad-chunk-framing"),
    # Trailer fields are checked like header fields before they are dropped.
    (b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n", "malformed-header-field"),
    (b"5\r\nhello\r\n0\r\nX: a\x01\r\n\r\n", "control-character-in-header-value"),
]


def decode(pieces: list[bytes]) -> tuple[bytes, bool, bytearray]:
    decoder, buffer, out = ChunkedDecoder(), bytearray(), bytearray()
    for piece in pieces:
        buffer += piece
        for data in decoder.feed(buffer):
            out += data
    return bytes(out), decoder.done, buffer


@pytest.mark.parametrize("wire, body", CHUNKED_OK)
def test_chunked_decoding_whole_and_byte_by_byte(wire, body):
    for pieces in ([wire], [wire[i:i + 1] for i in range(len(wire))]):
        assert decode(pieces) == (body, True, bytearray())


def test_chunked_decoder_stops_at_the_end_of_the_body():
    assert decode([b"1\r\nx\r\n0\r\n\r\nGET / HTTP/1.1"]) == (b"x", True, bytearray(b"GET / HTTP/1.1"))


@pytest.mark.parametrize("wire, reason", CHUNKED_BAD)
def test_bad_chunk_framing_is_refused(wire, reason):
    with pytest.raises(BadRequest) as refused:
        decode([wire])
    assert (refused.value.status, refused.value.reason) == (400, reason)


@pytest.mark.parametrize(
    "status, method, empty",
    [(200, "HEAD", True), (101, "GET", True), (204, "GET", True), (304, "GET", True), (200, "GET", False), (205, "GET", False)],
)
def test_statuses_without_content(status, method, empty):
    assert no_body_status(status, method) is empty


# --- properties -------------------------------------------------------------------------------------

HEAD_BYTES = st.one_of(
    st.binary(max_size=400),
    st.lists(
        st.sampled_from([b"GET", b" ", b"/", b"*", b"HTTP/1.1", b"HTTP/1.0", b"\r\n", b"\n", b"\r", b":", b"Host",
                         b"Content-Length", b"Transfer-Encoding", b"chunked", b"1", b",", b"\t", b"\x00", b"\xff", b"a"]),
        max_size=60,
    ).map(b"".join),
)


@settings(max_examples=600, deadline=None)
@given(HEAD_BYTES)
def test_random_heads_raise_nothing_but_bad_request(raw):
    try:
        end = head_end(raw, LIMITS)
        if end >= 0:
            parsed = parse_head(raw[:end], LIMITS)
            assert parsed.host is not None and not (parsed.chunked and parsed.content_length is not None)
    except BadRequest as refused:
        assert refused.status in (400, 414, 431, 501, 505) and refused.reason


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=17))
def test_random_chunked_bodies_raise_nothing_but_bad_request(wire, step):
    try:
        body, _, _ = decode([wire[i:i + step] for i in range(0, len(wire), step)])
    except BadRequest as refused:
        assert refused.status == 400 and refused.reason
    else:
        assert len(body) <= len(wire)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=8), st.integers(min_value=1, max_value=9))
def test_any_body_survives_chunked_encoding_and_decoding(chunks, step):
    wire = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    assert decode([wire[i:i + step] for i in range(0, len(wire), step)]) == (b"".join(chunks), True, bytearray())


def test_a_repeated_head_is_parsed_once_and_still_checked_against_new_limits():
    raw = b"GET /a?b HTTP/1.1\r\nHost: example.test\r\nOrigin: https://app.test\r\n\r\n"
    first = parse_head(raw, LIMITS)
    assert parse_head(raw, LIMITS) is first
    stricter = dataclasses.replace(LIMITS, max_headers=1)  # a reload with tighter limits
    with pytest.raises(BadRequest) as refused:
        parse_head(raw, stricter)
    assert refused.value.status == 431
    assert parse_head(raw + b"", LIMITS) is first
