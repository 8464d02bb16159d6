"""Range processes (``ranges > 1``): each byte range of an object runs in its own process.

Parsing and producing are CPU-bound Python, so ranges sharing one process share one
GIL; here each range runs :func:`~s3flow.pipelines.csv_kafka.runner.run_object` in a
process of its own - its own transactional producer, checkpoint and retries, exactly as
in one process - and the parent supervises::

    parent (event loop) --spawn via forkserver--> one process per range
       <-- pipe: ("progress", bytes) / ("ckpt", checkpoint) / ("done", report) / ("error", exc)

* Processes come from a ``forkserver`` (never forked from the worker, which has threads
  and an event loop) that preloads this module once per parent process; a new range
  process is then a cheap fork of a clean, single-threaded server.
* One range failing cancels the others: they get SIGTERM, cancel their run (the open
  transaction is aborted: its rows never become visible) and exit; SIGKILL after
  :data:`STOP_GRACE_S`. A range process that dies on its own (killed, out of memory) is
  started again from its last committed checkpoint while ``retry_timeout_s`` lasts.
* No orphans: a range process exits when its parent goes, however it goes - its pipe to
  the parent reaches EOF (a watcher thread), and ``PR_SET_PDEATHSIG`` fires when the
  forkserver (which exits with the parent) dies. Range processes ignore SIGINT (a Ctrl-C
  reaches the whole process group: the parent decides).
* The parent mirrors each range's checkpoints to its state store and reads the mirrored
  hint for the range before it starts; the range process itself has no store.
* S3 access: the parent's client's endpoint, region, configuration and (frozen)
  credentials are handed over; the range process builds its own client from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

from s3flow.errors import RetryableError, S3flowError
from s3flow.local.endpoint import set_parent_death_signal
from s3flow.objects import open_object
from s3flow.pipelines.csv_kafka.checkpoint import Checkpoint, ObjectRef, mirror_name
from s3flow.pipelines.csv_kafka.options import CsvKafkaOptions
from s3flow.pipelines.csv_kafka.runner import (
    READ_CHUNK_BYTES,
    CheckpointMirror,
    RunReport,
    mirrored_hint,
    run_object,
)
from s3flow.state.base import StateStore

log = logging.getLogger("s3flow.pipelines.csv_kafka")

#: Seconds a cancelled range process gets to abort its transaction before SIGKILL.
STOP_GRACE_S = 10.0
#: Progress is reported to the parent every this many bytes read.
PROGRESS_BYTES = 4 * 1024 * 1024
#: A range process that dies on its own is started again at most this often.
MAX_RESPAWNS = 3
#: Module the forkserver imports once, so a range process starts without imports.
_PRELOAD = ["s3flow.pipelines.csv_kafka.forkserver_preload"]
#: The botocore session range processes build their S3 clients with (in the forkserver:
#: warmed once, its loaded service models shared by every forked range process).
_SESSION: Any = None


def _session() -> Any:
    global _SESSION
    if _SESSION is None:
        from aiobotocore.session import get_session

        _SESSION = get_session()
    return _SESSION


def warm_session() -> None:
    """Load S3's service model and endpoint rules into :func:`_session` (forkserver only)."""

    async def build_one() -> None:
        access = S3Access(None, "us-east-1", None, "warm-up", "warm-up", None)
        async with access.client():
            pass  # building it loads what every later client needs

    asyncio.run(build_one())


def warm_up() -> None:
    """Start the forkserver (it imports and warms up in the background); idempotent.

    Called as early as possible when ``ranges > 1``, so the first range process does
    not wait for the server's imports.
    """
    from multiprocessing import forkserver

    _context()
    forkserver.ensure_running()


class RangeProcessDied(RetryableError):
    """A range process ended without a result (killed, out of memory)."""


@dataclass(frozen=True)
class S3Access:
    """What a range process needs to build an S3 client like the parent's."""

    endpoint_url: str | None
    region: str | None
    config: Any  # the client's botocore/aiobotocore Config
    access_key: str | None
    secret_key: str | None
    token: str | None

    @classmethod
    async def of(cls, s3: Any) -> S3Access:
        """The access of an aiobotocore client (its credentials frozen now)."""
        creds = getattr(getattr(s3, "_request_signer", None), "_credentials", None)
        frozen = await creds.get_frozen_credentials() if creds is not None else None
        return cls(
            endpoint_url=s3.meta.endpoint_url,
            region=s3.meta.region_name,
            config=s3.meta.config,
            access_key=frozen.access_key if frozen else None,
            secret_key=frozen.secret_key if frozen else None,
            token=frozen.token if frozen else None,
        )

    def client(self) -> Any:
        """An aiobotocore S3 client context manager (``async with``)."""
        return _session().create_client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            config=self.config,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            aws_session_token=self.token,
        )


@dataclass(frozen=True)
class RangeJob:
    """One range for a range process (picklable)."""

    options: dict[str, Any]  # CsvKafkaOptions.model_dump() of the range
    ref: ObjectRef  # the range's identity (``part`` set)
    version_id: str | None
    start: int
    end: int
    hint: int  # the mirrored checkpoint's scan_from (0: none)
    access: S3Access
    log_format: str
    log_level: str
    #: The expected column count of every row, from the object's first record (no
    #: header and no columns), else None: the range learns it as usual.
    ncols: int | None = None
    #: The eTag the range's reads are conditional on (the event's upload), or None.
    if_match: str | None = None


# --- in a range process ---------------------------------------------------------------------


def range_main(job: RangeJob, conn: Connection, owner_pid: int) -> None:
    """Entry point of a range process: run the range, report over ``conn``, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    set_parent_death_signal(signal.SIGKILL)  # the forkserver: it exits with the parent
    threading.Thread(
        target=_watch_owner, args=(conn, owner_pid), name="csv-kafka-owner", daemon=True
    ).start()
    from s3flow.logs import setup_logging

    setup_logging(job.log_format, job.log_level)
    send = _Sender(conn)
    try:
        report = asyncio.run(_run_range(job, send))
        send(("done", asdict(report)))
    except BaseException as exc:  # everything goes to the parent
        send(("error", _picklable(exc)))
    finally:
        conn.close()


def _watch_owner(conn: Connection, owner_pid: int) -> None:
    """Exit as soon as the parent is gone: its end of the pipe closes (EOF)."""
    while True:
        try:
            conn.recv()  # the parent never sends: only EOF (or an error) returns here
        except (EOFError, OSError):
            break
        except Exception:  # an unexpected message: keep watching
            continue
    print(f"s3flow: owner process {owner_pid} is gone: exiting", file=sys.stderr, flush=True)
    os._exit(3)


class _Sender:
    """Thread-safe ``conn.send`` (the session thread and the event loop both send)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def __call__(self, msg: tuple[str, Any]) -> None:
        with self._lock, contextlib.suppress(OSError):
            self._conn.send(msg)


async def _run_range(job: RangeJob, send: _Sender) -> RunReport:
    opts = CsvKafkaOptions.model_validate(job.options)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)  # the parent stops us: abort
    pending = 0

    def progress(n: int) -> None:
        nonlocal pending
        pending += n
        if pending >= PROGRESS_BYTES:
            send(("progress", pending))
            pending = 0

    with ThreadPoolExecutor(2, thread_name_prefix="csv-kafka") as executor:
        async with job.access.client() as s3:

            def opener() -> Any:
                return open_object(
                    s3,
                    job.ref.bucket,
                    job.ref.key,
                    version_id=job.version_id,
                    chunk_bytes=READ_CHUNK_BYTES,
                    byte_range=(job.start, job.end),
                    if_match=job.if_match,
                )

            report = await run_object(
                opts,
                job.ref,
                opener,
                executor=executor,
                report_progress=progress,
                hint=job.hint,
                on_checkpoint=lambda c: send(("ckpt", c.encode())),
                ncols=job.ncols,
            )
    if pending:
        send(("progress", pending))
    return report


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` if it pickles, else a RetryableError/S3flowError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        kind = RetryableError if isinstance(exc, RetryableError) else S3flowError
        return kind(f"{type(exc).__name__}: {exc}")


# --- in the parent -----------------------------------------------------------------------------


def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _log_settings() -> tuple[str, str]:
    """The parent's log format and level, for the range processes."""
    from s3flow.logs import JsonFormatter

    root = logging.getLogger()
    fmt = "json" if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers) else "text"
    return fmt, logging.getLevelName(root.getEffectiveLevel())


async def run_range_process(
    opts: CsvKafkaOptions,
    ref: ObjectRef,
    s3: Any,
    version_id: str | None,
    bounds: tuple[int, int],
    *,
    executor: Executor,
    store: StateStore | None,
    report_progress: Callable[[int], None],
    ncols: int | None = None,
    if_match: str | None = None,
) -> RunReport:
    """Run one range in its own process until it is done (restarting it if it dies).

    ``ncols``: the expected column count of the object's rows (from its first record),
    when neither a header row nor ``columns`` give it; ``if_match``: the eTag the
    range's reads are conditional on.
    """
    name = mirror_name(opts.topic, ref)
    started = time.monotonic()
    deadline = started + opts.retry_timeout_s
    fmt, level = _log_settings()
    access = await S3Access.of(s3)
    deaths = 0
    async with CheckpointMirror(store, name) as mirror:
        while True:
            job = RangeJob(
                options=opts.model_dump(),
                ref=ref,
                version_id=version_id,
                start=bounds[0],
                end=bounds[1],
                hint=await mirrored_hint(store, name),
                access=access,
                log_format=fmt,
                log_level=level,
                ncols=ncols,
                if_match=if_match,
            )
            try:
                report = await _supervise(job, executor, mirror, report_progress)
            except RangeProcessDied as exc:
                deaths += 1
                if deaths > MAX_RESPAWNS or time.monotonic() >= deadline:
                    raise
                log.warning("%s: %s; starting it again from its checkpoint", ref.uri, exc)
                continue
            report.seconds = time.monotonic() - started
            return report


async def _supervise(
    job: RangeJob,
    executor: Executor,
    mirror: CheckpointMirror,
    report_progress: Callable[[int], None],
) -> RunReport:
    """Start one range process and follow it to its result (stop it when cancelled)."""
    loop = asyncio.get_running_loop()
    ctx = _context()
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    proc = ctx.Process(
        target=range_main,
        args=(job, child_conn, os.getpid()),
        name=f"csv-kafka-range-{job.ref.part}",
        daemon=True,
    )
    # The first start may launch the forkserver and wait for its imports: off the loop.
    await loop.run_in_executor(executor, proc.start)
    child_conn.close()
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    fd = parent_conn.fileno()

    def readable() -> None:
        try:
            while parent_conn.poll():
                inbox.put_nowait(parent_conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(fd)
            inbox.put_nowait(("eof", None))

    loop.add_reader(fd, readable)
    result: tuple[str, Any] | None = None
    try:
        while result is None:
            kind, payload = await inbox.get()
            if kind == "progress":
                report_progress(int(payload))
            elif kind == "ckpt":
                mirror.offer(Checkpoint.decode(payload))
            elif kind in ("done", "error", "eof"):
                result = (kind, payload)
        await _wait_exit(proc, 5.0)
    finally:
        loop.remove_reader(fd)
        if proc.exitcode is None:
            await _stop(proc)
        parent_conn.close()
        proc.close()
    kind, payload = result
    if kind == "done":
        payload["checkpoint"] = Checkpoint(**payload["checkpoint"])
        return RunReport(**payload)
    if kind == "error":
        raise payload
    raise RangeProcessDied(f"range {job.ref.part}: its process ended without a result")


async def _wait_exit(proc: Any, seconds: float) -> bool:
    """Wait (without blocking the loop) up to ``seconds`` for ``proc`` to exit."""
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    loop.add_reader(proc.sentinel, gone.set)
    try:
        async with asyncio.timeout(seconds):
            await gone.wait()
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(proc.sentinel)
    return proc.exitcode is not None  # (reaps the process when it has exited)


async def _stop(proc: Any) -> None:
    """SIGTERM (the range aborts its transaction), SIGKILL after :data:`STOP_GRACE_S`."""
    with contextlib.suppress(ProcessLookupError, OSError):
        proc.terminate()
    try:
        exited = await asyncio.shield(_wait_exit(proc, STOP_GRACE_S))
    except asyncio.CancelledError:
        exited = False
    if not exited:
        with contextlib.suppress(ProcessLookupError, OSError):
            proc.kill()
        proc.join(5)
