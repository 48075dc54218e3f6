"""HTTP/1.1 request heads and chunked bodies, parsed strictly (RFC 9112).

coxp sits in front of origins it does not control, so anything two parsers could read two ways
(request smuggling material) is refused here with a precise status instead of being passed on.
Pure functions over bytes; the connection I/O lives in `proxy.connection`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus

from proxy.memo import LruCache
from proxy.model import Limits
from proxy.paths import MalformedEscape, normalised_path
from proxy.standards import OWS, QUOTED_STRING_BYTES, TOKEN, TOKEN_BYTES_RE

# RFC 9112 §3.2: the request target must not contain whitespace or control characters;
# obs-text (0x80-0xff) is refused too, so what we forward is exactly what every parser agrees on.
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
# Field values: VCHAR, obs-text, SP and HTAB; any other control character is refused (RFC 9110 §5.5).
_BAD_VALUE_CHAR = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# The fast path, over the head decoded once as latin-1: the usual request line (a token method,
# an origin-form target of visible ASCII without `#`, HTTP/1.0 or 1.1) in one match, and a
# block of well-formed field lines, each `token ":" OWS value OWS CRLF`, whose values hold
# VCHAR, obs-text, SP and HTAB (other control characters are caught by _BAD_BLOCK_CHAR).
# Anything else goes to the line-by-line parser, which names the fault.
_REQUEST_LINE = re.compile(rf"({TOKEN}) (/[\x21\x22\x24-\x7e]*) HTTP/1\.([01])")
_FIELD_BLOCK = re.compile(rf"(?:{TOKEN}:[^\r\n]*\r\n)*")
_BAD_BLOCK_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FIELD_LINE = re.compile(rf"({TOKEN}):[ \t]*([^\r\n]*?)[ \t]*\r\n")
# RFC 9112 §7.1.1: chunk-size [ chunk-ext ], chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] )
# with token names and token or quoted-string values; nothing else (no NUL, no bare text) may follow.
_CHUNK_SIZE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[ \t]*" + TOKEN_BYTES_RE.pattern
    + rb"(?:[ \t]*=[ \t]*(?:" + TOKEN_BYTES_RE.pattern + rb"|" + QUOTED_STRING_BYTES + rb"))?)*"
)
# RFC 9110 §7.2 / RFC 3986 §3.2.2, narrowed: a DNS-style name (letters, digits, "-", "_", "."),
# which covers IPv4 addresses, or an IPv6 address in brackets; then an optional ":port".
# Anything else RFC 3986 would allow in a reg-name ("a.test,b.test", "x@a.test", "%2f") only
# serves to make coxp and the upstream read different hosts.
_HOST = re.compile(r"(?:[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")

# RFC 9110 §7.6.1 plus the legacy names proxies must not forward either.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)


# What `Allow` names in coxp's own answers (`OPTIONS *`, the 405 to CONNECT): the methods a
# reverse proxy serves. CONNECT is never among them: coxp is not a tunnel (RFC 9110 §9.3.6).
ALLOWED_METHODS = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"


class BadRequest(Exception):
    """A request coxp refuses before routing: answered with `status`, logged as `bad_request`."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers  # extra response headers the refusal carries (`Allow` on a 405)


@dataclass(slots=True, frozen=True)
class RequestHead:
    """A parsed request head; frozen (and its `headers` list never modified) because one object
    serves every request that sent the same bytes (see `parse_head`)."""

    method: str
    target: str  # raw, byte for byte as received
    path: str  # raw target without the query
    normal_path: str  # `path` decoded and normalised (`proxy.paths`); the same object when unchanged
    http_minor: int  # HTTP/1.<minor>
    headers: list[tuple[str, str]]  # names as received, values without surrounding whitespace
    host: str
    content_length: int | None
    chunked: bool
    connection_tokens: frozenset[str]  # lower-cased tokens of Connection
    keep_alive: bool
    websocket: bool
    expect_continue: bool

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


def head_end(buffer: bytearray | bytes, limits: Limits) -> int:
    """Where the head in `buffer` ends (index after the blank line), or -1 if incomplete.

    Raises BadRequest as soon as the bytes seen already break a limit, so a client cannot make
    us buffer more than `max_header_bytes`.
    """
    line_end = buffer.find(b"\r\n")
    if line_end < 0:
        seen = len(buffer) - (1 if buffer.endswith(b"\r") else 0)
        if seen > limits.max_request_line:
            raise BadRequest(414, "request-line-too-long")
        if b"\n" in buffer:
            raise BadRequest(400, "bare-lf")
    elif line_end > limits.max_request_line:
        raise BadRequest(414, "request-line-too-long")
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > limits.max_header_bytes:
            raise BadRequest(431, "request-head-too-large")
        return -1
    if end + 4 > limits.max_header_bytes:
        raise BadRequest(431, "request-head-too-large")
    return end + 4


# Clients repeat their heads byte for byte (a page's preflights, a poll, a keep-alive
# connection's next GET), and a RequestHead depends on the bytes and the limits only: the heads
# parsed lately are remembered (bounded, short heads only). A RequestHead is never modified after
# parsing, so one object can serve every request that sent the same bytes.
_HEADS: LruCache[tuple[Limits, RequestHead]] = LruCache(256)
MAX_REMEMBERED_HEAD = 1024


def parse_head(head: bytes, limits: Limits, *, fast_path: bool = True) -> RequestHead:
    """Parse a complete request head (request line up to and including the blank line).

    The usual head is read by two regex matches; anything else goes line by line, which names
    the fault. `fast_path=False` reads every head line by line: the tests prove that both ways
    accept exactly the same heads with the same result.
    """
    if not fast_path or len(head) > MAX_REMEMBERED_HEAD:
        return _parse_head(head, limits, fast_path)
    remembered = _HEADS.get(head)
    if remembered is not None and remembered[0] is limits:
        return remembered[1]
    parsed = _parse_head(head, limits, fast_path)
    _HEADS.put(head, (limits, parsed))  # only a head that parsed: a refused one raised
    return parsed


def _parse_head(head: bytes, limits: Limits, fast_path: bool) -> RequestHead:
    line_ends = head.count(b"\r\n")
    if head.count(b"\r") != line_ends or head.count(b"\n") != line_ends:
        raise BadRequest(400, "bare-cr-or-lf")
    if line_ends - 2 > limits.max_headers:
        raise BadRequest(431, "too-many-headers")
    text = head.decode("latin-1")
    request_line_end = text.index("\r\n")
    if text[:8].upper() == "CONNECT ":
        # In any target form and before anything else is judged: servers read a CONNECT as
        # bodiless (RFC 9110 §9.3.6), so its body would reach the upstream as a second, smuggled
        # request. Any letter case: some servers upper-case methods before they compare them.
        raise BadRequest(405, "connect-not-allowed", (("Allow", ALLOWED_METHODS),))
    usual = _REQUEST_LINE.fullmatch(text, 0, request_line_end) if fast_path else None
    if usual is not None:
        method, target, minor = usual.group(1), usual.group(2), int(usual.group(3))
    else:
        method, target, minor = _parse_request_line(head[:request_line_end])
    fields_start, fields_end = request_line_end + 2, len(text) - 2
    if (fast_path and _FIELD_BLOCK.fullmatch(text, fields_start, fields_end)
            and not _BAD_BLOCK_CHAR.search(text, fields_start, fields_end)):
        headers = _FIELD_LINE.findall(text, fields_start, fields_end)
    else:
        fields = head[fields_start : fields_end - 2]
        headers = [_parse_field_line(line) for line in fields.split(b"\r\n")] if fields else []

    host_values: list[str] = []
    length_values: list[str] = []
    codings: list[str] = []
    has_transfer_encoding = False
    transfer_encoding_without_coding = False
    connection: set[str] = set()
    upgrades: list[str] = []
    expect = ""
    for name, value in headers:
        lower = name.lower()
        if lower == "host":
            host_values.append(value)
        elif lower == "content-length":
            length_values.extend(v.strip(OWS) for v in value.split(","))
        elif lower == "transfer-encoding":
            has_transfer_encoding = True
            elements = list_elements(value)  # `, chunked` is `chunked`
            transfer_encoding_without_coding |= not elements
            codings.extend(elements)
        elif lower == "connection":
            connection.update(list_elements(value))
        elif lower == "upgrade":
            upgrades.append(value)
        elif lower == "expect":
            expect = value.lower()

    if len(host_values) != 1:
        raise BadRequest(400, "missing-host" if not host_values else "repeated-host")
    host = host_values[0]
    if not valid_host(host):
        raise BadRequest(400, "invalid-host")
    path = target.split("?", 1)[0]
    try:
        normal_path = path if target == "*" else normalised_path(path)
    except MalformedEscape:
        raise BadRequest(400, "bad-escape") from None
    content_length = _content_length(length_values)
    chunked = False
    if has_transfer_encoding:
        if transfer_encoding_without_coding:
            # `Transfer-Encoding: ,` or empty, even beside a line naming `chunked`: some servers
            # read no framing, others chunked, llhttp refuses it.
            raise BadRequest(400, "transfer-encoding-without-coding")
        if content_length is not None:
            raise BadRequest(400, "content-length-with-transfer-encoding")
        if codings[-1] != "chunked":
            raise BadRequest(400, "transfer-encoding-not-chunked")
        if len(codings) > 1:
            # Only `chunked` can be removed and re-applied hop by hop; other codings would
            # have to be forwarded as transfer-codings, which upstreams rarely support.
            raise BadRequest(501, "transfer-coding-not-supported")
        if minor == 0:
            raise BadRequest(400, "transfer-encoding-in-http-1.0")
        chunked = True

    keep_alive = "close" not in connection if minor >= 1 else "keep-alive" in connection
    websocket = _is_websocket(method, connection, upgrades)
    return RequestHead(
        method=method,
        target=target,
        path=path,
        normal_path=normal_path,
        http_minor=minor,
        headers=headers,
        host=host,
        content_length=content_length,
        chunked=chunked,
        connection_tokens=frozenset(connection),
        keep_alive=keep_alive,
        websocket=websocket,
        expect_continue=expect == "100-continue",
    )


def list_elements(value: str) -> list[str]:
    """The lower-cased elements of a comma-separated field value, empty ones ignored (RFC 9110 §5.6.1)."""
    return [element.strip(OWS).lower() for element in value.split(",") if element.strip(OWS)]


def _is_websocket(method: str, connection: set[str], upgrades: list[str]) -> bool:
    """A WebSocket handshake (RFC 6455 §4.1): a GET with `upgrade` among the Connection tokens and
    one Upgrade line naming `websocket` alone. What two parsers could read two ways is refused:
    two Upgrade lines (one may take the first, another the last) or `websocket` listed with
    another protocol (a tunnel opened for one would carry the other, e.g. h2c past every route).
    Any other Upgrade is dropped with the hop-by-hop headers and the request is an ordinary one."""
    if not upgrades:
        return False
    if len(upgrades) > 1:
        raise BadRequest(400, "repeated-upgrade")
    protocols = list_elements(upgrades[0])
    if "websocket" not in protocols:
        return False
    if len(protocols) > 1:
        raise BadRequest(400, "ambiguous-upgrade")
    return method == "GET" and "upgrade" in connection


def valid_host(host: str) -> bool:
    """A `Host` value coxp accepts: `name[:port]`, the name DNS-style, IPv4 or `[IPv6]`."""
    return _HOST.fullmatch(host) is not None


def _parse_request_line(line: bytes) -> tuple[str, str, int]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed-request-line")
    method, target, version = parts
    if not TOKEN_BYTES_RE.fullmatch(method):
        raise BadRequest(400, "malformed-method")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise BadRequest(400, "malformed-http-version")
    if match.group(1) != b"1" or match.group(2) not in (b"0", b"1"):
        # HTTP/1.2 to 1.9 do not exist; RFC 9112 §2.3 would have them read as 1.1, but parsers
        # that refuse them (llhttp) exist, so coxp refuses too rather than guess.
        raise BadRequest(505, "http-version-not-supported")
    if not _TARGET.fullmatch(target) or b"#" in target:
        raise BadRequest(400, "malformed-request-target")
    # RFC 9112 §3.2: a proxy in reverse mode accepts origin-form only, and `*` for OPTIONS.
    if not (target.startswith(b"/") or (target == b"*" and method == b"OPTIONS")):
        raise BadRequest(400, "request-target-not-origin-form")
    return method.decode("ascii"), target.decode("ascii"), int(match.group(2))


def _parse_field_line(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        # RFC 9112 §5.2: obs-fold is refused rather than unfolded.
        raise BadRequest(400, "obsolete-line-folding")
    name, colon, value = line.partition(b":")
    if not colon or not TOKEN_BYTES_RE.fullmatch(name):
        raise BadRequest(400, "malformed-header-field")
    value = value.strip(OWS.encode())
    if _BAD_VALUE_CHAR.search(value):
        raise BadRequest(400, "control-character-in-header-value")
    return name.decode("ascii"), value.decode("latin-1")


def _content_length(values: list[str]) -> int | None:
    if not values:
        return None
    if any(not v.isdigit() or not v.isascii() for v in values):
        raise BadRequest(400, "malformed-content-length")
    lengths = {int(v) for v in values}
    if len(lengths) != 1:
        # RFC 9112 §6.3: differing lengths make the message boundary ambiguous.
        raise BadRequest(400, "conflicting-content-length")
    return lengths.pop()


class ChunkedDecoder:
    """Incremental decoder of a chunked request body (RFC 9112 §7.1).

    `feed` consumes from the front of the buffer and returns decoded data; `done` turns true
    after the last chunk and its trailer section. Trailer fields are discarded: coxp forwards
    the body with its own framing and does not promise trailers.
    """

    __slots__ = ("remaining", "state", "done", "_max_line")

    def __init__(self, max_line: int = 4096):
        self.remaining = 0
        self.state = "size"  # size | data | data-crlf | trailer
        self.done = False
        self._max_line = max_line

    def feed(self, buffer: bytearray) -> list[bytes]:
        out: list[bytes] = []
        while buffer and not self.done:
            if self.state == "data":
                take = min(self.remaining, len(buffer))
                out.append(bytes(buffer[:take]))
                del buffer[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self.state = "data-crlf"
            elif self.state == "data-crlf":
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise BadRequest(400, "bad-chunk-framing")
                del buffer[:2]
                self.state = "size"
            else:
                line = self._take_line(buffer)
                if line is None:
                    break
                if self.state == "size":
                    match = _CHUNK_SIZE.fullmatch(line)
                    if match is None:
                        raise BadRequest(400, "bad-chunk-framing")
                    self.remaining = int(match.group(1), 16)
                    self.state = "data" if self.remaining else "trailer"
                elif line:
                    _parse_field_line(line)  # validated, then dropped
                else:
                    self.done = True
        return out

    def _take_line(self, buffer: bytearray) -> bytes | None:
        # RFC 9112 §7.1: chunk lines end in CRLF; a bare LF is refused as soon as it is seen,
        # not after waiting for a CRLF that a lenient client will never send.
        end = buffer.find(b"\n")
        if end < 0:
            if len(buffer) > self._max_line:
                raise BadRequest(400, "bad-chunk-framing")
            return None
        if end == 0 or buffer[end - 1] != 0x0D:
            raise BadRequest(400, "bad-chunk-framing")
        line = bytes(buffer[: end - 1])
        del buffer[: end + 1]
        if b"\r" in line:
            raise BadRequest(400, "bad-chunk-framing")
        return line


# RFC 9112 §4: the reason phrase is informational; clients such as browsers show it
# (`statusText`), so coxp sends the standard phrase for every status Python registers, and for
# an unregistered status (a backend's `599`) none at all: `HTTP/1.1 599 ` is a valid status line.
_STATUS_LINES = {status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("latin-1") for status in HTTPStatus}


def text_body(text: str) -> bytes:
    """The one-line text/plain body of a response coxp makes itself."""
    return (text + "\n").encode() if text else b""


def refusal(refused: BadRequest) -> tuple[list[tuple[str, str]], bytes]:
    """The headers and body of the answer to a request refused before routing (the connection
    then closes: what follows the refused head cannot be trusted to start a request)."""
    body = text_body(f"{refused.status} {refused.reason}")
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *refused.headers,
               ("Connection", "close")]
    return headers, body


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


def field_lines(headers: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> bytes:
    """Header lines, `name: value` CRLF each."""
    if not headers:
        return b""
    return ("\r\n".join(map(": ".join, headers)) + "\r\n").encode("latin-1")


def serialize_fields(headers: list[tuple[str, str]]) -> bytes:
    """Header lines and the blank line that ends a head."""
    return field_lines(headers) + b"\r\n"


def serialize_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """A response head: status line, header lines, blank line."""
    return status_line(status) + serialize_fields(headers)


def serialize_request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    """A request head (to the upstream): request line, header lines, blank line."""
    return f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + serialize_fields(headers)


# RFC 9112 §7.1: chunked framing, the same in both directions (request bodies to the upstream,
# response bodies to the client). Chunk extensions and trailers are never written.
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; `data` must not be empty (an empty chunk ends the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def no_body_status(status: int, method: str) -> bool:
    """RFC 9110 §6.4.1: HEAD responses, 1xx, 204 and 304 never carry content."""
    return method == "HEAD" or status < 200 or status in (204, 304)
