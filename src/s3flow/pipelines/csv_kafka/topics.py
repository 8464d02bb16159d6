"""Create the topics a ``csv-to-kafka`` pipeline writes to (idempotent)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
)

from s3flow.errors import ConfigError
from s3flow.pipelines.csv_kafka.clientlog import client_log
from s3flow.pipelines.csv_kafka.errors import KafkaUnavailableError, translate_kafka_error
from s3flow.pipelines.csv_kafka.options import CsvKafkaOptions, admin_config

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


def partitions_problem(opts: CsvKafkaOptions, partitions: int) -> str | None:
    """Why a data topic of ``partitions`` partitions cannot take ``opts``' rows, or None.

    librdkafka only says "failed delivery" (after retrying until the transaction
    timeout) for a partition the topic does not have."""
    if opts.ranges > 1:
        need, what = opts.ranges, f"ranges = {opts.ranges} sends range i to partition i"
    elif opts.partitioning == "single":
        need, what = opts.partition + 1, f"partition = {opts.partition}"
    else:
        return None
    if partitions >= need:
        return None
    return (
        f"topic {opts.topic!r} has {partitions} partition{'s' if partitions != 1 else ''} "
        f"(0-{partitions - 1}), and {what}: give the topic {need} partitions "
        f"(kafka-topics.sh --alter --topic {opts.topic} --partitions {need}), or change "
        "the option"
    )


def ensure_topics(opts: CsvKafkaOptions, timeout_s: float = 30.0) -> list[str]:
    """Create the data, checkpoint and DLQ topics when missing (with ``create_topics``)
    and check that the data topic has the partitions the options send to; return the
    topics created.

    A broker nothing answers at fails at once (:func:`check_brokers`); too few
    partitions, and a missing topic without ``create_topics``, are a
    :class:`~s3flow.errors.ConfigError`."""
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
    admin = AdminClient(admin_config(opts), logger=client_log)
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise translate_kafka_error(exc, "listing topics") from exc
    data = existing.get(opts.topic)
    problem = None
    if data is not None and data.error is None and data.partitions:
        problem = partitions_problem(opts, len(data.partitions))
    elif data is None and opts.create_topics:  # created below, with topic_partitions
        problem = partitions_problem(opts, opts.topic_partitions)
    # else the count is not known (an error in its metadata, or a topic someone else
    # creates): librdkafka finds out
    if problem is not None:
        raise ConfigError(f"csv-to-kafka: {problem}")
    missing = [t for t in wanted if t.topic not in existing]
    if not missing:
        return []
    if not opts.create_topics:
        # Found at once: a producer would wait for the missing topic's metadata (a data
        # topic ~30 s, a checkpoint topic until retry_timeout_s) and then fail.
        names = ", ".join(repr(t.topic) for t in missing)
        raise ConfigError(
            f"csv-to-kafka: topic{'s' if len(missing) > 1 else ''} {names} "
            f"{'do' if len(missing) > 1 else 'does'} not exist and create_topics = false: "
            "create them (the checkpoint topic compacted: cleanup.policy=compact), or set "
            "create_topics = true"
        )
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


#: A topic's ``max.message.bytes`` is asked again after this many seconds (a raised
#: limit is seen by the objects started that long after).
LIMIT_TTL_S = 60.0
_limits: dict[tuple[str, str], tuple[float, int | None]] = {}
_limits_lock = threading.Lock()


def message_limit(
    conf: dict[str, Any], topics: Sequence[str], timeout_s: float = 10.0
) -> tuple[int, str] | None:
    """The smallest ``max.message.bytes`` of ``topics`` and the topic that has it, or
    None when no topic's could be read (a missing topic, no DescribeConfigs right).

    The broker refuses a record batch over its topic's ``max.message.bytes`` when the
    transaction is committed, failing the whole transaction; a producer whose
    ``message.max.bytes`` is no larger refuses such a message when it is produced (a bad
    row) and never builds a larger batch."""
    now = time.monotonic()
    bootstrap = str(conf["bootstrap.servers"])
    found: dict[str, int | None] = {}
    ask = []
    with _limits_lock:
        for topic in topics:
            cached = _limits.get((bootstrap, topic))
            if cached is not None and now - cached[0] < LIMIT_TTL_S:
                found[topic] = cached[1]
            else:
                ask.append(topic)
    if ask:
        admin = AdminClient(conf, logger=client_log)
        resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in ask]
        try:
            futures = admin.describe_configs(resources, request_timeout=timeout_s)
        except KafkaException as exc:
            log.info("cannot read max.message.bytes of %s: %s", ", ".join(ask), exc)
            futures = {}
        for resource, future in futures.items():
            limit = None
            try:
                entry = future.result(timeout=timeout_s).get("max.message.bytes")
                limit = int(entry.value) if entry is not None and entry.value else None
            except (KafkaException, ValueError, TimeoutError) as exc:
                log.info("cannot read max.message.bytes of %s: %s", resource.name, exc)
            found[resource.name] = limit
            with _limits_lock:
                _limits[(bootstrap, resource.name)] = (now, limit)
    known = [(limit, topic) for topic, limit in found.items() if limit is not None]
    return min(known) if known else None
