"""One JVM server process on 127.0.0.1 with a run directory: the base of the local JVM servers.

:class:`JvmProcess` is what the Kafka broker (:class:`s3flow.local.kafka.broker.KafkaBroker`)
and the AWS endpoints (:class:`s3flow.local.aws.server.JvmServer`) share: a run directory
(``run_dir=None``: a private one, removed on close; a given one is kept, and a server
already running from it is found again), the JVM started with its output in a log file,
owned by this process (:func:`s3flow.local.endpoint.popen_owned`: it dies with its owner)
or detached into its own session (``detach=True``, ``scripts/services``: it outlives the
caller), the wait until it is ready, and the stop (SIGTERM, SIGKILL after a timeout).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from s3flow.local.endpoint import OwnedServer, popen_owned
from s3flow.local.kafka.host import ServiceError, live_pid, mkdir, stop_process, tail
from s3flow.local.kafka.install import default_cache_dir


class JvmProcess(OwnedServer):
    """A JVM server process with a run directory; see the module doc.

    A subclass says where the private run dir goes (:meth:`_new_run_dir`), where the log
    and the recorded pid are (:attr:`log_path`, :meth:`_saved_pid`), and how clients
    reach it (:attr:`address`); it starts the JVM with :meth:`_spawn` and waits with
    :meth:`_wait_until`.
    """

    #: The server in messages ("elasticmq", "the Kafka broker").
    title: ClassVar[str] = ""
    #: The JVM's main class: with the run dir, what tells its process apart from others.
    main_class: ClassVar[str] = ""
    #: How long :meth:`stop` waits after SIGTERM before SIGKILL, by default.
    stop_timeout_s: ClassVar[float] = 20.0
    #: Logged (``{pid}``, ``{timeout_s}`` filled in) before a SIGKILL; "" logs nothing.
    kill_message: ClassVar[str] = ""
    #: What the last readiness check found missing (said when the start times out).
    not_ready: str = ""

    def __init__(
        self,
        cache_dir: Path | None,
        port: int,
        *,
        run_dir: Path | None,
        heap: str,
        detach: bool,
    ) -> None:
        self.cache_dir = (cache_dir or default_cache_dir()).resolve()
        self.port = port
        self._requested_port = port
        self.heap = heap
        self.detach = detach
        self.reused = False
        self.start_seconds: float | None = None
        self._ephemeral = run_dir is None
        self._run_dir = run_dir.resolve() if run_dir else None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- what a subclass provides ---------------------------------------------------------

    @property
    def address(self) -> str:
        """Where clients connect (a URL, or ``host:port``)."""
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        """The JVM's stdout + stderr."""
        raise NotImplementedError

    def _new_run_dir(self) -> Path:
        """Create a private run directory (removed by :meth:`close`)."""
        raise NotImplementedError

    def _saved_pid(self) -> int | None:
        """The pid the last start from this run dir recorded (alive or not), if any."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        """The server's directory (config, log, pid, data); created on first use."""
        if self._run_dir is None:
            self._run_dir = self._new_run_dir()
        return mkdir(self._run_dir)

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs (this process's child or a detached one)."""
        return self._find_pid()

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM the server, SIGKILL after ``timeout_s`` (default :attr:`stop_timeout_s`).

        The run dir and its data stay: a later :meth:`start` brings them back.
        """
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        pid = self._find_pid()
        proc, self._proc = self._proc, None
        self._disown()
        if pid is not None:
            kill_message = self.kill_message.format(pid=pid, timeout_s=timeout_s)
            stop_process(proc, pid, timeout_s, kill_message=kill_message)

    def close(self) -> None:
        """Stop; a private server's run dir is deleted too."""
        self.stop()
        if self._ephemeral and self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    def __repr__(self) -> str:
        where = self.address if self.port else "not started"
        return f"<{type(self).__name__} {where} pid={self.pid} run_dir={self._run_dir}>"

    def _find_pid(self) -> int | None:
        """The pid of a live server started from this run dir (by this object or another)."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        if self._run_dir is None:
            return None
        pid = self._saved_pid()
        # A pid file outlives its process, and the pid may be reused: check the command.
        return None if pid is None else live_pid(pid, self.main_class, str(self._run_dir))

    def _spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in the run dir, its output in :attr:`log_path` (the last log kept
        as ``.log.1``); owned by this process unless :attr:`detach`."""
        if self.log_path.exists():
            self.log_path.replace(self.log_path.with_suffix(".log.1"))
        with self.log_path.open("ab") as out:
            if self.detach:  # the shared servers of scripts/services outlive this process
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.run_dir,
                    start_new_session=True,
                )
            else:  # owned: SIGTERM from the kernel if this process dies, even by SIGKILL
                proc = popen_owned(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.run_dir,
                )
                self._own()
        self._proc = proc
        return proc

    def _wait_until(self, ready: Callable[[], bool], deadline: float) -> None:
        """Poll ``ready()`` until it is true; :class:`ServiceError` (with the log's tail)
        when the server exits first or ``deadline`` (``time.monotonic()``) passes."""
        while True:
            if self._find_pid() is None:
                code = self._proc.returncode if self._proc is not None else None
                self._proc = None
                raise ServiceError(
                    f"{self.title} exited during start (code {code}); "
                    f"log {self.log_path}:\n{tail(self.log_path)}"
                )
            if ready():
                return
            if time.monotonic() > deadline:
                why = f" ({self.not_ready})" if self.not_ready else ""
                raise ServiceError(
                    f"{self.title} did not become ready on {self.address} in time{why}; "
                    f"log {self.log_path}:\n{tail(self.log_path)}"
                )
            time.sleep(0.1)
