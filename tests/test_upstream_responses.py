"""What coxp relays from real upstream responses: early answers to uploads, reason phrases,
field lines a proxy must repair, and the upstream status of requests their client left."""
from __future__ import annotations

import os
import socket
import struct

import pytest

from harness import Reader, answer_with, config_text, get, request_bytes, unique, upload_while_reading

UPLOAD = 8 * 1024 * 1024


def reset(writer) -> None:
    """Close with a TCP reset, as a server does that closes with an upload still unread."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def refuse_upload_then_reset(reader, writer, head):
    writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n"
                 b"Connection: close\r\n\r\ntoo large\n")
    await writer.drain()
    reset(writer)


def open_descriptors(proxy) -> int:
    return len(os.listdir(f"/proc/{proxy.pid}/fd"))


@pytest.mark.parametrize("size", [UPLOAD, 60_000], ids=["streamed", "from-the-request-buffer"])
def test_a_final_response_sent_before_the_upload_was_read_is_relayed(coxp, raw_upstream, size):
    proxy = coxp(config_text(raw_upstream(refuse_upload_then_reset).url))
    before = open_descriptors(proxy)
    for attempt in range(20):
        response = upload_while_reading(proxy.connect(), f"/upload?attempt={attempt}", size)
        assert (response.status, response.body) == (413, b"too large\n"), f"attempt {attempt}"
        event = proxy.wait_event("request", count=attempt + 1)
        assert (event["status"], event["upstream_status"]) == (413, 413)
    # The second descriptor each upload held is closed with its connection.
    assert proxy.wait_for(lambda: open_descriptors(proxy) <= before), (before, open_descriptors(proxy))


def test_uploads_on_a_kept_alive_upstream_connection_leave_no_descriptor_behind(proxy, upstream):
    get(proxy, "/warm", method="POST", body=b"x")  # the pooled upstream connection exists
    before = open_descriptors(proxy)
    with proxy.connect() as sock:
        reader = Reader(sock)
        for size in (1, 70_000, 10, 300_000) * 10:
            sock.sendall(request_bytes("POST", "/up", body=b"b" * size))
            assert reader.response().status == 200
    assert proxy.wait_for(lambda: open_descriptors(proxy) <= before), (before, open_descriptors(proxy))


# --- reason phrases -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, line",
    [
        (409, b"HTTP/1.1 409 Conflict"), (410, b"HTTP/1.1 410 Gone"), (412, b"HTTP/1.1 412 Precondition Failed"),
        (415, b"HTTP/1.1 415 Unsupported Media Type"), (416, b"HTTP/1.1 416 Requested Range Not Satisfiable"),
        (418, b"HTTP/1.1 418 I'm a Teapot"), (422, b"HTTP/1.1 422 Unprocessable Entity"),
        (429, b"HTTP/1.1 429 Too Many Requests"), (451, b"HTTP/1.1 451 Unavailable For Legal Reasons"),
        (599, b"HTTP/1.1 599 "),
    ],
)
def test_the_status_line_has_the_standard_reason_phrase_or_none(coxp_pool, status, line):
    proxy = coxp_pool.get(config_text("{upstream}"))
    response = get(proxy, f"/status?status={status}&{unique()}")
    assert response.raw_head.split(b"\r\n", 1)[0] == line


# --- field lines the proxy repairs ----------------------------------------------------------------


def test_whitespace_between_a_field_name_and_its_colon_is_removed(coxp, raw_upstream):
    server = raw_upstream(answer_with(b"HTTP/1.1 200 OK\r\nX-Legacy : kept\r\nContent-Type\t: text/plain\r\n"
                                      b"Content-Length: 2\r\n\r\nok"))
    response = get(coxp(config_text(server.url)))
    assert (response.status, response.body) == (200, b"ok")
    assert b"\r\nX-Legacy: kept\r\n" in response.raw_head and b"\r\nContent-Type: text/plain\r\n" in response.raw_head


# --- the upstream's status of a request whose client left -----------------------------------------


async def long_download(reader, writer, head):
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"d" * 1000)
    await writer.drain()
    await reader.read()  # until coxp gives up on the request and closes


async def refuse_the_upgrade_slowly(reader, writer, head):
    writer.write(b"HTTP/1.1 403 Forbidden\r\nX-Why: no\r\nContent-Length: 100000\r\n\r\nnot")
    await writer.drain()
    await reader.read()


@pytest.mark.parametrize(
    "serve, headers, status",
    [
        (long_download, [], 200),
        (refuse_the_upgrade_slowly, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                     ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")], 403),
    ],
    ids=["aborted-download", "refused-upgrade"],
)
def test_a_request_the_upstream_answered_is_logged_with_its_status_when_the_client_leaves(
        coxp, raw_upstream, serve, headers, status):
    proxy = coxp(config_text(raw_upstream(serve).url, extra='[defaults.corp]\npolicy = "same-site"\n'))
    with proxy.connect() as sock:
        sock.sendall(request_bytes("GET", "/file", headers))
        assert Reader(sock).head().status == status
    event = proxy.wait_event("request")
    assert (event["status"], event["upstream_status"]) == (499, status)
    assert event["headers_set"] == ["cross-origin-resource-policy"]


def test_a_known_head_answering_head_get_and_new_heads_on_one_upstream_connection(coxp, raw_upstream):
    """Response heads known by their bytes (parsed without their fields) interleaved with new
    ones, a HEAD among them (its announced body never comes) and a field-line repair: each
    response relayed with its own fields and body, all on one upstream connection."""
    token = unique()
    known = f"HTTP/1.1 200 OK\r\nX-Token: {token}\r\nContent-Length: 5\r\n\r\n".encode()
    new = f"HTTP/1.1 201 Created\r\nX-Other: {token}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    repaired = f"HTTP/1.1 200 OK\r\nX-Token : {token}\r\nContent-Length: 5\r\n\r\n".encode()
    plan = [("GET", known + b"first"), ("GET", known + b"again"), ("HEAD", known), ("GET", new + b"2\r\nhi\r\n0\r\n\r\n"),
            ("GET", known + b"third"), ("GET", repaired + b"fixed"), ("HEAD", known), ("GET", known + b"fifth")]

    async def serve(reader, writer, head) -> None:
        for _, answer in plan:
            writer.write(answer)
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")

    server = raw_upstream(serve)
    proxy = coxp(config_text(server.url))
    got = []
    with proxy.connect() as sock:
        reader = Reader(sock)
        for method, _ in plan:
            sock.sendall(request_bytes(method, "/k", host="app.test"))
            response = reader.response(method)
            got.append((response.status, response.value("x-token"), response.value("x-other"), response.body))
    assert got == [(200, token, None, b"first"), (200, token, None, b"again"), (200, token, None, b""),
                   (201, None, token, b"hi"), (200, token, None, b"third"), (200, token, None, b"fixed"),
                   (200, token, None, b""), (200, token, None, b"fifth")]
    assert [head.split(b" ", 1)[0] for head in server.heads] == [b"GET"]  # one upstream connection
