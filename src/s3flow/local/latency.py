"""A TCP proxy on 127.0.0.1 that adds a set delay to every request (AWS-like latency).

Each client connection gets its own upstream connection. Bytes from the client are
held for ``delay_s`` after they arrive, then forwarded in order; responses flow back
at once. A request (the first chunk after the connection went idle) thus reaches the
server ``delay_s`` late, which is what one region's round trip adds to an SDK call;
:meth:`LatencyProxy.report` says how much delay was really added (measured per
request, from arrival to forwarding). Usage::

    async with LatencyProxy(upstream_port, delay_s=0.010) as proxy:
        use(f"http://127.0.0.1:{proxy.port}")

or :func:`run_in_thread` for synchronous code (the proxy's own event loop thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Self

from s3flow.closing import AsyncClosing

HOST = "127.0.0.1"
#: Defaults of the engine benchmark: one AWS region, SQS and S3.
SQS_DELAY_S = 0.010
S3_DELAY_S = 0.020
_CHUNK = 256 * 1024


class LatencyProxy(AsyncClosing):
    """Forward ``127.0.0.1:port`` to ``upstream_host:upstream_port``, delaying requests."""

    def __init__(
        self, upstream_port: int, delay_s: float, *, upstream_host: str = HOST, port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay_s = delay_s
        self.port = port
        self.requests = 0
        self.connections = 0
        self._added: list[float] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    async def start(self) -> Self:
        """Listen (on a free port unless one was given)."""
        self._server = await asyncio.start_server(self._serve, HOST, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        """Start listening (:meth:`start`); leaving the block closes the proxy."""
        return await self.start()

    def report(self) -> dict[str, Any]:
        """Set delay, requests seen, and the delay really added (mean, p50, p99, max; ms)."""
        xs = sorted(self._added)
        out: dict[str, Any] = {
            "set_delay_ms": round(self.delay_s * 1000, 3),
            "requests": self.requests,
            "connections": self.connections,
        }
        if xs:
            out["added_ms"] = {
                "mean": round(1000 * sum(xs) / len(xs), 3),
                "p50": round(1000 * xs[len(xs) // 2], 3),
                "p99": round(1000 * xs[min(len(xs) - 1, int(len(xs) * 0.99))], 3),
                "max": round(1000 * xs[-1], 3),
            }
        return out

    def reset(self) -> None:
        """Forget the measurements so far."""
        self._added.clear()
        self.requests = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(self._delayed(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()
            self._tasks.discard(task)

    async def _delayed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client -> server: every chunk waits until ``delay_s`` after its arrival."""
        pending: deque[tuple[float, bytes, bool]] = deque()
        ready = asyncio.Event()
        done = False

        async def forward() -> None:
            while True:
                while not pending:
                    if done:
                        return
                    ready.clear()
                    await ready.wait()
                due, chunk, first = pending[0]
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                pending.popleft()
                if first:
                    self._added.append(time.perf_counter() - due + self.delay_s)
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(forward())
        try:
            idle = True
            while chunk := await reader.read(_CHUNK):
                now = time.perf_counter()
                first = idle and not pending
                if first:
                    self.requests += 1
                pending.append((now + self.delay_s, chunk, first))
                ready.set()
                # The next chunk starts a new request when this one is the end of a burst:
                # approximated by "nothing more is buffered right now".
                idle = len(reader._buffer) == 0  # type: ignore[attr-defined]
            done = True
            ready.set()
            await sender
        finally:
            sender.cancel()
        with contextlib.suppress(OSError):
            writer.write_eof()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Server -> client, at once."""
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()


@contextlib.contextmanager
def run_in_thread(*proxies: LatencyProxy) -> Iterator[tuple[LatencyProxy, ...]]:
    """Run ``proxies`` on an event loop in a daemon thread for the ``with`` block."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="latency-proxy", daemon=True)
    thread.start()
    try:
        for proxy in proxies:
            asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(10)
        yield proxies
    finally:
        for proxy in proxies:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
