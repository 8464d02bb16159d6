"""The fast path's HTTP/1.1 client (:mod:`s3flow.fastpath.http`) against small asyncio
servers on real local sockets that answer with raw bytes: bodies (length, chunked,
until close, none), keep-alive, timeouts, streamed bodies and their flow control,
the pool's limit, malformed answers, TLS, a closed pool."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import ipaddress
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiobotocore.response import AioReadTimeoutError
from botocore.exceptions import ResponseStreamingError, SSLError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from s3flow.fastpath.http import (
    HIGH_WATER_BYTES,
    MAX_BODY_BYTES,
    BodyStream,
    HttpConnectError,
    HttpConnectTimeout,
    HttpDisconnected,
    HttpPool,
    HttpProtocolError,
    HttpReadTimeout,
    HttpResponse,
    HttpTlsError,
)
from s3flow.fastpath.s3 import FastStreamingBody
from s3flow.fastpath.transport import transport_error

# the test servers ------------------------------------------------------------------------


@dataclass
class Request:
    """One request as the server read it."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """An asyncio server on 127.0.0.1 whose ``handler`` writes raw bytes to each
    connection; counts connections (made, open now, most open at once)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = 0
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.requests: list[Request] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def read_request(self, reader: asyncio.StreamReader) -> Request | None:
        """The next request on a connection (recorded); None when the client closed it."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, OSError):
            return None
        line, *lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _ = line.split(" ", 2)
        headers: dict[str, str] = {}
        for header in lines:
            name, _, value = header.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        request = Request(method, target, headers, body)
        self.requests.append(request)
        return request

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(self, reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass  # stopped at the end of the test (a cancelled handler task gets logged)
        finally:
            self.open -= 1
            writer.close()
            self._tasks.discard(task)


class Servers:
    """Starts test servers; the fixture stops them all at the end of the test."""

    def __init__(self) -> None:
        self._all: list[RawServer] = []

    async def start(
        self, handler: Handler, *, ssl_context: ssl.SSLContext | None = None
    ) -> RawServer:
        server = RawServer(handler)
        await server.start(ssl_context)
        self._all.append(server)
        return server

    async def stop_all(self) -> None:
        for server in self._all:
            await server.stop()


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    started = Servers()
    yield started
    await started.stop_all()


def answer(body: bytes = b"", status: str = "200 OK", headers: str = "") -> bytes:
    """A whole answer with a Content-Length (``headers``: extra ``Name: value\\r\\n`` lines)."""
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


def each_request(respond: Callable[[Request], bytes]) -> Handler:
    """A keep-alive handler: ``respond(request)`` written for every request."""

    async def handle(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while (request := await server.read_request(reader)) is not None:
            writer.write(respond(request))
            await writer.drain()

    return handle


def pool_for(
    server: RawServer,
    *,
    limit: int = 4,
    read_timeout_s: float = 5.0,
    scheme: str = "http",
    ssl_context: ssl.SSLContext | None = None,
) -> HttpPool:
    return HttpPool(
        scheme,
        "127.0.0.1",
        server.port,
        limit=limit,
        connect_timeout_s=5.0,
        read_timeout_s=read_timeout_s,
        ssl_context=ssl_context,
    )


def host(server: RawServer) -> dict[str, str]:
    return {"host": f"127.0.0.1:{server.port}"}


def stream_of(resp: HttpResponse) -> BodyStream:
    assert resp.stream is not None, "the answer was not streamed"
    return resp.stream


def random_bytes(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


async def until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.005)


# whole bodies and keep-alive -------------------------------------------------------------


async def test_a_content_length_body_is_read_whole(servers: Servers) -> None:
    body = random_bytes(200_000)
    server = await servers.start(
        each_request(lambda _: answer(body, headers="X-Thing: a\r\nx-thing: b\r\n"))
    )
    async with pool_for(server) as pool:
        resp = await pool.request("PUT", "/b/k?x=1", {**host(server), "x-meta": "1"}, b"payload")
    assert (resp.status, resp.reason) == (200, "OK")
    assert resp.body == body
    assert resp.stream is None
    assert resp.headers["Content-Length"] == "200000"
    assert resp.headers.getall("X-THING") == ["a", "b"]
    [seen] = server.requests
    assert (seen.method, seen.target, seen.body) == ("PUT", "/b/k?x=1", b"payload")
    assert seen.headers["content-length"] == "7"
    assert seen.headers["x-meta"] == "1"
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"


async def test_sequential_requests_reuse_one_keep_alive_connection(servers: Servers) -> None:
    server = await servers.start(each_request(lambda req: answer(f"to {req.target}".encode())))
    async with pool_for(server) as pool:
        for i in range(5):
            resp = await pool.request("GET", f"/k{i}", host(server))
            assert resp.body == f"to /k{i}".encode()
        assert pool.connections_made == 1
        assert pool.in_use == 0
    assert server.connections == 1
    assert len(server.requests) == 5


# chunked ---------------------------------------------------------------------------------

CHUNKED_ANSWER = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Before: 1\r\n\r\n"
    b"5;name=value\r\nhello\r\n"
    b"7\r\n, world\r\n"
    b"A\r\n0123456789\r\n"
    b"0\r\nX-Trailer: yes\r\n\r\n"
)
CHUNKED_BODY = b"hello, world0123456789"


async def test_a_chunked_answer_is_read_whole(servers: Servers) -> None:
    server = await servers.start(each_request(lambda _: CHUNKED_ANSWER))
    async with pool_for(server) as pool:
        for _ in range(2):
            resp = await pool.request("GET", "/chunked", host(server))
            assert resp.status == 200
            assert resp.body == CHUNKED_BODY
            assert resp.headers["x-before"] == "1"
        assert pool.connections_made == 1  # the connection outlived both chunked answers
    assert server.connections == 1


async def test_a_chunked_answer_written_one_byte_at_a_time_is_read_whole(
    servers: Servers,
) -> None:
    async def handle(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await server.read_request(reader) is not None:
            for i in range(len(CHUNKED_ANSWER)):
                writer.write(CHUNKED_ANSWER[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.001)  # one byte per packet

    server = await servers.start(handle)
    async with pool_for(server) as pool:
        for _ in range(2):
            resp = await pool.request("GET", "/chunked", host(server))
            assert resp.body == CHUNKED_BODY
        assert pool.connections_made == 1
    assert server.connections == 1


# read until close ------------------------------------------------------------------------


async def test_a_body_delimited_by_close_is_read_whole_and_its_connection_not_reused(
    servers: Servers,
) -> None:
    body = random_bytes(100_000)

    async def handle(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        for i in range(0, len(body), 30_000):
            writer.write(body[i : i + 30_000])
            await writer.drain()
            await asyncio.sleep(0.01)
        # returning closes the connection: the end of the body

    server = await servers.start(handle)
    async with pool_for(server) as pool:
        first = await pool.request("GET", "/until-close", host(server))
        assert first.body == body
        assert pool.in_use == 0
        assert not pool._idle  # not kept for another request
        second = await pool.request("GET", "/until-close", host(server))
        assert second.body == body
        assert pool.connections_made == 2
    assert server.connections == 2


# bodiless answers ------------------------------------------------------------------------


async def test_a_head_answer_with_a_content_length_has_no_body_and_keeps_the_connection(
    servers: Servers,
) -> None:
    server = await servers.start(
        each_request(lambda _: b'HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: "e"\r\n\r\n')
    )
    async with pool_for(server, read_timeout_s=5.0) as pool:
        for _ in range(2):
            async with asyncio.timeout(1.0):  # at once, not after waiting for 1234 bytes
                resp = await pool.request("HEAD", "/b/k", host(server))
            assert resp.status == 200
            assert resp.body == b""
            assert resp.headers["content-length"] == "1234"
            assert resp.headers["etag"] == '"e"'
        assert pool.connections_made == 1
    assert server.connections == 1


async def test_a_204_answer_has_no_body(servers: Servers) -> None:
    server = await servers.start(
        each_request(lambda _: b"HTTP/1.1 204 No Content\r\nX-Amz-Id: 1\r\n\r\n")
    )
    async with pool_for(server, read_timeout_s=5.0) as pool:
        for _ in range(2):
            async with asyncio.timeout(1.0):  # no body to wait for, no close either
                resp = await pool.request("DELETE", "/b/k", host(server))
            assert (resp.status, resp.reason, resp.body) == (204, "No Content", b"")
        assert pool.connections_made == 1


async def test_an_interim_100_continue_is_skipped(servers: Servers) -> None:
    async def handle(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # first in two packets, then in one
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(answer(b"first"))
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n" + answer(b"second"))
        await server.read_request(reader)

    server = await servers.start(handle)
    async with pool_for(server) as pool:
        first = await pool.request("PUT", "/b/k", host(server), b"data")
        second = await pool.request("PUT", "/b/k", host(server), b"data")
        assert (first.status, first.body) == (200, b"first")
        assert (second.status, second.body) == (200, b"second")
        assert "x-interim" not in second.headers
        assert pool.connections_made == 1


# connections that end --------------------------------------------------------------------


async def test_connection_close_in_an_answer_makes_the_next_request_open_a_new_connection(
    servers: Servers,
) -> None:
    # The server would go on serving the connection: the client must drop it itself.
    server = await servers.start(
        each_request(lambda _: answer(b"ok", headers="Connection: close\r\n"))
    )
    async with pool_for(server) as pool:
        for _ in range(2):
            resp = await pool.request("GET", "/k", host(server))
            assert resp.body == b"ok"
        assert pool.connections_made == 2
        assert pool.in_use == 0
        assert not pool._idle
    assert server.connections == 2
    await until(lambda: server.open == 0)  # the client closed both


async def test_an_idle_connection_the_server_closed_is_replaced_by_a_new_one(
    servers: Servers,
) -> None:
    async def handle(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(answer(b"ok"))  # keep-alive, as far as the answer says
        await writer.drain()
        await asyncio.sleep(0.05)
        # returning closes the idle connection

    server = await servers.start(handle)
    async with pool_for(server) as pool:
        assert (await pool.request("GET", "/k", host(server))).body == b"ok"
        assert len(pool._idle) == 1
        idle = pool._idle[0]
        await until(lambda: idle.closed)  # the client has seen the server close it
        second = await pool.request("GET", "/k", host(server))
        assert second.body == b"ok"
        assert pool.connections_made == 2
        assert pool._open == 1  # the stale connection no longer counts
        assert pool.in_use == 0
    assert server.connections == 2


# timeouts and connect errors -------------------------------------------------------------


async def test_a_server_that_never_answers_raises_http_read_timeout(servers: Servers) -> None:
    async def handle(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        await reader.read()  # silent until the client gives up

    server = await servers.start(handle)
    loop = asyncio.get_running_loop()
    async with pool_for(server, read_timeout_s=0.3) as pool:
        start = loop.time()
        with pytest.raises(HttpReadTimeout):
            await pool.request("GET", "/k", host(server))
        elapsed = loop.time() - start
        assert 0.28 <= elapsed < 1.5
        assert pool.in_use == 0
        assert pool._open == 0  # the connection was dropped
    await until(lambda: server.open == 0)


async def test_a_head_trickled_slower_than_the_timeout_in_all_but_faster_per_byte_is_read(
    servers: Servers,
) -> None:
    raw = answer(b"slow but steady")
    pieces = [raw[i : i + 5] for i in range(0, len(raw), 5)]
    gap_s = 0.07

    async def handle(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        for piece in pieces:
            await asyncio.sleep(gap_s)
            writer.write(piece)
            await writer.drain()
        await server.read_request(reader)

    server = await servers.start(handle)
    loop = asyncio.get_running_loop()
    read_timeout_s = 0.4
    assert len(pieces) * gap_s > 1.5 * read_timeout_s  # the whole answer takes longer
    async with pool_for(server, read_timeout_s=read_timeout_s) as pool:
        start = loop.time()
        resp = await pool.request("GET", "/k", host(server))
        assert resp.body == b"slow but steady"
        assert loop.time() - start > read_timeout_s


async def test_connecting_to_a_closed_port_raises_http_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing listens on the port now
    pool = HttpPool("http", "127.0.0.1", port, limit=2, connect_timeout_s=2, read_timeout_s=2)
    async with pool:
        with pytest.raises(HttpConnectError) as info:
            await pool.request("GET", "/k", {"host": f"127.0.0.1:{port}"})
        assert not isinstance(info.value, HttpConnectTimeout)
        assert pool._open == 0
        assert pool.connections_made == 0


# streamed bodies -------------------------------------------------------------------------


def streaming_server(big: bytes) -> Handler:
    """``/big`` answers ``big`` in 256 KiB writes as fast as the client takes them;
    anything else answers ``small``."""

    async def handle(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while (request := await server.read_request(reader)) is not None:
            if request.target != "/big":
                writer.write(answer(b"small"))
                await writer.drain()
                continue
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(big)}\r\n\r\n".encode())
            for i in range(0, len(big), 256 * 1024):
                writer.write(big[i : i + 256 * 1024])
                await writer.drain()

    return handle


async def test_a_streamed_5_mib_body_read_in_pieces_equals_what_was_sent(
    servers: Servers,
) -> None:
    big = random_bytes(5 * 1024 * 1024)
    server = await servers.start(streaming_server(big))
    async with pool_for(server) as pool:
        resp = await pool.request("GET", "/big", host(server), stream=True)
        stream = stream_of(resp)
        assert (resp.status, resp.body) == (200, b"")
        assert stream.length == len(big)
        received = bytearray()
        while chunk := await stream.read(100_000):
            assert len(chunk) <= 100_000
            received += chunk
        assert received == big
        assert stream.at_eof
        assert await stream.read(10) == b""


async def test_a_stream_buffers_at_most_about_the_high_water_mark(servers: Servers) -> None:
    big = random_bytes(16 * 1024 * 1024)
    server = await servers.start(streaming_server(big))
    bound = HIGH_WATER_BYTES + 256 * 1024
    async with pool_for(server) as pool:
        stream = stream_of(await pool.request("GET", "/big", host(server), stream=True))
        received = bytearray()
        most = 0
        while True:
            # Read slowly: only once the client has stopped reading from the socket
            # (the buffer is as full as it gets) or the whole body is in.
            await until(lambda: stream._conn._reading_paused or stream._received >= len(big))
            most = max(most, stream._buffered)
            assert stream._buffered <= bound
            chunk = await stream.read(128 * 1024)
            assert stream._buffered <= bound
            if not chunk:
                break
            received += chunk
        assert received == big
        assert most >= HIGH_WATER_BYTES  # the server did outrun the reader


async def test_a_stream_read_to_the_end_gives_its_connection_back(servers: Servers) -> None:
    big = random_bytes(300_000)
    server = await servers.start(streaming_server(big))
    async with pool_for(server) as pool:
        stream = stream_of(await pool.request("GET", "/big", host(server), stream=True))
        assert pool.in_use == 1
        assert await stream.read() == big
        assert pool.in_use == 0
        assert (await pool.request("GET", "/small", host(server))).body == b"small"
        assert pool.connections_made == 1
        assert pool.in_use == 0
    assert server.connections == 1


async def test_closing_a_stream_early_drops_its_connection(servers: Servers) -> None:
    big = random_bytes(5 * 1024 * 1024)
    server = await servers.start(streaming_server(big))
    async with pool_for(server) as pool:
        stream = stream_of(await pool.request("GET", "/big", host(server), stream=True))
        assert await stream.read(1000) == big[:1000]
        stream.close()
        assert await stream.read(1000) == b""
        assert pool.in_use == 0
        assert pool._open == 0
        assert (await pool.request("GET", "/small", host(server))).body == b"small"
        assert pool.connections_made == 2
    assert server.connections == 2


def cut_or_stalled_server(*, cut: bool) -> Handler:
    """Announces 1000 bytes, sends 100, then closes (``cut``) or goes silent."""

    async def handle(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        await writer.drain()
        if not cut:
            await reader.read()  # silent until the client gives up

    return handle


async def test_a_stream_cut_off_mid_body_raises_http_disconnected(servers: Servers) -> None:
    server = await servers.start(cut_or_stalled_server(cut=True))
    async with pool_for(server) as pool:
        stream = stream_of(await pool.request("GET", "/k", host(server), stream=True))
        received = bytearray()
        with pytest.raises(HttpDisconnected):
            while chunk := await stream.read(4096):
                received += chunk
        assert received == b"x" * 100  # what came before the cut is read first
        stream.close()
        assert pool.in_use == 0
        assert pool._open == 0


async def test_a_cut_off_stream_raises_response_streaming_error_through_fast_streaming_body(
    servers: Servers,
) -> None:
    server = await servers.start(cut_or_stalled_server(cut=True))
    async with pool_for(server) as pool:
        resp = await pool.request("GET", "/k", host(server), stream=True)
        body = FastStreamingBody(resp.stream, b"", f"http://127.0.0.1:{server.port}", 1000)
        with pytest.raises(ResponseStreamingError):
            await body.read()
        body.close()
        assert pool.in_use == 0


async def test_a_stalled_stream_raises_http_read_timeout(servers: Servers) -> None:
    server = await servers.start(cut_or_stalled_server(cut=False))
    loop = asyncio.get_running_loop()
    async with pool_for(server, read_timeout_s=0.3) as pool:
        stream = stream_of(await pool.request("GET", "/k", host(server), stream=True))
        assert await stream.read(4096) == b"x" * 100
        start = loop.time()
        with pytest.raises(HttpReadTimeout):
            await stream.read(4096)
        assert 0.28 <= loop.time() - start < 1.5
        stream.close()
        assert pool.in_use == 0
        assert pool._open == 0
    await until(lambda: server.open == 0)


async def test_a_stalled_stream_raises_aio_read_timeout_error_through_fast_streaming_body(
    servers: Servers,
) -> None:
    server = await servers.start(cut_or_stalled_server(cut=False))
    async with pool_for(server, read_timeout_s=0.3) as pool:
        resp = await pool.request("GET", "/k", host(server), stream=True)
        body = FastStreamingBody(resp.stream, b"", f"http://127.0.0.1:{server.port}", 1000)
        with pytest.raises(AioReadTimeoutError):
            await body.read()
        body.close()
        assert pool.in_use == 0


async def test_an_error_answer_is_read_whole_even_when_a_stream_is_asked_for(
    servers: Servers,
) -> None:
    error = b"<Error><Code>NoSuchKey</Code></Error>"
    server = await servers.start(each_request(lambda _: answer(error, status="404 Not Found")))
    async with pool_for(server) as pool:
        resp = await pool.request("GET", "/b/k", host(server), stream=True)
        assert (resp.status, resp.reason) == (404, "Not Found")
        assert resp.stream is None
        assert resp.body == error
        assert pool.in_use == 0
        assert (await pool.request("GET", "/b/k", host(server), stream=True)).body == error
        assert pool.connections_made == 1


# the pool --------------------------------------------------------------------------------


async def test_a_pool_with_limit_2_never_has_more_than_2_connections_open(
    servers: Servers,
) -> None:
    async def handle(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while (request := await server.read_request(reader)) is not None:
            await asyncio.sleep(0.05)  # every answer takes a while: the requests overlap
            writer.write(answer(f"to {request.target}".encode()))
            await writer.drain()

    server = await servers.start(handle)
    async with pool_for(server, limit=2) as pool:
        answers = await asyncio.gather(
            *(pool.request("GET", f"/k{i}", host(server)) for i in range(5))
        )
        assert [(a.status, a.body) for a in answers] == [
            (200, f"to /k{i}".encode()) for i in range(5)
        ]
        assert pool.connections_made == 2
        assert pool.in_use == 0
    assert server.max_open == 2
    assert server.connections == 2


async def test_a_waiter_cancelled_just_after_being_woken_passes_the_free_slot_on(
    servers: Servers,
) -> None:
    """FAILS (bug in HttpPool._acquire): a freed slot wakes exactly one waiter; when that
    waiter's task is cancelled before it runs, the wake-up is lost and the next waiter
    sleeps for ever although nothing holds a connection."""
    server = await servers.start(streaming_server(random_bytes(5 * 1024 * 1024)))
    async with pool_for(server, limit=1) as pool:
        held = stream_of(await pool.request("GET", "/big", host(server), stream=True))
        b = asyncio.create_task(pool.request("GET", "/small", host(server)))
        c = asyncio.create_task(pool.request("GET", "/small", host(server)))
        await until(lambda: len(pool._waiters) == 2)
        held.close()  # the only slot is free: wakes b
        b.cancel()  # ... which gives up before it runs
        with contextlib.suppress(asyncio.CancelledError):
            await b
        waiting, open_ = len(pool._waiters), pool._open
        try:
            resp = await asyncio.wait_for(c, 1.0)
        except TimeoutError:
            pytest.fail(
                f"the last waiter was never woken ({waiting} waiting while {open_} of "
                "limit 1 connections were open)"
            )
        assert resp.body == b"small"


# malformed answers and requests ----------------------------------------------------------


@pytest.mark.parametrize(
    "status_line",
    [
        b"HTTP/1.1 OK\r\n",
        b"SPDY/3 200 OK\r\n",
        b"hello\r\n",
        b"HTTP/1.1 999 Huh\r\n",
        b"HTTP/1.1 +20 OK\r\n",  # int() would take it
        b"HTTP/1.1 2_00 OK\r\n",
    ],
)
async def test_a_malformed_status_line_raises_http_protocol_error(
    servers: Servers, status_line: bytes
) -> None:
    server = await servers.start(each_request(lambda _: status_line + b"Content-Length: 0\r\n\r\n"))
    async with pool_for(server) as pool:
        with pytest.raises(HttpProtocolError):
            await pool.request("GET", "/k", host(server))
        assert pool._open == 0


@pytest.mark.parametrize(
    "length_headers",
    [
        "Content-Length: +5\r\n",  # int() takes these two
        "Content-Length: 0_5\r\n",
        "Content-Length: 5 5\r\n",
        "Content-Length: -5\r\n",
        "Content-Length: five\r\n",
        "Content-Length: 5\r\nContent-Length: 7\r\n",  # where does the body end?
        "Content-Length: 5, 7\r\n",
    ],
)
async def test_a_content_length_that_is_not_one_number_raises_http_protocol_error(
    servers: Servers, length_headers: str
) -> None:
    server = await servers.start(
        each_request(lambda _: f"HTTP/1.1 200 OK\r\n{length_headers}\r\nhello12".encode())
    )
    async with pool_for(server) as pool:
        with pytest.raises(HttpProtocolError, match="Content-Length"):
            await pool.request("GET", "/k", host(server))
        assert pool._open == 0  # a connection whose framing is unknown is not kept


@pytest.mark.parametrize(
    "length_headers", ["Content-Length: 5\r\nContent-Length: 5\r\n", "Content-Length: 5, 5\r\n"]
)
async def test_a_content_length_repeated_with_one_value_is_read(
    servers: Servers, length_headers: str
) -> None:
    server = await servers.start(
        each_request(lambda _: f"HTTP/1.1 200 OK\r\n{length_headers}\r\nhello".encode())
    )
    async with pool_for(server) as pool:
        resp = await pool.request("GET", "/k", host(server))
        assert (resp.status, resp.body) == (200, b"hello")


@pytest.mark.parametrize("size_line", [b"0x5", b"+5", b"5_0", b"", b"12345678901234567"])
async def test_a_chunk_size_that_is_not_hex_digits_raises_http_protocol_error(
    servers: Servers, size_line: bytes
) -> None:
    answer_bytes = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + size_line
        + b"\r\nhello\r\n0\r\n\r\n"
    )
    server = await servers.start(each_request(lambda _: answer_bytes))
    async with pool_for(server) as pool:
        with pytest.raises(HttpProtocolError, match="chunk size"):
            await pool.request("GET", "/k", host(server))


async def test_a_chunk_larger_than_the_body_limit_is_refused_before_it_is_buffered(
    servers: Servers,
) -> None:
    size = b"%x" % (MAX_BODY_BYTES + 1)
    answer_bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nhello"
    server = await servers.start(each_request(lambda _: answer_bytes))
    async with pool_for(server) as pool:
        with pytest.raises(HttpProtocolError, match="over"):
            await pool.request("GET", "/k", host(server))


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\nb", "a\rb"])
async def test_a_line_break_in_a_header_value_raises_value_error_before_sending(
    servers: Servers, value: str
) -> None:
    server = await servers.start(each_request(lambda _: answer(b"ok")))
    async with pool_for(server) as pool:
        with pytest.raises(ValueError, match="line break"):
            await pool.request("GET", "/k", {**host(server), "x-meta": value})
        assert pool.connections_made == 0
        assert pool._open == 0
    assert server.connections == 0


# TLS -------------------------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def start_tls_server(servers: Servers, tls_files: tuple[Path, Path]) -> RawServer:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tls_files[0], tls_files[1])
    return await servers.start(
        each_request(lambda req: answer(f"secret {req.target}".encode())),
        ssl_context=server_context,
    )


async def test_an_https_request_with_a_context_that_trusts_the_certificate(
    servers: Servers, tls_files: tuple[Path, Path]
) -> None:
    server = await start_tls_server(servers, tls_files)
    trusting = ssl.create_default_context(cafile=str(tls_files[0]))
    async with pool_for(server, scheme="https", ssl_context=trusting) as pool:
        for _ in range(2):
            resp = await pool.request("GET", "/k", host(server))
            assert (resp.status, resp.body) == (200, b"secret /k")
        assert pool.connections_made == 1
    assert server.connections == 1


async def test_https_with_the_default_context_rejects_a_self_signed_certificate(
    servers: Servers, tls_files: tuple[Path, Path]
) -> None:
    server = await start_tls_server(servers, tls_files)
    async with pool_for(server, scheme="https") as pool:
        with pytest.raises(HttpConnectError) as info:
            await pool.request("GET", "/k", host(server))
        assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
        assert pool._open == 0
    assert server.requests == []


# a closed pool ---------------------------------------------------------------------------


async def test_a_request_after_the_pool_is_closed_raises_http_disconnected(
    servers: Servers,
) -> None:
    server = await servers.start(each_request(lambda _: answer(b"ok")))
    pool = pool_for(server)
    assert (await pool.request("GET", "/k", host(server))).body == b"ok"
    await pool.close()
    with pytest.raises(HttpDisconnected):
        await pool.request("GET", "/k", host(server))
    await until(lambda: server.open == 0)  # the idle connection was closed
    assert server.connections == 1


# request bodies ---------------------------------------------------------------------------


async def test_an_answer_before_the_whole_body_was_sent_drops_the_connection(
    servers: Servers,
) -> None:
    async def early(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the head only: the body is never read
        writer.write(answer(b"too big", status="413 Payload Too Large"))
        await writer.drain()
        await asyncio.sleep(30)  # keeps the connection open, unread

    server = await servers.start(early)
    async with pool_for(server, read_timeout_s=5.0) as pool:
        resp = await pool.request("PUT", "/b/k", host(server), random_bytes(16 * 1024 * 1024))
        assert (resp.status, resp.body) == (413, b"too big")
        # The unsent rest of the body must not reach the server as a new request.
        assert pool.in_use == 0 and not pool._idle


async def test_an_upload_slower_than_the_read_timeout_does_not_time_out(
    servers: Servers,
) -> None:
    async def slow_reader(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        got = 0
        while got < length:  # 8 MiB at most 128 KiB / 20 ms: longer than the 1 s timeout
            got += len(await reader.read(128 * 1024))
            await asyncio.sleep(0.02)
        writer.write(answer(b"stored"))
        await writer.drain()

    server = await servers.start(slow_reader)
    async with pool_for(server, read_timeout_s=1.0) as pool:
        started = time.monotonic()
        resp = await pool.request("PUT", "/b/k", host(server), random_bytes(8 * 1024 * 1024))
        assert (resp.status, resp.body) == (200, b"stored")
        assert time.monotonic() - started > 1.0  # the upload really outlasted the timeout


# what the review of this client found -----------------------------------------------------


async def test_a_stream_closed_early_after_its_body_arrived_leaves_a_working_connection(
    servers: Servers,
) -> None:
    # Exactly the high-water mark: reading pauses with the last byte, all of it unread.
    body = random_bytes(HIGH_WATER_BYTES)

    def respond(req: Request) -> bytes:
        return answer(body if req.method == "GET" else b"")

    server = await servers.start(each_request(respond))
    async with pool_for(server, read_timeout_s=1.0) as pool:
        stream = stream_of(await pool.request("GET", "/big", host(server), stream=True))
        await until(lambda: stream._received >= stream.length)
        assert stream._conn._reading_paused
        stream.close()
        assert pool.in_use == 0 and len(pool._idle) == 1  # whole: it is kept alive
        started = time.monotonic()
        again = await pool.request("HEAD", "/big", host(server))  # the same connection
        assert again.status == 200
        assert time.monotonic() - started < 0.5  # not after the 1 s read timeout
        assert pool.connections_made == 1


async def test_many_small_reads_of_a_stream_return_every_byte_in_order(servers: Servers) -> None:
    body = random_bytes(3 * 1024 * 1024 + 17)
    server = await servers.start(each_request(lambda _: answer(body)))
    async with pool_for(server) as pool:
        stream = stream_of(await pool.request("GET", "/k", host(server), stream=True))
        parts = []
        sizes = [1, 1000, 1024, 7, 65_536, 300_000]
        i = 0
        while chunk := await stream.read(sizes[i % len(sizes)]):
            assert len(chunk) <= sizes[i % len(sizes)]
            parts.append(chunk)
            i += 1
        assert b"".join(parts) == body
        assert pool.in_use == 0


async def test_a_connection_dropped_during_an_upload_raises_http_disconnected_cleanly(
    servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    async def drop_after_head(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read(64 * 1024)
        writer.transport.abort()

    server = await servers.start(drop_after_head)
    async with pool_for(server) as pool:
        with pytest.raises(HttpDisconnected):
            await pool.request("PUT", "/b/k", host(server), random_bytes(32 * 1024 * 1024))
        assert pool.in_use == 0
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_kept_alive_connection_closed_as_the_request_goes_out_is_retried_at_once(
    servers: Servers,
) -> None:
    async def one_answer_then_close(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if await server.read_request(reader) is None:
            return
        writer.write(answer(b"first"))  # keep-alive, as far as the client knows
        await writer.drain()
        await server.read_request(reader)  # the second request arrives: no answer, close

    server = await servers.start(one_answer_then_close)
    async with pool_for(server) as pool:
        assert (await pool.request("GET", "/1", host(server))).body == b"first"
        started = time.monotonic()
        assert (await pool.request("GET", "/2", host(server))).body == b"first"
        assert time.monotonic() - started < 0.5  # no back-off sleep
        assert server.connections == 2


async def test_a_new_connection_closed_without_an_answer_is_not_retried_here(
    servers: Servers,
) -> None:
    async def close_at_once(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)

    server = await servers.start(close_at_once)
    async with pool_for(server) as pool:
        with pytest.raises(HttpDisconnected):
            await pool.request("GET", "/k", host(server))
        assert server.connections == 1  # the caller's retry loop decides, not the pool


async def test_a_header_that_is_not_ascii_raises_value_error(servers: Servers) -> None:
    server = await servers.start(each_request(lambda _: answer()))
    async with pool_for(server) as pool:
        with pytest.raises(ValueError, match="not ASCII"):
            await pool.request("PUT", "/k", {**host(server), "content-type": "text/é"}, b"x")
    assert server.connections == 0


async def test_an_untrusted_certificate_maps_to_botocores_ssl_error(
    servers: Servers, tls_files: tuple[Path, Path]
) -> None:
    server = await start_tls_server(servers, tls_files)
    async with pool_for(server, scheme="https") as pool:
        with pytest.raises(HttpTlsError) as caught:
            await pool.request("GET", "/k", host(server))
    assert isinstance(transport_error(caught.value, URL("https://x/k")), SSLError)


async def test_a_host_is_looked_up_once_for_many_new_connections(
    servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def slow(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await server.read_request(reader) is not None:
            await asyncio.sleep(0.05)  # keeps each connection busy: the next needs a new one
            writer.write(answer(b"ok"))
            await writer.drain()

    server = await servers.start(slow)
    loop = asyncio.get_running_loop()
    lookups: list[str] = []
    real = loop.getaddrinfo

    async def counting(host: str, *args: object, **kwargs: object) -> object:
        lookups.append(host)
        return await real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "getaddrinfo", counting)
    pool = HttpPool(
        "http", "localhost", server.port, limit=4, connect_timeout_s=5, read_timeout_s=5
    )
    async with pool:
        answers = await asyncio.gather(
            *(pool.request("GET", "/k", {"host": f"localhost:{server.port}"}) for _ in range(4))
        )
    assert [a.body for a in answers] == [b"ok"] * 4
    assert server.connections == 4
    assert lookups == ["localhost"]
