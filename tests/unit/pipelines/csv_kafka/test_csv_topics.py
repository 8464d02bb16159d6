"""Before the topics are listed, a broker nothing answers at fails at once (real sockets)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from s3flow.local.endpoint import free_port
from s3flow.pipelines.csv_kafka.errors import KafkaUnavailableError
from s3flow.pipelines.csv_kafka.options import CsvKafkaOptions
from s3flow.pipelines.csv_kafka.topics import _address, check_brokers, ensure_topics


@pytest.fixture()
def listening() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield int(server.getsockname()[1])


@pytest.mark.parametrize(
    ("server", "address"),
    [
        ("127.0.0.1:9093", ("127.0.0.1", 9093)),
        (" broker-1:19092 ", ("broker-1", 19092)),
        ("PLAINTEXT://kafka:9092", ("kafka", 9092)),
        ("[::1]:9094", ("::1", 9094)),
        ("kafka", ("kafka", 9092)),
    ],
)
def test_bootstrap_server_addresses(server: str, address: tuple[str, int]) -> None:
    assert _address(server) == address


def test_no_bootstrap_server_answering_names_each_and_what_to_do() -> None:
    a, b = free_port(), free_port()
    with pytest.raises(KafkaUnavailableError) as info:
        check_brokers(f"127.0.0.1:{a},127.0.0.1:{b}")
    text = str(info.value)
    assert f"cannot reach any Kafka bootstrap server (127.0.0.1:{a}: " in text
    assert f"; 127.0.0.1:{b}: " in text
    assert "scripts/services kafka start" in text and "$KAFKA_BOOTSTRAP" in text


def test_one_answering_bootstrap_server_is_enough(listening: int) -> None:
    check_brokers(f"127.0.0.1:{free_port()},127.0.0.1:{listening}")


def test_creating_topics_with_the_broker_down_is_refused_by_the_check() -> None:
    """Not by the client's metadata request (a 30 s wait, "Failed to get metadata")."""
    opts = CsvKafkaOptions(topic="t", bootstrap_servers=f"127.0.0.1:{free_port()}")
    with pytest.raises(KafkaUnavailableError, match="cannot reach any Kafka bootstrap server"):
        ensure_topics(opts)
