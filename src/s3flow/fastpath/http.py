"""A small HTTP/1.1 keep-alive client for the fast path's calls: :class:`HttpPool`.

The fast path's GetObject, PutObject, HeadObject and SQS calls send one small
request and read its answer, thousands of times a second. Through an aiohttp
session each costs about 140 µs of event-loop CPU (request and response objects,
header multidicts, timers, payload writers); written as one ``transport.write``
and parsed from a ``Protocol``'s buffer it costs about 25 µs (both measured
against S3Proxy on the 2-core development VM, 6,400 HEADs at concurrency 64).

What it does:

* one pool of keep-alive connections per host, ``limit`` open at most (waiting
  for a free one is not a timeout); idle ones are dropped after ``keepalive_s``;
* addresses looked up at most every ``DNS_TTL_S`` and taken in turn by new
  connections; the connect timeout covers the connection and TLS, not the lookup;
* a read timeout that restarts with every byte received or sent (a slow upload
  is not a silent server);
* ``Content-Length``, chunked and read-until-close bodies; bodiless answers
  (HEAD, 1xx, 204, 304); ``Connection: close``; an answer that arrives before the
  whole request body was sent stops the upload and drops the connection;
* a 2xx body streamed with flow control when asked (:class:`BodyStream`: reading
  pauses while ``HIGH_WATER_BYTES`` wait unread);
* a kept-alive connection that the server closed just as a request went out (no
  byte of an answer came) is replaced at once and the request sent once more;
  any other failure is the caller's to retry.

Its errors derive from :class:`HttpError`; they never leave the fast path
(:func:`s3flow.fastpath.transport.transport_error` maps them to botocore's).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from s3flow.closing import AsyncClosing

#: Answers larger than this are refused (the calls served here answer in kilobytes;
#: a ReceiveMessage of ten 256 KiB messages is under 4 MiB).
MAX_BODY_BYTES = 64 * 1024 * 1024
_MAX_HEAD_BYTES = 64 * 1024
_WRITE_CHUNK = 256 * 1024
_BODILESS = frozenset({204, 304})
#: A chunk size (RFC 9112 7.1): hex digits only; ``int(text, 16)`` would also take
#: ``0x1f``, ``+1f`` or ``1_f``. 16 digits cover any size a server could mean.
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
#: How long a host's looked-up addresses are used (aiohttp's default DNS cache time).
DNS_TTL_S = 10.0
#: A streamed body stops reading from the socket while this much waits unread.
HIGH_WATER_BYTES = 1024 * 1024


class HttpError(Exception):
    """A request that got no whole answer (the fast path maps it to botocore's error)."""


class HttpConnectError(HttpError):
    """The endpoint could not be reached (refused, unreachable, name not resolved)."""


class HttpConnectTimeout(HttpConnectError, TimeoutError):
    """No connection within the connect timeout."""


class HttpTlsError(HttpConnectError):
    """The TLS handshake failed (an untrusted certificate, a protocol mismatch)."""


class HttpReadTimeout(HttpError, TimeoutError):
    """No byte of the answer for the read timeout."""


class HttpDisconnected(HttpError):
    """The connection closed before the whole answer arrived."""


class HttpProtocolError(HttpDisconnected):
    """The answer is not HTTP/1.1 as this client reads it (the connection is dropped)."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An answer: status, headers (case-insensitive) and body; or, when a stream was
    asked for and the answer is a 2xx with a ``Content-Length``, an empty ``body`` and
    the :class:`BodyStream` to read it from."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes
    stream: BodyStream | None = None


class BodyStream:
    """The body of one answer, read as it arrives (:meth:`read`); :meth:`close` early
    drops the connection, reading to the end gives it back to its pool."""

    def __init__(self, conn: _Conn, length: int) -> None:
        self._conn = conn
        self.length = length
        self._chunks: collections.deque[bytes] = collections.deque()
        self._offset = 0  # bytes of the first chunk already read
        self._buffered = 0
        self._received = 0
        self._error: HttpError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._wait_start = 0.0
        self._done: Callable[[_Conn], None] | None = None
        self._finished = False
        self.closed = False

    def __del__(self) -> None:
        # Dropped unread and unclosed: give the connection's place in its pool back.
        if not self._finished:
            with contextlib.suppress(Exception):  # the loop may be gone at exit
                self.close()

    @property
    def at_eof(self) -> bool:
        """Every byte has arrived and been read."""
        return self._received >= self.length and not self._buffered

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all that is left when ``n < 0``); ``b""`` at the end.

        Waits only when nothing is buffered; :class:`HttpReadTimeout` when nothing
        arrives for the read timeout, :class:`HttpDisconnected` when the connection
        drops first."""
        if n == 0:
            return b""
        if n < 0:
            parts = []
            while chunk := await self.read(HIGH_WATER_BYTES):
                parts.append(chunk)
            return b"".join(parts)
        while not self._buffered:
            if self._error is not None:
                raise self._error
            if self._received >= self.length or self.closed:
                return b""
            await self._wait()
        first, off = self._chunks[0], self._offset
        if len(first) - off > n:  # part of the first chunk: only what is taken is copied
            out = first[off : off + n]
            self._offset = off + n
        else:
            parts = [first[off:] if off else first]
            self._chunks.popleft()
            self._offset = 0
            taken = len(parts[0])
            while self._chunks and taken + len(self._chunks[0]) <= n:
                parts.append(self._chunks.popleft())
                taken += len(parts[-1])
            out = parts[0] if len(parts) == 1 else b"".join(parts)
        self._buffered -= len(out)
        self._conn.consumed(self._buffered)
        if self.at_eof:
            self._finish()
        return out

    def close(self) -> None:
        """Stop reading: an unread rest drops the connection."""
        if self.closed:
            return
        self.closed = True
        self._chunks.clear()
        self._offset = 0
        self._buffered = 0
        if self._received < self.length or self._error is not None:
            self._conn.reusable = False
        self._wake()  # a reader waiting in another task sees the end
        self._finish()

    async def _wait(self) -> None:
        loop = self._conn.loop
        self._wait_start = loop.time()
        self._waiter = loop.create_future()
        self._timer = loop.call_later(self._conn.read_timeout_s, self._check_timeout)
        try:
            await self._waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._waiter = None

    def _check_timeout(self) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done():
            return
        conn = self._conn
        since = max(conn.last_data, self._wait_start)
        left = since + conn.read_timeout_s - conn.loop.time()
        if left > 0:  # a byte arrived during the wait: the rest of the time
            self._timer = conn.loop.call_later(left, self._check_timeout)
            return
        self.fail(HttpReadTimeout(f"no byte of the body for {conn.read_timeout_s:g} s"))
        self._conn.reusable = False

    def feed(self, data: bytes) -> None:
        """Bytes of the body from the connection."""
        self._received += len(data)
        if not self.closed:
            self._chunks.append(data)
            self._buffered += len(data)
        self._wake()
        if self.closed and self._received >= self.length:
            self._finish()

    def fail(self, exc: HttpError) -> None:
        """The connection failed before the whole body arrived."""
        if self._error is None and self._received < self.length:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._conn.stream_done(self)
        done, self._done = self._done, None
        if done is not None:
            done(self._conn)


class _Conn(asyncio.Protocol):
    """One connection: writes a request, parses its answer from the read buffer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout_s: float) -> None:
        self.loop = loop
        self.read_timeout_s = read_timeout_s
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buf = bytearray()
        self._answer: asyncio.Future[HttpResponse] | None = None
        self._head_only = False
        self._timer: asyncio.TimerHandle | None = None
        self.last_data = 0.0
        self._drained: asyncio.Future[None] | None = None
        self._paused = False
        # the answer being parsed
        self._status = 0
        self._reason = ""
        self._headers: CIMultiDict[str] | None = None
        self._body_mode = ""  # "length" | "chunked" | "close" | "stream"
        self._remaining = 0
        self._body = bytearray()
        self._keep_alive = True
        self._want_stream = False
        self._stream: BodyStream | None = None
        self._reading_paused = False
        self.reusable = False
        self.answered = False  # a byte of the current request's answer has arrived

    # asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self._stop_sending()  # the sender then finds the connection closed
        if self._stream is not None:
            self._stream.fail(HttpDisconnected("the server closed the connection mid-body"))
        if self._answer is not None and not self._answer.done():
            if self._headers is not None and self._body_mode == "close" and exc is None:
                body = bytes(self._buf)  # the body was "everything until the server closes"
                self._buf.clear()
                self._finish(body)
            else:
                why = f" ({exc})" if exc else ""
                self._fail(HttpDisconnected(f"the server closed the connection{why}"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self.last_data = self.loop.time()  # the server took bytes: the upload is moving
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.last_data = self.loop.time()
        self.answered = True
        if self._stream is not None:
            self._stream_data(data)
            return
        if self._answer is None or self._answer.done():
            # Bytes nobody asked for: the connection cannot be trusted any more.
            self.reusable = False
            self._close()
            return
        self._buf += data
        try:
            self._parse()
        except HttpProtocolError as exc:
            self._fail(exc)

    # requests --------------------------------------------------------------------------

    async def exchange(
        self, head: bytes, body: bytes, *, head_only: bool, stream: bool = False
    ) -> HttpResponse:
        """Send one request; its answer (a 2xx body streamed when ``stream``)."""
        assert self.transport is not None
        self._answer = self.loop.create_future()
        self._head_only = head_only
        self._want_stream = stream
        self._stream = None
        self._headers = None
        self.reusable = False
        self.answered = False
        self.last_data = self.loop.time()
        self._timer = self.loop.call_later(self.read_timeout_s, self._check_timeout)
        try:
            if len(body) <= _WRITE_CHUNK:
                self.transport.write(head + body if body else head)
            else:
                self.transport.write(head)
                view = memoryview(body)
                for i in range(0, len(view), _WRITE_CHUNK):
                    if self._paused:
                        self._drained = self.loop.create_future()
                        await self._drained
                    if self.closed or self._answer.done():
                        # Answered before the whole body was sent (an early error): the
                        # rest must not reach the server as the start of a request.
                        self._keep_alive = False
                        self.reusable = False
                        break
                    self.transport.write(view[i : i + _WRITE_CHUNK])
                    # The read timeout counts from the last byte sent, not the first.
                    self.last_data = self.loop.time()
            return await self._answer
        except BaseException:
            if self._stream is not None:  # answered, but nobody will read it: drop it
                self._stream = None
                self.reusable = False
            raise
        finally:
            self._cancel_timer()
            self._drained = None
            if not self._answer.done():  # cancelled: the answer may still come
                self._answer.cancel()
                self.reusable = False
            if not self.reusable and self._stream is None:
                self._close()

    def _check_timeout(self) -> None:
        self._timer = None
        if self._answer is None or self._answer.done():
            return
        left = self.last_data + self.read_timeout_s - self.loop.time()
        if left > 0:  # a byte arrived meanwhile: wait the rest
            self._timer = self.loop.call_later(left, self._check_timeout)
            return
        self._fail(HttpReadTimeout(f"no answer for {self.read_timeout_s:g} s"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, exc: HttpError) -> None:
        self.reusable = False
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)
        self._close()
        self._stop_sending()

    def _stop_sending(self) -> None:
        """The answer is in (or failed): a body still waiting to be sent stops waiting."""
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            # abort, not close: a request body still waiting to be sent is dropped (a
            # server that stopped reading would otherwise keep the socket open forever)
            self.transport.abort()

    # streaming -------------------------------------------------------------------------

    def _start_stream(self) -> None:
        assert self._answer is not None and self._headers is not None
        stream = self._stream = BodyStream(self, self._remaining)
        self._answer.set_result(
            HttpResponse(self._status, self._reason, CIMultiDictProxy(self._headers), b"", stream)
        )
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._stream_data(data)

    def _stream_data(self, data: bytes) -> None:
        stream = self._stream
        assert stream is not None
        left = stream.length - stream._received
        if len(data) > left:  # bytes past the body: the connection cannot be trusted
            data = data[:left]
            self._keep_alive = False
            self._close()
        if stream._received + len(data) >= stream.length:
            self.reusable = self._keep_alive and not self.closed
        if data:
            stream.feed(data)
        if stream._buffered >= HIGH_WATER_BYTES and not self._reading_paused and not self.closed:
            assert self.transport is not None
            self.transport.pause_reading()
            self._reading_paused = True

    def consumed(self, buffered: int) -> None:
        """The stream's reader took bytes; ``buffered`` are left unread."""
        if buffered < HIGH_WATER_BYTES // 2:
            self._resume_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self.closed:
            assert self.transport is not None
            self.transport.resume_reading()
            self._reading_paused = False

    def stream_done(self, stream: BodyStream) -> None:
        """The streamed answer ``stream`` is over (read to its end, or closed early)."""
        if self._stream is not stream:
            return  # detached from this connection already (see exchange)
        self._stream = None
        if self.reusable:
            # Every byte is in: reading resumes, or the next answer would never be read.
            self._resume_reading()
        else:
            self._close()

    # parsing ---------------------------------------------------------------------------

    def _parse(self) -> None:
        while self._headers is None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > _MAX_HEAD_BYTES:
                    raise HttpProtocolError("the answer's header block is over 64 KiB")
                return
            self._read_head(bytes(self._buf[:end]))
            del self._buf[: end + 4]
        if self._body_mode == "stream":
            self._start_stream()
        elif self._body_mode == "length":
            if len(self._buf) >= self._remaining:
                with memoryview(self._buf) as view:
                    body = bytes(view[: self._remaining])
                del self._buf[: self._remaining]
                self._finish(body)
        elif self._body_mode == "chunked":
            self._parse_chunks()
        elif len(self._buf) > MAX_BODY_BYTES:  # "close": wait for the end
            raise HttpProtocolError(f"the answer is over {MAX_BODY_BYTES} bytes")

    def _read_head(self, block: bytes) -> None:
        try:
            text = block.decode("latin-1")
            status_line, *lines = text.split("\r\n")
            version, status_text, *reason = status_line.split(" ", 2)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpProtocolError(f"not an HTTP status line: {block[:80]!r}") from exc
        status = _digits(status_text) if len(status_text) == 3 else None
        if not version.startswith("HTTP/1.") or status is None or not 100 <= status <= 599:
            raise HttpProtocolError(f"not an HTTP/1.x status line: {block[:80]!r}")
        if status < 200:  # 1xx: an interim answer; the real one follows
            return
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpProtocolError(f"not an HTTP header line: {line[:80]!r}")
            headers.add(name, value.strip())
        self._status = status
        self._reason = reason[0] if reason else ""
        self._headers = headers
        connection = headers.get("connection", "").lower()
        self._keep_alive = (
            "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        )
        self._body = bytearray()
        if self._head_only or status in _BODILESS:
            self._body_mode, self._remaining = "length", 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._body_mode, self._remaining = "chunked", -1
        elif "content-length" in headers:
            self._remaining = _content_length(headers.getall("content-length"))
            self._body_mode = "length"
            if self._want_stream and 200 <= status < 300 and self._remaining > 0:
                self._body_mode = "stream"
            elif self._remaining > MAX_BODY_BYTES:
                raise HttpProtocolError(f"a Content-Length of {self._remaining}")
        else:
            self._body_mode, self._keep_alive = "close", False

    def _parse_chunks(self) -> None:
        buf = self._buf
        while True:
            if self._remaining > 0:  # inside a chunk (and its CRLF)
                if len(buf) < self._remaining + 2:
                    return
                if buf[self._remaining : self._remaining + 2] != b"\r\n":
                    raise HttpProtocolError("a chunk not followed by CRLF")
                self._body += buf[: self._remaining]
                del buf[: self._remaining + 2]
                self._remaining = -1
                if len(self._body) > MAX_BODY_BYTES:
                    raise HttpProtocolError(f"the answer is over {MAX_BODY_BYTES} bytes")
            elif self._remaining == -1:  # a chunk-size line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise HttpProtocolError("a chunk-size line over 1 KiB")
                    return
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                if not _CHUNK_SIZE.fullmatch(size_text):
                    raise HttpProtocolError(f"a chunk size of {size_text[:20]!r}")
                size = int(size_text, 16)
                if len(self._body) + size > MAX_BODY_BYTES:  # before buffering it
                    raise HttpProtocolError(f"the answer is over {MAX_BODY_BYTES} bytes")
                del buf[: end + 2]
                self._remaining = size if size > 0 else -2
            else:  # trailer lines after the last chunk, up to an empty line
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    body = bytes(self._body)
                    self._body = bytearray()
                    self._finish(body)
                    return

    def _finish(self, body: bytes) -> None:
        assert self._answer is not None and self._headers is not None
        self.reusable = self._keep_alive and not self._buf and not self.closed
        self._stop_sending()
        if not self._answer.done():
            self._answer.set_result(
                HttpResponse(self._status, self._reason, CIMultiDictProxy(self._headers), body)
            )


class HttpPool(AsyncClosing):
    """Keep-alive connections to one ``scheme://host:port``; :meth:`request` sends one call.

    ``limit`` connections at most are open at once; a request waits for one (that
    wait is not timed). Usage::

        async with HttpPool("http", "127.0.0.1", 9000, limit=64) as pool:
            answer = await pool.request("HEAD", "/b/k", {"host": "127.0.0.1:9000"})
    """

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        limit: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        keepalive_s: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if scheme not in ("http", "https"):
            raise ValueError(f"scheme {scheme!r}: only http and https")
        self.host = host
        self.port = port
        self.limit = max(1, limit)
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.keepalive_s = keepalive_s
        self._ssl: ssl.SSLContext | None = None
        if scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self._idle: collections.deque[_Conn] = collections.deque()
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self._dns: tuple[float, list[tuple[str, int]]] | None = None  # (expires, addresses)
        self._next_address = -1
        self._dns_lock = asyncio.Lock()
        self.connections_made = 0

    @property
    def in_use(self) -> int:
        """Connections checked out now (a request or an unread stream holds each)."""
        return self._open - len(self._idle)

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        stream: bool = False,
    ) -> HttpResponse:
        """Send ``method target`` with ``headers`` (which must hold ``host``) and ``body``;
        the answer, whatever its status. :class:`HttpError` when none came.

        With ``stream``, a 2xx answer with a ``Content-Length`` comes with its body
        unread (:attr:`HttpResponse.stream`); its connection returns to the pool once
        the stream is read to the end or closed."""
        lines = [f"{method} {target} HTTP/1.1"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"a line break in header {name!r}")
            lines.append(f"{name}: {value}")
        if body or method in ("PUT", "POST"):
            lines.append(f"content-length: {len(body)}")
        try:
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        except UnicodeEncodeError as exc:
            raise ValueError(f"a header that is not ASCII: {exc}") from exc
        fresh = False
        while True:
            conn, reused = await self._acquire(fresh=fresh)
            streaming = False
            try:
                resp = await conn.exchange(head, body, head_only=method == "HEAD", stream=stream)
            except HttpDisconnected as exc:
                if reused and not conn.answered and not isinstance(exc, HttpProtocolError):
                    # A kept-alive connection the server closed as the request went out
                    # (no byte of an answer came): once more at once, on a new one.
                    fresh = True
                    continue
                raise
            else:
                if resp.stream is not None:
                    resp.stream._done = self._release
                    streaming = True
                return resp
            finally:
                if not streaming:
                    self._release(conn)

    async def close(self) -> None:
        """Close every idle connection; those in use close when their answer is in."""
        self._closed = True
        while self._idle:
            self._drop(self._idle.pop())
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(HttpDisconnected("the pool is closed"))

    async def _acquire(self, *, fresh: bool = False) -> tuple[_Conn, bool]:
        """A connection, and whether it was kept alive from an earlier request
        (``fresh``: a new one, unless the limit leaves only kept-alive ones)."""
        if self._closed:
            raise HttpDisconnected("the pool is closed")
        now = time.monotonic()
        while self._idle and (not fresh or self._open >= self.limit):
            conn = self._idle.pop()  # the most recently used: the least likely to be stale
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn, True
            self._drop(conn)
        while self._open >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake()  # woken, then cancelled before it ran: pass the turn on
                raise
            if self._idle:
                return await self._acquire(fresh=fresh)
        self._open += 1
        try:
            return await self._connect(), False
        except BaseException:
            self._open -= 1
            self._wake()
            raise

    async def _addresses(self) -> list[tuple[str, int]]:
        """The host's addresses, looked up at most every ``DNS_TTL_S`` (like aiohttp's
        cache; the lookup runs in the loop's executor and is not part of the connect
        timeout, as with aiohttp's ``sock_connect``)."""
        if self._dns is None or time.monotonic() >= self._dns[0]:
            async with self._dns_lock:  # one lookup for every connection opening now
                if self._dns is None or time.monotonic() >= self._dns[0]:
                    try:
                        infos = await asyncio.get_running_loop().getaddrinfo(
                            self.host, self.port, type=socket.SOCK_STREAM
                        )
                    except OSError as exc:
                        raise HttpConnectError(f"cannot resolve {self.host}: {exc}") from exc
                    found = dict.fromkeys((str(i[4][0]), int(i[4][1])) for i in infos)
                    if not found:
                        raise HttpConnectError(f"{self.host} has no address")
                    self._dns = (time.monotonic() + DNS_TTL_S, list(found))
        return self._dns[1]

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        addresses = await self._addresses()
        # New connections take the addresses in turn (a host with several spreads them).
        self._next_address = (self._next_address + 1) % len(addresses)
        ip, port = addresses[self._next_address]
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Conn(loop, self.read_timeout_s),
                    ip,
                    port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                )
        except TimeoutError as exc:
            raise HttpConnectTimeout(
                f"no connection to {self.host}:{self.port} within {self.connect_timeout_s:g} s"
            ) from exc
        except ssl.SSLError as exc:  # the certificate or the handshake
            raise HttpTlsError(f"TLS with {self.host}:{self.port} failed: {exc}") from exc
        except OSError as exc:  # refused, unreachable, DNS
            raise HttpConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self.connections_made += 1
        return conn

    def _release(self, conn: _Conn) -> None:
        if conn.reusable and not conn.closed and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            self._drop(conn)
            return
        self._wake()

    def _drop(self, conn: _Conn) -> None:
        conn._close()
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _digits(text: str) -> int | None:
    """``text`` as a decimal number if it is one as HTTP writes numbers (ASCII digits
    only: ``int`` would also take ``+5``, `` 5``, ``1_0`` or other scripts' digits)."""
    return int(text) if text.isascii() and text.isdigit() else None


def _content_length(values: list[str]) -> int:
    """The body length of an answer's Content-Length header(s) (RFC 9110 8.6).

    Several values (repeated headers, or a comma-separated list) are accepted only when
    they are all the same number: otherwise where the body ends is ambiguous, and
    guessing would read the next answer's bytes as this one's (or the reverse).
    """
    numbers = {_digits(v.strip()) for value in values for v in value.split(",")}
    if len(numbers) != 1 or None in numbers:
        shown = ", ".join(values)[:60]
        raise HttpProtocolError(f"a Content-Length that is not one number: {shown!r}")
    (length,) = numbers
    assert length is not None
    return length
