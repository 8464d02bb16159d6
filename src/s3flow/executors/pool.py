"""The ``pool`` executor: a process pool on this machine (the default for CPU-bound work).

Children are spawned (never forked: the worker has threads and an event loop) on the
first object and live until the worker stops. Each child builds its own S3 client from
the job's ``[aws]`` settings, keeps one event loop, and runs the processor's async
``process`` in it; the processor is built afresh from its options per object.

Signals: children ignore SIGINT and SIGTERM (a Ctrl-C reaches the whole process group,
systemd signals the whole cgroup): the worker decides. Its shutdown lets running objects
finish within the grace period; a run that is cancelled (grace over, or a second
signal) leaves its child working, so once no run is waited for any more the children
are killed. Children also die with the worker (``PR_SET_PDEATHSIG`` and a watcher).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AsyncExitStack
from typing import Any

from s3flow.aws import async_client
from s3flow.errors import RetryableError, S3flowError
from s3flow.executors.base import (
    ObjectJob,
    Progress,
    error_doc,
    error_from_doc,
)
from s3flow.executors.one import run_isolated
from s3flow.local.endpoint import die_with_parent, set_parent_death_signal
from s3flow.logs import setup_logging
from s3flow.memory import set_mmap_threshold
from s3flow.processors.base import Result
from s3flow.settings import AwsSettings, PoolExecutorSettings, WorkerSettings

log = logging.getLogger("s3flow.executors")

# --- in a child ---------------------------------------------------------------------------

#: Per child process: its event loop, and an S3 client per distinct [aws] settings.
_child: dict[str, Any] = {}


def _child_init(parent_pid: int, worker: WorkerSettings) -> None:
    """Pool child start-up: signals, die with the worker, logging, malloc tuning."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(parent_pid)
    set_parent_death_signal(signal.SIGKILL)  # SIGTERM is ignored here
    if os.getppid() != parent_pid:
        os._exit(1)
    setup_logging(worker.log_format, worker.log_level)
    set_mmap_threshold(worker.malloc_mmap_threshold_bytes)


def _child_loop() -> asyncio.AbstractEventLoop:
    loop = _child.get("loop")
    if loop is None:
        loop = _child["loop"] = asyncio.new_event_loop()
        stack = _child["stack"] = AsyncExitStack()
        atexit.register(lambda: loop.run_until_complete(stack.aclose()))
    return loop  # type: ignore[no-any-return]


async def _child_s3(aws: AwsSettings) -> Any:
    key = "s3:" + aws.model_dump_json()
    client = _child.get(key)
    if client is None:
        stack: AsyncExitStack = _child["stack"]
        client = _child[key] = await stack.enter_async_context(async_client(aws, "s3"))
    return client


async def _child_async(job: ObjectJob) -> tuple[str, Any]:
    try:
        s3 = await _child_s3(job.aws)
        return "ok", await run_isolated(job, s3=s3, executor="pool")
    except S3flowError as err:
        return "error", error_doc(err, processor=job.processor, source=job.source)


def _child_run(job: ObjectJob) -> tuple[str, Any]:
    """Run one job in this child: ("ok", Result) or ("error", error document)."""
    return _child_loop().run_until_complete(_child_async(job))


def _child_pid(_: int) -> int:
    time.sleep(0.05)  # keep this child busy so the next call starts another
    return os.getpid()


# --- in the worker ------------------------------------------------------------------------


class PoolExecutor:
    """Runs processors in a pool of spawned processes (one pool per pipeline)."""

    name = "pool"

    def __init__(self, settings: PoolExecutorSettings, worker: WorkerSettings | None = None):
        self.processes = settings.processes or os.cpu_count() or 1
        self._worker = worker or WorkerSettings()
        self._pool: ProcessPoolExecutor | None = None
        self._waited = 0  # runs whose caller still waits for them
        self._abandoned = False  # a run was cancelled while its child may still work

    def _ensure(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_child_init,
                initargs=(os.getpid(), self._worker),
            )
        return self._pool

    async def child_pids(self, timeout_s: float = 60.0) -> set[int]:
        """Start every child (if not yet) and return their pids (tests, warm-up).

        A child that is up first may answer every probe while another still imports,
        so it asks again until each child has answered (or ``timeout_s`` passes).
        """
        pool = self._ensure()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        pids: set[int] = set()
        while len(pids) < self.processes and loop.time() < deadline:
            pids.update(
                await asyncio.gather(
                    *(loop.run_in_executor(pool, _child_pid, i) for i in range(self.processes))
                )
            )
        return pids

    async def run(self, job: ObjectJob, progress: Progress | None = None) -> Result:
        """Run ``job`` in a child process."""
        pool = self._ensure()
        loop = asyncio.get_running_loop()
        self._waited += 1
        try:
            kind, value = await loop.run_in_executor(pool, _child_run, job)
        except BrokenProcessPool as exc:
            self._discard(pool)
            raise RetryableError(
                f"a pool process died while running {job.source} (killed, out of memory?): {exc}"
            ) from exc
        except asyncio.CancelledError:
            self._abandoned = True
            raise
        finally:
            self._waited -= 1
            if self._abandoned and self._waited == 0:
                self._kill("cancelled runs")
        if kind == "error":
            raise error_from_doc(value)
        assert isinstance(value, Result)
        return value

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        if self._pool is pool:
            self._pool = None  # the next run starts a fresh pool
        pool.shutdown(wait=False, cancel_futures=True)

    def _kill(self, why: str) -> None:
        """Kill every child now (their work was abandoned) and forget the pool."""
        pool, self._pool = self._pool, None
        self._abandoned = False
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        log.info("pool: killing %d child process(es) (%s)", len(procs), why)
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Shut the pool down: wait for idle children to exit, kill abandoned ones."""
        if self._pool is None:
            return
        if self._abandoned or self._waited:
            self._kill("worker stopping")
            return
        pool, self._pool = self._pool, None
        await asyncio.to_thread(pool.shutdown, True)
