"""csv-to-kafka options: validation with errors that name the key."""

from __future__ import annotations

import pytest

from s3flow.errors import ConfigError
from s3flow.pipelines.csv_kafka.cli import build_options
from s3flow.pipelines.csv_kafka.options import admin_config, parse_options
from s3flow.processors import create_processor


def test_defaults() -> None:
    o = parse_options({"topic": "t", "bootstrap_servers": "127.0.0.1:1"})
    assert (o.header, o.format, o.partitioning, o.partition) == (True, "json", "single", 0)
    assert (o.compression, o.checkpoint_rows, o.bad_rows) == ("lz4", 10_000, "dead-letter")
    assert (o.checkpoint_topic_name, o.dlq_topic_name) == ("t.checkpoints", "t.dlq")
    assert parse_options({"topic": "t", "delimiter": "tab"}).delimiter == "\t"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"topic": "t", "colour": "red"}, "colour: unknown option"),
        ({}, "topic: Field required"),
        ({"topic": "t", "delimiter": ";;"}, "delimiter: "),
        ({"topic": "t", "encoding": "utf-16"}, "not ASCII-compatible"),
        ({"topic": "t", "encoding": "klingon"}, "unknown text encoding"),
        ({"topic": "t", "partitioning": "key-hash"}, "needs key_column"),
        ({"topic": "t", "header": False, "key_column": "id"}, "needs column names"),
        ({"topic": "t", "bad_rows": "ignore"}, "bad_rows: "),
        ({"topic": "t", "compression": "brotli"}, "compression: "),
        ({"topic": "t", "partition": -1}, "partition: Input should be greater than or equal to 0"),
        ({"topic": "t", "checkpoint_s": 0}, "checkpoint_s: Input should be greater than 0"),
        ({"topic": "t", "retry_timeout_s": -1}, "retry_timeout_s: .* greater than or equal to 0"),
        ({"topic": "t", "columns": ["a", "b", "a"]}, "a column name more than once"),
        ({"topic": "t", "columns": ["a", ""]}, "an empty column name"),
    ],
)
def test_invalid_options_name_the_key(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_options(options)


def test_bootstrap_from_option_env_or_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP"):
        create_processor("csv-to-kafka", {"topic": "t"})
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "127.0.0.1:9")
    assert parse_options({"topic": "t"}).bootstrap() == "127.0.0.1:9"
    assert parse_options({"topic": "t", "bootstrap_servers": "h:1"}).bootstrap() == "h:1"
    proc = create_processor("csv-to-kafka", {"topic": "t"})
    assert proc.name == "csv-to-kafka"


@pytest.mark.parametrize(
    ("producer_config", "message"),
    [
        ({"bogus.setting": "1"}, 'No such configuration property: "bogus.setting"'),
        ({"message.max.bytes": 100}, "outside allowed range"),
        ({"transactional.id": "fixed"}, "'transactional.id' cannot be set here: exactly-once"),
        ({"enable.idempotence": False}, "'enable.idempotence' cannot be set here"),
        ({"acks": "0"}, "exactly-once needs acks=all"),
        ({"linger.ms": 5}, "use the linger_ms option"),
    ],
)
def test_producer_config_librdkafka_refuses_or_exactly_once_needs_is_refused(
    producer_config: dict[str, object], message: str
) -> None:
    """A bad key was a KafkaException traceback on every object (the worker retried and
    dead-lettered each); transactional.id overrode the per-object one (two objects then
    fenced each other) and acks/idempotence could turn exactly-once off."""
    with pytest.raises(ConfigError, match="producer_config") as info:
        parse_options({"topic": "t", "producer_config": producer_config})
    assert message in str(info.value)


def test_producer_config_that_librdkafka_takes_is_kept() -> None:
    extra = {"socket.keepalive.enable": True, "client.id": "mine"}
    assert parse_options({"topic": "t", "producer_config": extra}).producer_config == extra


def test_option_values_are_json_except_for_text_options() -> None:
    opts = build_options(
        {},
        {"topic": "t"},
        ["key_column=2024", "checkpoint_topic=1", "ranges=2", "header=false", 'columns=["a"]'],
    )
    assert opts == {
        "topic": "t",
        "key_column": "2024",  # a column named 2024, not the number
        "checkpoint_topic": "1",
        "ranges": 2,
        "header": False,
        "columns": ["a"],
    }


def test_admin_clients_reach_the_cluster_as_the_producer_does() -> None:
    """Admin clients (topic checks, max.message.bytes) were given the bootstrap servers
    alone: a SASL/SSL cluster kept them waiting the whole timeout at each object start."""
    opts = parse_options(
        {
            "topic": "t",
            "bootstrap_servers": "k:9093",
            "producer_config": {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "PLAIN",
                "sasl.username": "u",
                "sasl.password": "p",
                "message.timeout.ms": 60000,
            },
        }
    )
    assert admin_config(opts) == {
        "bootstrap.servers": "k:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "u",
        "sasl.password": "p",
    }
