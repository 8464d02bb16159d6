"""Create the topics a ``csv-to-kafka`` pipeline writes to (idempotent)."""

from __future__ import annotations

import logging
import socket

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from s3flow.pipelines.csv_kafka.clientlog import client_log
from s3flow.pipelines.csv_kafka.errors import KafkaUnavailableError, translate_kafka_error
from s3flow.pipelines.csv_kafka.options import CsvKafkaOptions

log = logging.getLogger("s3flow.pipelines.csv_kafka")

#: The checkpoint topic keeps the latest record per object; compacted often.
CHECKPOINT_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": "3600000",
    "min.cleanable.dirty.ratio": "0.1",
}


def _address(server: str) -> tuple[str, int]:
    """``host:port`` (``PLAINTEXT://host:port``, ``[::1]:9092``) as (host, port)."""
    bare = server.strip().split("://", 1)[-1]
    host, _, port = bare.rpartition(":")
    if not host:
        host, port = bare, "9092"
    return host.strip("[]"), int(port) if port.isdigit() else 9092


def check_brokers(servers: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`KafkaUnavailableError` at once when no bootstrap server in
    ``servers`` accepts a TCP connection (the client would wait 30 s for metadata first).
    """
    reasons = []
    for server in servers.split(","):
        if not server.strip():
            continue
        try:
            with socket.create_connection(_address(server), timeout=timeout_s):
                return
        except (OSError, ValueError) as exc:
            reasons.append(f"{server.strip()}: {exc}")
    raise KafkaUnavailableError(
        f"cannot reach any Kafka bootstrap server ({'; '.join(reasons)}): is the broker "
        "running (locally: `scripts/services kafka start`), and are the pipeline option "
        "bootstrap_servers / $KAFKA_BOOTSTRAP / --bootstrap right?"
    )


def ensure_topics(opts: CsvKafkaOptions, timeout_s: float = 30.0) -> list[str]:
    """Create the data, checkpoint and DLQ topics when missing; return the ones created.

    A broker nothing answers at fails at once (:func:`check_brokers`)."""
    check_brokers(opts.bootstrap())
    wanted = [
        NewTopic(opts.topic, num_partitions=opts.topic_partitions, replication_factor=-1),
        NewTopic(
            opts.checkpoint_topic_name,
            num_partitions=1,
            replication_factor=-1,
            config=dict(CHECKPOINT_TOPIC_CONFIG),
        ),
    ]
    if opts.bad_rows == "dead-letter":
        wanted.append(NewTopic(opts.dlq_topic_name, num_partitions=1, replication_factor=-1))
    admin = AdminClient({"bootstrap.servers": opts.bootstrap()}, logger=client_log)
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise translate_kafka_error(exc, "listing topics") from exc
    missing = [t for t in wanted if t.topic not in existing]
    if not missing:
        return []
    created = []
    for name, future in admin.create_topics(missing, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise translate_kafka_error(exc, f"creating topic {name!r}") from exc
    if created:
        log.info("created Kafka topics %s", ", ".join(created))
    return created
