"""The project's real Kafka broker: topics, transactions (commit and abort), restart, CLI."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from kafka_support import Row, read_topic, unique_topic

from s3flow.local import kafka_broker
from s3flow.local.kafka_broker import KAFKA_VERSION, KafkaBroker, ServiceError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def _create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    futures[name].result(timeout=30)


def _txn_producer(bootstrap: str) -> Producer:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"test-{uuid.uuid4().hex[:8]}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    return producer


def _values(rows: list[Row]) -> list[bytes]:
    return [r.value for r in rows]


def test_broker_is_real_and_local(kafka: KafkaBroker) -> None:
    assert kafka.bootstrap.startswith("127.0.0.1:")
    meta = AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=10)
    assert [(str(b.host), b.port) for b in meta.brokers.values()] == [("127.0.0.1", kafka.port)]
    props = (kafka.run_dir / "server.properties").read_text()
    assert "process.roles=broker,controller" in props
    assert "0.0.0.0" not in props


def test_create_topic(kafka: KafkaBroker) -> None:
    name = unique_topic("created")
    _create_topic(kafka.bootstrap, name, partitions=3)
    meta = AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(name, timeout=10)
    assert meta.topics[name].error is None
    assert sorted(meta.topics[name].partitions) == [0, 1, 2]


def test_transactional_producer_read_committed_in_order(kafka: KafkaBroker) -> None:
    name = unique_topic("txn")
    _create_topic(kafka.bootstrap, name)
    producer = _txn_producer(kafka.bootstrap)
    producer.begin_transaction()
    sent = [f"row-{i:04d}".encode() for i in range(1000)]
    for value in sent:
        producer.produce(name, value=value, partition=0)
    producer.commit_transaction(30)
    got = read_topic(kafka.bootstrap, name)
    assert _values(got) == sent
    offsets = [r.offset for r in got]
    assert offsets == sorted(offsets)


def test_aborted_transaction_is_invisible_to_read_committed(kafka: KafkaBroker) -> None:
    name = unique_topic("abort")
    _create_topic(kafka.bootstrap, name)
    producer = _txn_producer(kafka.bootstrap)
    producer.begin_transaction()
    for i in range(100):
        producer.produce(name, value=f"aborted-{i}".encode(), partition=0)
    producer.flush(30)  # really on the broker before the abort
    producer.abort_transaction(30)
    producer.begin_transaction()
    committed = [f"kept-{i}".encode() for i in range(10)]
    for value in committed:
        producer.produce(name, value=value, partition=0)
    producer.commit_transaction(30)

    assert _values(read_topic(kafka.bootstrap, name)) == committed
    uncommitted = _values(read_topic(kafka.bootstrap, name, isolation="read_uncommitted"))
    assert len(uncommitted) == 110
    assert uncommitted[-10:] == committed


def test_restart_keeps_data_and_port(kafka: KafkaBroker) -> None:
    name = unique_topic("durable")
    _create_topic(kafka.bootstrap, name)
    producer = _txn_producer(kafka.bootstrap)
    producer.begin_transaction()
    sent = [f"before-restart-{i}".encode() for i in range(200)]
    for value in sent:
        producer.produce(name, value=value, partition=0)
    producer.commit_transaction(30)

    port, old_pid = kafka.port, kafka.pid
    kafka.restart()
    assert kafka.port == port
    assert kafka.pid is not None and kafka.pid != old_pid
    assert _values(read_topic(kafka.bootstrap, name)) == sent

    # The broker takes new transactions after the restart (the coordinator state is back).
    again = _txn_producer(kafka.bootstrap)
    again.begin_transaction()
    again.produce(name, value=b"after-restart", partition=0)
    again.commit_transaction(30)
    assert _values(read_topic(kafka.bootstrap, name)) == [*sent, b"after-restart"]


def test_pom_and_module_agree_on_the_kafka_version() -> None:
    pom = ROOT / "scripts" / "kafka" / "pom.xml"
    assert kafka_broker.pom_kafka_version(pom) == KAFKA_VERSION
    assert kafka_broker.repo_pom() == pom


def test_missing_java_is_a_clear_service_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    kafka_broker.java_version.cache_clear()
    try:
        assert not kafka_broker.java_available()
        with pytest.raises(ServiceError, match="Java 17"):
            KafkaBroker(cache_dir=tmp_path / "cache").install()
    finally:
        kafka_broker.java_version.cache_clear()


def test_services_status_without_broker(tmp_path: Path) -> None:
    env = {**os.environ, "S3FLOW_SERVICES_CACHE": str(tmp_path)}
    proc = subprocess.run(
        [str(ROOT / "scripts" / "services"), "kafka", "status"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert "no broker running" in proc.stderr
