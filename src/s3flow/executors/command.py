"""The ``subprocess`` executor: ``s3flow run PROCESSOR s3://bucket/key --output URI``.

One process per object, the same one-object contract a container follows (its
environment also carries ``SOURCE_BUCKET``, ``OBJECT_KEY``, ``DEST_BUCKET``...; see
:mod:`s3flow.executors.contract`). The process reports one JSON line on stdout and its
exit code; its stderr is kept (the last few KiB) for the error message.

The process runs in a session of its own (a Ctrl-C at the terminal reaches only the
worker, which decides), gets ``PR_SET_PDEATHSIG`` (it dies with the worker) and the
worker's ``[aws]`` settings as ``S3FLOW_AWS__*`` variables. A cancelled run (shutdown)
gets SIGTERM, which ``s3flow run`` turns into a clean cancellation, then SIGKILL for
its whole process group after ``kill_after_s``; so does a run still going at its job's
``timeout_s`` (the pipeline's ``job_timeout_s``). A run is over when its process exits:
processes it left behind in its group (a wrapper script's background child holding
stdout) are killed then, and what the pipes held is read.

Should the worker itself die (SIGKILL, the OOM killer), the process gets SIGTERM from
the kernel, but what it started does not. A small guard process per executor
(:mod:`s3flow.executors.group_guard`, started with the first run) is told each run's
process group and, when the worker is gone, kills what is left of them (SIGKILL, once
the process has taken its SIGTERM or ``kill_after_s`` passed), so no orphan keeps
running beside the redelivered message's new run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s3flow.errors import ConfigError, ExecutorUnavailableError
from s3flow.executors.base import (
    ObjectJob,
    Progress,
    error_for_exit,
    error_from_doc,
    job_timed_out,
    parse_doc,
    result_from_doc,
)
from s3flow.executors.contract import job_environment
from s3flow.local.endpoint import OWNER_PID_ENV, owned_preexec
from s3flow.processors.base import Result
from s3flow.settings import AwsSettings, SubprocessExecutorSettings

log = logging.getLogger("s3flow.executors")

_STDOUT_LIMIT = 4 * 1024 * 1024
_STDERR_TAIL = 4096
_SETTING = "[pipelines.executors.subprocess] command"


def command_problem(settings: SubprocessExecutorSettings) -> str | None:
    """Why the executor's ``command`` cannot be started, or None when it can.

    Its program is looked up as the process will be started: a path as it is, a bare
    name on the ``PATH`` of the process's environment (the worker's, with the
    executor's ``environment`` over it). Empty: this worker's interpreter.
    """
    if not settings.command:
        return None
    program = settings.command[0]
    if os.path.dirname(program):
        if not os.path.exists(program):
            return f"{program!r} does not exist"
        if os.path.isdir(program):
            return f"{program!r} is a directory, not a program"
        if not os.access(program, os.X_OK):
            return f"{program!r} is not executable (chmod +x it)"
        return None
    path = {**os.environ, **settings.environment}.get("PATH", os.defpath)
    if shutil.which(program, path=path) is None:
        return f"{program!r} is not an executable found on the PATH ({path})"
    return None


def check_command(settings: SubprocessExecutorSettings) -> None:
    """Start-up check: ConfigError when the ``subprocess`` executor's command cannot start."""
    problem = command_problem(settings)
    if problem is not None:
        raise ConfigError(
            f"{_SETTING}: {problem}; set it to the s3flow executable to run, e.g. "
            "['/opt/s3flow/bin/s3flow'], or leave it empty for this worker's interpreter "
            "(`python -m s3flow`)"
        )


def aws_environment(aws: AwsSettings) -> dict[str, str]:
    """``[aws]`` as ``S3FLOW_AWS__*`` variables (what the settings loader reads back)."""
    out = {}
    for name, value in aws.model_dump(exclude_none=True).items():
        out[f"S3FLOW_AWS__{name.upper()}"] = str(value)
    return out


async def _read_all(stream: asyncio.StreamReader, limit: int, into: bytearray) -> None:
    """Read ``stream`` to its end into ``into`` (its first ``limit`` bytes)."""
    while chunk := await stream.read(65536):
        if len(into) < limit:
            into += chunk[: limit - len(into)]


async def _read_tail(stream: asyncio.StreamReader, keep: int, into: bytearray) -> None:
    """Read ``stream`` to its end, keeping its last ``keep`` bytes in ``into``."""
    while chunk := await stream.read(65536):
        into += chunk
        del into[:-keep]


async def _exit_code(proc: asyncio.subprocess.Process, readers: list[asyncio.Task[Any]]) -> int:
    """``proc``'s exit code as soon as it exits. ``proc.wait()`` (the last reader) also
    waits for its pipes to close, which a process it left behind may keep open."""
    waited = readers[-1]
    while proc.returncode is None and not waited.done():
        await asyncio.wait({waited}, timeout=0.05)
    return proc.returncode if proc.returncode is not None else int(waited.result())


#: The guard's script (standard library only: it starts in a few milliseconds).
_GUARD_SCRIPT = str(Path(__file__).with_name("group_guard.py"))
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


def _tell(sock: socket.socket | None, line: bytes) -> None:
    """Send ``line`` to the guard; never blocks, never raises (nor SIGPIPE)."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.send(line, _NOSIGNAL)


#: After the process exits, how long its pipes may stay open (data in flight) before
#: what still holds them (processes it left behind) is killed.
_DRAIN_S = 2.0


class SubprocessExecutor:
    """Runs each object in its own ``s3flow run`` process."""

    name = "subprocess"

    def __init__(self, settings: SubprocessExecutorSettings) -> None:
        self._settings = settings
        self._base = list(settings.command) or [sys.executable, "-m", "s3flow"]
        self._running: dict[asyncio.subprocess.Process, list[asyncio.Task[Any]]] = {}
        self._guard: asyncio.subprocess.Process | None = None
        self._guard_sock: socket.socket | None = None
        self._guard_lock = asyncio.Lock()

    def argv(self, job: ObjectJob) -> list[str]:
        """The command line for ``job``."""
        return [*self._base, "run", job.processor, job.source, "--output", job.output]

    def environment(self, job: ObjectJob) -> dict[str, str]:
        """The process's environment: the worker's, ``[aws]``, the contract, extras."""
        env = dict(os.environ)
        env.update(aws_environment(job.aws))
        env.update(job_environment(job))
        env.update(self._settings.environment)
        env[OWNER_PID_ENV] = str(os.getpid())
        return env

    async def run(self, job: ObjectJob, progress: Progress | None = None) -> Result:
        """Start the process, wait for it, map its JSON line / exit code."""
        argv = self.argv(job)
        guard = await self._guarded()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.environment(job),
                start_new_session=True,
                preexec_fn=_registering_preexec(guard),
            )
        except OSError as exc:
            # The command is gone or not executable, or the machine cannot start a process
            # now (no memory, too many open files): not the object's fault, no failure
            # counted (checked at start too: this is a change since, or a passing shortage).
            problem = command_problem(self._settings) or exc.strerror or str(exc)
            raise ExecutorUnavailableError(
                f"subprocess executor cannot start {argv[0]!r} for {job.source}: {problem} "
                f"({type(exc).__name__}); check {_SETTING} and this machine"
            ) from exc
        assert proc.stdout is not None and proc.stderr is not None
        out, err = bytearray(), bytearray()
        readers = [
            asyncio.ensure_future(_read_all(proc.stdout, _STDOUT_LIMIT, out)),
            asyncio.ensure_future(_read_tail(proc.stderr, _STDERR_TAIL, err)),
            asyncio.ensure_future(proc.wait()),  # asyncio's wait: the exit and both pipes closed
        ]
        self._running[proc] = readers
        if self._guard_sock is not guard:
            # The guard was replaced while this run started: the new one listed the runs
            # it found, not this one, and the process told the old one. Tell the new one.
            _tell(self._guard_sock, b"+%d\n" % proc.pid)
        try:
            try:
                async with asyncio.timeout(job.timeout_s):
                    code = await _exit_code(proc, readers)
            except TimeoutError as exc:
                await asyncio.shield(self._stop(proc, readers))
                raise job_timed_out(
                    job, f"pid {proc.pid}", "stopped (SIGTERM, then SIGKILL)"
                ) from exc
            # The run is over when its process exits, even if something it started still
            # holds the pipes: that is ended, and the result is what the process wrote.
            await asyncio.shield(self._end_group(proc, readers))
        except asyncio.CancelledError:
            await asyncio.shield(self._stop(proc, readers))
            raise
        finally:
            self._running.pop(proc, None)
            _tell(self._guard_sock, b"-%d\n" % proc.pid)
        doc = parse_doc(out.decode("utf-8", "replace"))
        what = f"`s3flow run {job.processor} {job.source}` (pid {proc.pid})"
        if doc is not None:
            if doc["status"] == "done":
                return result_from_doc(doc)
            raise error_from_doc(doc)
        tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise error_for_exit(code, what, " | ".join(tail))

    async def _end_group(
        self, proc: asyncio.subprocess.Process, readers: list[asyncio.Task[Any]]
    ) -> None:
        """Once ``proc`` has exited: let the pipes drain, then SIGKILL what is left of its
        process group (it leads its own) and stop reading."""
        await asyncio.wait(readers, timeout=_DRAIN_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
            log.warning(
                "s3flow run (pid %d) exited leaving processes in its group: killed them",
                proc.pid,
            )
        await asyncio.wait(readers, timeout=_DRAIN_S)
        for reader in readers:  # a pipe held by a process that left the group: stop
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    async def _stop(
        self, proc: asyncio.subprocess.Process, readers: list[asyncio.Task[Any]]
    ) -> None:
        """SIGTERM (a clean cancellation), then SIGKILL the process group."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(_exit_code(proc, readers), self._settings.kill_after_s)
            except TimeoutError:
                log.warning("s3flow run (pid %d) did not stop on SIGTERM: killing it", proc.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # it leads its own session and group
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_exit_code(proc, readers), self._settings.kill_after_s)
        await self._end_group(proc, readers)

    async def _guarded(self) -> socket.socket | None:
        """The socket to this executor's group guard, started (again) if it is not running;
        None (a warning logged) when it cannot start: runs go on without it."""
        async with self._guard_lock:
            if self._guard is not None and self._guard.returncode is None:
                return self._guard_sock
            if self._guard is not None:
                log.warning(
                    "subprocess executor: the guard of its runs' process groups (pid %d) "
                    "ended (exit status %s): starting another",
                    self._guard.pid,
                    self._guard.returncode,
                )
            self._close_guard_socket()
            ours, theirs = socket.socketpair()
            try:
                self._guard = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-I",
                    "-S",
                    _GUARD_SCRIPT,
                    str(os.getpid()),
                    str(self._settings.kill_after_s),
                    stdin=theirs.fileno(),
                    stdout=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                ours.close()
                self._guard = None
                log.warning(
                    "subprocess executor: cannot start the guard of its runs' process groups "
                    "(%s): should this worker be killed, what its runs started may live on",
                    exc,
                )
                return None
            except BaseException:  # cancelled (a shutdown) while it started
                ours.close()
                raise
            finally:
                theirs.close()
            ours.setblocking(False)
            self._guard_sock = ours
            for proc in self._running:  # runs the previous guard knew of
                _tell(ours, b"+%d\n" % proc.pid)
            return ours

    def _close_guard_socket(self) -> None:
        if self._guard_sock is not None:
            self._guard_sock.close()
            self._guard_sock = None

    async def close(self) -> None:
        """Stop processes still running (normally none: their runs were cancelled), then
        the guard (the end of its socket ends it)."""
        running = list(self._running.items())
        await asyncio.gather(*(self._stop(proc, readers) for proc, readers in running))
        self._close_guard_socket()
        guard, self._guard = self._guard, None
        if guard is not None and guard.returncode is None:
            try:
                await asyncio.wait_for(guard.wait(), 2)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    guard.kill()
                await guard.wait()


def _registering_preexec(guard: socket.socket | None) -> Callable[[], None]:
    """The run's ``preexec_fn``: ``PR_SET_PDEATHSIG`` (:func:`owned_preexec`), then its
    process group (its pid: it leads a new session) told to the guard, before the command
    starts, so that nothing it starts escapes the guard."""
    owned = owned_preexec()

    def preexec() -> None:
        owned()
        _tell(guard, b"+%d\n" % os.getpid())

    return preexec
