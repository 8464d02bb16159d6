"""A small fault-injecting HTTP/1.1 proxy for integration tests (127.0.0.1 only).

``FaultProxy(upstream_url, fault_rate=0.05, seed=1, stall_s=2.0)`` listens on a
free loopback port (``.url``) and forwards every request to ``upstream_url``
(the moto server). For a seeded fraction ``fault_rate`` of the requests it
injects one fault instead, chosen with the same seeded generator:

* ``error-500``: HTTP 500 ``InternalError`` (not forwarded);
* ``error-503``: HTTP 503 ``SlowDown`` (S3) / ``ServiceUnavailable`` (other
  services) (not forwarded);
* ``reset``: the connection is reset (SO_LINGER 0, no answer, not forwarded);
* ``stall``: ``stall_s`` of silence, then the request is forwarded normally.

Besides, :meth:`FaultProxy.lose_answer` picks requests by their operation and body:
each is forwarded, the server applies it, and the client's connection is reset
instead of answering (the SDK then retries a request that already happened).

Faults are only ever decided per request, after its body has been read;
responses are relayed unchanged. Error bodies follow the request's protocol:
AWS XML (``<Error><Code>InternalError</Code>...``) for REST/query requests and
the JSON error shape for JSON-protocol requests (``X-Amz-Target``, e.g. SQS),
so botocore parses the error code either way.

Client connections are kept alive (each has its own upstream connection);
request bodies may use Content-Length or chunked transfer encoding (chunked
ones are forwarded de-chunked with a Content-Length); ``Expect: 100-continue``
is answered by the proxy itself. The proxy runs its own event loop in a
background thread: use it as a context manager.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import json
import random
import socket
import struct
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

_MAX_HEAD = 256 * 1024


class Fault(enum.StrEnum):
    """The faults the proxy can inject."""

    ERROR_500 = "error-500"
    ERROR_503 = "error-503"
    RESET = "reset"
    STALL = "stall"


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunked: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return None

    @property
    def wants_close(self) -> bool:
        conn = (self.header("Connection") or "").lower()
        return conn == "close" or (self.version == "HTTP/1.0" and conn != "keep-alive")

    @property
    def operation(self) -> str:
        """A short label: 'AmazonSQS.ReceiveMessage' style target, else 'S3 GET'."""
        target = self.header("X-Amz-Target")
        if target:
            return target.rsplit(".", 1)[-1]
        return f"{self.method} {'object' if self.target.count('/') >= 2 else 'bucket'}"

    def upstream_bytes(self) -> bytes:
        drop = {"expect", "transfer-encoding", "content-length"}
        lines = [f"{self.method} {self.target} {self.version}"]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() not in drop]
        if self.body or self.method in ("POST", "PUT", "PATCH") or self.chunked:
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


def _reset(writer: asyncio.StreamWriter) -> None:
    """Reset the client's connection (SO_LINGER 0): no answer at all."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _parse_headers(lines: list[bytes]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for raw in lines:
        if not raw:
            continue
        name, _, value = raw.decode("latin-1").partition(":")
        out.append((name.strip(), value.strip()))
    return out


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _error_response(req: _Request, status: int, rng: random.Random) -> bytes:
    request_id = uuid.UUID(int=rng.getrandbits(128)).hex.upper()[:16]
    is_json = req.header("X-Amz-Target") is not None
    if status == 500:
        code, message, reason = "InternalError", "We encountered an internal error.", "Error"
    elif is_json:
        code, message, reason = "ServiceUnavailable", "Service is unavailable.", "Unavailable"
    else:
        code, message, reason = "SlowDown", "Please reduce your request rate.", "Slow Down"
    if is_json:
        ctype = "application/x-amz-json-1.0"
        body = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": message}).encode()
        extra = f"x-amzn-query-error: {code};Receiver\r\nx-amzn-RequestId: {request_id}\r\n"
    else:
        ctype = "application/xml"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>{request_id}</RequestId></Error>"
        ).encode()
        extra = f"x-amz-request-id: {request_id}\r\n"
    head = (
        f"HTTP/1.1 {status} {'Internal Server Error' if status == 500 else reason}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}"
        + ("Connection: close\r\n" if req.wants_close else "")
        + "\r\n"
    )
    # A HEAD response has no body (its Content-Length still describes one).
    return head.encode("latin-1") + (b"" if req.method == "HEAD" else body)


class FaultProxy:
    """Forward HTTP/1.1 to ``upstream_url``, injecting seeded faults. Use ``with``."""

    def __init__(
        self,
        upstream_url: str,
        fault_rate: float = 0.05,
        seed: int = 0,
        stall_s: float = 2.0,
        *,
        kinds: Sequence[Fault] = tuple(Fault),
        host: str = "127.0.0.1",
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream_url!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.fault_rate = fault_rate
        self.stall_s = stall_s
        self.kinds = tuple(kinds)
        self.host = host
        self.port = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._faulted_ops: collections.Counter[str] = collections.Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._lose: list[tuple[Callable[[str, bytes], bool], list[int]]] = []

    # --- public ------------------------------------------------------------------

    def lose_answer(self, match: Callable[[str, bytes], bool], times: int = 1) -> None:
        """The next ``times`` requests ``match(operation, body)`` picks reach the server
        (and are applied), but their answer is lost: the connection is reset."""
        with self._lock:
            self._lose.append((match, [times]))

    def _answer_lost(self, req: _Request) -> bool:
        with self._lock:
            for match, left in self._lose:
                if left[0] > 0 and match(req.operation, req.body):
                    left[0] -= 1
                    return True
        return False

    @property
    def url(self) -> str:
        """The proxy's endpoint URL (give it as AWS_ENDPOINT_URL)."""
        return f"http://{self.host}:{self.port}"

    @property
    def counts(self) -> dict[str, int]:
        """Requests, connections, chunked bodies, 100-continues and each fault injected."""
        with self._lock:
            out = {"requests": 0, "connections": 0, "chunked_requests": 0, "expect_continue": 0}
            out.update({k.value: 0 for k in Fault})
            out.update(self._counts)
            return out

    @property
    def faulted_ops(self) -> dict[str, int]:
        """``'<fault> <operation>'`` -> count (e.g. ``'reset DeleteMessageBatch'``)."""
        with self._lock:
            return dict(self._faulted_ops)

    @property
    def injected(self) -> int:
        """Total faults injected."""
        c = self.counts
        return sum(c[k.value] for k in Fault)

    def summary(self) -> str:
        """One line for test output."""
        c = self.counts
        faults = ", ".join(f"{k.value} {c[k.value]}" for k in Fault)
        return (
            f"proxy: {c['requests']} requests on {c['connections']} connections "
            f"({c['chunked_requests']} chunked bodies, {c['expect_continue']} 100-continue), "
            f"{self.injected} faults injected ({faults}); by operation: "
            f"{dict(sorted(self.faulted_ops.items()))}"
        )

    def start(self) -> FaultProxy:
        """Start the proxy's loop thread and listening socket."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Close the listener and every connection; stop the thread."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- the loop thread ----------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, self.host, 0, limit=_MAX_HEAD)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()  # each handler then ends at its next read or write
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2)
        for t in list(self._tasks):
            t.cancel()  # e.g. in a stall; the handler returns quietly
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def _count(self, name: str, op: str | None = None) -> None:
        with self._lock:
            self._counts[name] += 1
            if op is not None:
                self._faulted_ops[f"{name} {op}"] += 1

    def _decide(self) -> Fault | None:
        if self.kinds and self._rng.random() < self.fault_rate:
            return self._rng.choice(self.kinds)
        return None

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self._count("connections")
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                req = await self._read_request(reader, writer)
                if req is None:
                    return
                self._count("requests")
                if self._answer_lost(req):
                    if upstream is None:
                        upstream = await asyncio.open_connection(*self.upstream, limit=_MAX_HEAD)
                    upstream[1].write(req.upstream_bytes())
                    await upstream[1].drain()
                    await upstream[0].readuntil(b"\r\n\r\n")  # answered: it was applied
                    self._count("lost-answer", req.operation)
                    _reset(writer)
                    return
                fault = self._decide()
                if fault is not None:
                    self._count(fault.value, req.operation)
                if fault is Fault.RESET:
                    _reset(writer)
                    return
                if fault in (Fault.ERROR_500, Fault.ERROR_503):
                    status = 500 if fault is Fault.ERROR_500 else 503
                    writer.write(_error_response(req, status, self._rng))
                    await writer.drain()
                    if req.wants_close:
                        return
                    continue
                if fault is Fault.STALL:
                    await asyncio.sleep(self.stall_s)
                if upstream is None:
                    upstream = await asyncio.open_connection(*self.upstream, limit=_MAX_HEAD)
                upstream[1].write(req.upstream_bytes())
                await upstream[1].drain()
                if not await self._relay_response(upstream[0], writer, req):
                    upstream[1].close()
                    upstream = None
                if req.wants_close:
                    return
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return  # a peer went away, or a malformed message: drop the connection
        except asyncio.CancelledError:
            return  # stopping: end quietly (asyncio's stream callback logs a cancelled task)
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            if upstream is not None:
                upstream[1].close()
            if not writer.transport.is_closing():
                writer.close()

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # the client closed the (idle) connection
        lines = head[:-4].split(b"\r\n")
        method, target, version = lines[0].decode("latin-1").split(" ", 2)
        req = _Request(method, target, version, _parse_headers(lines[1:]))
        if (req.header("Expect") or "").lower() == "100-continue":
            self._count("expect_continue")
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        if "chunked" in (req.header("Transfer-Encoding") or "").lower():
            req.chunked = True
            self._count("chunked_requests")
            req.body = await _read_chunked(reader)
        else:
            length = int(req.header("Content-Length") or 0)
            req.body = await reader.readexactly(length) if length else b""
        return req

    async def _relay_response(
        self,
        upstream: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        req: _Request,
    ) -> bool:
        """Copy one response to the client; False if the upstream connection must close.

        The client's connection stays open (keep-alive) whatever the upstream
        does: moto answers ``Connection: close``, so that header is dropped and
        a body delimited by the connection's end is sent with a Content-Length.
        """
        while True:
            head = await upstream.readuntil(b"\r\n\r\n")
            lines = head[:-4].split(b"\r\n")
            status_line = lines[0].decode("latin-1")
            version, status_s = status_line.split(" ", 2)[:2]
            status = int(status_s)
            if 100 <= status < 200:
                continue  # an interim response (we never forward Expect): drop it
            break
        headers = _parse_headers(lines[1:])
        low = {k.lower(): v for k, v in headers}
        conn = low.get("connection", "").lower()
        upstream_keep = conn != "close" and (version != "HTTP/1.0" or conn == "keep-alive")
        kept = [(k, v) for k, v in headers if k.lower() != "connection"]
        if req.wants_close:
            kept.append(("Connection", "close"))

        def send_head(hdrs: list[tuple[str, str]]) -> None:
            out = [status_line] + [f"{k}: {v}" for k, v in hdrs]
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))

        if req.method == "HEAD" or status in (204, 304):
            send_head(kept)
        elif "chunked" in low.get("transfer-encoding", "").lower():
            send_head(kept)
            while True:
                size_line = await upstream.readuntil(b"\r\n")
                writer.write(size_line)
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while True:
                        trailer = await upstream.readuntil(b"\r\n")
                        writer.write(trailer)
                        if trailer == b"\r\n":
                            break
                    break
                writer.write(await upstream.readexactly(size + 2))
                await writer.drain()
        elif "content-length" in low:
            send_head(kept)
            left = int(low["content-length"])
            while left > 0:
                data = await upstream.read(min(left, 65536))
                if not data:
                    raise asyncio.IncompleteReadError(b"", left)
                writer.write(data)
                await writer.drain()
                left -= len(data)
        else:
            body = await upstream.read()  # delimited by the end of the connection
            send_head([*kept, ("Content-Length", str(len(body)))])
            writer.write(body)
            upstream_keep = False
        await writer.drain()
        return upstream_keep
