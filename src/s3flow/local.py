"""Lifecycle of the embedded local AWS endpoint (moto server on loopback).

The server runs as a child process (``python -m s3flow._moto_server``) so it
never shares the worker's GIL. :class:`LocalEndpoint` is an (async) context
manager: it picks a free port, starts the server, waits until it answers and
stops it on exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import TracebackType

from s3flow.errors import S3flowError

# Credentials the emulator accepts; only set when the environment has none.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "s3flow-local", "AWS_SECRET_ACCESS_KEY": "s3flow-local"}


class LocalEndpointError(S3flowError):
    """The embedded endpoint could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _moto_available() -> bool:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


class LocalEndpoint:
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
        self.port = port or free_port(host)
        self.patched = patched
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The endpoint URL to give as AWS_ENDPOINT_URL."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalEndpoint:
        """Start the server and wait until it answers HTTP."""
        if not _moto_available():
            raise LocalEndpointError(
                "the embedded endpoint needs moto server: run scripts/install "
                "or pip install 's3flow[local]'"
            )
        env = dict(os.environ)
        if not self.patched:
            env["S3FLOW_MOTO_UNPATCHED"] = "1"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "s3flow._moto_server",
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
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LocalEndpointError(
                    f"moto server exited at start with code {self._proc.returncode} "
                    f"(port {self.port} in use?)"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise LocalEndpointError(
            f"moto server did not answer on {self.url} within {self.start_timeout_s:.0f}s"
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
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
        return self._proc.pid if self._proc else None

    def env(self) -> dict[str, str]:
        """Environment variables that point the SDK (and s3flow) at this endpoint."""
        out = {"AWS_ENDPOINT_URL": self.url}
        if not os.environ.get("AWS_ACCESS_KEY_ID"):
            out.update(LOCAL_CREDENTIALS)
        if not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
            out["AWS_REGION"] = "us-east-1"
        return out

    def __enter__(self) -> LocalEndpoint:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
