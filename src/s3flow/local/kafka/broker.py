"""The broker process: a single-node KRaft Kafka broker on 127.0.0.1, started and stopped.

:class:`KafkaBroker` picks ports, writes the configuration (:mod:`.config`), launches the
JVM, waits until it is ready and stops it (SIGTERM, SIGKILL after a timeout). Private
brokers live in ``<cache>/kafka-tmp/<random>/`` and are removed on close (or by the
next one, when their owner died); a ``run_dir`` keeps a broker and its data.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Self

from s3flow.local.jvm import JvmProcess
from s3flow.local.kafka.config import (
    MAIN_CLASS,
    format_storage,
    jvm_args,
    server_properties,
    write_config,
)
from s3flow.local.kafka.host import (
    HOST,
    ServiceError,
    flock,
    free_port,
    log,
    mkdir,
    port_free,
    port_open,
    sweep_abandoned,
    wait_exit,
)
from s3flow.local.kafka.install import install, require_java

DEFAULT_HEAP = "512m"
STOP_TIMEOUT_S = 30.0

_READY_LINE = "Kafka Server started"


class KafkaBroker(JvmProcess):
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

    title = "the Kafka broker"
    main_class = MAIN_CLASS
    stop_timeout_s = STOP_TIMEOUT_S
    kill_message = "broker pid {pid} still running {timeout_s:.0f}s after SIGTERM: SIGKILL"

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
        super().__init__(
            cache_dir,
            port,
            run_dir=run_dir,
            heap=heap or os.environ.get("S3FLOW_KAFKA_HEAP") or DEFAULT_HEAP,
            detach=detach,
        )
        self.controller_port = 0
        self.config = dict(config or {})
        self._owner_lock: IO[str] | None = None

    # -- properties ---------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>`` for ``bootstrap.servers``."""
        if not self.port:
            raise ServiceError("the Kafka broker has no port yet: call start() first")
        return f"{HOST}:{self.port}"

    address = bootstrap  # where messages and repr say the broker is

    @property
    def log_path(self) -> Path:
        """The broker's stdout/stderr (its log4j output)."""
        return self.run_dir / "broker.log"

    @property
    def data_dir(self) -> Path:
        """The KRaft log dir (topic partitions and the cluster metadata log)."""
        return self.run_dir / "data"

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

    def start(self, timeout_s: float = 90.0, *, sticky: bool = False) -> Self:
        """Start the broker (or adopt the one running from ``run_dir``) and wait until ready.

        Ready means: the port accepts connections and a metadata request lists this broker.
        ``sticky``: use the same ports as the previous start or fail (see :meth:`restart`).
        """
        libs = self.install()
        java = require_java()
        started = time.monotonic()
        with flock(self.run_dir / "start.lock"):
            self._load_state()
            pid = self._find_pid()
            if pid is not None:
                asked = self._requested_port
                self._load_state(force=True)  # the running broker's ports, whatever was asked
                if asked and asked != self.port:
                    log(f"a broker already runs from {self.run_dir} on port {self.port}")
                self.reused = True
                self._wait_ready(started + timeout_s, fresh_log=False)
                self.start_seconds = time.monotonic() - started
                return self
            self.reused = False
            self._pick_ports(sticky=sticky)
            props = write_config(
                self.run_dir,
                server_properties(self.port, self.controller_port, self.data_dir, self.config),
            )
            jvm = jvm_args(java, libs, self.heap, self.run_dir)
            if not (self.data_dir / "meta.properties").is_file():
                format_storage(jvm, props, self.data_dir)
            self._launch(jvm, libs, props)
        try:
            self._wait_ready(started + timeout_s, fresh_log=True)
        except BaseException:  # also KeyboardInterrupt: leave no half-started broker behind
            self.stop(timeout_s=10)
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the broker: SIGTERM (a clean shutdown), SIGKILL after ``timeout_s`` (30 s).

        Keeps the run dir and its data: :meth:`start` afterwards brings the same data back.
        """
        super().stop(timeout_s)
        self._clear_pid_file()

    def restart(self, timeout_s: float = 90.0) -> Self:
        """Stop and start again on the same port, with the same log dir (data survives)."""
        self.stop()
        return self.start(timeout_s=timeout_s, sticky=True)

    def kill(self) -> None:
        """SIGKILL the broker at once (a crash: no clean shutdown); the data dir stays."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_exit(self._proc, pid, 10.0)
        self._proc = None
        self._clear_pid_file()

    def close(self) -> None:
        """Stop the broker; a private (``run_dir=None``) broker's directory is deleted too."""
        super().close()
        if self._ephemeral:  # its run dir is gone: a new start picks new ports
            self.port = self.controller_port = 0
        if self._owner_lock is not None:
            self._owner_lock.close()
            self._owner_lock = None

    # -- internals ----------------------------------------------------------------------

    def _new_run_dir(self) -> Path:
        tmp_root = mkdir(self.cache_dir / "kafka-tmp")
        _sweep_abandoned(tmp_root)
        run_dir = Path(tempfile.mkdtemp(prefix="broker-", dir=tmp_root))
        # Held while this object lives; a sweep removes dirs whose owner is gone.
        self._owner_lock = (run_dir / "owner.lock").open("w")
        fcntl.flock(self._owner_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return run_dir

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

    def _saved_pid(self) -> int | None:
        try:
            return int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
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

    def _launch(self, jvm: list[str], libs: Path, props: Path) -> None:
        proc = self._spawn([*jvm, MAIN_CLASS, str(props)])
        self._pid_file.write_text(f"{proc.pid}\n")
        self._state_file.write_text(
            json.dumps(
                {
                    "pid": proc.pid,
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

    def _wait_ready(self, deadline: float, *, fresh_log: bool) -> None:
        try:
            self._wait_until(
                lambda: port_open(self.port) and _metadata_ok(self.port, self.log_path, fresh_log),
                deadline,
            )
        except ServiceError:
            self.stop(timeout_s=5)  # not ready in time (also a reused one): stop what runs
            raise

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

    def stop(run: Path) -> None:
        orphan = KafkaBroker(run_dir=run)
        orphan._ephemeral = False
        orphan.stop(timeout_s=10)

    sweep_abandoned(tmp_root.glob("broker-*"), stop)
