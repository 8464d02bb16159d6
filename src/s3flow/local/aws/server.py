"""One JVM endpoint process on 127.0.0.1: :class:`ElasticMQ` (SQS) or :class:`S3Proxy` (S3).

A server object picks a port, writes its configuration into a run directory, starts
the JVM, waits until it answers HTTP and stops it (SIGTERM, SIGKILL after a timeout).
``run_dir=None`` gives a private server in ``<cache>/aws-tmp/<random>`` that
:meth:`JvmServer.close` removes, owned by this process (started with
:func:`s3flow.local.endpoint.popen_owned`: it dies with its owner). ``detach=True``
(``scripts/services``) starts it in its own session so it outlives the caller; a
later :meth:`JvmServer.start` on the same run directory reuses a running server.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal, Self

from s3flow.local.aws.install import install
from s3flow.local.endpoint import popen_owned
from s3flow.local.kafka.host import (
    HOST,
    ServiceError,
    free_port,
    live_pid,
    mkdir,
    port_free,
    stop_process,
    tail,
)
from s3flow.local.kafka.install import default_cache_dir, require_java

#: Credentials both servers accept (S3Proxy checks signatures against them).
ACCESS_KEY = "s3flow-local"
SECRET_KEY = "s3flow-local"
STOP_TIMEOUT_S = 20.0

_live: weakref.WeakSet[JvmServer] = weakref.WeakSet()


@atexit.register
def _stop_owned_at_exit() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.close()


class JvmServer:
    """Base of the two servers: lifecycle, pid/state files, readiness; see the module doc."""

    #: Short name: run dirs, pid files, messages, ``S3FLOW_<NAME>_PORT``.
    name: ClassVar[str] = ""
    main_class: ClassVar[str] = ""

    def __init__(
        self,
        cache_dir: Path | None = None,
        port: int = 0,
        *,
        run_dir: Path | None = None,
        heap: str = "256m",
        detach: bool = False,
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

    # -- what a subclass provides -----------------------------------------------------

    def write_config(self) -> list[str]:
        """Write the configuration into :attr:`run_dir`; the JVM arguments after ``-cp``."""
        raise NotImplementedError

    def probe_path(self) -> str:
        """An HTTP path that answers (any status) once the server is ready."""
        return "/"

    # -- public ---------------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        """The server's directory (config, log, pid, data); created on first use."""
        if self._run_dir is None:
            tmp = mkdir(self.cache_dir / "aws-tmp")
            self._run_dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=tmp))
        return mkdir(self._run_dir)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The JVM's stdout + stderr."""
        return self.run_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs (this process's child or a detached one)."""
        return self._find_pid()

    def running(self) -> bool:
        """True when the server process of this run dir is alive."""
        self._load_state()
        return self._find_pid() is not None

    def start(self, timeout_s: float = 60.0) -> Self:
        """Start the server (or reuse the one running from this run dir) and wait for it."""
        started = time.monotonic()
        self._load_state()
        if self._find_pid() is not None:
            self.reused = True
            self._wait_ready(started + timeout_s)
            self.start_seconds = time.monotonic() - started
            return self
        java = require_java()
        libs = install(self.cache_dir, quiet=not self.detach)
        self._pick_port()
        args = self.write_config()
        cmd = [java, f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-cp", f"{libs}/*", *args]
        if self.log_path.exists():
            self.log_path.replace(self.log_path.with_suffix(".log.1"))
        with self.log_path.open("ab") as out:
            if self.detach:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.run_dir,
                    start_new_session=True,
                )
            else:
                self._proc = popen_owned(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.run_dir,
                )
                _live.add(self)
        state = {"pid": self._proc.pid, "port": self.port, "url": self.url}
        (self.run_dir / "server.json").write_text(json.dumps(state) + "\n")
        try:
            self._wait_ready(started + timeout_s)
        except BaseException:
            self.stop(timeout_s=5)
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the server, SIGKILL after ``timeout_s``; the run dir stays."""
        pid = self._find_pid()
        proc, self._proc = self._proc, None
        _live.discard(self)
        if pid is None:
            return
        stop_process(proc, pid, timeout_s)

    def close(self) -> None:
        """Stop; a private server's run dir is deleted too."""
        self.stop()
        if self._ephemeral and self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url if self.port else 'not started'} pid={self.pid}>"

    # -- internals --------------------------------------------------------------------

    def _load_state(self) -> None:
        if self._run_dir is None or self.port:
            return
        with contextlib.suppress(OSError, ValueError):
            self.port = int(json.loads((self.run_dir / "server.json").read_text())["port"])

    def _find_pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        if self._run_dir is None:
            return None
        try:
            pid = int(json.loads((self._run_dir / "server.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None
        return live_pid(pid, self.main_class, str(self._run_dir))

    def _pick_port(self) -> None:
        wanted = self._requested_port
        if not wanted and not self._ephemeral:
            wanted = int(os.environ.get(f"S3FLOW_{self.name.upper()}_PORT") or 0) or self.port
        if wanted and port_free(wanted):
            self.port = wanted
        elif wanted and self._requested_port:
            raise ServiceError(f"cannot start {self.name}: {HOST}:{wanted} is in use")
        else:
            self.port = free_port()

    def _wait_ready(self, deadline: float) -> None:
        while True:
            if self._find_pid() is None:
                raise ServiceError(
                    f"{self.name} exited during start; log {self.log_path}:\n{tail(self.log_path)}"
                )
            if _answers(self.url + self.probe_path()):
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"{self.name} did not answer on {self.url} in time; "
                    f"log {self.log_path}:\n{tail(self.log_path)}"
                )
            time.sleep(0.1)


class ElasticMQ(JvmServer):
    """ElasticMQ: an SQS endpoint, in memory, on 127.0.0.1 only (no stats listener)."""

    name = "elasticmq"
    main_class = "org.elasticmq.server.Main"

    def __init__(self, *args: object, region: str = "us-east-1", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.region = region

    def write_config(self) -> list[str]:
        """``elasticmq.conf``: bind 127.0.0.1:<port>, queue URLs on that address."""
        conf = self.run_dir / "elasticmq.conf"
        conf.write_text(
            'include classpath("application.conf")\n'
            f'node-address {{ protocol = http, host = "{HOST}", port = {self.port}, '
            'context-path = "" }\n'
            f'rest-sqs {{ enabled = true, bind-port = {self.port}, bind-hostname = "{HOST}", '
            "sqs-limits = strict }\n"
            "rest-stats { enabled = false }\n"
            f'aws {{ region = "{self.region}", accountId = "000000000000" }}\n'
        )
        return [f"-Dconfig.file={conf}", self.main_class]

    def probe_path(self) -> str:
        """ListQueues over the query protocol."""
        return "/?Action=ListQueues&Version=2012-11-05"


class S3Proxy(JvmServer):
    """S3Proxy: an S3 endpoint on 127.0.0.1, ``transient`` (memory) or ``filesystem`` store.

    Clients need path-style addressing and ``request_checksum_calculation`` /
    ``response_checksum_validation`` = ``when_required`` (S3Proxy 2.6.0 rejects the
    default checksum headers of current SDKs): see :func:`client_env`.
    """

    name = "s3proxy"
    main_class = "org.gaul.s3proxy.Main"

    def __init__(
        self,
        *args: object,
        store: Literal["transient", "filesystem"] = "transient",
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.store = store

    def write_config(self) -> list[str]:
        """``s3proxy.properties``: endpoint, signature checks, the blob store."""
        lines = [
            f"s3proxy.endpoint=http://{HOST}:{self.port}",
            "s3proxy.authorization=aws-v2-or-v4",
            f"s3proxy.identity={ACCESS_KEY}",
            f"s3proxy.credential={SECRET_KEY}",
            f"jclouds.provider={self.store}",
            f"jclouds.identity={ACCESS_KEY}",
            f"jclouds.credential={SECRET_KEY}",
        ]
        if self.store == "filesystem":
            lines.append(f"jclouds.filesystem.basedir={mkdir(self.run_dir / 'data')}")
        props = self.run_dir / "s3proxy.properties"
        props.write_text("\n".join(lines) + "\n")
        return [self.main_class, "--properties", str(props)]


def client_env(sqs_url: str | None = None, s3_url: str | None = None) -> dict[str, str]:
    """Environment for SDK clients of these servers (endpoints, credentials, checksums)."""
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }
    if sqs_url:
        env["AWS_ENDPOINT_URL_SQS"] = sqs_url
    if s3_url:
        env["AWS_ENDPOINT_URL_S3"] = s3_url
    return env


def _answers(url: str) -> bool:
    """True when ``url`` gives any HTTP response."""
    try:
        with urllib.request.urlopen(url, timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
