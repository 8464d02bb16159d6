"""A real single-node Apache Kafka broker on 127.0.0.1, for tests, the demo and benchmarks.

No Docker and no tarball download: the broker jars (``org.apache.kafka:kafka_2.13`` and
its runtime dependencies) come from Maven Central through Maven
(``scripts/kafka/pom.xml``), are copied once into a cache directory and run with the
machine's Java 17+ as a combined KRaft broker + controller::

    with KafkaBroker() as kafka:          # a private broker in a temporary log dir
        produce_to(kafka.bootstrap)        # "127.0.0.1:<port>"
        kafka.restart()                    # same port, same data

From a shell (``scripts/services kafka ...`` calls this)::

    python -m s3flow.local.kafka_broker install  # fetch the jars (idempotent)
    python -m s3flow.local.kafka_broker start    # start/reuse the shared broker
    python -m s3flow.local.kafka_broker status   # exit 0 + bootstrap when it runs, 3 when not
    python -m s3flow.local.kafka_broker env      # export KAFKA_BOOTSTRAP=... (for eval)
    python -m s3flow.local.kafka_broker stop     # SIGTERM, SIGKILL after 30 s

Layout of the cache directory (``S3FLOW_SERVICES_CACHE``, default ``<repo>/.cache/services``)::

    kafka-<version>/libs/*.jar     the broker's classpath (+ .complete when fully copied)
    kafka-run/                     the shared broker of ``start``: server.properties, data/,
                                   broker.log, broker.pid, broker.json
    kafka-tmp/<random>/            private run dirs of KafkaBroker() objects, removed on close

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import IO

from s3flow.errors import S3flowError
from s3flow.local.endpoint import popen_owned

#: The Kafka release the broker runs; keep equal to ``kafka.version`` in scripts/kafka/pom.xml.
KAFKA_VERSION = "4.4.0"
#: Logging backend shipped next to the broker (the Kafka distribution ships log4j2 too).
LOG4J_VERSION = "2.25.2"
MIN_JAVA = 17
HOST = "127.0.0.1"
DEFAULT_HEAP = "512m"
STOP_TIMEOUT_S = 30.0

_MAIN_CLASS = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"
_READY_LINE = "Kafka Server started"
_COMPLETE = ".complete"
_NOT_RUNNING = 3  # exit code of `status` / `env` when no broker runs


class ServiceError(S3flowError):
    """A local service (the Kafka broker) could not be installed, started or stopped."""


# --- environment ----------------------------------------------------------------------


def _java_binary() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


@cache
def java_version() -> int | None:
    """Major version of the ``java`` on PATH (or in JAVA_HOME), ``None`` when there is none."""
    java = _java_binary()
    if java is None:
        return None
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    # "1.8.0_x" style for Java 8 and older.
    return int(match.group(2) or 0) if major == 1 else major


def java_available() -> bool:
    """True when a Java >= 17 runtime is there to run the broker."""
    version = java_version()
    return version is not None and version >= MIN_JAVA


def maven_available() -> bool:
    """True when ``mvn`` is on PATH (only needed to install the jars once)."""
    return shutil.which("mvn") is not None


def _require_java() -> str:
    java = _java_binary()
    version = java_version()
    if java is None or version is None:
        raise ServiceError(
            f"the Kafka broker needs Java {MIN_JAVA}+ and none was found on PATH or in JAVA_HOME: "
            "install a JDK/JRE 17 (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
        )
    if version < MIN_JAVA:
        raise ServiceError(
            f"the Kafka broker needs Java {MIN_JAVA}+, found Java {version} ({java}): "
            "install a JDK/JRE 17 (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) "
            "or point JAVA_HOME at one"
        )
    return java


def repo_root() -> Path | None:
    """The source checkout this module lives in (``None`` when installed from a wheel)."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "scripts" / "kafka" / "pom.xml").is_file() else None


def repo_pom() -> Path | None:
    """``scripts/kafka/pom.xml`` of the checkout, when there is one."""
    root = repo_root()
    return root / "scripts" / "kafka" / "pom.xml" if root else None


def default_cache_dir() -> Path:
    """``$S3FLOW_SERVICES_CACHE``, else ``<repo>/.cache/services``, else ``~/.cache/s3flow``."""
    env = os.environ.get("S3FLOW_SERVICES_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    root = repo_root()
    if root is not None:
        return root / ".cache" / "services"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "s3flow" / "services"


def pom_kafka_version(pom: Path) -> str:
    """The ``kafka.version`` property of a pom file."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise ServiceError(f"{pom}: no <kafka.version> property")
    return (node.text or "").strip()


_POM_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by s3flow.local.kafka_broker (no scripts/kafka/pom.xml next to this install) -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.s3flow</groupId>
  <artifactId>s3flow-kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <properties><kafka.version>{kafka}</kafka.version></properties>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId>
      <version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
  <build><pluginManagement><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId><artifactId>maven-dependency-plugin</artifactId>
    <version>3.8.1</version>
  </plugin></plugins></pluginManagement></build>
</project>
"""


# --- small helpers --------------------------------------------------------------------


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
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def random_cluster_id() -> str:
    """A KRaft cluster id, in the format of ``kafka-storage random-uuid``.

    Like Kafka's ``Uuid.randomUuid()``, never one starting with ``-`` (a command line
    would take it for an option).
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _pid_alive(pid: int) -> bool:
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


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed) for the ``with`` body."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _log(msg: str) -> None:
    print(f"kafka: {msg}", file=sys.stderr, flush=True)


# --- install --------------------------------------------------------------------------


def install(cache_dir: Path | None = None, *, quiet: bool = False) -> Path:
    """Copy the broker jars into ``<cache>/kafka-<version>/libs`` (once) and return that dir.

    Runs ``mvn dependency:copy-dependencies`` on ``scripts/kafka/pom.xml``; Maven keeps its
    own download cache in ``~/.m2`` (or ``S3FLOW_MAVEN_REPO``). Safe to call concurrently.
    """
    cache_dir = (cache_dir or default_cache_dir()).resolve()
    pom = repo_pom()
    version = pom_kafka_version(pom) if pom else KAFKA_VERSION
    home = cache_dir / f"kafka-{version}"
    libs = home / "libs"
    if (libs / _COMPLETE).is_file():
        return libs
    _require_java()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(
            "installing the Kafka broker needs Maven (mvn) to fetch its jars from Maven Central: "
            "install Maven 3.6+ (Debian/Ubuntu: apt-get install maven)"
        )
    with _flock(cache_dir / f"kafka-{version}.lock"):
        if (libs / _COMPLETE).is_file():  # another process finished meanwhile
            return libs
        if pom is None:
            pom = home / "pom.xml"
            home.mkdir(parents=True, exist_ok=True)
            pom.write_text(_POM_TEMPLATE.format(kafka=version, log4j=LOG4J_VERSION))
        staging = Path(tempfile.mkdtemp(prefix="libs.", dir=_mkdir(home)))
        cmd = [mvn, "-q", "-B", "-f", str(pom)]
        if os.environ.get("S3FLOW_MAVEN_REPO"):
            cmd.append(f"-Dmaven.repo.local={os.environ['S3FLOW_MAVEN_REPO']}")
        cmd += [
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        if not quiet:
            _log(f"installing Apache Kafka {version} (Maven Central) into {libs}")
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        jars = sorted(p.name for p in staging.glob("*.jar"))
        if proc.returncode != 0 or not any(j.startswith(f"kafka_2.13-{version}") for j in jars):
            shutil.rmtree(staging, ignore_errors=True)
            out = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
            raise ServiceError(
                f"mvn could not fetch Apache Kafka {version} (exit {proc.returncode}); "
                f"is Maven Central reachable?\n$ {' '.join(cmd)}\n{out}"
            )
        (staging / _COMPLETE).write_text("\n".join([version, *jars]) + "\n")
        if libs.exists():  # a partial copy from an older, interrupted layout
            shutil.rmtree(libs)
        staging.rename(libs)
        if not quiet:
            _log(f"installed {len(jars)} jars in {time.monotonic() - started:.1f}s")
    return libs


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- the broker -----------------------------------------------------------------------

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""

_live: weakref.WeakSet[KafkaBroker] = weakref.WeakSet()


@atexit.register
def _stop_owned_at_exit() -> None:
    for broker in list(_live):
        with contextlib.suppress(Exception):
            broker.close()


class KafkaBroker:
    """A single-node KRaft Kafka broker (broker + controller in one JVM) on 127.0.0.1.

    ``run_dir=None`` (the default) gives a private broker in a fresh directory under
    ``<cache>/kafka-tmp`` that :meth:`close` (or leaving the ``with`` block) stops and
    deletes. With a ``run_dir`` the broker and its data persist there: :meth:`start` reuses
    a broker already running from that directory (``reused`` is then True) and formats the
    log dir only the first time. ``port=0`` picks a free port (or the one used last time in
    that ``run_dir``). ``detach=True`` starts the JVM in its own session so it outlives this
    process (``scripts/services``); otherwise the broker is owned by this process: stopped
    at interpreter exit, and started with :func:`s3flow.local.popen_owned` so that the
    kernel sends it SIGTERM (a clean shutdown) when this process dies without cleaning up
    (SIGKILL, an unhandled SIGTERM).
    """

    def __init__(
        self,
        cache_dir: Path | None = None,
        port: int = 0,
        *,
        run_dir: Path | None = None,
        heap: str | None = None,
        config: Mapping[str, str] | None = None,
        detach: bool = False,
    ) -> None:
        self.cache_dir = (cache_dir or default_cache_dir()).resolve()
        self.port = port
        self._requested_port = port
        self.controller_port = 0
        self.heap = heap or os.environ.get("S3FLOW_KAFKA_HEAP") or DEFAULT_HEAP
        self.config = dict(config or {})
        self.detach = detach
        self.reused = False
        self.start_seconds: float | None = None
        self._ephemeral = run_dir is None
        self._run_dir = run_dir.resolve() if run_dir else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._owner_lock: IO[str] | None = None

    # -- properties ---------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>`` for ``bootstrap.servers``."""
        if not self.port:
            raise ServiceError("the Kafka broker has no port yet: call start() first")
        return f"{HOST}:{self.port}"

    @property
    def run_dir(self) -> Path:
        """Directory with server.properties, data/ (the log dir), broker.log and broker.pid."""
        if self._run_dir is None:
            tmp_root = _mkdir(self.cache_dir / "kafka-tmp")
            _sweep_abandoned(tmp_root)
            self._run_dir = Path(tempfile.mkdtemp(prefix="broker-", dir=tmp_root))
            # Held while this object lives; a sweep removes dirs whose owner is gone.
            self._owner_lock = (self._run_dir / "owner.lock").open("w")
            fcntl.flock(self._owner_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return self._run_dir

    @property
    def log_path(self) -> Path:
        """The broker's stdout/stderr (its log4j output)."""
        return self.run_dir / "broker.log"

    @property
    def data_dir(self) -> Path:
        """The KRaft log dir (topic partitions and the cluster metadata log)."""
        return self.run_dir / "data"

    @property
    def pid(self) -> int | None:
        """The JVM's process id while it runs."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        if self._pid is not None and _pid_alive(self._pid):
            return self._pid
        return None

    def env(self) -> dict[str, str]:
        """Environment variables pointing clients at this broker."""
        return {"KAFKA_BOOTSTRAP": self.bootstrap}

    # -- lifecycle ----------------------------------------------------------------------

    def install(self) -> Path:
        """Fetch the broker jars once (see :func:`install`); return the libs directory."""
        return install(self.cache_dir)

    def running(self) -> bool:
        """True when this run dir's broker process is alive and its port accepts connections."""
        pid = self._find_pid()
        return pid is not None and bool(self.port) and port_open(self.port)

    def start(self, timeout_s: float = 90.0, *, sticky: bool = False) -> KafkaBroker:
        """Start the broker (or adopt the one running from ``run_dir``) and wait until ready.

        Ready means: the port accepts connections and a metadata request lists this broker.
        ``sticky``: use the same ports as the previous start or fail (see :meth:`restart`).
        """
        libs = self.install()
        java = _require_java()
        started = time.monotonic()
        with _flock(self.run_dir / "start.lock"):
            self._load_state()
            pid = self._find_pid()
            if pid is not None:
                asked = self._requested_port
                self._load_state(force=True)  # the running broker's ports, whatever was asked
                if asked and asked != self.port:
                    _log(f"a broker already runs from {self.run_dir} on port {self.port}")
                self._pid, self.reused = pid, True
                self._wait_ready(started + timeout_s, fresh_log=False)
                self.start_seconds = time.monotonic() - started
                return self
            self.reused = False
            self._pick_ports(sticky=sticky)
            props = self._write_config()
            if not (self.data_dir / "meta.properties").is_file():
                self._format(java, libs, props)
            self._launch(java, libs, props)
        try:
            self._wait_ready(started + timeout_s, fresh_log=True)
        except BaseException:  # also KeyboardInterrupt: leave no half-started broker behind
            self.stop(timeout_s=10)
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the broker: SIGTERM (a clean shutdown), SIGKILL after ``timeout_s``.

        Keeps the run dir and its data: :meth:`start` afterwards brings the same data back.
        """
        proc, self._proc = self._proc, None
        pid = proc.pid if proc is not None else self._find_pid()
        self._pid = None
        if pid is None:
            self._clear_pid_file()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_exit(proc, pid, timeout_s):
            _log(f"broker pid {pid} still running {timeout_s:.0f}s after SIGTERM: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(proc, pid, 10.0)
        self._clear_pid_file()
        _live.discard(self)

    def restart(self, timeout_s: float = 90.0) -> KafkaBroker:
        """Stop and start again on the same port, with the same log dir (data survives)."""
        self.stop()
        return self.start(timeout_s=timeout_s, sticky=True)

    def kill(self) -> None:
        """SIGKILL the broker at once (a crash: no clean shutdown); the data dir stays."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(self._proc, pid, 10.0)
        self._proc, self._pid = None, None
        self._clear_pid_file()

    def close(self) -> None:
        """Stop the broker; a private (``run_dir=None``) broker's directory is deleted too."""
        self.stop()
        _live.discard(self)
        if self._ephemeral and self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None
            self.port = self.controller_port = 0
        if self._owner_lock is not None:
            self._owner_lock.close()
            self._owner_lock = None

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"{HOST}:{self.port}" if self.port else "not started"
        return f"<KafkaBroker {where} pid={self.pid} run_dir={self._run_dir}>"

    # -- internals ----------------------------------------------------------------------

    @property
    def _pid_file(self) -> Path:
        return self.run_dir / "broker.pid"

    @property
    def _state_file(self) -> Path:
        return self.run_dir / "broker.json"

    def _load_state(self, *, force: bool = False) -> None:
        """Ports of the last start in this run dir (``force``: even over the ones asked for)."""
        try:
            state = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return
        if force or not self.port:
            self.port = int(state.get("port") or 0) or self.port
        if force or not self.controller_port:
            self.controller_port = int(state.get("controller_port") or 0) or self.controller_port

    def _find_pid(self) -> int | None:
        """The pid of a live broker started from this run dir, if any."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        try:
            pid = int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        cmd = _cmdline(pid)
        if _pid_alive(pid) and _MAIN_CLASS in cmd and str(self.run_dir) in cmd:
            return pid
        return None

    def _pick_ports(self, *, sticky: bool) -> None:
        """Broker and controller ports: asked for > S3FLOW_KAFKA_PORT > last used > free.

        ``sticky`` (a restart): the ports in use before must be taken again.
        """
        wanted = self._requested_port
        if not wanted and not self._ephemeral:
            wanted = int(os.environ.get("S3FLOW_KAFKA_PORT") or 0)
        if sticky and self.port:
            wanted = self.port
        if wanted:
            if not port_free(wanted):
                raise ServiceError(f"cannot start the Kafka broker: {HOST}:{wanted} is in use")
            self.port = wanted
        elif not self.port or not port_free(self.port):
            self.port = free_port()
        if sticky and self.controller_port and port_free(self.controller_port):
            return
        if (
            not self.controller_port
            or self.controller_port == self.port
            or not port_free(self.controller_port)
        ):
            self.controller_port = free_port()
            while self.controller_port == self.port:
                self.controller_port = free_port()

    def _write_config(self) -> Path:
        props: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Fewer internal partitions: the first group join / init_transactions is faster.
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.retention.hours": "24",
        }
        props.update(self.config)
        path = self.run_dir / "server.properties"
        text = "# written by s3flow.local.kafka_broker; rewritten on every start\n"
        text += "".join(f"{k}={v}\n" for k, v in props.items())
        path.write_text(text)
        (self.run_dir / "log4j2.properties").write_text(_LOG4J2)
        return path

    def _jvm_args(self, java: str, libs: Path) -> list[str]:
        return [
            java,
            f"-Xmx{self.heap}",
            "-Xms64m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.run_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.run_dir}",
            "-cp",
            f"{libs}/*",
        ]

    def _format(self, java: str, libs: Path, props: Path) -> None:
        cmd = [
            *self._jvm_args(java, libs),
            _STORAGE_TOOL,
            "format",
            f"--cluster-id={random_cluster_id()}",
            f"--config={props}",
            "--ignore-formatted",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise ServiceError(
                f"formatting the KRaft log dir {self.data_dir} failed (exit {proc.returncode}):\n"
                + "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            )

    def _launch(self, java: str, libs: Path, props: Path) -> None:
        if self.log_path.exists():
            self.log_path.replace(self.run_dir / "broker.log.1")
        cmd = [*self._jvm_args(java, libs), _MAIN_CLASS, str(props)]
        with self.log_path.open("ab") as log:
            if self.detach:  # the shared broker of scripts/services: outlives this process
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.run_dir,
                    start_new_session=True,
                )
            else:  # owned: SIGTERM from the kernel if this process dies, even by SIGKILL
                self._proc = popen_owned(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.run_dir,
                )
        self._pid = self._proc.pid
        self._pid_file.write_text(f"{self._proc.pid}\n")
        self._state_file.write_text(
            json.dumps(
                {
                    "pid": self._proc.pid,
                    "port": self.port,
                    "controller_port": self.controller_port,
                    "bootstrap": self.bootstrap,
                    "kafka_version": libs.parent.name.removeprefix("kafka-"),
                    "log": str(self.log_path),
                },
                indent=2,
            )
            + "\n"
        )
        if not self.detach:
            _live.add(self)

    def _wait_ready(self, deadline: float, *, fresh_log: bool) -> None:
        while True:
            pid = self.pid
            if pid is None:
                code = self._proc.returncode if self._proc is not None else None
                self._proc = None
                raise ServiceError(
                    f"the Kafka broker exited during start (code {code}); "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if port_open(self.port) and _metadata_ok(self.port, self.log_path, fresh_log):
                return
            if time.monotonic() > deadline:
                self.stop(timeout_s=5)
                raise ServiceError(
                    f"the Kafka broker did not become ready on {self.bootstrap} in time; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.1)

    @staticmethod
    def _wait_exit(proc: subprocess.Popen[bytes] | None, pid: int, timeout_s: float) -> bool:
        if proc is not None:
            try:
                proc.wait(timeout=timeout_s)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout_s
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _clear_pid_file(self) -> None:
        if self._run_dir is not None:
            with contextlib.suppress(OSError):
                self._pid_file.unlink()


def _metadata_ok(port: int, log_path: Path, fresh_log: bool) -> bool:
    """A metadata request to the broker lists it (confluent-kafka), or its log says started."""
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        if not fresh_log:
            return True
        try:
            return _READY_LINE in log_path.read_text(errors="replace")
        except OSError:
            return False
    # A logger that is never polled: librdkafka's connection chatter stays out of stderr.
    quiet = logging.getLogger("s3flow.local.kafka_broker.probe")
    client = AdminClient({"bootstrap.servers": f"{HOST}:{port}"}, logger=quiet)
    try:
        meta = client.list_topics(timeout=2)
    except Exception:
        return False
    return bool(meta.brokers)


def _sweep_abandoned(tmp_root: Path) -> None:
    """Remove private run dirs whose owning process is gone (stopping a leftover broker)."""
    for run in tmp_root.glob("broker-*"):
        lock_path = run / "owner.lock"
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
                orphan = KafkaBroker(run_dir=run)
                orphan._ephemeral = False
                orphan.stop(timeout_s=10)
            shutil.rmtree(run, ignore_errors=True)


# --- command line ---------------------------------------------------------------------


def shared_broker(cache_dir: Path | None = None, port: int = 0) -> KafkaBroker:
    """The broker of ``scripts/services``: ``<cache>/kafka-run``, outliving the caller."""
    cache = (cache_dir or default_cache_dir()).resolve()
    return KafkaBroker(cache, port, run_dir=cache / "kafka-run", detach=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m s3flow.local.kafka_broker install|start|stop|restart|status|env``."""
    parser = argparse.ArgumentParser(
        prog="python -m s3flow.local.kafka_broker",
        description="A local single-node Apache Kafka broker (KRaft) on 127.0.0.1.",
    )
    parser.add_argument("command", choices=["install", "start", "stop", "restart", "status", "env"])
    parser.add_argument(
        "--cache-dir", type=Path, help="default: $S3FLOW_SERVICES_CACHE or <repo>/.cache/services"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="default: $S3FLOW_KAFKA_PORT, the last one, or free"
    )
    parser.add_argument("--timeout", type=float, default=90.0, help="start timeout in seconds")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            started = time.monotonic()
            libs = install(args.cache_dir)
            size = sum(p.stat().st_size for p in libs.glob("*.jar"))
            print(f"kafka jars: {libs} ({size / 1e6:.0f} MB, {time.monotonic() - started:.1f}s)")
            return 0
        broker = shared_broker(args.cache_dir, args.port)
        broker._load_state()
        if args.command in ("start", "restart"):
            if args.command == "restart":
                broker.stop()
            broker.start(timeout_s=args.timeout)
            how = "reusing running" if broker.reused else "started"
            _log(
                f"{how} Apache Kafka broker pid {broker.pid} on {broker.bootstrap} "
                f"in {broker.start_seconds:.1f}s (log {broker.log_path})"
            )
            print(f"KAFKA_BOOTSTRAP={broker.bootstrap}")
            return 0
        if args.command == "stop":
            pid = broker.pid or broker._find_pid()
            broker.stop()
            _log(f"stopped broker pid {pid}" if pid else "no broker running")
            return 0
        if not broker.running():
            _log(f"no broker running (run dir {broker.run_dir})")
            return _NOT_RUNNING
        if args.command == "status":
            print(f"KAFKA_BOOTSTRAP={broker.bootstrap}")
            _log(f"running: pid {broker._find_pid()}, log {broker.log_path}")
        else:
            print(f"export KAFKA_BOOTSTRAP={broker.bootstrap}")
        return 0
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
