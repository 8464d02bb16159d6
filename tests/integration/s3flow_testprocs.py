"""Processors used by integration tests (loaded as 'module:attr', also in subprocesses)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from s3flow.local.endpoint import pid_alive
from s3flow.pipelines.line_count import LineCountProcessor
from s3flow.processors import BaseProcessor, ProcessContext, Result


class SlowProcessor(BaseProcessor):
    """line-count after sleeping ``sleep_s``; records each call in ``marker_dir``.

    ``hang_prefix``: keys starting with it sleep ``hang_s`` (default 600) instead; with
    ``wait_for_hang``, the other keys first wait until such a key's process has started
    and is gone (killed: they are running when it is).
    ``ignore_first_cancel``: the first cancellation of a call is swallowed (a processor
    that does not stop when told to); a second one stops it.
    """

    name: ClassVar[str] = "test-slow"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.sleep_s = float(self.options.get("sleep_s", 1.0))
        self.marker_dir = Path(str(self.options.get("marker_dir", "/tmp")))
        self.inner = LineCountProcessor({})

    async def _sleep(self, key: str) -> None:
        hang = self.options.get("hang_prefix")
        seconds = self.sleep_s
        if hang is not None and key.startswith(str(hang)):
            seconds = float(self.options.get("hang_s", 600.0))
        elif hang is not None and self.options.get("wait_for_hang"):
            deadline = time.monotonic() + 60
            while not any(
                not pid_alive(int(m.name.split("-")[-2]))
                for m in self.marker_dir.glob(f"started-{hang}*")
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("no hanging run was stopped")
                await asyncio.sleep(0.05)
        if not self.options.get("ignore_first_cancel"):
            await asyncio.sleep(seconds)
            return
        until = time.monotonic() + seconds
        ignored = False
        while (left := until - time.monotonic()) > 0:
            try:
                await asyncio.sleep(left)
            except asyncio.CancelledError:  # swallowed, as a careless `except` does
                if ignored:
                    raise
                ignored = True

    async def process(self, ctx: ProcessContext) -> Result:
        safe = ctx.event.key.replace("/", "_")
        started = self.marker_dir / f"started-{safe}-{os.getpid()}-{time.monotonic_ns()}"
        started.write_text(ctx.event.key)
        await self._sleep(ctx.event.key)
        result = await self.inner.process(ctx)
        done = self.marker_dir / f"done-{safe}-{os.getpid()}-{time.monotonic_ns()}"
        done.write_text(ctx.event.key)
        return result


class ConcurrencyProbe(BaseProcessor):
    """Tracks how many objects are processed at once (class-level, in-process).

    An object counts until its input is read (``reading_done``): the worker gives
    its slot to the next object then, while this one writes its output.
    """

    name: ClassVar[str] = "test-probe"
    lock = threading.Lock()
    current: ClassVar[int] = 0
    peak: ClassVar[int] = 0
    calls: ClassVar[list[str]] = []

    async def process(self, ctx: ProcessContext) -> Result:
        cls = type(self)
        with cls.lock:
            cls.current += 1
            cls.peak = max(cls.peak, cls.current)
            cls.calls.append(ctx.event.key)
        counted = [True]
        handed = ctx.reading_done

        def leave() -> None:
            if counted[0]:
                counted[0] = False
                with cls.lock:
                    cls.current -= 1

        def reading_done() -> None:
            leave()  # before the worker may start the next object
            handed()

        ctx.reading_done = reading_done
        try:
            await asyncio.sleep(float(self.options.get("sleep_s", 0.2)))
            return await LineCountProcessor({}).process(ctx)
        finally:
            leave()

    @classmethod
    def reset(cls) -> None:
        cls.current = 0
        cls.peak = 0
        cls.calls = []


class ReadThenSlowWrite(BaseProcessor):
    """Reads its object, then "writes" for ``write_s``: peaks of each phase, in-process."""

    name: ClassVar[str] = "test-read-then-write"
    lock = threading.Lock()
    reading: ClassVar[int] = 0
    writing: ClassVar[int] = 0
    peak_reading: ClassVar[int] = 0
    peak_writing: ClassVar[int] = 0
    peak_total: ClassVar[int] = 0

    def _step(self, reading: int, writing: int) -> None:
        cls = type(self)
        with cls.lock:
            cls.reading += reading
            cls.writing += writing
            cls.peak_reading = max(cls.peak_reading, cls.reading)
            cls.peak_writing = max(cls.peak_writing, cls.writing)
            cls.peak_total = max(cls.peak_total, cls.reading + cls.writing)

    async def process(self, ctx: ProcessContext) -> Result:
        self._step(1, 0)
        reader = await ctx.open()
        try:
            async for _ in reader:
                pass
            await asyncio.sleep(float(self.options.get("read_s", 0.05)))
        finally:
            self._step(-1, 1)
            reader.close()  # the worker may start the next object now
        try:
            await asyncio.sleep(float(self.options.get("write_s", 0.5)))
            uri = await ctx.sink.write(ctx.event.key + ".json", b"{}", "application/json")
        finally:
            self._step(0, -1)
        return Result(outputs=[uri])

    @classmethod
    def reset(cls) -> None:
        cls.reading = cls.writing = 0
        cls.peak_reading = cls.peak_writing = cls.peak_total = 0


class AlwaysFails(BaseProcessor):
    """Raises an unexpected exception (a processor bug: retryable)."""

    name: ClassVar[str] = "test-fails"
    calls: ClassVar[int] = 0

    async def process(self, ctx: ProcessContext) -> Result:
        type(self).calls += 1
        raise RuntimeError("boom: simulated processor bug")


class FailOnceWhileFlag(BaseProcessor):
    """line-count, but the object ``key`` fails (retryably) once while the file ``flag`` exists.

    The failure removes the flag, so the next attempt succeeds.
    """

    name: ClassVar[str] = "test-fail-once"

    async def process(self, ctx: ProcessContext) -> Result:
        if ctx.event.key == self.options["key"]:
            try:
                os.unlink(str(self.options["flag"]))
            except FileNotFoundError:
                pass
            else:
                raise RuntimeError("simulated transient failure of one record")
        return await LineCountProcessor({}).process(ctx)


class FailsForKey(BaseProcessor):
    """line-count, but the object ``key`` fails every time (retryably: a message with
    other records splits it off and re-sends it alone, until it is dead-lettered)."""

    name: ClassVar[str] = "test-fails-for-key"

    async def process(self, ctx: ProcessContext) -> Result:
        if ctx.event.key == self.options["key"]:
            raise RuntimeError(f"simulated failure of {ctx.event.key}, every time")
        return await LineCountProcessor({}).process(ctx)


class SlowWhenContentStartsWith(BaseProcessor):
    """line-count that reads the object first, then sleeps before writing when its content
    starts with ``prefix`` (a slow, stale reader); writes a ``read-*`` marker once read."""

    name: ClassVar[str] = "test-slow-content"

    async def process(self, ctx: ProcessContext) -> Result:
        reader = await ctx.open()
        data = b"".join([chunk async for chunk in reader])
        marker = Path(str(self.options["marker_dir"])) / f"read-{time.monotonic_ns()}"
        await asyncio.to_thread(marker.write_bytes, data)
        if data.startswith(str(self.options["prefix"]).encode()):
            await asyncio.sleep(float(self.options.get("sleep_s", 3)))
        lines = data.count(b"\n")
        doc = {"key": ctx.event.key, "lines": lines, "bytes": len(data)}
        uri = await ctx.sink.write(f"{ctx.event.key}.json", json.dumps(doc).encode())
        return Result(outputs=[uri])


# --- executors, routing and output verification (issue 13) ------------------------------


class PidLineCount(BaseProcessor):
    """Counts lines; its ``<key>.json`` also names the process that ran it (``pid``)."""

    name: ClassVar[str] = "test-pid"

    async def process(self, ctx: ProcessContext) -> Result:
        await asyncio.sleep(float(self.options.get("sleep_s", 0)))
        reader = await ctx.open()
        data = b"".join([chunk async for chunk in reader])
        doc = {"key": ctx.event.key, "lines": data.count(b"\n"), "pid": os.getpid()}
        uri = await ctx.sink.write(
            f"{ctx.event.key}.json", json.dumps(doc).encode(), "application/json"
        )
        return Result(outputs=[uri], counters={"bytes_in": len(data)}, detail={"pid": os.getpid()})


class CpuBoundPidLineCount(PidLineCount):
    """:class:`PidLineCount` declared CPU-bound: the pool executor is its default."""

    name: ClassVar[str] = "test-cpu-pid"
    cpu_bound: ClassVar[bool] = True


class WriteThenDelete(BaseProcessor):
    """Writes ``<key>.json``, then deletes it before returning: the worker's output
    verification must catch the missing output (retry, never ack)."""

    name: ClassVar[str] = "test-write-then-delete"
    calls: ClassVar[int] = 0

    async def process(self, ctx: ProcessContext) -> Result:
        type(self).calls += 1
        uri = await ctx.sink.write(f"{ctx.event.key}.json", b'{"ok": true}', "application/json")
        bucket, _, key = uri[len("s3://") :].partition("/")
        await ctx.s3.delete_object(Bucket=bucket, Key=key)
        return Result(outputs=[uri])


class FakePdf(BaseProcessor):
    """Writes ``<key>.pdf``: a minimal PDF, or (``truncated = true``) one without ``%%EOF``."""

    name: ClassVar[str] = "test-fake-pdf"
    output_content_type: ClassVar[str | None] = "application/pdf"

    async def process(self, ctx: ProcessContext) -> Result:
        body = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n"
        if not self.options.get("truncated"):
            body += b"%%EOF\n"
        uri = await ctx.sink.write(f"{ctx.event.key}.pdf", body, "application/pdf")
        return Result(outputs=[uri])


class VouchedWriteThenDelete(WriteThenDelete):
    """:class:`WriteThenDelete` that (wrongly) vouches for its writes: run inline, the
    worker takes S3's answer to the write as the verification and makes no HEAD."""

    name: ClassVar[str] = "test-vouched-write-then-delete"
    verified_by_write: ClassVar[bool] = True


class KillsItsProcess(SlowProcessor):
    """:class:`SlowProcessor`, but an object whose key starts with ``die_prefix`` kills
    its own process (SIGKILL, as the OOM killer does) the first time, once every key in
    ``wait_for`` has started (its ``started-`` marker). The other objects wait until a
    process died, then take ``sleep_s``: they are running when it dies."""

    name: ClassVar[str] = "test-kills-its-process"

    async def process(self, ctx: ProcessContext) -> Result:
        key = ctx.event.key
        died = self.marker_dir / f"died-{key.replace('/', '_')}"
        deadline = time.monotonic() + 30
        if key.startswith(str(self.options.get("die_prefix", "die"))):
            if died.exists():
                return await self.inner.process(ctx)
            for other in self.options.get("wait_for", []):
                while not list(self.marker_dir.glob(f"started-{other}-*")):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{other} never started")
                    await asyncio.sleep(0.05)
            died.write_text(str(os.getpid()))
            os.kill(os.getpid(), 9)
        safe = key.replace("/", "_")
        (self.marker_dir / f"started-{safe}-{os.getpid()}-{time.monotonic_ns()}").write_text(key)
        while not list(self.marker_dir.glob("died-*")):
            if time.monotonic() > deadline:
                raise RuntimeError("no process died")
            await asyncio.sleep(0.05)
        await asyncio.sleep(self.sleep_s)
        result = await self.inner.process(ctx)
        (self.marker_dir / f"done-{safe}-{os.getpid()}-{time.monotonic_ns()}").write_text(key)
        return result
