"""The asyncio side of ``csv-to-kafka``: feed one object to its session, resume, retry.

The event loop reads (and decompresses) the object and hands chunks to the session's
thread through a bounded :class:`~s3flow.pipelines.csv_kafka.channel.ChunkChannel`; parsing,
encoding and producing run in that thread (confluent-kafka is synchronous), so the
worker's heartbeats and other objects keep going. A transient failure (broker down,
a transaction the broker aborted, an S3 read error) restarts the object from its last
committed checkpoint until ``retry_timeout_s`` runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from s3flow.errors import ObjectChangedError, ObjectMissingError, RetryableError, superseded_text
from s3flow.objects import ObjectReader, open_object
from s3flow.pipelines.csv_kafka.channel import ChannelClosed, ChunkChannel
from s3flow.pipelines.csv_kafka.checkpoint import Checkpoint, ObjectRef, mirror_name
from s3flow.pipelines.csv_kafka.errors import ProducerFencedError
from s3flow.pipelines.csv_kafka.options import CsvKafkaOptions
from s3flow.pipelines.csv_kafka.session import RetryClock, TxnSession
from s3flow.state.base import StateStore

log = logging.getLogger("s3flow.pipelines.csv_kafka")

#: Decompressed bytes buffered between the event loop and the produce thread.
CHANNEL_BYTES = 4 * 1024 * 1024
#: Reads are handed to the session thread in runs of at least this many bytes.
HANDOVER_BYTES = 256 * 1024
#: S3 read size. Small on purpose: the reader decompresses one read at a time and keeps
#: all of its output at once, so with a 100:1 gzip a 1 MB read would be 100 MB in memory.
READ_CHUNK_BYTES = 64 * 1024
#: The object is opened while the producer starts; if that took longer than this, the
#: response left unread is dropped and the object opened again.
EARLY_OPEN_MAX_IDLE_S = 5.0


async def open_stream(
    s3: Any, bucket: str, key: str, version_id: str | None, if_match: str | None = None
) -> ObjectReader:
    """The object as a decompressing stream, read in :data:`READ_CHUNK_BYTES` reads
    (``if_match``: only that upload, see :func:`~s3flow.objects.open_object`)."""
    return await open_object(
        s3,
        bucket,
        key,
        version_id=version_id,
        chunk_bytes=READ_CHUNK_BYTES,
        if_match=if_match,
    )


@dataclass
class RunReport:
    """What one ``run_object`` call did."""

    checkpoint: Checkpoint
    resumed_from_row: int
    resumed_sent: int
    already_done: bool
    attempts: int
    seconds: float
    bytes_read: int
    compressed_bytes: int
    commit_seconds: float


class CheckpointMirror:
    """Writes the latest checkpoint to the state store, in order, from any thread.

    An async context manager: on exit every checkpoint offered so far is in the store
    (a run's result is returned only after its final checkpoint is mirrored, so
    ``s3flow files show`` sees it as soon as the run is over).
    """

    def __init__(
        self,
        store: StateStore | None,
        name: str,
        forward: Callable[[Checkpoint], None] | None = None,
        hint: int | None = None,
    ):
        self._loop = asyncio.get_running_loop()
        self._store = store
        self._name = name
        self._forward = forward
        #: The checkpoint partition offset to start from, when known without the store.
        self.hint = hint
        self._latest: Checkpoint | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CheckpointMirror:
        if self._store is not None:
            self._task = asyncio.create_task(self._run(), name=f"mirror:{self._name}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    def offer(self, ckpt: Checkpoint) -> None:
        """Called in the session thread after each commit."""
        if self._forward is not None:
            self._forward(ckpt)
        if self._store is None:
            return
        self._latest = ckpt
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        latest, self._latest = self._latest, None
        if latest is None or self._store is None:
            return
        try:
            await self._store.put_checkpoint(self._name, latest.encode().decode())
        except Exception as exc:  # a mirror only: Kafka holds the truth
            log.warning("mirroring checkpoint %s failed: %s", self._name, exc)

    async def _stop(self) -> None:
        if self._task is not None:
            # Let the task finish the write it may be in (cancelling it would drop a
            # queued write, or let a started one land after the run has returned).
            self._stopping = True
            self._wake.set()
            task, self._task = self._task, None
            await asyncio.shield(task)
        await self._flush()


async def mirrored_hint(store: StateStore | None, name: str) -> int:
    """The ``scan_from`` of the mirrored checkpoint (0 when there is none)."""
    if store is None:
        return 0
    try:
        text = await store.get_checkpoint(name)
    except Exception as exc:
        log.warning("reading mirrored checkpoint %s failed: %s", name, exc)
        return 0
    if not text:
        return 0
    try:
        return max(0, int(Checkpoint.decode(text).scan_from))
    except (ValueError, TypeError):
        return 0


async def run_object(
    opts: CsvKafkaOptions,
    ref: ObjectRef,
    open_stream: Callable[[], Awaitable[ObjectReader]],
    *,
    executor: Executor,
    store: StateStore | None = None,
    report_progress: Callable[[int], None] = lambda n: None,
    hint: int | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
    ncols: int | None = None,
) -> RunReport:
    """Produce the rows of ``ref`` exactly once (resuming from its checkpoint).

    ``hint``: where to start reading the checkpoint partition, when the caller knows it
    (else the store's mirrored checkpoint says); ``on_checkpoint``: also called (in the
    produce thread) with each committed checkpoint (a range process reports them);
    ``ncols``: the expected column count of every row when the caller knows it (a range
    of an object without header and columns: the object's first record's), else it is
    learned from the first row read.
    """
    name = mirror_name(opts.topic, ref)
    started = time.monotonic()
    # retry_timeout_s from the start, and again from each committed checkpoint: the
    # attempts and each wait of theirs for the broker stay within it
    clock = RetryClock(opts.retry_timeout_s)
    attempt = 0
    async with CheckpointMirror(store, name, on_checkpoint, hint) as mirror:
        while True:
            attempt += 1
            try:
                report = await _attempt(
                    opts, ref, open_stream, executor, store, mirror, report_progress, ncols, clock
                )
            except ProducerFencedError:
                raise  # a newer producer owns this object now: do not fight it
            except RetryableError as exc:
                left = clock.left()
                if left <= 0:
                    raise
                delay = min(left, 10.0, 0.5 * 2 ** min(attempt, 5))
                log.warning(
                    "%s: %s (attempt %d); resuming from the last checkpoint in %.1fs",
                    ref.uri,
                    exc,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            report.attempts = attempt
            report.seconds = time.monotonic() - started
            return report


async def _attempt(
    opts: CsvKafkaOptions,
    ref: ObjectRef,
    open_stream: Callable[[], Awaitable[ObjectReader]],
    executor: Executor,
    store: StateStore | None,
    mirror: CheckpointMirror,
    report_progress: Callable[[int], None],
    ncols: int | None = None,
    clock: RetryClock | None = None,
) -> RunReport:
    loop = asyncio.get_running_loop()
    session = TxnSession(opts, ref, on_checkpoint=mirror.offer, ncols=ncols, clock=clock)
    opening: asyncio.Task[ObjectReader] | None = None
    try:
        hint = mirror.hint
        if hint is None:
            hint = await mirrored_hint(store, mirror_name(opts.topic, ref))
        # The object is opened (GetObject) while the producer starts and the checkpoint
        # is read: two round trips at once instead of one after the other.
        opening = asyncio.ensure_future(open_stream())
        opened_at = time.monotonic()
        ckpt = await loop.run_in_executor(executor, session.prepare, hint)
        if ckpt is not None and ckpt.done:
            log.info("%s: already in %s (%d rows): nothing to do", ref.uri, opts.topic, ckpt.sent)
            mirror.offer(ckpt)
            return RunReport(ckpt, ckpt.row, ckpt.sent, True, 0, 0.0, 0, 0, 0.0)
        if ckpt is not None:
            log.info(
                "%s: resuming at row %d (byte %d, %d rows already in %s)",
                ref.uri,
                ckpt.row,
                ckpt.offset,
                ckpt.sent,
                opts.topic,
            )
        if time.monotonic() - opened_at > EARLY_OPEN_MAX_IDLE_S:
            # prepare() waited long (an open transaction of a zombie): a connection left
            # unread that long may have been dropped by the server. Open it again.
            _discard(opening)
            opening = asyncio.ensure_future(open_stream())
        # Still ``opening`` while awaited: a cancellation here has it closed (finally).
        reader = await opening
        opening = None
        try:
            _check_version(ref, reader)
            channel = ChunkChannel(loop, CHANNEL_BYTES)
            work = loop.run_in_executor(executor, session.run, channel, ckpt)
            try:
                await _feed(reader, channel, ckpt.offset if ckpt else 0, report_progress)
            except ChannelClosed:
                pass  # the session stopped early: its outcome says why
            except BaseException:
                channel.abort()
                with contextlib.suppress(BaseException):
                    await asyncio.shield(work)
                raise
            final = await work
        finally:
            reader.close()
        return RunReport(
            checkpoint=final,
            resumed_from_row=ckpt.row if ckpt else 0,
            resumed_sent=ckpt.sent if ckpt else 0,
            already_done=False,
            attempts=0,
            seconds=0.0,
            bytes_read=reader.uncompressed_bytes,
            compressed_bytes=reader.compressed_bytes,
            commit_seconds=session.commit_seconds,
        )
    finally:
        if opening is not None:
            _discard(opening)
        await asyncio.shield(loop.run_in_executor(executor, session.close))


def _discard(opening: asyncio.Task[ObjectReader]) -> None:
    """Close an object opened for nothing (the producer failed, or the object is done)."""

    def close(task: asyncio.Task[ObjectReader]) -> None:
        if not task.cancelled() and task.exception() is None:
            task.result().close()

    opening.cancel()
    opening.add_done_callback(close)


def _check_version(ref: ObjectRef, reader: ObjectReader) -> None:
    """The object read must be the version the checkpoint belongs to."""
    info = reader.info
    if info.version_id:
        if ref.version not in (info.version_id, info.etag):
            raise ObjectMissingError(
                f"{ref.uri}: version {ref.version} is gone (now {info.version_id})"
            )
    elif info.etag and ref.version and ref.version != info.etag:
        # The new upload has its own notification: this event is superseded.
        raise ObjectChangedError(superseded_text(ref.version))


async def _feed(
    reader: ObjectReader,
    channel: ChunkChannel,
    skip: int,
    report_progress: Callable[[int], None],
) -> None:
    """Hand the decompressed object to the session, from byte ``skip`` on.

    Reads (~64 KiB each) are handed over in runs of at least :data:`HANDOVER_BYTES`:
    a quarter of the hand-overs (each a lock, a wake-up of the session's reader thread
    and a GIL switch) and no re-copying of a short remainder per read in the splitter.
    """
    run: list[bytes] = []
    size = 0
    async for chunk in reader:
        report_progress(len(chunk))
        if skip:
            if len(chunk) <= skip:
                skip -= len(chunk)
                continue
            chunk, skip = chunk[skip:], 0
        run.append(chunk)
        size += len(chunk)
        if size >= HANDOVER_BYTES:
            await channel.put(run[0] if len(run) == 1 else b"".join(run))
            run, size = [], 0
    if run:
        await channel.put(b"".join(run))
    channel.close()
