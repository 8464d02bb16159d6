"""Create the topics a ``csv-to-kafka`` pipeline writes to (idempotent)."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from s3flow.pipelines.csv_kafka.clientlog import client_log
from s3flow.pipelines.csv_kafka.errors import translate_kafka_error
from s3flow.pipelines.csv_kafka.options import CsvKafkaOptions

log = logging.getLogger("s3flow.pipelines.csv_kafka")

#: The checkpoint topic keeps the latest record per object; compacted often.
CHECKPOINT_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": "3600000",
    "min.cleanable.dirty.ratio": "0.1",
}


def ensure_topics(opts: CsvKafkaOptions, timeout_s: float = 30.0) -> list[str]:
    """Create the data, checkpoint and DLQ topics when missing; return the ones created."""
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
