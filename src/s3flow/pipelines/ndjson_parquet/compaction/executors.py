"""Where the compaction's CPU work runs: a local process pool, or Spark.

Both run the same functions of :mod:`s3flow.pipelines.ndjson_parquet.compaction.scan`
and :mod:`s3flow.pipelines.ndjson_parquet.compaction.write` on the same task objects
(:mod:`s3flow.pipelines.ndjson_parquet.compaction.tasks`), so the output is the same
either way. Spark is used as a distributed scheduler of those tasks
(``sc.parallelize(tasks).map(fn)``): each task reads its files from S3 itself, so no
executor needs the whole manifest, and nothing passes through the driver but schemas
and counts.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar

from s3flow.errors import ConfigError, RetryableError
from s3flow.local.endpoint import die_with_parent, set_parent_death_signal
from s3flow.pipelines.ndjson_parquet.compaction.tasks import RemoteError, TaskError, capture

log = logging.getLogger("s3flow.pipelines.ndjson_parquet.compaction")
T = TypeVar("T")


def _die_with_worker(worker_pid: int) -> None:
    """Pool child start-up: never outlive the worker (a SIGKILLed worker left each child
    running, ~120 MB apiece, for good); Ctrl-C is the worker's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(worker_pid)
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != worker_pid:
        os._exit(1)


R = TypeVar("R")

__all__ = ["Executor", "LocalExecutor", "SparkExecutor", "make_executor"]


class Executor(Protocol):
    """Runs one function over many tasks, results in task order."""

    #: Whether tasks may keep data on this machine's disk between stages.
    shares_disk: bool

    async def map(
        self, fn: Callable[[T], R], tasks: Sequence[T], *, priority: float = 0.0
    ) -> list[R]:
        """``[fn(t) for t in tasks]``, in parallel; the first failure is raised.

        Lower ``priority`` goes first where the executor queues work.
        """
        ...

    async def close(self) -> None:
        """Release processes / the Spark session."""
        ...


def _unwrap(results: list[Any]) -> list[Any]:
    for r in results:
        if isinstance(r, TaskError):
            raise RemoteError(r)
    return results


def _warm(_: int) -> int:
    import time

    import boto3  # noqa: F401  (the S3 client, built by s3flow.aws.sync_client on first use)

    import s3flow.aws
    import s3flow.pipelines.ndjson_parquet.compaction.scan
    import s3flow.pipelines.ndjson_parquet.compaction.write  # noqa: F401  (pyarrow)

    time.sleep(0.05)  # keep this worker busy so the next task starts another one
    return os.getpid()


class LocalExecutor:
    """A process pool (spawned workers) shared by every manifest this processor runs."""

    shares_disk = True

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._queue: list[tuple[float, int, Callable[[Any], Any], Any, asyncio.Future[Any]]] = []
        self._seq = itertools.count()
        self._in_pool = 0

    def _ensure(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_die_with_worker,
                    initargs=(os.getpid(),),
                )
            return self._pool

    async def warm(self) -> None:
        """Start every worker process and import the conversion code in it."""
        await self.map(_warm, list(range(self.processes)))

    async def map(
        self, fn: Callable[[T], R], tasks: Sequence[T], *, priority: float = 0.0
    ) -> list[R]:
        """Run the tasks in the pool; cancel the rest at the first error.

        Tasks wait in a priority queue here (lowest ``priority`` first, then
        submission order) and only ``processes + 1`` are handed to the pool at
        a time, so an older manifest's next stage (e.g. writing its parts)
        goes before a newer manifest's scans: manifests finish in order and
        one's Parquet writing overlaps the next one's parsing.
        """
        if not tasks:
            return []
        loop = asyncio.get_running_loop()
        pool = self._ensure()
        wrapped = capture(fn)
        futures: list[asyncio.Future[Any]] = []
        for t in tasks:
            fut: asyncio.Future[Any] = loop.create_future()
            heapq.heappush(self._queue, (priority, next(self._seq), wrapped, t, fut))
            futures.append(fut)
        self._pump(loop, pool)
        try:
            results = await asyncio.gather(*futures)
        except BrokenProcessPool as exc:
            with self._lock:
                if self._pool is pool:
                    self._pool = None  # a worker died (killed, out of memory): start afresh
            pool.shutdown(wait=False, cancel_futures=True)
            raise RetryableError(f"a compaction worker process died: {exc}") from exc
        except BaseException:
            for f in futures:
                f.cancel()  # queued ones are dropped; running ones finish unobserved
            raise
        return _unwrap(list(results))

    def _pump(self, loop: asyncio.AbstractEventLoop, pool: ProcessPoolExecutor) -> None:
        while self._in_pool < self.processes + 1 and self._queue:
            _, _, fn, task, fut = heapq.heappop(self._queue)
            if fut.done():
                continue
            try:
                cf = pool.submit(fn, task)
            except Exception as exc:  # pool shut down or broken
                fut.set_exception(exc)
                continue
            self._in_pool += 1
            cf.add_done_callback(functools.partial(self._done_threadsafe, fut, loop, pool))

    def _done_threadsafe(
        self,
        fut: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
        pool: ProcessPoolExecutor,
        cf: Future[Any],
    ) -> None:
        try:
            loop.call_soon_threadsafe(self._done, cf, fut, loop, pool)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _done(
        self,
        cf: Future[Any],
        fut: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
        pool: ProcessPoolExecutor,
    ) -> None:
        self._in_pool -= 1
        if not fut.done():
            if cf.cancelled():
                fut.cancel()
            elif (exc := cf.exception()) is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(cf.result())
        if self._pool is pool:
            self._pump(loop, pool)

    async def close(self) -> None:
        """Shut the pool down (waits for running tasks)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)


class SparkExecutor:
    """pyspark: one Spark task per compaction task (``local[N]`` or a cluster master)."""

    shares_disk = False

    def __init__(self, master: str, conf: dict[str, str] | None = None) -> None:
        self.master = master
        self.conf = dict(conf or {})
        self._session: Any = None
        self._lock = threading.Lock()

    def _spark(self) -> Any:
        with self._lock:
            if self._session is None:
                try:
                    from pyspark.sql import SparkSession
                except ImportError as exc:
                    raise ConfigError(
                        "executor = 'spark' needs pyspark: pip install 's3flow[spark]'"
                    ) from exc
                # Spark's Python workers must import s3flow: use this interpreter.
                os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
                os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
                builder = (
                    SparkSession.builder.master(self.master)
                    .appName("s3flow-compact")
                    .config("spark.ui.enabled", "false")
                    .config("spark.python.worker.reuse", "true")
                )
                for k, v in self.conf.items():
                    builder = builder.config(k, v)
                self._session = builder.getOrCreate()
                self._session.sparkContext.setLogLevel("ERROR")
            return self._session

    def _run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        sc = self._spark().sparkContext
        rdd = sc.parallelize(list(enumerate(tasks)), max(1, len(tasks)))
        wrapped = capture(fn)
        pairs = rdd.map(lambda it: (it[0], wrapped(it[1]))).collect()
        return [r for _, r in sorted(pairs, key=lambda p: p[0])]

    async def map(
        self, fn: Callable[[T], R], tasks: Sequence[T], *, priority: float = 0.0
    ) -> list[R]:
        """Run the tasks as one Spark job (blocking calls on a thread); no priorities."""
        if not tasks:
            return []
        try:
            results = await asyncio.to_thread(self._run, fn, tasks)
        except RemoteError:
            raise
        except ConfigError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise RetryableError(f"spark job failed: {type(exc).__name__}: {first}") from exc
        return _unwrap(results)

    async def close(self) -> None:
        """Stop the Spark session."""
        session, self._session = self._session, None
        if session is not None:
            await asyncio.to_thread(session.stop)


def make_executor(kind: str, *, processes: int, master: str, conf: dict[str, str]) -> Executor:
    """The executor named by the ``executor`` option."""
    if kind == "local":
        return LocalExecutor(processes)
    if kind == "spark":
        return SparkExecutor(master, conf)
    raise ConfigError(f"unknown executor {kind!r}; use 'local' or 'spark'")
