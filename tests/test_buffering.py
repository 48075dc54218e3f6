"""Request buffering (`[limits] request_buffer`): what the upstream sees of a request body, and
when, through real sockets."""
from __future__ import annotations

import pytest

from harness import Reader, config_text, exchange, fresh_log, request_bytes, start_coxp

BUFFER = 1024


@pytest.fixture(scope="module")
def buffering_proxy(tmp_path_factory, shared_upstream):
    process = start_coxp(tmp_path_factory.mktemp("buffering"),
                         config_text(shared_upstream.url, limits={"request_buffer": BUFFER}))
    yield process
    process.stop()


@pytest.fixture
def buffering(buffering_proxy, upstream):
    """coxp with `request_buffer = BUFFER` in front of `upstream`."""
    yield from fresh_log(buffering_proxy, upstream)


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def framing(seen) -> tuple[str | None, str | None]:
    return seen.value("content-length"), seen.value("transfer-encoding")


@pytest.mark.parametrize("size", [0, 1, BUFFER - 1, BUFFER])
def test_a_chunked_body_that_fits_goes_upstream_with_a_content_length(buffering, upstream, size):
    body = bytes(i % 251 for i in range(size))
    pieces = [body[i:i + 300] for i in range(0, size, 300)]
    response = exchange(buffering, request_bytes("POST", "/fits", [("Transfer-Encoding", "chunked")], chunked(*pieces)))
    assert response.status == 200
    [seen] = upstream.wait_seen()
    assert seen.body == body
    assert framing(seen) == (str(size), None)


def test_a_chunked_body_larger_than_the_buffer_streams_chunked(buffering, upstream):
    body = b"x" * (BUFFER + 1)
    response = exchange(buffering, request_bytes("POST", "/big", [("Transfer-Encoding", "chunked")], chunked(body[:700], body[700:])))
    assert response.status == 200
    [seen] = upstream.wait_seen()
    assert (seen.body, framing(seen)) == (body, (None, "chunked"))


@pytest.mark.parametrize("size", [BUFFER, BUFFER + 1, 300_000])
def test_a_content_length_body_keeps_its_length_whatever_its_size(buffering, upstream, size):
    body = b"y" * size
    response = exchange(buffering, request_bytes("PUT", "/cl", body=body))
    assert response.status == 200
    [seen] = upstream.wait_seen()
    assert (len(seen.body), framing(seen)) == (size, (str(size), None))


@pytest.mark.parametrize("chunks", [b"5\r\nhelloXX0\r\n\r\n", b"zz\r\nhello\r\n0\r\n\r\n", b"5\nhello\n0\n\n",
                                    b"400\r\n" + b"a" * 1024 + b"\r\n5\r\nhelloXX"],
                         ids=["no-crlf-after-data", "size-not-hex", "lf-only", "after-a-full-buffer"])
def test_bad_chunk_framing_within_the_buffer_is_400_with_nothing_forwarded(buffering, upstream, chunks):
    response = exchange(buffering, request_bytes("POST", "/bad", [("Transfer-Encoding", "chunked")], chunks))
    assert (response.status, response.value("connection")) == (400, "close")
    assert b"bad-chunk-framing" in response.body
    event = buffering.wait_event("request", path="/bad")
    assert (event["status"], event["upstream_status"]) == (400, None)
    assert upstream.seen == []


def test_a_slow_small_upload_holds_no_upstream_connection_until_it_is_whole(buffering, upstream):
    with buffering.connect() as sock:
        sock.sendall(request_bytes("POST", "/slow", [("Content-Length", "10")]) + b"half ")
        with pytest.raises(AssertionError):
            upstream.wait_seen(timeout=1.0)
        sock.sendall(b"done!")
        assert Reader(sock).response().status == 200
    [seen] = upstream.wait_seen()
    assert seen.body == b"half done!"


def test_with_request_buffer_0_a_body_streams_from_its_first_byte(coxp, upstream):
    proxy = coxp(config_text(upstream.url, limits={"request_buffer": 0}))
    with proxy.connect() as sock:
        sock.sendall(request_bytes("POST", "/stream", [("Transfer-Encoding", "chunked")]) + b"5\r\nfirst\r\n")
        [seen] = upstream.wait_seen()  # the request is upstream before its body is whole
        assert framing(seen) == (None, "chunked")
        sock.sendall(b"0\r\n\r\n")
        assert Reader(sock).response().status == 200
