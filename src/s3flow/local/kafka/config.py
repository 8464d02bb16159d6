"""How the broker is configured and launched: server.properties, log4j2, JVM flags, KRaft format.

One JVM is broker and controller at once (KRaft), listening on 127.0.0.1 only. The
files are rewritten on every start; the log dir is formatted once, with a fresh
cluster id, before the first start.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from s3flow.local.kafka.host import HOST, ServiceError

#: The broker's main class and the tool that formats a KRaft log dir.
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"

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


def random_cluster_id() -> str:
    """A KRaft cluster id, in the format of ``kafka-storage random-uuid``.

    Like Kafka's ``Uuid.randomUuid()``, never one starting with ``-`` (a command line
    would take it for an option).
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def server_properties(
    port: int, controller_port: int, data_dir: Path, overrides: Mapping[str, str]
) -> dict[str, str]:
    """A single-node broker + controller on ``HOST``; ``overrides`` win over the defaults."""
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
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
    props.update(overrides)
    return props


def write_config(run_dir: Path, props: Mapping[str, str]) -> Path:
    """Write ``server.properties`` and ``log4j2.properties`` into ``run_dir``.

    Returns the path of ``server.properties``.
    """
    path = run_dir / "server.properties"
    text = "# written by s3flow.local.kafka_broker; rewritten on every start\n"
    text += "".join(f"{k}={v}\n" for k, v in props.items())
    path.write_text(text)
    (run_dir / "log4j2.properties").write_text(_LOG4J2)
    return path


def jvm_args(java: str, libs: Path, heap: str, run_dir: Path) -> list[str]:
    """The ``java`` command line up to the main class: heap, GC, logging, classpath."""
    return [
        java,
        f"-Xmx{heap}",
        "-Xms64m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={run_dir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={run_dir}",
        "-cp",
        f"{libs}/*",
    ]


def format_storage(jvm: Sequence[str], props: Path, data_dir: Path) -> None:
    """Format the KRaft log dir named in ``props`` (a no-op when it already is)."""
    cmd = [
        *jvm,
        STORAGE_TOOL,
        "format",
        f"--cluster-id={random_cluster_id()}",
        f"--config={props}",
        "--ignore-formatted",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise ServiceError(
            f"formatting the KRaft log dir {data_dir} failed (exit {proc.returncode}):\n"
            + "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        )
