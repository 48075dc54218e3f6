"""Differential tests of the request-head parser (`proxy.http1.parse_head`).

coxp keeps its own parser because it names every refusal; here it is held to a well-kept one,
llhttp (Node.js's parser, through `httptools`, in its default strict mode). Random and mutated
heads go through both: every head coxp accepts must be accepted by llhttp with the same method,
target, header list and framing. coxp may refuse more (it is stricter on purpose: Host syntax,
`%` escapes, obs-text in targets...), never less.

The deliberate differences (ALLOWED below), each undone on the copy llhttp reads, so that the
rest of the head must still agree:
* an identical repeated `Content-Length` (`5, 5` or two `5` lines): one message length either
  way (RFC 9110 §8.6 allows a recipient to accept it); coxp forwards a single `Content-Length`.
* a method that is a token but not one llhttp knows (`FROB`, `get`): RFC 9110 §9.1 allows any
  token; the method does not change request framing, and coxp forwards it as is.
* empty elements in a `Transfer-Encoding` list (`chunked,`): RFC 9110 §5.6.1 says to ignore
  them; coxp never forwards the field (it re-frames the body).
* an `Upgrade` that is not a WebSocket handshake (`h2c`, or no `upgrade` Connection token):
  coxp drops it with the hop-by-hop headers and reads an ordinary request, which is also what
  it forwards; llhttp reads everything after such a head as the new protocol.
Values are compared without trailing SP/HTAB, which llhttp keeps and RFC 9110 §5.5 excludes
from the field value.

A second property: the regex fast path and the line-by-line parser accept exactly the same
heads, with the same result, and refuse the others for the same reason.
"""
from __future__ import annotations

import re

import httptools
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from proxy.http1 import BadRequest, RequestHead, head_end, parse_head
from proxy.model import Limits

LIMITS = Limits()

# Each part of a head has usual values and odd ones (the ones parsers are known to disagree on).
# A head takes at most two odd parts, so that the oddities meet heads that would otherwise be
# accepted, and a mutation (a byte inserted, replaced or deleted) now and then.
USUAL = {
    "method": ["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"],
    "target": ["/", "/a", "/a?b=c&d", "/a/b.html", "/api/v1/x?y=%20"],
    "version": ["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"],
    "host": ["a.test", "a.test:80", "[::1]:8080", "127.0.0.1"],
    "name": ["X-A", "Accept", "Cookie", "Content-Length", "Transfer-Encoding", "Connection", "Upgrade", "Expect"],
    "separator": [": ", ":"],
    "value": ["5", "0", "text/html", "chunked", "keep-alive", "close", "upgrade", "websocket", "100-continue", "a b"],
}
ODD = {
    "method": ["PURGE", "PROPFIND", "QUERY", "FROB", "get", "M-SEARCH", "CONNECT", "G\tT", "GET/", "", "G@T", "G\xe9T"],
    "target": ["*", "/a#f", "http://a.test/", "a.test:443", "/%61dmin", "/a%zz", "/a%2", "//admin/..", "/a\"b",
               "/{}|^`", "/a\x00", "/\xff", "/a b", "/a\tb", "/~%7e?%zz", "/;x=1/..;/y", "/\\a", "/a?\x7f", "/a?\xe9"],
    "version": ["HTTP/1.2", "HTTP/2.0", "http/1.1", "HTTP/01.1", "HTTP/1.10", "HTTP/1", "HTTP/1.1 ", "HTTP/0.9"],
    "host": ["a.test.", "a.test, b.test", "x@a.test", "", "a b", "a.test:", "[::1", "caf\xe9.test", "a_b.test"],
    "name": ["Host", "host", "CONTENT-LENGTH", "transfer-encoding", "Host ", " Host", "Transfer_Encoding", "X\x00",
             "", "X:Y", "\xff", "Content-Length\t", "X.Y~z!", "Transfer-Encoding\x0b"],
    "separator": [":\t", " :", ":  ", ":\t \t", "::"],
    "value": ["", "05", "5, 5", "5,5", "5,6", "-1", "+5", "0x5", "5\xa0", "\xa05", "5\x85", "1" * 20, "Chunked",
              "chunked, chunked", "gzip, chunked", "chunked, gzip", ",", ", chunked", "chunked,", "\xa0chunked",
              "chunked\x00", "identity", "Upgrade, keep-alive", "h2c", "websocket, h2c", "a\x01b", "a\x7fb",
              "caf\xe9", "a\tb", " padded \t", "\"q\"", "a\rb", "a\nb", "a.test"],
}
# Bytes that mutations insert or put in place of another.
MUTATION_BYTES = [b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x00", b":", b",", b";", b"\xa0", b"\x0b", b"\x0c", b"a", b"0", b"%"]

ALLOWED = ("repeated-content-length", "unknown-method", "empty-transfer-encoding-element", "non-websocket-upgrade")


ODD_KINDS = sorted(ODD) + ["mutation", "no-host", "bytes"]


def build_head(choices: bytes) -> bytes:
    """A request head with at most two odd parts, sometimes mutated, ending in a blank line.

    Every choice is read from `choices`, one byte each: hypothesis draws them in one piece (fast
    enough for 10,000 heads) and shrinks them towards zero bytes, which pick the usual values.
    """
    byte = iter(choices)

    def pick(options):
        return options[next(byte) % len(options)]

    # Byte 0 or 1 of each pair: no odd part there; half the heads have one or two.
    odd = {pick([None] * len(ODD_KINDS) + ODD_KINDS), pick([None] * 3 * len(ODD_KINDS) + ODD_KINDS)}
    fields = pick([0, 1, 2, 3, 4])
    odd_field = pick(range(max(fields, 1)))

    def part(kind: str, odd_here: bool = True) -> str:
        return pick(ODD[kind] if kind in odd and odd_here else USUAL[kind])

    lines = [f"{part('method')} {part('target')} {part('version')}"]
    if "no-host" not in odd:
        lines.append("Host: " + part("host"))
    for index in range(fields):
        here = index == odd_field
        lines.append(part("name", here) + part("separator", here) + part("value", here))
    if "bytes" in odd:  # a few arbitrary bytes somewhere in the last line
        line = lines[-1]
        at = next(byte) % (len(line) + 1)
        lines[-1] = line[:at] + bytes([next(byte), next(byte)]).decode("latin-1") + line[at:]
    raw = bytearray(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if "mutation" in odd:
        at = (next(byte) << 8 | next(byte)) % max(len(raw) - 4, 1)  # the final blank line stays
        kind = pick(["insert", "replace", "delete"])
        raw[at:at + (0 if kind == "insert" else 1)] = b"" if kind == "delete" else pick(MUTATION_BYTES)
    return bytes(raw)


# More bytes than a head can use (2 + 2 + 3 + 4 fields x 3 + 3 + 4).
heads = st.binary(min_size=32, max_size=32).map(build_head)


class Recorder:
    """httptools callbacks: what llhttp read."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_complete = False
        self.body = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_complete = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def coxp_parse(raw: bytes) -> RequestHead | BadRequest:
    """coxp's reading of the head `raw`, both ways (fast path and line by line), checked to agree."""
    outcomes = []
    for fast in (True, False):
        try:
            outcomes.append(parse_head(raw, LIMITS, fast_path=fast))
        except BadRequest as refused:
            outcomes.append((refused.status, refused.reason))
    assert outcomes[0] == outcomes[1], f"fast path and line-by-line parser disagree on {raw!r}: {outcomes}"
    if isinstance(outcomes[0], tuple):
        return BadRequest(*outcomes[0])
    return outcomes[0]


_CONTENT_LENGTH_LINE = re.compile(rb"^content-length:.*\r\n", re.I | re.M)
_UPGRADE_LINE = re.compile(rb"^upgrade:.*\r\n", re.I | re.M)
_TRANSFER_ENCODING_LINE = re.compile(rb"^transfer-encoding:.*\r\n", re.I | re.M)


def as_llhttp_should_read(raw: bytes, head: RequestHead) -> tuple[bytes, list[str]]:
    """`raw` with the ALLOWED differences undone, and the names of those that applied."""
    applied = []
    length_lines = _CONTENT_LENGTH_LINE.findall(raw)
    if head.content_length is not None and (len(length_lines) > 1 or b"," in length_lines[0]):
        applied.append("repeated-content-length")
        raw = _CONTENT_LENGTH_LINE.sub(b"", raw)
        raw = raw[:-2] + b"Content-Length: %d\r\n\r\n" % head.content_length
    if head.chunked and any(b"," in line for line in _TRANSFER_ENCODING_LINE.findall(raw)):
        applied.append("empty-transfer-encoding-element")
        raw = _TRANSFER_ENCODING_LINE.sub(lambda line: line[0].partition(b":")[0] + b": chunked\r\n", raw)
    if not head.websocket and _UPGRADE_LINE.search(raw):
        applied.append("non-websocket-upgrade")
        raw = _UPGRADE_LINE.sub(b"", raw)
    return raw, applied


def llhttp(raw: bytes, head: RequestHead) -> tuple[Recorder, httptools.HttpRequestParser, list[str]]:
    raw, applied = as_llhttp_should_read(raw, head)
    recorder = Recorder()
    parser = httptools.HttpRequestParser(recorder)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserInvalidMethodError:
        # A token method llhttp does not know: read the same head with a method it knows.
        applied.append("unknown-method")
        raw = b"POST" + raw[len(head.method):]
        recorder = Recorder()
        parser = httptools.HttpRequestParser(recorder)
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass  # asserted by the caller: coxp must have read a WebSocket handshake
    return recorder, parser, applied


def without_dropped(head: RequestHead, applied: list[str]) -> list[tuple[bytes, bytes]]:
    """coxp's header list as llhttp reads it after `as_llhttp_should_read`."""
    out = []
    for name, value in head.headers:
        lower = name.lower()
        if lower == "content-length" and "repeated-content-length" in applied:
            continue
        if lower == "upgrade" and "non-websocket-upgrade" in applied:
            continue
        if lower == "transfer-encoding" and "empty-transfer-encoding-element" in applied:
            value = "chunked"
        out.append((name.encode("latin-1"), value.encode("latin-1")))
    if "repeated-content-length" in applied:
        out.append((b"Content-Length", str(head.content_length).encode()))
    return out


def check_llhttp_agrees(raw: bytes, record=event) -> None:
    """llhttp reads every head coxp accepts as coxp does; `record` counts outcomes (hypothesis's
    `event` statistics, shown with --hypothesis-show-statistics)."""
    try:
        end = head_end(raw, LIMITS)
    except BadRequest as refused:
        record(f"coxp refuses: {refused.reason}")
        return
    raw = raw[:end]  # a mutation may have made an earlier blank line: the head ends there
    head = coxp_parse(raw)
    if isinstance(head, BadRequest):
        record(f"coxp refuses: {head.reason}")
        return
    record("coxp accepts")
    recorder, parser, applied = llhttp(raw, head)
    for difference in applied:
        assert difference in ALLOWED
        record(f"allowed difference: {difference}")
    assert recorder.headers_complete, f"llhttp did not finish the head coxp accepted: {raw!r}"
    if "unknown-method" not in applied:
        assert parser.get_method().decode() == head.method
    assert recorder.url.decode("latin-1") == head.target
    assert parser.get_http_version() == f"1.{head.http_minor}"
    llhttp_headers = [(name, value.rstrip(b" \t")) for name, value in recorder.headers]
    assert llhttp_headers == without_dropped(head, applied)
    # Framing: where llhttp ends the message, given the body coxp would read.
    if head.websocket:
        assert parser.should_upgrade(), "coxp tunnels a WebSocket llhttp does not see as an upgrade"
        return
    assert not parser.should_upgrade()
    if head.chunked:
        assert not recorder.complete
        parser.feed_data(b"5\r\nhello\r\n0\r\n\r\n")
        assert (recorder.body, recorder.complete) == (b"hello", True)
    elif head.content_length:
        assert not recorder.complete
        if head.content_length > 1 << 20:  # a huge length: llhttp waits for more after a first piece too
            parser.feed_data(b"x" * 1024)
            assert not recorder.complete
            return
        parser.feed_data(b"x" * (head.content_length - 1))
        assert not recorder.complete
        parser.feed_data(b"x")
        assert (len(recorder.body), recorder.complete) == (head.content_length, True)
    else:
        assert recorder.complete and recorder.body == b""


# 10,000 examples in a few seconds of parsing: the time goes to generating them.
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads)
def test_every_head_coxp_accepts_llhttp_reads_the_same_way(raw):
    check_llhttp_agrees(raw)


@settings(max_examples=2_000, deadline=None)
@given(st.binary(max_size=120).map(lambda b: b"GET / HTTP/1.1\r\nHost: a.test\r\n" + b + b"\r\n\r\n"))
def test_random_bytes_in_the_field_block(raw):
    check_llhttp_agrees(raw)


ALLOWED_CASES = [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", "repeated-content-length"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", "repeated-content-length"),
    (b"FROB / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n", "unknown-method"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n", "empty-transfer-encoding-element"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n", "non-websocket-upgrade"),
]


@pytest.mark.parametrize("raw, difference", ALLOWED_CASES, ids=[case[1] for case in ALLOWED_CASES])
def test_each_allowed_difference_is_reached_and_framing_still_agrees(raw, difference):
    head = coxp_parse(raw)
    assert isinstance(head, RequestHead)
    assert difference in llhttp(raw, head)[2]
    check_llhttp_agrees(raw, record=lambda _: None)
