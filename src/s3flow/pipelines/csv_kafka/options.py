"""Options of the ``csv-to-kafka`` pipeline (the pipeline's ``[pipelines.options]`` table)."""

from __future__ import annotations

import functools
import os
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    field_validator,
    model_validator,
)

from s3flow.errors import ConfigError
from s3flow.settings import codec_info

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP"


#: producer_config keys s3flow sets itself: exactly-once needs them as they are, or
#: they have an option of their own.
_OWNED = {
    "transactional.id": "exactly-once needs one per object version (s3flow sets it; "
    "its prefix is the transactional_id_prefix option)",
    "enable.idempotence": "exactly-once needs it on (s3flow sets it)",
    "acks": "exactly-once needs acks=all (s3flow sets it)",
    "bootstrap.servers": "use the bootstrap_servers option",
    "transaction.timeout.ms": "use the transaction_timeout_ms option",
    "compression.type": "use the compression option",
    "linger.ms": "use the linger_ms option",
    "batch.size": "use the batch_bytes option",
    "queue.buffering.max.kbytes": "use the queue_buffer_kbytes option",
}


def librdkafka_config_problem(config: dict[str, Any]) -> str | None:
    """What librdkafka says is wrong with producer settings ``config`` (an unknown
    property, a value out of range), or None: a producer is built from them and
    dropped, without connecting (it has no bootstrap servers). Once per distinct
    ``config``: the options are parsed again for every object a pool child runs."""
    return _librdkafka_problem(tuple(sorted(config.items()))) if config else None


@functools.cache
def _librdkafka_problem(items: tuple[tuple[str, Any], ...]) -> str | None:
    from confluent_kafka import KafkaException, Producer

    try:
        Producer({**dict(items), "log_level": 0})
    except KafkaException as exc:
        return str(exc.args[0].str() if exc.args else exc).strip()
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def column_names_problem(names: list[str]) -> str | None:
    """What makes ``names`` unfit as JSON keys (a name twice, an empty name), or None."""
    empty = [i + 1 for i, n in enumerate(names) if not n.strip()]
    if empty:
        return f"an empty column name (column {', '.join(map(str, empty))})"
    twice = sorted({n for i, n in enumerate(names) if n in names[:i]})
    if twice:
        return f"a column name more than once ({', '.join(map(repr, twice))})"
    return None


class CsvKafkaOptions(BaseModel):
    """How CSV rows become Kafka messages. Unknown keys are an error naming the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str = Field(min_length=1, description="Kafka topic that receives one message per row.")
    bootstrap_servers: str | None = Field(
        default=None,
        description=f"Kafka bootstrap servers ('host:port,...'); default: ${BOOTSTRAP_ENV}.",
    )
    # --- CSV -----------------------------------------------------------------------------
    header: bool = Field(default=True, description="The first record holds the column names.")
    columns: list[str] | None = Field(
        default=None, description="Column names (instead of, or overriding, the header row)."
    )
    delimiter: str = Field(default=",", description="Field delimiter (one character; 'tab' ok).")
    quotechar: str = Field(default='"', description="Quote character (one character).")
    escapechar: str | None = Field(default=None, description="Escape character, if any.")
    encoding: str = Field(
        default="utf-8",
        description="Text encoding of the objects (ASCII-compatible: utf-8, latin-1, cp1252...).",
    )
    # --- messages ------------------------------------------------------------------------
    format: Literal["json", "raw"] = Field(
        default="json",
        description="'json': a JSON object per row (an array without column names); "
        "'raw': the record's text as it was.",
    )
    key_column: str | None = Field(
        default=None, description="Column whose value is the message key (default: no key)."
    )
    headers: bool = Field(
        default=True,
        description="Add headers s3.bucket, s3.key, s3.version and s3.line to every message.",
    )
    partitioning: Literal["single", "key-hash"] = Field(
        default="single",
        description="'single': every row to `partition` (strict order); "
        "'key-hash': by murmur2 hash of the key (order per key).",
    )
    partition: NonNegativeInt = Field(
        default=0, description="The partition of 'single' partitioning."
    )
    # --- producer ------------------------------------------------------------------------
    compression: Literal["lz4", "gzip", "zstd", "snappy", "none"] = Field(
        default="lz4", description="Producer batch compression."
    )
    linger_ms: float = Field(default=20, ge=0, le=5000, description="librdkafka linger.ms.")
    batch_bytes: int = Field(
        default=1_000_000, ge=1024, description="librdkafka batch.size (bytes per batch)."
    )
    queue_buffer_kbytes: int = Field(
        default=65536,
        ge=1024,
        description="Producer buffer (queue.buffering.max.kbytes): bounds memory.",
    )
    producer_config: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Extra librdkafka producer settings (advanced)."
    )
    transactional_id_prefix: str = Field(
        default="s3flow-csv",
        min_length=1,
        description="transactional.id = '<prefix>-<hash of topic and object identity>'.",
    )
    transaction_timeout_ms: int = Field(
        default=60_000, ge=1000, le=900_000, description="transaction.timeout.ms."
    )
    # --- exactly-once --------------------------------------------------------------------
    checkpoint_rows: int = Field(
        default=10_000,
        ge=1,
        description="Commit a transaction (rows + checkpoint) once this many rows are sent; "
        "commits fall at block ends (~512 KiB of CSV), so a transaction holds at least one "
        "block whatever this says.",
    )
    checkpoint_s: PositiveFloat = Field(
        default=5.0, description="... or after this many seconds, whichever comes first."
    )
    checkpoint_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        description="... or after this many CSV bytes: bounds what an open transaction holds.",
    )
    checkpoint_topic: str | None = Field(
        default=None, description="Compacted checkpoint topic; default '<topic>.checkpoints'."
    )
    # --- bad rows ------------------------------------------------------------------------
    bad_rows: Literal["dead-letter", "skip", "fail"] = Field(
        default="dead-letter",
        description="Rows with a wrong column count or undecodable bytes: to `dlq_topic` "
        "(with line number and reason), skipped (counted), or fail the object.",
    )
    dlq_topic: str | None = Field(default=None, description="Default '<topic>.dlq'.")
    # --- topics and retries ---------------------------------------------------------------
    create_topics: bool = Field(
        default=True, description="Create missing topics (data, checkpoint, DLQ) at start."
    )
    topic_partitions: int = Field(
        default=1, ge=1, description="Partitions of a data topic this pipeline creates."
    )
    ranges: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Parallel mode: cut one uncompressed object into this many byte ranges on line "
            "starts, range i produced (exactly once, with its own checkpoint) to partition i "
            "by its own producer. Order holds within a range, not across; records must not "
            "contain line breaks; s3.line counts lines within the range (header s3.range). "
            "Compressed or small objects stream as one range. 1 = off."
        ),
    )
    retry_timeout_s: NonNegativeFloat = Field(
        default=120.0,
        description="Keep resuming from the last checkpoint after transient Kafka/S3 errors "
        "for this long (from the start, and again from each committed checkpoint) before "
        "giving the object back to the engine; each wait for the broker is bounded by it.",
    )

    @field_validator("delimiter", "quotechar", "escapechar")
    @classmethod
    def _one_char(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.lower() == "tab":
            return "\t"
        if len(v) != 1:
            raise ValueError("must be exactly one character")
        if v in "\r\n":
            raise ValueError("cannot be a line break")
        return v

    @field_validator("producer_config")
    @classmethod
    def _check_producer_config(
        cls, value: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        for key in value:
            if key in _OWNED:
                raise ValueError(f"{key!r} cannot be set here: {_OWNED[key]}")
        problem = librdkafka_config_problem(value)
        if problem:
            raise ValueError(
                f"librdkafka refuses it: {problem} (see librdkafka's CONFIGURATION.md for "
                "the producer's settings)"
            )
        return value

    @field_validator("encoding")
    @classmethod
    def _ascii_compatible(cls, v: str) -> str:
        info = codec_info(v)
        if '\n,"\r'.encode(info.name) != b'\n,"\r' or info.name.startswith(("utf-16", "utf-32")):
            raise ValueError(f"{v!r} is not ASCII-compatible (line breaks are split as bytes)")
        return info.name

    @model_validator(mode="after")
    def _check(self) -> CsvKafkaOptions:
        if self.delimiter == self.quotechar:
            raise ValueError("delimiter and quotechar must differ")
        if self.partitioning == "key-hash" and not self.key_column:
            raise ValueError("partitioning = 'key-hash' needs key_column")
        if self.ranges > 1 and self.partitioning != "single":
            raise ValueError("ranges > 1 writes range i to partition i: partitioning = 'single'")
        if self.ranges > 1 and self.topic_partitions < self.ranges:
            raise ValueError(
                f"ranges = {self.ranges} needs topic_partitions >= {self.ranges} "
                "(one partition per range)"
            )
        if self.key_column and not (self.header or self.columns):
            raise ValueError("key_column needs column names: header = true or columns = [...]")
        if self.columns is not None and not self.columns:
            raise ValueError("columns must not be empty")
        if self.columns and (problem := column_names_problem(list(self.columns))):
            raise ValueError(f"columns has {problem}: JSON rows need distinct names")
        if self.key_column and self.columns and self.key_column not in self.columns:
            raise ValueError(f"key_column {self.key_column!r} is not in columns")
        return self

    @property
    def checkpoint_topic_name(self) -> str:
        """The compacted topic holding one checkpoint per object."""
        return self.checkpoint_topic or f"{self.topic}.checkpoints"

    @property
    def dlq_topic_name(self) -> str:
        """The topic receiving bad rows under the 'dead-letter' policy."""
        return self.dlq_topic or f"{self.topic}.dlq"

    def bootstrap(self) -> str:
        """The bootstrap servers: the option, else $KAFKA_BOOTSTRAP; ConfigError if neither."""
        servers = self.bootstrap_servers or os.environ.get(BOOTSTRAP_ENV, "").strip()
        if not servers:
            raise ConfigError(
                "csv-to-kafka: no Kafka bootstrap servers: set the pipeline option "
                f"bootstrap_servers or ${BOOTSTRAP_ENV} (e.g. 127.0.0.1:9092; "
                "`scripts/services kafka start` prints one)"
            )
        return servers


#: producer_config keys that say how to reach the cluster (an admin client needs them
#: too: a secured cluster refuses a client without its protocol and credentials).
_CONNECTION_KEYS = ("security.protocol", "sasl.", "ssl.", "client.dns.lookup", "socket.")


def admin_config(opts: CsvKafkaOptions) -> dict[str, Any]:
    """The config of an admin client reaching the cluster as the producer does."""
    conf: dict[str, Any] = {"bootstrap.servers": opts.bootstrap()}
    for key, value in opts.producer_config.items():
        if key.startswith(_CONNECTION_KEYS):
            conf[key] = value
    return conf


def parse_options(options: dict[str, Any] | None) -> CsvKafkaOptions:
    """Validate a pipeline's options table; ConfigError naming the bad or unknown key."""
    from s3flow.processors.base import parse_options as parse

    return parse("csv-to-kafka", CsvKafkaOptions, dict(options or {}))
