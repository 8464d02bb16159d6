"""Helpers for the Kafka integration tests (a uniquely named module, unlike conftest)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from s3flow.local.kafka_broker import KafkaBroker
from s3flow.pipelines.csv_kafka.checkpoint import Checkpoint


def unique_topic(prefix: str) -> str:
    """A topic name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Row:
    """One consumed message."""

    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    def json(self) -> Any:
        return json.loads(self.value)


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    partition: int = 0,
    isolation: str = "read_committed",
    timeout_s: float = 60.0,
    with_headers: bool = True,
) -> list[Row]:
    """Every message of one partition from the beginning to its end (the LSO when committed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 100,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
    out: list[Row] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=0.2):
                err = msg.error()
                if err is None:
                    hdrs = (
                        {k: bytes(v or b"") for k, v in (msg.headers() or [])}
                        if with_headers
                        else {}
                    )
                    out.append(Row(msg.offset() or 0, msg.key(), msg.value() or b"", hdrs))
                elif err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                    return out
                else:
                    raise AssertionError(f"consume error: {err}")
        raise AssertionError(
            f"no end of {topic}[{partition}] within {timeout_s}s ({len(out)} read)"
        )
    finally:
        consumer.close()


def latest_checkpoint(bootstrap: str, topic: str) -> Checkpoint | None:
    """The last committed record of a checkpoint topic (one object per topic in tests)."""
    rows = read_topic(bootstrap, topic, with_headers=False)
    return Checkpoint.decode(rows[-1].value) if rows else None


class CheckpointWatcher:
    """Follows a checkpoint topic (read_committed) and keeps the latest checkpoint."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.latest: Checkpoint | None = None
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"watcher-{uuid.uuid4().hex[:8]}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "topic.metadata.refresh.interval.ms": 500,
                "log_level": 3,
            }
        )
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])

    def poll(self, timeout_s: float = 0.02) -> Checkpoint | None:
        """Read what is new; return the latest checkpoint."""
        for msg in self._consumer.consume(num_messages=1000, timeout=timeout_s):
            if msg.error() is None and msg.value():
                self.latest = Checkpoint.decode(msg.value() or b"")
        return self.latest

    def close(self) -> None:
        self._consumer.close()


def cli(
    tmp_path: Path, kafka: KafkaBroker, *args: str, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `s3flow run csv-to-kafka ... --json` to completion."""
    return subprocess.run(
        command(tmp_path, kafka, *args), capture_output=True, text=True, timeout=timeout_s
    )


def command(tmp_path: Path, kafka: KafkaBroker, *args: str) -> list[str]:
    cfg = tmp_path / "s3flow.toml"
    if not cfg.exists():
        cfg.write_text(f'[state]\nurl = "sqlite:{tmp_path}/state.db"\n')
    return [
        sys.executable,
        "-m",
        "s3flow",
        "run",
        "csv-to-kafka",
        *args,
        "-c",
        str(cfg),
        "--bootstrap",
        kafka.bootstrap,
        "--json",
    ]


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
