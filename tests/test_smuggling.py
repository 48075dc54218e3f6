"""Request smuggling probes in the style of defparam/smuggler, against coxp and a recording upstream.

Our own generator (no network, no third-party payload files): the `Transfer-Encoding` header is
mutated in the ways front ends and back ends are known to read differently -- a byte before the
name, between name and colon, after the colon, after the value, before a line that hides it,
changed letter case, quoting, lists, repeated lines, line folding, look-alike names -- and each
mutation is sent with a `Content-Length` too, in two shapes:

* CL.TE: the body is `0\\r\\n\\r\\n` followed by a whole request to `/smuggled`, and the
  Content-Length covers all of it. A proxy that reads the mutated header as chunked ends the body
  after `0\\r\\n\\r\\n` and serves the rest as a second request.
* TE.CL: the body is one chunk holding a request to `/smuggled`, and the Content-Length covers
  only the chunk-size line. A proxy that reads the Content-Length serves the rest as a second
  request.

After each probe the same connection carries a follow-up request. Every probe whose
Transfer-Encoding coxp reads as one is refused (400, nothing upstream, connection closed); one it
reads as no Transfer-Encoding at all is forwarded once, framed by its Content-Length. In both
cases the upstream gets exactly the requests coxp answered from it, and coxp keeps serving.
"""
from __future__ import annotations

import socket

import pytest

from harness import Reader, config_text, request_bytes, unique

# Bytes smuggler-style scanners put around the header: every control character, DEL, and the
# obs-text bytes Python's str.strip() or a Latin-1/Windows-1252 decoder treats as whitespace.
ODD_BYTES = [*range(0x01, 0x20), 0x7F, 0x80, 0x82, 0x85, 0x96, 0xA0, 0xFF]


def te_mutations() -> dict[str, bytes]:
    """Name -> the header line(s) standing for `Transfer-Encoding: chunked` (no final CRLF)."""
    found: dict[str, bytes] = {
        "plain": b"Transfer-Encoding: chunked",
        "name-space-prefix": b" Transfer-Encoding: chunked",
        "tab-around-colon": b"Transfer-Encoding\t:\tchunked",
        "space-before-colon": b"Transfer-Encoding : chunked",
        "space-in-name": b"Transfer Encoding: chunked",
        "underscore-name": b"Transfer_Encoding: chunked",
        "no-space": b"Transfer-Encoding:chunked",
        "two-spaces": b"Transfer-Encoding:  chunked",
        "list-chunked-first": b"Transfer-Encoding: chunked, cow",
        "list-chunked-last": b"Transfer-Encoding: cow, chunked",
        "list-empty-elements": b"Transfer-Encoding: , chunked",
        "only-comma": b"Transfer-Encoding: ,",
        "empty": b"Transfer-Encoding:",
        "content-encoding": b"Content-Encoding: chunked",
        "folded": b"Transfer-Encoding:\r\n chunked",
        "folded-tab": b"Transfer-Encoding: identity\r\n\tchunked",
        "quoted": b'Transfer-Encoding: "chunked"',
        "single-quoted": b"Transfer-Encoding: 'chunked'",
        "truncated": b"Transfer-Encoding: chunk",
        "mixed-case": b"TrAnSFer-EnCODinG: cHuNkeD",
        "upper-case": b"TRANSFER-ENCODING: CHUNKED",
        "two-lines-cow-first": b"Transfer-Encoding: cow\r\nTransfer-Encoding: chunked",
        "two-lines-chunked-first": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: cow",
        "two-lines-chunked": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "identity-then-chunked": b"Transfer-Encoding: identity, chunked",
        "chunked-twice": b"Transfer-Encoding: chunked, chunked",
        "cr-in-name": b"Transfer\r-Encoding: chunked",
        "nested": b"Transfer-Encoding: cow chunked bar",
        "accented-value": b"Transfer-Encoding: ch\x96nked",
        "accented-name": b"Transf\x82r-Encoding: chunked",
        "hidden-after-cr": b"X: X\rTransfer-Encoding: chunked",
        "hidden-after-lf": b"X: X\nTransfer-Encoding: chunked",
        "hidden-after-nul": b"X: X\x00Transfer-Encoding: chunked",
        "nul-in-value": b"Transfer-Encoding: chunked\x00",
        "bare-lf-ending": b"Transfer-Encoding: chunked\nX: X",
    }
    for byte in ODD_BYTES:
        c = bytes([byte])
        found[f"mid-{byte:02x}"] = b"Transfer-Encoding:" + c + b"chunked"
        found[f"post-name-{byte:02x}"] = b"Transfer-Encoding" + c + b": chunked"
        found[f"pre-name-{byte:02x}"] = c + b"Transfer-Encoding: chunked"
        found[f"end-{byte:02x}"] = b"Transfer-Encoding: chunked" + c
        found[f"hidden-{byte:02x}"] = b"X: X" + c + b"Transfer-Encoding: chunked"
        found[f"end-then-line-{byte:02x}"] = b"Transfer-Encoding: chunked" + c + b"X: X"
    return found


MUTATIONS = te_mutations()


def smuggled(marker: str) -> bytes:
    return f"GET /smuggled?{marker} HTTP/1.1\r\nHost: example.test\r\n\r\n".encode()


def probe(shape: str, gadget: bytes, marker: str) -> tuple[bytes, bytes]:
    """The probe request (the mutated header, a Content-Length, a body of the given shape) and
    the body an upstream must receive if the probe is served: the Content-Length's worth."""
    if shape == "CL.TE":
        body = b"0\r\n\r\n" + smuggled(marker)
        length = len(body)
    else:  # TE.CL
        chunk = smuggled(marker)
        size_line = b"%x\r\n" % len(chunk)
        body = size_line + chunk + b"\r\n0\r\n\r\n"
        length = len(size_line)
    head = (f"POST /probe?{marker} HTTP/1.1\r\nHost: example.test\r\n").encode() + gadget + b"\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % length + body, body[:length]


@pytest.fixture(scope="module")
def proxy(coxp_pool):
    return coxp_pool.get(config_text("{upstream}"))


def send_probe(proxy, raw: bytes) -> list[int]:
    """The statuses coxp answered on one connection to `raw`, until it closed."""
    statuses = []
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(raw)
        reader = Reader(sock)
        while len(statuses) < 3:  # more answers than requests sent would itself be smuggling
            try:
                statuses.append(reader.response().status)
            except Exception:  # noqa: BLE001 - closed, reset or cut off: the answers end here
                break
    return statuses


@pytest.mark.parametrize("shape", ["CL.TE", "TE.CL"])
def test_no_transfer_encoding_mutation_gets_a_second_request_upstream(proxy, query_upstream, shape):
    served = []
    for name, gadget in MUTATIONS.items():
        marker = unique()
        raw, expected_body = probe(shape, gadget, marker)
        follow_up = request_bytes("GET", f"/follow?{marker}", [("Connection", "close")])
        statuses = send_probe(proxy, raw + follow_up)
        seen = query_upstream.saw(marker)
        # No desynchronisation: the upstream got exactly the requests coxp answered from it,
        # in order, each once (coxp re-frames every body it forwards).
        assert len(seen) == statuses.count(200), (name, shape, statuses, seen)
        assert statuses and all(status == 200 for status in statuses[:len(seen)]), (name, shape, statuses)
        if not seen:
            # Refused: one 400 (or 501 for a coding coxp cannot re-frame), then the connection closed.
            assert statuses in ([400], [501]), (name, shape, statuses)
            continue
        # Served: coxp read the mutated header as no Transfer-Encoding at all (a header of
        # another name, or part of another header's value): the probe went up once, framed by
        # its Content-Length, with no Transfer-Encoding. What followed its body is whatever the
        # client sent next, read by coxp as requests of their own (or refused, closing).
        served.append(name)
        assert seen[0].raw_path == f"/probe?{marker}", (name, shape, seen)
        assert seen[0].body == expected_body and seen[0].value("transfer-encoding") is None, (name, shape)
        if shape == "CL.TE":  # the whole body was the probe's: the follow-up is the next request
            assert [s.raw_path for s in seen] == [f"/probe?{marker}", f"/follow?{marker}"], (name, seen)
    # Keeps serving after all of them.
    assert send_probe(proxy, request_bytes("GET", f"/alive?{unique()}", [("Connection", "close")])) == [200]
    # The plain header, every spelling that parses as Transfer-Encoding and every malformed line
    # is refused; what is served is a header coxp does not read as framing (and never forwards
    # as such: `Transfer_Encoding` is dropped, `Content-Encoding` is not about framing).
    assert "plain" not in served and "upper-case" not in served and "list-empty-elements" not in served
    assert {"underscore-name", "content-encoding"} <= set(served)
    assert all(name in ("underscore-name", "content-encoding") or name.startswith("hidden-") for name in served), served
