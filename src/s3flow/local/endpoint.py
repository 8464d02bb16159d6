"""Lifecycle of the embedded local AWS endpoint (moto server on loopback).

The server runs as a child process (``python -m s3flow.local.moto_server``) so it
never shares the worker's GIL. :class:`LocalEndpoint` is an (async) context
manager: it picks a free port, starts the server, waits until it answers and
stops it on exit.

Local servers never outlive their owner (the process that started them). The
owner stops them on a clean exit (``stop()``, the ``with`` block, or at
interpreter exit); for an owner that dies without cleaning up (SIGKILL, an
unhandled SIGTERM) :func:`popen_owned` starts them with Linux
``PR_SET_PDEATHSIG`` (SIGTERM when the owner goes) and a Python child also
watches its parent itself (:func:`die_with_parent`). The Kafka broker
(:mod:`s3flow.local.kafka_broker`) is started the same way.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import ctypes
import functools
import ipaddress
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

from s3flow.errors import S3flowError

# Credentials the emulator accepts; only set when the environment has none.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "s3flow-local", "AWS_SECRET_ACCESS_KEY": "s3flow-local"}


class LocalEndpointError(S3flowError):
    """The embedded endpoint could not be started."""


# --- child processes that never outlive their owner ---------------------------------

#: Set in the environment of a child started by :func:`popen_owned`: its owner's pid.
OWNER_PID_ENV = "S3FLOW_OWNER_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_WATCH_INTERVAL_S = 0.2
_File = int | IO[Any] | None


@functools.cache
def _prctl() -> Any:
    """libc's ``prctl`` as a ctypes function (resolved before any fork); ``None`` off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies (``PR_SET_PDEATHSIG``).

    Returns False where that is not available. The kernel sends the signal when the
    *thread* that forked this process exits, and only for a death after this call: a
    caller must check ``os.getppid()`` right afterwards (see :func:`die_with_parent`).
    """
    prctl = _prctl()
    return prctl is not None and prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def die_with_parent(owner_pid: int | None = None, *, interval_s: float = _WATCH_INTERVAL_S) -> bool:
    """In a child process: exit as soon as the owner (the parent) is gone, however it went.

    ``owner_pid`` defaults to ``$S3FLOW_OWNER_PID`` (set by :func:`popen_owned`, and
    removed here so grandchildren do not inherit it); without either nothing is done and
    False is returned. Sets ``PR_SET_PDEATHSIG`` (SIGTERM), exits at once if the parent is
    no longer ``owner_pid`` (it died before the signal was armed), and starts a daemon
    thread that polls ``os.getppid()`` every ``interval_s``: that also catches the death
    of a parent *process* whose forking thread is not the one the kernel watches.
    """
    if owner_pid is None:
        raw = os.environ.pop(OWNER_PID_ENV, "")
        if not raw.isdigit():
            return False
        owner_pid = int(raw)
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != owner_pid:
        _owner_gone(owner_pid)
    threading.Thread(
        target=_watch_parent, args=(owner_pid, interval_s), name="s3flow-owner-watch", daemon=True
    ).start()
    return True


def _watch_parent(owner_pid: int, interval_s: float) -> None:
    while os.getppid() == owner_pid:
        time.sleep(interval_s)
    _owner_gone(owner_pid)


def _owner_gone(owner_pid: int) -> None:
    print(f"s3flow: owner process {owner_pid} is gone: exiting", file=sys.stderr, flush=True)
    os._exit(0)


def _owned_preexec(owner: int) -> Callable[[], None]:
    """The ``preexec_fn`` of :func:`popen_owned`: two system calls, nothing that allocates."""
    prctl = _prctl()
    sig = int(signal.SIGTERM)

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != owner:  # the owner died before the signal was armed
            os._exit(1)

    return preexec


def owned_preexec() -> Callable[[], None]:
    """A ``preexec_fn`` that gives a child ``PR_SET_PDEATHSIG`` = SIGTERM towards this process.

    For children started some other way than :func:`popen_owned` (an asyncio
    subprocess). Call it in the thread that starts the child: the kernel ties the
    signal to the forking thread.
    """
    return _owned_preexec(os.getpid())


_SpawnJob = tuple[Callable[[], "subprocess.Popen[bytes]"], "concurrent.futures.Future[Any]"]
_spawn_lock = threading.Lock()
_spawn_jobs: queue.SimpleQueue[_SpawnJob] | None = None


def _spawner() -> queue.SimpleQueue[_SpawnJob]:
    """The job queue of this process's spawner thread (a daemon that lives until exit)."""
    global _spawn_jobs
    with _spawn_lock:
        if _spawn_jobs is None:
            jobs: queue.SimpleQueue[_SpawnJob] = queue.SimpleQueue()
            threading.Thread(
                target=_spawn_loop, args=(jobs,), name="s3flow-spawner", daemon=True
            ).start()
            _spawn_jobs = jobs
        return _spawn_jobs


def _spawn_loop(jobs: queue.SimpleQueue[_SpawnJob]) -> None:
    while True:
        spawn, future = jobs.get()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(spawn())
            except BaseException as exc:
                future.set_exception(exc)


def _forget_spawner() -> None:
    global _spawn_jobs, _spawn_lock
    _spawn_jobs, _spawn_lock = None, threading.Lock()  # a forked child has no such thread


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_spawner)


def popen_owned(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdin: _File = None,
    stdout: _File = None,
    stderr: _File = None,
) -> subprocess.Popen[bytes]:
    """Start a server process that must not outlive this one (its owner).

    Like ``subprocess.Popen``; in addition the child gets ``PR_SET_PDEATHSIG`` = SIGTERM
    before it execs, so the kernel stops it when this process dies, even by SIGKILL, and
    ``$S3FLOW_OWNER_PID`` for a child that also watches its parent (:func:`die_with_parent`).
    The kernel ties that signal to the forking *thread*: called from any thread but the
    main one, the fork is done by a daemon thread that lives as long as this process, so
    the child does not die with a short-lived caller thread.
    """
    owner = os.getpid()
    child_env = dict(os.environ if env is None else env)
    child_env[OWNER_PID_ENV] = str(owner)
    preexec = _owned_preexec(owner)

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(args),
            env=child_env,
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=preexec,
        )

    if threading.current_thread() is threading.main_thread():
        return spawn()
    future: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
    _spawner().put((spawn, future))
    return future.result()


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """For a command that owns servers: SIGTERM and SIGINT raise KeyboardInterrupt.

    So ``s3flow local`` and ``s3flow demo`` stop (and wait for) their servers on SIGTERM
    exactly as on Ctrl-C, also where SIGINT was ignored (a background job of a script).
    Only the first signal interrupts; later ones are ignored so the cleanup it started
    runs to its end. The previous handlers come back on exit. Main thread only (else a
    no-op).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise KeyboardInterrupt(signal.Signals(signum).name)

    sigs = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, interrupt) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


class OwnedServer:
    """Base of the local servers this process owns (moto, the Kafka broker, the JVM endpoints).

    ``with server:`` starts it and closes it on the way out; one still owned when the
    interpreter exits is closed then (a subclass calls :meth:`_own` once its process
    runs and :meth:`_disown` once it is stopped).
    """

    def start(self) -> Self:
        """Start the server and wait until it is ready; defined by each subclass."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the server and remove what it leaves behind; defined by each subclass."""
        raise NotImplementedError

    def _own(self) -> None:
        _owned.add(self)

    def _disown(self) -> None:
        _owned.discard(self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_owned: weakref.WeakSet[OwnedServer] = weakref.WeakSet()


@atexit.register
def _close_owned_at_exit() -> None:
    """Close (and wait for) the servers still owned when the interpreter exits."""
    for server in list(_owned):
        with contextlib.suppress(Exception):
            server.close()


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """True when a server could not bind ``host:port`` now (someone listens there).

    ``SO_REUSEADDR`` as the servers set it: connections in TIME_WAIT do not count.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def listens(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds a socket listening on TCP ``port`` (Linux: read
    from /proc); None when this cannot be told (another system, /proc unreadable)."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
        listening = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError), open(table) as lines:
                next(lines, None)  # the heading
                for line in lines:
                    fields = line.split()
                    # local_address is HEXIP:HEXPORT; state 0A is LISTEN
                    if (
                        len(fields) > 9
                        and fields[3] == "0A"
                        and int(fields[1].rsplit(":", 1)[1], 16) == port
                    ):
                        listening.add(fields[9])
    except OSError:
        return None
    return bool(inodes & listening)


def connect_host(host: str) -> str:
    """The host a client on this machine connects to for a server bound to ``host``.

    A wildcard bind address (``0.0.0.0``, ``::``, or "" for every address) is no
    address to connect to: it gives loopback (``127.0.0.1``; ``::1`` for an IPv6 one),
    so a printed URL can be clicked. Any other host is returned as it is. Use it for
    the URLs a server prints or hands on, not for what it binds.
    """
    name = host.strip()
    if not name:
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return host  # a host name
    if not address.is_unspecified:
        return host
    return "::1" if address.version == 6 else "127.0.0.1"


def host_url(host: str, port: int) -> str:
    """``http://host:port``, an IPv6 address in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _moto_available() -> bool:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


class LocalEndpoint(OwnedServer):
    """A moto server child process bound to ``host:port`` (port 0 = pick one)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        patched: bool = True,
        log_path: str | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.host = host
        try:
            self.port = port or free_port(host)
        except OSError as exc:  # socket.gaierror too: an unknown host name
            raise LocalEndpointError(f"cannot bind {host!r}: {exc}") from exc
        self.patched = patched
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The endpoint URL to give as AWS_ENDPOINT_URL (loopback for a wildcard host)."""
        return host_url(connect_host(self.host), self.port)

    def start(self) -> Self:
        """Start the server and wait until it answers HTTP."""
        if not _moto_available():
            raise LocalEndpointError(
                "the embedded endpoint needs moto server: run scripts/install "
                "or pip install 's3flow[local]'"
            )
        try:
            busy = port_in_use(self.host, self.port)
        except OSError as exc:
            raise LocalEndpointError(f"cannot bind {self.host!r}: {exc}") from exc
        if busy:
            raise LocalEndpointError(
                f"port {self.port} on {self.host} is in use: choose another with --port"
            )
        env = dict(os.environ)
        if not self.patched:
            env["S3FLOW_MOTO_UNPATCHED"] = "1"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = popen_owned(
                [
                    sys.executable,
                    "-m",
                    "s3flow.local.moto_server",
                    "-H",
                    self.host,
                    "-p",
                    str(self.port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        finally:
            if self.log_path and not isinstance(out, int):
                out.close()
        self._own()
        try:
            self._wait_ready()
        except BaseException:  # also KeyboardInterrupt: never leave the server behind
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                with contextlib.suppress(OSError):
                    if port_in_use(self.host, self.port):  # taken since start() checked
                        raise LocalEndpointError(
                            f"port {self.port} on {self.host} is in use: choose another with --port"
                        )
                raise LocalEndpointError(
                    f"moto server exited at start with code {self._proc.returncode} "
                    f"(port {self.port} in use?)"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    pass
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
                continue
            # Ready only if the answer is this child's. Another server that took the port
            # between the check in start() and the child's bind (two `s3flow local
            # --port P` started together) answers too, while the child, still importing
            # moto, has yet to fail its bind: the listening socket must be the child's.
            owned = listens(self._proc.pid, self.port)
            if owned is False:
                time.sleep(0.05)
                continue  # not bound yet, or never will be (it exits: told above)
            time.sleep(0.1)
            if self._proc.poll() is None:
                return
        raise LocalEndpointError(
            f"moto server did not answer on {self.url} within {self.start_timeout_s:.0f}s"
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        self._disown()
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def env(self) -> dict[str, str]:
        """Environment variables that point the SDK (and s3flow) at this endpoint."""
        out = {"AWS_ENDPOINT_URL": self.url}
        if not os.environ.get("AWS_ACCESS_KEY_ID"):
            out.update(LOCAL_CREDENTIALS)
        if not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
            out["AWS_REGION"] = "us-east-1"
        return out

    def close(self) -> None:
        """Stop the server (:meth:`stop`: it leaves nothing else behind)."""
        self.stop()
