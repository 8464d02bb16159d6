"""What the Kafka modules need from the machine: ports, processes, file locks, messages.

Also :class:`ServiceError`, the one error they all raise. Everything is on 127.0.0.1
(:data:`HOST`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from s3flow.errors import S3flowError
from s3flow.local.endpoint import pid_alive, port_in_use

HOST = "127.0.0.1"


class ServiceError(S3flowError):
    """A local service (the Kafka broker) could not be installed, started or stopped."""


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = HOST, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def port_free(port: int, host: str = HOST) -> bool:
    """True when ``host:port`` can be bound (nobody listens there)."""
    return not port_in_use(host, port)


def cmdline(pid: int) -> str:
    """The command line of process ``pid``, arguments joined by spaces ("" when unknown)."""
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def live_pid(pid: int, *markers: str) -> int | None:
    """``pid`` if that process is alive and its command line holds every one of ``markers``
    (a pid file outlives its process, and the pid may be reused), else None."""
    cmd = cmdline(pid)
    return pid if pid_alive(pid) and all(m in cmd for m in markers) else None


def wait_exit(proc: subprocess.Popen[bytes] | None, pid: int, timeout_s: float) -> bool:
    """True once process ``pid`` (``proc`` when it is our child) has exited; False after
    ``timeout_s``."""
    if proc is not None:
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stop_process(
    proc: subprocess.Popen[bytes] | None, pid: int, timeout_s: float, *, kill_message: str = ""
) -> None:
    """SIGTERM ``pid``; SIGKILL if it still runs after ``timeout_s`` (``kill_message``, when
    given, is logged first), then wait for it a little longer."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_exit(proc, pid, timeout_s):
        if kill_message:
            log(kill_message)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_exit(proc, pid, 10.0)


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed) for the ``with`` body."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sweep_abandoned(runs: Iterable[Path], stop: Callable[[Path], object]) -> None:
    """Remove the private run dirs among ``runs`` whose owner is gone: nobody holds
    their ``owner.lock`` (their owner holds it while it lives). ``stop`` stops what
    such a dir's server left running first (its errors are dropped). Dirs without an
    ``owner.lock`` are left alone."""
    for run in runs:
        lock_path = run / "owner.lock"
        if not lock_path.is_file():
            continue
        try:
            fh = lock_path.open("a")
        except OSError:
            continue
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its owner is alive
            with contextlib.suppress(Exception):
                stop(run)
            shutil.rmtree(run, ignore_errors=True)


def mkdir(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed; return it."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a text file ("" when it cannot be read)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def log(msg: str) -> None:
    """A ``kafka: ...`` progress line on stderr."""
    print(f"kafka: {msg}", file=sys.stderr, flush=True)
