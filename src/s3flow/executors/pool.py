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

A run still going at its job's ``timeout_s`` (the pipeline's ``job_timeout_s``) has its
child killed; the pool then breaks as below.

A child that dies (killed, out of memory) breaks the whole pool: Python fails every
run in it. Only the object whose child died is charged a failure (each run reports its
child's pid when it starts); the others are stopped (their children killed, so none
goes on writing for an object that is retried) and retried without one, on a fresh pool.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import multiprocessing
import multiprocessing.context
import os
import signal
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AsyncExitStack
from typing import Any

from s3flow.aws import async_client
from s3flow.errors import ExecutorUnavailableError, RetryableError, S3flowError
from s3flow.executors.base import (
    ObjectJob,
    Progress,
    error_doc,
    error_from_doc,
    job_timed_out,
)
from s3flow.executors.one import run_isolated
from s3flow.local.endpoint import die_with_parent, pid_alive, set_parent_death_signal
from s3flow.logs import setup_logging
from s3flow.memory import set_mmap_threshold
from s3flow.processors.base import Result
from s3flow.settings import AwsSettings, PoolExecutorSettings, WorkerSettings

log = logging.getLogger("s3flow.executors")
#: How often a run that waits for a free child looks whether one has started it.
_START_POLL_S = 0.05
#: The start of a pool child's process name (set before the child imports anything).
POOL_CHILD_NAME = "s3flow-pool-child"


class _ChildProcess(multiprocessing.context.SpawnProcess):
    """A spawned process named as a pool child: spawn gives a child its name before it
    imports the parent's main module, so code that module runs can tell (see
    :func:`in_pool_child`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = f"{POOL_CHILD_NAME}-{self.name}"


class _ChildContext(multiprocessing.context.SpawnContext):
    """The spawn context, its processes named as pool children."""

    Process = _ChildProcess


def pool_context() -> multiprocessing.context.SpawnContext:
    """The multiprocessing context the pool's children are spawned with."""
    return _ChildContext()


def in_pool_child() -> bool:
    """Whether this process is a spawned child re-importing its parent's main module: a
    pool executor's, compaction's or csv-to-kafka's ranges. A script that starts a
    worker without an ``if __name__ == "__main__":`` guard runs again there.

    ``_inheriting`` is multiprocessing's own flag for that moment (spawn and
    forkserver); the pool's child name covers a start method that does not set it."""
    me = multiprocessing.current_process()
    return bool(getattr(me, "_inheriting", False)) or me.name.startswith(f"{POOL_CHILD_NAME}-")


#: How long a broken pool's first failed run waits to see which child died.
DEATH_WAIT_S = 2.0

# --- in a child ---------------------------------------------------------------------------

#: Per child process: its event loop, and an S3 client per distinct [aws] settings.
_child: dict[str, Any] = {}


def _child_init(parent_pid: int, worker: WorkerSettings, started: Any) -> None:
    """Pool child start-up: signals, die with the worker, logging, malloc tuning.

    ``started``: the queue on which each run tells the worker which child runs it.
    """
    _child["started"] = started
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


def _child_run(job: ObjectJob, run_id: int) -> tuple[str, Any]:
    """Run one job in this child: ("ok", Result) or ("error", error document)."""
    _child["started"].put((run_id, os.getpid()))
    return _child_loop().run_until_complete(_child_async(job))


def _child_pid(_: int) -> int:
    time.sleep(0.05)  # keep this child busy so the next call starts another
    return os.getpid()


# --- in the worker ------------------------------------------------------------------------


def _wake_manager(pool: ProcessPoolExecutor) -> None:
    """Have the pool's manager thread look at its children again.

    ``submit`` wakes it before it starts a new child: a manager already waiting again
    then watches the children it knew, and a death of the new one goes unseen (its run
    waits) until some other run ends. Woken after the child is started, it watches all.
    """
    wakeup = getattr(pool, "_executor_manager_thread_wakeup", None)
    if wakeup is not None:
        with contextlib.suppress(Exception):  # closed: the pool is shutting down
            wakeup.wakeup()


async def _dying(procs: dict[int, Any], wait_s: float = DEATH_WAIT_S) -> dict[int, int | None]:
    """The pids of ``procs`` that are dead, with their exit codes (None: not known yet),
    waiting up to ``wait_s`` for one.

    The pool learns of a death when the child's end of a pipe closes, which the kernel
    does a moment before the process is gone: looked at at once, it may still exist.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        dead = {
            pid: proc.exitcode
            for pid, proc in procs.items()
            if proc.exitcode is not None or not pid_alive(pid)
        }
        # A child gone whose exit code is not read yet (the pool's thread reaps it a
        # moment later): waited for, or an "exited 7" was told as "out of memory?".
        if (dead and None not in dead.values()) or loop.time() >= deadline:
            return dead
        await asyncio.sleep(0.01)


def _death(exitcode: int | None) -> str:
    """How a child ended, from its exit code (negative: the signal that killed it)."""
    if exitcode is None:
        return "ended, its exit status unread: killed, out of memory?"
    if exitcode == -signal.SIGKILL:
        return "killed, out of memory?"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited {exitcode}"


class PoolExecutor:
    """Runs processors in a pool of spawned processes (one pool per pipeline)."""

    name = "pool"

    def __init__(self, settings: PoolExecutorSettings, worker: WorkerSettings | None = None):
        self.processes = settings.processes or os.cpu_count() or 1
        self._worker = worker or WorkerSettings()
        self._pool: ProcessPoolExecutor | None = None
        self._waited = 0  # runs whose caller still waits for them
        self._abandoned = False  # a run was cancelled while its child may still work
        self._started: Any = None  # the pool's queue of (run id, child pid)
        self._runs = 0
        self._run_pids: dict[int, int] = {}  # run id -> the pid of the child running it
        #: The pids found dead when a pool broke, kept for each of its failed runs.
        self._dead: weakref.WeakKeyDictionary[
            ProcessPoolExecutor, asyncio.Future[dict[int, int | None]]
        ] = weakref.WeakKeyDictionary()

    def _ensure(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = pool_context()
            self._started = ctx.SimpleQueue()
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=ctx,
                initializer=_child_init,
                initargs=(os.getpid(), self._worker, self._started),
            )
        return self._pool

    def _read_started(self, started: Any) -> None:
        """Take in the runs the children started since the last look."""
        with contextlib.suppress(OSError, EOFError, ValueError):
            while not started.empty():
                run_id, pid = started.get()
                self._run_pids[run_id] = pid

    def _dead_pids(self, pool: ProcessPoolExecutor) -> asyncio.Future[dict[int, int | None]]:
        """The pids of ``pool``'s children that died: looked for once per broken pool,
        by its first failed run, before the living children are killed."""
        found = self._dead.get(pool)
        if found is None:
            procs = dict(getattr(pool, "_processes", None) or {})
            found = self._dead[pool] = asyncio.ensure_future(_dying(procs))
        return found

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

    async def run(
        self,
        job: ObjectJob,
        progress: Progress | None = None,
        *,
        waited: Callable[[float], None] | None = None,
    ) -> Result:
        """Run ``job`` in a child process.

        Its ``timeout_s`` counts from when a child starts it; ``waited`` is told, as it
        goes, how long it has waited for one (the caller's lease lasts that much longer).
        """
        pool = self._ensure()
        started = self._started
        loop = asyncio.get_running_loop()
        self._runs += 1
        run_id = self._runs
        self._waited += 1
        try:
            submitted = pool.submit(_child_run, job, run_id)
            future = asyncio.wrap_future(submitted, loop=loop)
            _wake_manager(pool)
            if job.timeout_s is None:
                kind, value = await future
            else:
                kind, value = await self._within(
                    future, run_id, started, job.timeout_s, waited or (lambda s: None)
                )
        except TimeoutError as exc:
            self._read_started(started)
            how = self._stop_run(run_id, submitted, future, pool)
            raise job_timed_out(job, "the pool", how) from exc
        except BrokenProcessPool as exc:
            self._read_started(started)
            pid = self._run_pids.get(run_id)
            try:
                dead = await asyncio.shield(self._dead_pids(pool))
            finally:
                # The living children ignore SIGTERM: killed, so none goes on writing for
                # an object about to be retried.
                self._kill("a child died", pool)
            if pid is not None and pid in dead:
                raise RetryableError(
                    f"the pool process running {job.source} died (pid {pid}: {_death(dead[pid])})"
                ) from exc
            raise ExecutorUnavailableError(
                f"{job.source} was stopped: another object's pool process died, and the "
                "pool starts afresh (retried without counting a failure)"
            ) from exc
        except asyncio.CancelledError:
            self._read_started(started)
            # Its BrokenProcessPool (the pool killed at shutdown) is nobody's now.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            # Taken back before a child started it: nothing to kill. Started (or handed
            # to a child that has not said so yet): killed with the pool once no run waits.
            if self._run_pids.get(run_id) is not None or not submitted.cancel():
                self._abandoned = True
            raise
        finally:
            self._read_started(started)
            self._run_pids.pop(run_id, None)
            self._waited -= 1
            if self._abandoned and self._waited == 0:
                self._kill("cancelled runs")
        if kind == "error":
            raise error_from_doc(value)
        assert isinstance(value, Result)
        return value

    async def _within(
        self,
        future: asyncio.Future[Any],
        run_id: int,
        started: Any,
        timeout_s: float,
        waited: Callable[[float], None],
    ) -> Any:
        """The run's answer; TimeoutError once it has run ``timeout_s`` in its child.

        The time counts from when a child starts it (it says so on ``started``), as
        the docs promise ("from when its work starts"): waiting for a free child, or
        for a new pool's children to start, is not the run's (a burst of big objects
        on a busy pool timed out in the queue, and was dead-lettered, never run).
        """
        last = time.monotonic()
        while self._run_pids.get(run_id) is None:
            done, _ = await asyncio.wait({future}, timeout=_START_POLL_S)
            if done:
                return future.result()
            self._read_started(started)
            # Told as it goes: the caller's lease is paused while the run waits, so a
            # wait longer than the lease's deadline never lets it lapse meanwhile.
            now = time.monotonic()
            waited(now - last)
            last = now
        return await asyncio.wait_for(asyncio.shield(future), timeout_s)

    def _stop_run(
        self,
        run_id: int,
        submitted: concurrent.futures.Future[Any],
        future: asyncio.Future[Any],
        pool: ProcessPoolExecutor,
    ) -> str:
        """Stop run ``run_id`` (past its timeout): kill its child. The pool breaks: runs
        in other children are retried without a failure (as when a child dies), and with
        none, the pool is replaced now. Returns how it was stopped, for the error."""
        # Its BrokenProcessPool (or result) is nobody's now: not "never retrieved".
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        pid = self._run_pids.get(run_id)
        if pid is None:
            # The pool's own future: the asyncio one says "cancelled" even when the
            # run was already handed to a child (which then ran it to the end).
            if submitted.cancel():
                return "taken back before a child started it"
            # Handed to a child that has not said so yet: killed with the pool once no
            # run waits any more, as a cancelled run's.
            self._abandoned = True
            return "abandoned (its child is killed with the pool)"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        log.warning("pool: killed child %d: its run went on past job_timeout_s", pid)
        if self._waited == 1:  # this run only: start afresh at once
            self._kill("a run went on past job_timeout_s", pool)
        return f"killed (pid {pid})"

    def _kill(self, why: str, pool: ProcessPoolExecutor | None = None) -> None:
        """Kill every child of ``pool`` (the current one by default) now: their work was
        abandoned. The next run starts a fresh pool."""
        if pool is None or pool is self._pool:
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
