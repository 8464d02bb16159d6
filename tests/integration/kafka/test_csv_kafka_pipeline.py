"""csv-to-kafka through the worker: S3 notification -> SQS -> worker -> Kafka (real broker)."""

from __future__ import annotations

import gzip
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]
from itest_support import Harness, spawn_worker
from kafka_support import CheckpointWatcher, latest_checkpoint, read_topic, unique_topic

from s3flow.local.kafka_broker import KafkaBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def configure(harness: Harness, kafka: KafkaBroker, **options: Any) -> str:
    topic = options.pop("topic", None) or unique_topic("csv")
    harness.configure(
        processor="csv-to-kafka",
        options={"topic": topic, "bootstrap_servers": kafka.bootstrap, **options},
    )
    return topic


def test_happy_path_json_rows_in_order_with_headers(harness: Harness, kafka: KafkaBroker) -> None:
    topic = configure(harness, kafka)
    body = "id,name,city\n" + "".join(f"{i},name-{i},city {i % 3}\n" for i in range(50))
    harness.put("in/people.csv", body.encode())
    metrics = harness.run()
    assert metrics.pipelines["p"].objects_processed == 1

    rows = read_topic(kafka.bootstrap, topic)
    assert [r.json() for r in rows] == [
        {"id": str(i), "name": f"name-{i}", "city": f"city {i % 3}"} for i in range(50)
    ]
    first = rows[0]
    assert first.headers["s3.bucket"] == harness.bucket.encode()
    assert first.headers["s3.key"] == b"in/people.csv"
    assert first.headers["s3.version"]
    assert [int(r.headers["s3.line"]) for r in rows] == list(range(2, 52))
    ckpt = latest_checkpoint(kafka.bootstrap, f"{topic}.checkpoints")
    assert ckpt is not None and ckpt.done
    assert (ckpt.sent, ckpt.row, ckpt.bad) == (50, 50, 0)
    assert ckpt.offset == len(body.encode())
    assert ckpt.columns == ["id", "name", "city"]


def test_an_object_overwritten_before_its_first_notification_is_produced_once(
    harness: Harness, kafka: KafkaBroker
) -> None:
    """Two uploads of a key before the worker ran (moto: no sequencer, so the upload is
    the object as a HEAD sees it). The first notification's eTag was checked against the
    object read: "overwritten", the current upload's record completed with no row sent,
    and its own notification then dropped as a duplicate: the new rows never came."""
    topic = configure(harness, kafka)
    harness.put("in/ow.csv", b"id,sku\n1,v1\n")
    harness.put("in/ow.csv", b"id,sku\n1,v2\n2,v2\n")
    metrics = harness.run()
    assert metrics.pipelines["p"].objects_processed == 1
    assert metrics.pipelines["p"].duplicates == 1  # the second notification: same upload
    rows = read_topic(kafka.bootstrap, topic)
    assert [r.json() for r in rows] == [{"id": "1", "sku": "v2"}, {"id": "2", "sku": "v2"}]


def test_gzip_object_is_decompressed(harness: Harness, kafka: KafkaBroker) -> None:
    topic = configure(harness, kafka, header=False, columns=["n", "sq"])
    body = "".join(f"{i},{i * i}\n" for i in range(1000)).encode()
    harness.put("in/squares.csv.gz", gzip.compress(body))
    harness.run()
    rows = read_topic(kafka.bootstrap, topic)
    assert [r.json() for r in rows] == [{"n": str(i), "sq": str(i * i)} for i in range(1000)]
    assert [int(r.headers["s3.line"]) for r in rows] == list(range(1, 1001))
    ckpt = latest_checkpoint(kafka.bootstrap, f"{topic}.checkpoints")
    assert ckpt is not None and ckpt.done and ckpt.offset == len(body)


@pytest.mark.parametrize("body", [b"", b"a,b,c\n", b"a,b,c"], ids=["empty", "header", "no-eol"])
def test_empty_and_header_only_objects(harness: Harness, kafka: KafkaBroker, body: bytes) -> None:
    topic = configure(harness, kafka)
    harness.put("in/x.csv", body)
    metrics = harness.run()
    assert metrics.pipelines["p"].objects_processed == 1
    assert read_topic(kafka.bootstrap, topic) == []
    ckpt = latest_checkpoint(kafka.bootstrap, f"{topic}.checkpoints")
    assert ckpt is not None and ckpt.done
    assert (ckpt.sent, ckpt.row, ckpt.offset) == (0, 0, len(body))


def test_quoted_fields_with_newlines_delimiter_and_key(
    harness: Harness, kafka: KafkaBroker
) -> None:
    topic = configure(harness, kafka, delimiter=";", key_column="id", partitioning="key-hash")
    body = (
        "id;text\r\n"
        '1;"two\nlines"\r\n'
        '2;"quote "" and ; inside"\r\n'
        "\r\n"
        '3;"three\r\nlines\nhere"\r\n'
        "4;plain"
    )
    harness.put("in/q.csv", body.encode())
    harness.run()
    rows = read_topic(kafka.bootstrap, topic)
    assert [r.json() for r in rows] == [
        {"id": "1", "text": "two\nlines"},
        {"id": "2", "text": 'quote " and ; inside'},
        {"id": "3", "text": "three\r\nlines\nhere"},
        {"id": "4", "text": "plain"},
    ]
    assert [r.key for r in rows] == [b"1", b"2", b"3", b"4"]
    assert [int(r.headers["s3.line"]) for r in rows] == [2, 4, 6, 9]


def test_raw_format_keeps_the_record_text(harness: Harness, kafka: KafkaBroker) -> None:
    topic = configure(harness, kafka, format="raw", headers=False)
    body = 'a,b\n1,"x\ny"\n2,z\n'
    harness.put("in/raw.csv", body.encode())
    harness.run()
    rows = read_topic(kafka.bootstrap, topic)
    assert [r.value for r in rows] == [b'1,"x\ny"', b"2,z"]
    assert rows[0].headers == {}


BAD = (
    "id,name\n"
    "1,ok\n"
    "2,too,many\n"
    "3\n"
    "4,caf\xe9\n"  # latin-1 byte in a utf-8 file: undecodable
    "5,fine\n"
).encode("latin-1")


def test_bad_rows_dead_lettered_with_line_and_reason(harness: Harness, kafka: KafkaBroker) -> None:
    topic = configure(harness, kafka)
    harness.put("in/bad.csv", BAD)
    harness.run()
    assert [r.json()["id"] for r in read_topic(kafka.bootstrap, topic)] == ["1", "5"]
    dlq = [r.json() for r in read_topic(kafka.bootstrap, f"{topic}.dlq")]
    assert [(d["line"], d["reason"]) for d in dlq] == [
        (3, "expected 2 columns, got 3"),
        (4, "expected 2 columns, got 1"),
        (5, "undecodable bytes (not utf-8)"),
    ]
    assert dlq[2]["fields"] == ["4", "caf\\xe9"]
    assert dlq[0]["key"] == "in/bad.csv"
    assert [(d["raw"], d["raw_truncated"]) for d in dlq] == [
        ("2,too,many", False),
        ("3", False),
        ("4,caf\\xe9", False),
    ]
    ckpt = latest_checkpoint(kafka.bootstrap, f"{topic}.checkpoints")
    assert ckpt is not None and (ckpt.sent, ckpt.bad, ckpt.row) == (2, 3, 5)


@pytest.mark.parametrize("fmt", ["json", "raw"])
def test_every_bad_row_kind_carries_raw_text_and_line(
    harness: Harness, kafka: KafkaBroker, fmt: str
) -> None:
    """The issue's reproduction, a multi-line record and a field over csv's 128 KiB limit;
    in a second object, an unclosed quote whose row has as many fields as the header."""
    from s3flow.pipelines.csv_kafka.rows import MAX_RAW_CHARS

    topic = configure(harness, kafka, format=fmt)
    big = "y" * 140_000
    body = f'id,sku,qty\n1,A,3\n2,B\n3,C,1\n4,"multi\nline",1,extra\n5,"{big}",2\n6,F,6\n'
    harness.put("in/bad.csv", body.encode())
    harness.put("in/open.csv", b'id,v\n1,a\n2,"b\n3,c\n4,d\n')
    harness.run()
    by_key: dict[str, list[Any]] = {"in/bad.csv": [], "in/open.csv": []}
    for r in read_topic(kafka.bootstrap, topic):
        by_key[r.headers["s3.key"].decode()].append(r)
    good = by_key["in/bad.csv"]
    assert [int(r.headers["s3.line"]) for r in good] == [2, 4, 8]
    assert [int(r.headers["s3.line"]) for r in by_key["in/open.csv"]] == [2]
    everything = [r.json() for r in read_topic(kafka.bootstrap, f"{topic}.dlq")]
    [unclosed] = [d for d in everything if d["key"] == "in/open.csv"]
    assert (unclosed["line"], unclosed["raw"]) == (3, '2,"b\n3,c\n4,d')
    assert unclosed["reason"].startswith("unclosed quote: ")
    assert unclosed["reason"].endswith("so lines 3-5 were read as this one row")
    assert unclosed["fields"] == ["2", "b\n3,c\n4,d\n"]
    dlq = [d for d in everything if d["key"] == "in/bad.csv"]
    assert [(d["line"], d["raw"], d["raw_truncated"]) for d in dlq[:2]] == [
        (3, "2,B", False),
        (5, '4,"multi\nline",1,extra', False),
    ]
    assert dlq[0]["fields"] == ["2", "B"]
    csv_error = dlq[2]
    assert csv_error["line"] == 7
    assert csv_error["reason"].startswith("unparseable CSV: field larger than field limit")
    assert csv_error["fields"] is None
    assert csv_error["raw_truncated"] is True
    assert csv_error["raw"] == f'5,"{big}'[:MAX_RAW_CHARS]
    assert len(dlq) == 3


def test_bad_rows_skipped_are_counted(harness: Harness, kafka: KafkaBroker) -> None:
    topic = configure(harness, kafka, bad_rows="skip")
    harness.put("in/bad.csv", BAD)
    harness.run()
    assert [r.json()["id"] for r in read_topic(kafka.bootstrap, topic)] == ["1", "5"]
    listed = AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=10).topics
    assert f"{topic}.dlq" not in listed  # not even created under 'skip'
    ckpt = latest_checkpoint(kafka.bootstrap, f"{topic}.checkpoints")
    assert ckpt is not None and (ckpt.sent, ckpt.bad) == (2, 3)


def test_bad_rows_fail_dead_letters_the_object(harness: Harness, kafka: KafkaBroker) -> None:
    topic = configure(harness, kafka, bad_rows="fail")
    harness.put("in/bad.csv", BAD)
    metrics = harness.run()
    assert metrics.pipelines["p"].dead_lettered == 1
    msgs = harness.dlq_messages()
    assert len(msgs) == 1
    attrs = msgs[0]["MessageAttributes"]
    assert "BadRowError" in str(attrs)
    assert "line 3" in str(attrs)
    # Nothing of the failed transaction is visible.
    assert read_topic(kafka.bootstrap, topic) == []


@pytest.mark.timeout(240)
def test_bad_rows_fail_in_one_range_dead_letters_the_object_at_once(
    harness: Harness, kafka: KafkaBroker
) -> None:
    """With ranges, the failing range's error reached the worker as an ExceptionGroup: a
    retryable ProcessorError, retried, then dead-lettered naming no row."""
    configure(harness, kafka, bad_rows="fail", ranges=2, topic_partitions=2)
    rows = [f"{i},w{i % 977}\n" for i in range(200_000)]
    rows[190_000] = "190000\n"  # in the second range
    harness.put("in/ranged-bad.csv", ("n,word\n" + "".join(rows)).encode())
    metrics = harness.run()
    p = metrics.pipelines["p"]
    assert (p.dead_lettered, p.retried) == (1, 0)
    (msg,) = harness.dlq_messages()
    attrs = {k: v["StringValue"] for k, v in msg["MessageAttributes"].items()}
    assert attrs["s3flow.error-class"] == "BadRowError"
    said = attrs["s3flow.error"]
    assert "ranged-bad.csv range 1/2 (bytes " in said and "expected 2 columns" in said, said


@pytest.mark.timeout(180)
def test_worker_sigkilled_mid_object_resumes_exactly_once(
    harness: Harness, kafka: KafkaBroker, tmp_path: Path
) -> None:
    """`s3flow worker --burst` SIGKILLed three times while it streams one object: the
    message comes back after its visibility timeout, the new worker resumes from the
    committed checkpoint, and the topic ends with every row once, in order."""
    rows = 300_000
    topic = unique_topic("wcrash")
    harness.configure(
        processor="csv-to-kafka",
        options={"topic": topic, "bootstrap_servers": kafka.bootstrap},
        visibility_timeout_s=4,  # a killed worker's message comes back soon
        max_receive_count=10,  # each kill is a receive: stay below the redrive to the DLQ
    )
    cfg = harness.write_config()
    pad = "p" * 90  # ~100-byte rows: ~30 blocks of 1 MiB, so ~30 checkpoints
    body = "n,v\n" + "".join(f"{i},{pad}\n" for i in range(rows))
    harness.put("in/big.csv", body.encode())
    watcher = CheckpointWatcher(kafka.bootstrap, f"{topic}.checkpoints")
    progress = 0
    try:
        for kill in range(3):
            proc = spawn_worker(cfg, tmp_path / f"worker-{kill}.log", "--burst")
            try:
                deadline = time.monotonic() + 60
                while True:
                    ckpt = watcher.poll()
                    if ckpt is not None and ckpt.row > progress + 20_000:
                        break
                    assert proc.poll() is None, (tmp_path / f"worker-{kill}.log").read_text()
                    assert time.monotonic() < deadline, "no progress"
                assert not ckpt.done
                progress = ckpt.row
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.kill()
                proc.wait(30)
        last = spawn_worker(cfg, tmp_path / "worker-last.log", "--burst")
        assert last.wait(120) == 0, (tmp_path / "worker-last.log").read_text()[-3000:]
    finally:
        watcher.close()
    got = read_topic(kafka.bootstrap, topic, with_headers=False, timeout_s=60)
    assert [int(json.loads(r.value)["n"]) for r in got] == list(range(rows))
    ckpt = latest_checkpoint(kafka.bootstrap, f"{topic}.checkpoints")
    assert ckpt is not None and ckpt.done and ckpt.sent == rows
    assert harness.depth() == (0, 0)
