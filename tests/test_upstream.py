"""The pooled upstream client: against raw loopback servers that answer with exact bytes, and
end to end (coxp in front of nginx and aiohttp) for what one kept-alive connection must survive."""
from __future__ import annotations

import asyncio
import re
import secrets
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from aiohttp import web

from harness import SEEN, Reader, StaticNginx, config_text, request_bytes
from proxy.exchange import _relay_body
from proxy.upstream import HIGH_WATER, MAX_RESPONSE_HEAD, UpstreamClient, UpstreamConnection, UpstreamFailure

HOST = [("Host", "upstream.test")]


def run(scenario):
    """Start a raw server whose `handler(reader, writer, connection_index)` answers; run `scenario(client, key, seen)`."""

    async def main(handler, check):
        seen: list[int] = []

        async def accept(reader, writer):
            seen.append(len(seen))
            try:
                await handler(reader, writer, seen[-1])
            finally:
                writer.close()

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        client = UpstreamClient(ssl.create_default_context(), connect_timeout=2, read_timeout=2)
        try:
            async with asyncio.timeout(10):
                await check(client, ("http", "127.0.0.1", server.sockets[0].getsockname()[1]), seen)
        finally:
            client.close()
            server.close()

    # Its own thread and loop: the browser suite's Playwright keeps a loop running in this one.
    def in_thread(handler) -> None:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, main(handler, scenario)).result()

    return in_thread


async def read_request(reader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def body_of(response) -> bytes:
    data = b"".join([piece async for piece in response.chunks()])
    response.release()
    return data


def test_keep_alive_connections_are_reused():
    async def handler(reader, writer, _):
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async def scenario(client, key, seen):
        for _ in range(3):
            assert await body_of(await client.send(key, "GET", "/", HOST, None)) == b"ok"
        assert len(seen) == 1

    run(scenario)(handler)


def test_a_relayed_body_piece_is_let_go_while_the_next_one_is_awaited():
    """Once a body piece is handed to the client's transport nothing of coxp's holds it while
    the upstream sends the next: 64 streams each keeping their last read (up to 256 KiB) were
    a quarter of the peak memory under 64 concurrent 1 MiB bodies (bench/NOTES.md)."""
    more = asyncio.Event()

    async def handler(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nfirst")
        await more.wait()
        writer.write(b"end")
        await writer.drain()

    class Client:
        """What the relay writes to (a `ClientConnection`'s `write` and `drain`)."""

        def __init__(self) -> None:
            self.written: list[bytes] = []
            self.wrote = asyncio.Event()

        def write(self, data: bytes) -> None:
            self.written.append(data)
            self.wrote.set()

        async def drain(self) -> None:
            pass

    async def scenario(client, key, seen):
        response = await client.send(key, "GET", "/", HOST, None)
        sink = Client()
        relay = asyncio.ensure_future(_relay_body(sink, response.chunks(), chunked=False))
        await sink.wrote.wait()  # the relay went on to wait for the upstream's next piece
        assert sink.written == [b"first"]
        references = sys.getrefcount(sink.written[0])
        assert references == 2  # the list's and getrefcount's own argument
        more.set()
        await relay
        assert sink.written == [b"first", b"end"]
        response.release()

    run(scenario)(handler)


class PausableTransport(asyncio.Transport):
    """An in-memory upstream transport that records whether it is being read."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def test_the_upstream_is_not_read_while_the_client_has_not_taken_the_last_piece():
    """A body piece counts against the read-ahead window until the relay comes back for the next
    one (it has written the piece and waited for the client to take it): a slow client holds one
    upstream read per stream, not that one and the next (bench/NOTES.md)."""

    async def main() -> list[bool]:
        conn = UpstreamConnection(("http", "upstream.test", 80))
        transport = PausableTransport()
        conn.connection_made(transport)
        conn.start(head_only=False)
        size = HIGH_WATER + 1
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2 * size) + b"a" * size)
        seen = [transport.reading]  # over the window: paused
        pieces = conn.body(read_timeout=5)
        assert await anext(pieces) == b"a" * size
        seen.append(transport.reading)  # the relay holds the piece (writing it, waiting for the client)
        following = asyncio.ensure_future(anext(pieces))
        await asyncio.sleep(0)  # the relay is back for more: the piece was taken
        seen.append(transport.reading)
        conn.data_received(b"b" * size)
        assert await following == b"b" * size
        await pieces.aclose()
        return seen

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, main()).result() == [False, False, True]


def test_a_pooled_connection_the_upstream_closed_is_replaced_without_an_error():
    async def handler(reader, writer, _):
        await read_request(reader)
        # Announces keep-alive, then closes while the connection sits in the pool.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async def scenario(client, key, seen):
        assert await body_of(await client.send(key, "GET", "/", HOST, None)) == b"ok"
        await asyncio.sleep(0.1)  # the close reaches the pooled connection
        assert await body_of(await client.send(key, "GET", "/", HOST, None)) == b"ok"
        assert len(seen) == 2

    run(scenario)(handler)


def test_head_response_ends_at_its_head_and_the_connection_stays_usable():
    async def handler(reader, writer, _):
        assert (await read_request(reader)).startswith(b"HEAD ")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        assert (await read_request(reader)).startswith(b"GET ")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nget")
        await writer.drain()

    async def scenario(client, key, seen):
        head = await client.send(key, "HEAD", "/", HOST, None)
        assert (head.status, head.content_length) == (200, 1000)
        assert await body_of(head) == b""
        assert await body_of(await client.send(key, "GET", "/", HOST, None)) == b"get"
        assert len(seen) == 1

    run(scenario)(handler)


def test_a_response_head_seen_before_is_read_the_same_with_its_framing():
    """A head repeated byte for byte is parsed without reporting its fields (they are known from
    its bytes): the same status, fields and body, chunked framing included, on one connection."""
    token = secrets.token_hex(8).encode()
    repeated = b"HTTP/1.1 200 OK\r\nX-Token: " + token + b"\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    last = b"HTTP/1.1 202 Accepted\r\nX-Token: " + token + b"\r\nContent-Length: 2\r\n\r\nok"

    async def handler(reader, writer, _):
        for answer in (repeated, repeated, repeated, last):
            await read_request(reader)
            writer.write(answer)
        await writer.drain()

    async def scenario(client, key, seen):
        for _ in range(3):
            response = await client.send(key, "GET", "/", HOST, None)
            assert (response.status, response.headers) == (200, [("X-Token", token.decode()), ("Transfer-Encoding", "chunked")])
            assert await body_of(response) == b"abc"
        response = await client.send(key, "GET", "/", HOST, None)
        assert (response.status, response.headers) == (202, [("X-Token", token.decode()), ("Content-Length", "2")])
        assert await body_of(response) == b"ok"
        assert len(seen) == 1

    run(scenario)(handler)


def test_trailer_fields_are_dropped_not_merged_into_the_head():
    """A chunked response's trailer fields (here in the same read as its head) never become
    fields of its head (RFC 9110 §6.5.1): the body is relayed re-framed, without them."""
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"

    async def handler(reader, writer, _):
        for _ in range(2):
            await read_request(reader)
            writer.write(answer)
        await writer.drain()

    async def scenario(client, key, seen):
        for _ in range(2):  # the head read with its fields, then known by its bytes
            response = await client.send(key, "GET", "/", HOST, None)
            assert response.headers == [("Transfer-Encoding", "chunked"), ("X-A", "1")]
            assert await body_of(response) == b"abc"

    run(scenario)(handler)


def test_an_interim_head_is_never_remembered_for_the_final_head_after_it():
    """A 103 and the final head in one read: the fields remembered by the first head's bytes
    would be the final head's, and the next response with the same 103 would get them."""
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </" + secrets.token_hex(8).encode() + b".css>\r\n\r\n"
    finals = [b"HTTP/1.1 200 OK\r\nX-First: 1\r\nContent-Length: 1\r\n\r\n!",
              b"HTTP/1.1 201 Created\r\nX-Second: 2\r\nContent-Length: 1\r\n\r\n?"]

    async def handler(reader, writer, _):
        for final in finals:
            await read_request(reader)
            writer.write(early + final)
        await writer.drain()

    async def scenario(client, key, seen):
        first = await client.send(key, "GET", "/", HOST, None)
        assert (first.status, first.headers) == (200, [("X-First", "1"), ("Content-Length", "1")])
        assert await body_of(first) == b"!"
        second = await client.send(key, "GET", "/", HOST, None)
        assert (second.status, second.headers) == (201, [("X-Second", "2"), ("Content-Length", "1")])
        assert await body_of(second) == b"?"

    run(scenario)(handler)


def test_a_body_delimited_by_closing_is_read_to_the_end():
    async def handler(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 100_000)
        await writer.drain()

    async def scenario(client, key, seen):
        response = await client.send(key, "GET", "/", HOST, None)
        assert response.content_length is None
        assert await body_of(response) == b"x" * 100_000

    run(scenario)(handler)


def test_interim_responses_are_skipped():
    async def handler(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                     b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\n!")
        await writer.drain()

    async def scenario(client, key, seen):
        response = await client.send(key, "GET", "/", HOST, None)
        assert response.status == 201
        assert [name for name, _ in response.headers] == ["Content-Length"]
        assert await body_of(response) == b"!"

    run(scenario)(handler)


@pytest.mark.parametrize("lines", [1, 2000], ids=["one-long-line", "many-lines"])
def test_a_response_head_over_64_kib_is_refused(lines):
    async def handler(reader, writer, _):
        await read_request(reader)
        size = MAX_RESPONSE_HEAD // lines + 1
        fields = b"".join(b"X-%d: %s\r\n" % (i, b"a" * size) for i in range(lines))
        writer.write(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def scenario(client, key, seen):
        with pytest.raises(UpstreamFailure) as refused:
            await client.send(key, "GET", "/", HOST, None)
        assert refused.value.reason == "upstream-head-too-large"

    run(scenario)(handler)


def test_a_chunked_request_body_is_framed_for_the_upstream():
    async def handler(reader, writer, _):
        head = await read_request(reader)
        assert b"\r\nTransfer-Encoding: chunked\r\n" in head
        body = await reader.readuntil(b"0\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    async def pieces():
        yield b"hello "
        yield b""
        yield b"world"

    async def scenario(client, key, seen):
        response = await client.send(key, "POST", "/", HOST, pieces())
        assert await body_of(response) == b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"

    run(scenario)(handler)


@pytest.mark.parametrize(
    "pieces",
    [
        [b"HTTP/1.1 200 OK\r\nX-Spaced : a\r\nX-Tab\t: b\r\nContent-Length: 2\r\n\r\nok"],
        # the whitespace arrives in one read and its colon in the next
        [b"HTTP/1.1 200 OK\r\nX-Spaced ", b": a\r\nX-Tab\t: b\r\nContent-Length: 2\r\n\r\nok"],
        # after an interim response, which is parsed before the final head goes wrong
        [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\nX-Spaced : a\r\nX-Tab\t: b\r\n",
         b"Content-Length: 2\r\n\r\nok"],
    ],
    ids=["one-read", "split-reads", "after-100"],
)
def test_whitespace_before_a_field_colon_is_removed_and_the_connection_reused(pieces):
    async def handler(reader, writer, _):
        await read_request(reader)
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
        await writer.drain()

    async def scenario(client, key, seen):
        response = await client.send(key, "GET", "/", HOST, None)
        assert response.headers == [("X-Spaced", "a"), ("X-Tab", "b"), ("Content-Length", "2")]
        assert await body_of(response) == b"ok"
        assert await body_of(await client.send(key, "GET", "/", HOST, None)) == b"next"
        assert len(seen) == 1

    run(scenario)(handler)


SIZES = [0, 1024, 16 * 1024, 60 * 1024, 64 * 1024, 65 * 1024, 100 * 1024, 200 * 1024, 256 * 1024, 300 * 1024, 1024 * 1024]


@pytest.mark.parametrize("take", ["whole", "streamed"])
def test_one_pooled_connection_serves_responses_of_every_size_in_turn(take):
    """A response that arrives whole while reading is paused at the high-water mark must leave
    the connection reading again, however its body is taken (the 64–256 KiB stall)."""

    async def handler(reader, writer, _):
        while True:
            try:
                size = int((await read_request(reader)).split(b" ")[1][1:])
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (size, b"x" * size))

    async def scenario(client, key, seen):
        for _ in range(3):
            for size in SIZES:
                response = await client.send(key, "GET", f"/{size}", HOST, None)
                conn = response._conn
                while take == "whole" and not (conn.complete or conn._paused):
                    await asyncio.sleep(0.01)  # let the body arrive (up to the mark), as behind a fast upstream
                whole = response.buffered_body() if take == "whole" else None
                data = whole if whole is not None else await body_of(response)
                response.release()
                assert len(data) == size
        assert len(seen) == 1

    run(scenario)(handler)


def test_a_malformed_head_with_spaces_is_still_refused():
    async def handler(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nBad Name: a\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def scenario(client, key, seen):
        with pytest.raises(UpstreamFailure) as refused:
            await client.send(key, "GET", "/", HOST, None)
        assert refused.value.reason == "upstream-invalid-response"

    run(scenario)(handler)


# --- end to end: one client connection, one pooled upstream connection ------------------------------
# A read_timeout far below the test's own bound: a paused connection shows as a 504, not a hang.
E2E_LIMITS = {"read_timeout": 3.0}


def sizes_in_turn(proxy, target_of, rounds: int = 3) -> None:
    """On ONE keep-alive client connection, every size of SIZES in turn, `rounds` times, each whole."""
    with proxy.connect() as sock:
        reader = Reader(sock)
        for round_ in range(rounds):
            for size in SIZES:
                sock.sendall(request_bytes("GET", target_of(size), [("Origin", "https://app.test")]))
                response = reader.response()
                assert (response.status, len(response.body)) == (200, size), f"round {round_ + 1}, {size} bytes"
                assert response.value("connection") is None


def test_nginx_static_files_of_every_size_on_one_connection(coxp, tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    for size in SIZES:
        (root / f"{size}.bin").write_bytes(b"n" * size)
    nginx = StaticNginx(root, tmp_path / "nginx")
    try:
        proxy = coxp(config_text(nginx.url, E2E_LIMITS))
        sizes_in_turn(proxy, lambda size: f"/{size}.bin")
        proxy.wait_event("request", count=3 * len(SIZES))
        assert {e["status"] for e in proxy.events_named("request")} == {200}
    finally:
        nginx.close()


async def sized(request: web.Request) -> web.StreamResponse:
    """`?size=N` answers N bytes; a POST's body is kept."""
    request[SEEN].body = await request.read()
    return web.Response(body=b"a" * int(request.query.get("size", "0")))


def test_aiohttp_bodies_of_every_size_on_one_connection(coxp, upstream):
    upstream.handler = sized
    proxy = coxp(config_text(upstream.url, E2E_LIMITS))
    sizes_in_turn(proxy, lambda size: f"/sized?size={size}")
    assert len({seen.client_port for seen in upstream.seen}) == 1  # one pooled upstream connection


def test_a_post_after_a_200_kib_response_is_executed_once(coxp, raw_upstream):
    executed: list[tuple[bytes, bytes]] = []

    async def keep_alive(reader, writer, head):
        """Each response (`?size=N` bytes) in one write, as a fast upstream sends it."""
        while True:
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            executed.append((head.split(b" ")[1], await reader.readexactly(int(length.group(1))) if length else b""))
            size = int(head.split(b" ")[1].rsplit(b"=", 1)[1])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (size, b"a" * size))
            head = await reader.readuntil(b"\r\n\r\n")

    proxy = coxp(config_text(raw_upstream(keep_alive).url, E2E_LIMITS))
    # Whether the 200 KiB body is all there when coxp takes it depends on socket buffers: rounds.
    with proxy.connect() as sock:
        reader = Reader(sock)
        for round_ in range(10):
            sock.sendall(request_bytes("GET", f"/big-{round_}?size=204800"))
            assert len(reader.response().body) == 204800
            sock.sendall(request_bytes("POST", f"/order-{round_}?size=2", body=b"buy one"))
            assert reader.response().status == 200, f"round {round_ + 1}"
    assert executed == [request for round_ in range(10) for request in
                        ((b"/big-%d?size=204800" % round_, b""), (b"/order-%d?size=2" % round_, b"buy one"))]
