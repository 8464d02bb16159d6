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

import contextlib
import fcntl
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, ClassVar, Literal, Self

from s3flow.local.aws.install import install
from s3flow.local.jvm import JvmProcess
from s3flow.local.kafka.host import (
    HOST,
    ServiceError,
    flock,
    free_port,
    mkdir,
    port_free,
    sweep_abandoned,
    tail,
)
from s3flow.local.kafka.install import require_java

#: Credentials both servers accept (S3Proxy checks signatures against them).
ACCESS_KEY = "s3flow-local"
SECRET_KEY = "s3flow-local"
STOP_TIMEOUT_S = 20.0


class JvmServer(JvmProcess):
    """Base of the two servers: configuration, ports, readiness; see the module doc."""

    #: Short name: run dirs, pid files, messages (:attr:`title`), ``S3FLOW_<NAME>_PORT``.
    name: ClassVar[str] = ""
    stop_timeout_s = STOP_TIMEOUT_S

    def __init__(
        self,
        cache_dir: Path | None = None,
        port: int = 0,
        *,
        run_dir: Path | None = None,
        heap: str = "256m",
        detach: bool = False,
    ) -> None:
        super().__init__(cache_dir, port, run_dir=run_dir, heap=heap, detach=detach)
        self._owner_lock: IO[str] | None = None

    # -- what a subclass provides -----------------------------------------------------

    def write_config(self) -> list[str]:
        """Write the configuration into :attr:`run_dir`; the JVM arguments after ``-cp``."""
        raise NotImplementedError

    def probe_path(self) -> str:
        """An HTTP path that answers (any status) once the server is ready."""
        return "/"

    # -- public ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    address = url  # where messages and repr say the server is

    @property
    def log_path(self) -> Path:
        """The JVM's stdout + stderr."""
        return self.run_dir / f"{self.name}.log"

    def running(self) -> bool:
        """True when the server process of this run dir is alive."""
        self._load_state()
        return self._find_pid() is not None

    def start(self, timeout_s: float = 60.0) -> Self:
        """Start the server (or reuse the one running from this run dir) and wait for it.

        The check for a running server, the spawn and the state file are done under a
        lock on ``run_dir/start.lock``: concurrent starts on one run dir give one server.
        """
        started = time.monotonic()
        java = require_java()
        libs = install(self.cache_dir, quiet=not self.detach)
        with flock(self.run_dir / "start.lock"):
            self._load_state()
            if self._find_pid() is not None:
                self._load_state(force=True)  # the running server's port, whatever was asked
                self.reused = True
                self._wait_ready(started + timeout_s)
                self.start_seconds = time.monotonic() - started
                return self
            self.reused = False
            self._pick_port()
            args = self.write_config()
            proc = self._spawn(
                [java, f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-cp", f"{libs}/*", *args]
            )
            state = {"pid": proc.pid, "port": self.port, "url": self.url}
            (self.run_dir / "server.json").write_text(json.dumps(state) + "\n")
        try:
            self._wait_ready(started + timeout_s)
        except BaseException:
            self.stop(timeout_s=5)
            raise
        self.start_seconds = time.monotonic() - started
        return self

    # -- internals --------------------------------------------------------------------

    def _new_run_dir(self) -> Path:
        tmp = mkdir(self.cache_dir / "aws-tmp")
        _sweep_abandoned(tmp)
        run_dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=tmp))
        # Held while this process lives; a sweep removes dirs whose owner is gone.
        self._owner_lock = (run_dir / "owner.lock").open("w")
        fcntl.flock(self._owner_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return run_dir

    def close(self) -> None:
        """Stop; a private server's run dir is deleted too (and its owner lock let go)."""
        super().close()
        if self._owner_lock is not None:
            self._owner_lock.close()
            self._owner_lock = None

    def _saved_pid(self) -> int | None:
        try:
            return int(json.loads((self.run_dir / "server.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def _load_state(self, *, force: bool = False) -> None:
        if self._run_dir is None or (self.port and not force):
            return
        with contextlib.suppress(OSError, ValueError):
            self.port = int(json.loads((self.run_dir / "server.json").read_text())["port"])

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
        self._wait_until(self._ready, deadline)

    def _ready(self) -> bool:
        """The port answers HTTP and this run dir's process lives; a log that shows a failed
        bind means another process holds the port (an error). The log, not /proc, is the
        judge: under load CI saw the JVM's listener missing from its fds for minutes."""
        if not _answers(self.url + self.probe_path()):
            self.not_ready = f"no HTTP answer from {self.url}{self.probe_path()}"
            return False
        pid = self._find_pid()
        if pid is None:
            return False  # _wait_until reports the exit
        if _bind_failed(self.log_path) and _listens(pid, self.port) is False:
            raise ServiceError(
                f"cannot start {self.name}: {HOST}:{self.port} is in use by another process; "
                f"log {self.log_path}:\n{tail(self.log_path)}"
            )
        return True


class ElasticMQ(JvmServer):
    """ElasticMQ: an SQS endpoint, in memory, on 127.0.0.1 only (no stats listener)."""

    name = title = "elasticmq"
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

    name = title = "s3proxy"
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


def _sweep_abandoned(tmp_root: Path) -> None:
    """Remove private run dirs whose owning process is gone (stopping a leftover server)."""

    def stop(run: Path) -> None:
        cls = {c.name: c for c in (ElasticMQ, S3Proxy)}.get(run.name.split("-", 1)[0])
        if cls is not None:
            cls(tmp_root.parent, run_dir=run).stop(timeout_s=10)

    sweep_abandoned(tmp_root.iterdir(), stop)


def _listens(pid: int, port: int) -> bool | None:
    """True when process ``pid`` holds the socket listening on TCP ``port``; None when
    that cannot be told (no /proc)."""
    inodes: set[str] = set()
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError):
                for line in Path(table).read_text().splitlines()[1:]:
                    fields = line.split()
                    local, state = fields[1], fields[3]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        fds = os.listdir(f"/proc/{pid}/fd")
    except (OSError, IndexError, ValueError):
        return None
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    return False


def _bind_failed(log_path: Path) -> bool:
    """True when the server's log says it could not bind its port."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return False
    return "BindException" in text or "Address already in use" in text


def _answers(url: str) -> bool:
    """True when ``url`` gives any HTTP response."""
    try:
        with urllib.request.urlopen(url, timeout=3.0):  # a loaded machine answers slowly
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
