"""Checkpoints: where the rows of one object stand, committed with those rows.

A checkpoint is a small JSON record on a compacted topic, keyed by the object's
identity and written *in the same Kafka transaction* as the rows it covers, so a
consumer with ``isolation.level=read_committed`` never sees rows without their
checkpoint or the reverse. Resuming reads the latest committed checkpoint of the key
(after ``init_transactions`` has fenced and settled any earlier producer of the object).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from s3flow.pipelines.csv_kafka.clientlog import client_log
from s3flow.pipelines.csv_kafka.errors import KafkaUnavailableError, translate_kafka_error

log = logging.getLogger("s3flow.pipelines.csv_kafka")

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ObjectRef:
    """The identity of one object version (what a checkpoint and transactional.id hang on)."""

    bucket: str
    key: str
    version: str  # versionId, else eTag
    part: str = ""  # parallel mode: the byte range, "<i>/<n>@<start>-<end>"

    @classmethod
    def of(cls, bucket: str, key: str, version_id: str | None, etag: str | None) -> ObjectRef:
        """The object's versionId, else its eTag. ``"null"`` (an object written while the
        bucket's versioning was off or suspended) names no version: every overwrite has
        it, and taken for one it made each later upload "already complete"."""
        if version_id and version_id != "null":
            return cls(bucket, key, version_id)
        return cls(bucket, key, (etag or "").strip('"'))

    @property
    def uri(self) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"

    @property
    def where(self) -> str:
        """What an error names: the URI, and in parallel mode the range (its lines are
        counted from the range's start)."""
        if not self.part:
            return self.uri
        which, _, span = self.part.partition("@")
        return f"{self.uri} range {which} (bytes {span}, lines counted from its start)"

    @property
    def name(self) -> str:
        """``s3://bucket/key@version`` (``#range`` in parallel mode): the checkpoint key."""
        base = f"{self.uri}@{self.version}"
        return f"{base}#{self.part}" if self.part else base

    def checkpoint_key(self, topic: str, checkpoint_topic: str) -> str:
        """The key of this object's checkpoints for data topic ``topic``.

        In the default checkpoint topic (``<topic>.checkpoints``, only ever ``topic``'s)
        it is :attr:`name`, as it always was: checkpoints written before stay found.
        In another one, which pipelines (or runs) sending one object to different
        topics may share, the data topic is part of it (``<topic> <- name``): neither
        may take the other's progress for its own."""
        if checkpoint_topic == f"{topic}.checkpoints":
            return self.name
        return f"{topic} <- {self.name}"

    def transactional_id(self, prefix: str, topic: str) -> str:
        """Stable per (topic, object version): a restarted producer fences its zombie."""
        digest = hashlib.sha256(f"{topic}\0{self.name}".encode()).hexdigest()[:32]
        return f"{prefix}-{digest}"


@dataclass
class Checkpoint:
    """Progress of one object: everything before ``offset`` is committed to the topic.

    ``offset`` is a byte offset in the decompressed object where a record starts,
    ``row`` the index of that record among the data records (header excluded), ``line``
    the number of physical lines before it. ``sent``/``bad`` count rows produced to the
    topic / handled as bad rows so far; ``columns`` the names from the header row;
    ``ncols`` the expected column count once known (the header's, else the first data
    row's - in parallel mode the object's first row's for every range: a resumed run
    judges rows as the first run did; absent in older checkpoints).
    ``done`` marks the final checkpoint. ``scan_from`` is an offset of the checkpoint
    partition before any checkpoint of this object (a hint for reading it back faster).
    """

    object: str
    offset: int = 0
    row: int = 0
    line: int = 0
    sent: int = 0
    bad: int = 0
    columns: list[str] | None = None
    ncols: int | None = None
    done: bool = False
    transactions: int = 0
    scan_from: int = 0
    updated_at: float = field(default_factory=time.time)
    v: int = FORMAT_VERSION

    def encode(self) -> bytes:
        """JSON bytes (the checkpoint topic's value and the state store's mirror)."""
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Checkpoint:
        """Parse :meth:`encode`'s output (unknown fields are ignored)."""
        doc: dict[str, Any] = json.loads(data)
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        return cls(**known)


def checkpoint_partition(name: str, partitions: int) -> int:
    """The checkpoint topic partition of an object (stable: crc32 of its name)."""
    return zlib.crc32(name.encode()) % max(1, partitions)


def mirror_name(topic: str, ref: ObjectRef) -> str:
    """The state store checkpoint name mirroring an object's Kafka checkpoint."""
    return f"csv-to-kafka:{topic}:{ref.name}"


def _consumer(bootstrap: str, isolation: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"s3flow-ckpt-{uuid.uuid4().hex[:12]}",  # assign() only: never joins
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50,
            "socket.timeout.ms": 10_000,
        },
        logger=client_log,
    )


def read_checkpoint(
    bootstrap: str,
    topic: str,
    partition: int,
    name: str,
    *,
    start_offset: int = 0,
    timeout_s: float = 90.0,
) -> tuple[Checkpoint | None, int]:
    """The latest committed checkpoint of ``name`` and the partition's end offset.

    Reads with ``read_committed`` from ``start_offset`` until the end the partition had
    when the call began (its high watermark): the reader can only get there once every
    transaction open before the call is settled, so an object's last committed
    checkpoint is never missed. Call it after ``init_transactions`` of the object's own
    producer (which settles that producer's earlier transaction).
    """
    tp = TopicPartition(topic, partition)
    deadline = time.monotonic() + timeout_s
    probe = _consumer(bootstrap, "read_uncommitted")
    try:
        low, high = probe.get_watermark_offsets(tp, timeout=min(timeout_s, 30), cached=False)
    except KafkaException as exc:
        raise translate_kafka_error(exc, f"reading the end of {topic}[{partition}]") from exc
    finally:
        probe.close()
    if high <= max(low, start_offset):
        return None, high
    found: Checkpoint | None = None
    want = name.encode()
    reader = _consumer(bootstrap, "read_committed")
    try:
        reader.assign([TopicPartition(topic, partition, max(low, start_offset))])
        while True:
            if time.monotonic() > deadline:
                raise KafkaUnavailableError(
                    f"reading checkpoints from {topic}[{partition}]: offset {high} not reached "
                    f"within {timeout_s:.0f}s (an open transaction holds the partition)"
                )
            for msg in reader.consume(num_messages=10_000, timeout=0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if (msg.offset() or 0) >= high:
                            return found, high
                        continue
                    raise translate_kafka_error(KafkaException(err), "reading checkpoints")
                if msg.key() == want:
                    value = msg.value()
                    if value:
                        found = Checkpoint.decode(value)
                if (msg.offset() or 0) >= high - 1:
                    # The last record before the end: no need to wait for an EOF event.
                    return found, high
    finally:
        reader.close()
