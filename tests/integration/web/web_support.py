"""Helpers of the web integration tests: a real `s3flow web` in a thread, an SSE reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from s3flow.settings import Settings, load_settings
from s3flow.state.jobs import EventType, JobEvent
from s3flow.state.sqlite import SqliteStateStore
from s3flow.web.runtime import WebRuntime
from s3flow.web.server import WebServer, serve


def wait_until(cond: Callable[[], Any], timeout_s: float = 15.0, what: str = "it") -> Any:
    """Poll ``cond`` (sync) until truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


async def until(cond: Callable[[], Any], timeout_s: float = 15.0, what: str = "it") -> Any:
    """Poll ``cond`` until truthy without blocking the event loop; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


class JobsEnv:
    """One isolated ``[jobs]`` project on the shared emulator: bucket, progress queue, store."""

    def __init__(self, s3: Any, sqs: Any, tmp: Path) -> None:
        self.project = f"w{uuid.uuid4().hex[:10]}"
        self.bucket = f"{self.project}-dev-uploads"
        self.progress_queue = f"{self.project}-dev-progress.fifo"
        self.db = tmp / "state.db"
        s3.create_bucket(Bucket=self.bucket)
        self.progress_url = str(
            sqs.create_queue(
                QueueName=self.progress_queue,
                Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "false"},
            )["QueueUrl"]
        )

    def settings(self, **web: Any) -> Settings:
        """Settings of this project (``web`` keys go to ``[web]``)."""
        return load_settings(None, self.data(**web))

    def data(self, **web: Any) -> dict[str, Any]:
        """The settings as TOML-shaped data."""
        return {
            "state": {"url": f"sqlite:///{self.db}"},
            "jobs": {
                "project": self.project,
                "branch": "dev",
                "max_file_bytes": 1000,
                "max_files": 3,
                "allowed_extensions": [".txt", ".csv"],
                "allowed_content_types": ["text/plain", "text/csv"],
            },
            "templates": [
                {
                    "name": "count",
                    "description": "Count lines",
                    "steps": [{"processor": "line-count"}],
                }
            ],
            "web": web,
        }

    def toml(self, path: Path, **web: Any) -> Path:
        """Write the settings as a TOML file for the CLI."""
        lines = [
            "[state]",
            f'url = "sqlite:///{self.db}"',
            "[jobs]",
            f'project = "{self.project}"',
            'branch = "dev"',
            'allowed_extensions = [".txt"]',
            "[[templates]]",
            'name = "count"',
            'steps = [{ processor = "line-count" }]',
            "[web]",
            *(f"{k} = {json.dumps(v)}" for k, v in web.items()),
        ]
        path.write_text("\n".join(lines) + "\n")
        return path


class WebThread:
    """`s3flow web` (:func:`s3flow.web.server.serve`) on 127.0.0.1, a free port, in a thread."""

    def __init__(
        self, settings: Settings, *, consume_progress: bool = True, host: str = "127.0.0.1"
    ) -> None:
        self.settings = settings
        self.consume_progress = consume_progress
        self.host = host
        self.server: WebServer | None = None
        self.error: BaseException | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="s3flow-web-test", daemon=True)

    def _on_started(self, server: WebServer) -> None:
        self.server = server
        self._started.set()

    def _main(self) -> None:
        try:
            asyncio.run(
                serve(
                    self.settings,
                    host=self.host,
                    port=0,
                    consume_progress=self.consume_progress,
                    on_started=self._on_started,
                )
            )
        except BaseException as exc:
            self.error = exc
        finally:
            self._started.set()

    def start(self, timeout_s: float = 30) -> Self:
        """Start and wait until it accepts connections."""
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise AssertionError(f"s3flow web did not start within {timeout_s}s")
        if self.error is not None:
            raise self.error
        return self

    @property
    def url(self) -> str:
        """The server's base URL."""
        assert self.server is not None
        return self.server.url

    @property
    def runtime(self) -> WebRuntime:
        """The running app's runtime (its hub, store...)."""
        assert self.server is not None
        runtime: WebRuntime = self.server.app.state.runtime
        return runtime

    def stop(self, timeout_s: float = 30) -> float:
        """Stop it and wait for the thread; returns how long that took."""
        t0 = time.monotonic()
        if self.server is not None:
            self.server.stop()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"s3flow web did not stop within {timeout_s}s")
        if self.error is not None:
            raise self.error
        return time.monotonic() - t0

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class Msg:
    """One SSE message."""

    id: int
    event: str
    data: Any


_END = object()


class SseReader:
    """Reads one SSE response in a task: messages (``take``), comments, the end of the stream."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> None:
        self._client = client
        self._url = url
        self._headers = headers or {}
        self._params = params
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None
        self.response: httpx.Response | None = None
        self.comments = 0
        self.ended = False
        self.received: list[Msg] = []

    async def __aenter__(self) -> Self:
        self.response = await self._stack.enter_async_context(
            self._client.stream(
                "GET",
                self._url,
                headers=self._headers,
                params=self._params,
                timeout=httpx.Timeout(10, read=None),
            )
        )
        assert self.response.status_code == 200, await self.response.aread()
        assert self.response.headers["content-type"].startswith("text/event-stream")
        self._task = asyncio.create_task(self._read(self.response))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await self._task
        with contextlib.suppress(httpx.HTTPError):
            await self._stack.aclose()

    async def _read(self, response: httpx.Response) -> None:
        fields: dict[str, str] = {}
        try:
            async for line in response.aiter_lines():
                if line == "":
                    if "data" in fields:
                        msg = Msg(int(fields["id"]), fields["event"], json.loads(fields["data"]))
                        self.received.append(msg)
                        await self._queue.put(msg)
                    fields = {}
                elif line.startswith(":"):
                    self.comments += 1
                else:
                    name, _, value = line.partition(": ")
                    assert name not in fields, f"field {name!r} twice in one message"
                    fields[name] = value
        finally:
            self.ended = True
            await self._queue.put(_END)

    async def take(self, n: int = 1, timeout_s: float = 10) -> list[Msg]:
        """The next ``n`` messages; fails on a timeout or if the stream ends first."""
        out = []
        for _ in range(n):
            item = await asyncio.wait_for(self._queue.get(), timeout_s)
            if item is _END:
                raise AssertionError(f"the stream ended after {[m.id for m in out]}")
            out.append(item)
        return out

    async def end(self, timeout_s: float = 10) -> list[Msg]:
        """Every message until the server ends the stream."""
        out = []
        while True:
            item = await asyncio.wait_for(self._queue.get(), timeout_s)
            if item is _END:
                return out
            out.append(item)


async def append(store: SqliteStateStore, job_id: str, type_: EventType, **data: Any) -> JobEvent:
    """Append one event as a third party (the bridge or the consumer would)."""
    event, new = await store.append_event(
        job_id, event_id=f"{job_id}:{uuid.uuid4().hex}", type=type_, data=data
    )
    assert event is not None and new, f"{type_} was not appended to {job_id}"
    return event
