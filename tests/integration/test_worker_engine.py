"""The worker against a real moto server: envelopes, failures, heartbeat, concurrency."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from itest_support import Harness, s3_event
from s3flow_testprocs import AlwaysFails, ConcurrencyProbe, ReadThenSlowWrite

from s3flow.state.records import FileStatus
from s3flow.worker.engine import WorkerObserver
from s3flow.worker.outcomes import Outcome
from s3flow.worker.source import ReceivedMessage

pytestmark = pytest.mark.integration


def test_happy_path_plain_and_gzip(harness: Harness) -> None:
    harness.configure()
    harness.put("a.txt", b"one\ntwo\nthree\n")
    harness.put("b.log.gz", gzip.compress(b"x\n" * 1000))
    harness.put("c.txt", b"no newline at end")
    m = harness.run()
    a, b, c = harness.result("a.txt"), harness.result("b.log.gz"), harness.result("c.txt")
    assert a and a["lines"] == 3 and a["encoding"] == "identity"
    assert a["uncompressed_bytes"] == 14 and a["bucket"] == harness.bucket
    assert a["etag"] and a["worker_id"]
    assert b and b["lines"] == 1000 and b["encoding"] == "gzip"
    assert b["uncompressed_bytes"] == 2000 and b["compressed_bytes"] < 2000
    assert c and c["lines"] == 1
    p = m.pipelines["p"]
    assert p.objects_processed == 3 and p.acked == 3 and p.dead_lettered == 0
    assert harness.depth() == (0, 0)
    assert harness.depth(harness.dlq_url) == (0, 0)


def test_same_notification_twice_overwrites_one_result(harness: Harness) -> None:
    harness.configure()
    harness.put("dup.txt", b"1\n2\n")
    # The same event delivered again (at-least-once delivery).
    harness.send_raw(json.dumps({"Records": [harness.event("dup.txt")]}))
    m = harness.run()
    assert m.pipelines["p"].objects_processed == 2
    assert harness.output_keys() == ["res/dup.txt.json"]
    assert harness.depth() == (0, 0)


@pytest.mark.parametrize(
    "key",
    [
        "dir/with space.txt",
        "plus+sign.txt",
        "percent%20literal%.txt",
        "ünïcødé/日本語 file+x=1.txt",
    ],
)
def test_awkward_keys(harness: Harness, key: str) -> None:
    harness.configure()
    harness.put(key, b"a\nb\n")
    harness.run()
    r = harness.result(key)
    assert r is not None, harness.output_keys()
    assert r["key"] == key and r["lines"] == 2


def test_aws_style_encoded_key_in_sent_event(harness: Harness) -> None:
    """AWS encodes a space as '+' and '+' as '%2B' but leaves '/': decode both styles."""
    harness.configure()
    key = "in/red flower+x=ü.json"
    harness.put(key, b"1\n")
    harness.purge()  # drop moto's own notification; send the AWS-style one
    encoded = quote_plus(key, safe="/")
    assert "/" in encoded and "+" in encoded
    harness.send_raw(json.dumps({"Records": [harness.event(encoded)]}))
    harness.run()
    assert harness.result(key) is not None


def _eventbridge(bucket: str, key: str) -> dict[str, Any]:
    """An EventBridge "Object Created" event (its key as it is: not URL-encoded)."""
    return {
        "version": "0",
        "id": "1",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "time": "2026-11-23T00:00:00Z",
        "region": "us-east-1",
        "detail": {
            "bucket": {"name": bucket},
            "object": {"key": key, "size": 6, "etag": "e"},
            "reason": "PutObject",
        },
    }


def test_sns_wrapped_and_eventbridge_and_multi_record(harness: Harness) -> None:
    harness.configure()
    for k in ("sns.txt", "eb.txt", "m1.txt", "m2.txt"):
        harness.put(k, b"l\n" * 3)
    harness.purge()
    sns = {
        "Type": "Notification",
        "MessageId": "abc",
        "TopicArn": "arn:aws:sns:us-east-1:123:t",
        "Message": json.dumps({"Records": [harness.event("sns.txt")]}),
    }
    eb = _eventbridge(harness.bucket, "eb.txt")
    multi = {"Records": [harness.event("m1.txt"), harness.event("m2.txt")]}
    for body in (sns, eb, multi):
        harness.send_raw(json.dumps(body))
    m = harness.run()
    for k in ("sns.txt", "eb.txt", "m1.txt", "m2.txt"):
        r = harness.result(k)
        assert r is not None and r["lines"] == 3, k
    p = m.pipelines["p"]
    assert p.objects_processed == 4 and p.acked == 3
    assert harness.depth() == (0, 0)


def test_eventbridge_raw_keys_and_minio_records_are_processed(harness: Harness) -> None:
    """An EventBridge key is the key as it is ('+' and ':' included); a MinIO-style
    record (``s3:ObjectCreated:Put``, ``/`` encoded as ``%2F``) is a created object."""
    harness.configure()
    eb_key, minio_key = "raw/c++/10:47 a+b.txt", "users/x y+z.txt"
    for k in (eb_key, minio_key):
        harness.put(k, b"l\n" * 3)
    harness.purge()
    eb = _eventbridge(harness.bucket, eb_key)
    minio = s3_event(harness.bucket, quote_plus(minio_key, safe=""), sequencer=None)
    minio["eventSource"], minio["eventName"] = "minio:s3", "s3:ObjectCreated:Put"
    harness.send_raw(json.dumps(eb))
    harness.send_raw(json.dumps({"Records": [minio]}))
    m = harness.run()
    for k in (eb_key, minio_key):
        r = harness.result(k)
        assert r is not None and r["key"] == k and r["lines"] == 3, (k, harness.output_keys())
    p = m.pipelines["p"]
    assert p.objects_processed == 2 and p.objects_skipped == 0 and p.acked == 2
    assert harness.depth() == (0, 0) and harness.depth(harness.dlq_url) == (0, 0)


def test_the_worker_asks_for_its_own_visibility_timeout(harness: Harness) -> None:
    """A queue made by hand with a shorter timeout than the worker's setting: the
    message must not come back while it is worked on (the lease counts from the
    worker's ``visibility_timeout_s``, so the receive asks for exactly that)."""
    harness.configure(
        processor="s3flow_testprocs:ReadThenSlowWrite",
        options={"read_s": 0.05, "write_s": 3.0},
        visibility_timeout_s=30,
    )
    harness.sqs.set_queue_attributes(
        QueueUrl=harness.queue_url, Attributes={"VisibilityTimeout": "1"}
    )
    harness.put("slow.txt", b"z\n" * 10)
    m = harness.run()
    p = m.pipelines["p"]
    assert p.objects_processed == 1 and p.acked == 1
    # Without asking, the copy handed out again after 1 s makes it 2 (or more).
    assert p.messages_received == 1
    assert harness.depth() == (0, 0) and harness.depth(harness.dlq_url) == (0, 0)


def test_test_event_and_removed_event_are_acked(harness: Harness) -> None:
    harness.configure()
    harness.send_raw(
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": harness.bucket})
    )
    removed = s3_event(harness.bucket, "gone.txt")
    removed["eventName"] = "ObjectRemoved:Delete"
    harness.send_raw(json.dumps({"Records": [removed]}))
    m = harness.run()
    p = m.pipelines["p"]
    assert p.test_events == 1 and p.objects_skipped == 1 and p.acked == 2
    assert p.dead_lettered == 0 and harness.output_keys() == []
    assert harness.depth() == (0, 0) and harness.depth(harness.dlq_url) == (0, 0)


def _attr(msg: dict[str, Any], name: str) -> str:
    return str(msg["MessageAttributes"][name]["StringValue"])


def test_corrupt_gzip_goes_to_dlq_with_reason(harness: Harness) -> None:
    harness.configure()
    whole = gzip.compress("".join(f"{i} hello\n" for i in range(20000)).encode())
    harness.put("bad.gz", whole[: len(whole) // 2])
    harness.put("good.txt", b"ok\n")
    m = harness.run()
    p = m.pipelines["p"]
    assert p.dead_lettered == 1 and p.retried == 0 and p.objects_processed == 1
    assert harness.result("good.txt") is not None and harness.result("bad.gz") is None
    dlq = harness.dlq_messages()
    assert len(dlq) == 1
    assert _attr(dlq[0], "s3flow.error-class") == "CorruptDataError"
    assert "truncated gzip" in _attr(dlq[0], "s3flow.error")
    assert _attr(dlq[0], "s3flow.receive-count") == "1"
    assert "bad.gz" in dlq[0]["Body"]
    assert harness.depth() == (0, 0)


def test_undecodable_text_goes_to_dlq(harness: Harness) -> None:
    harness.configure(options={"text_encoding": "utf-8"})
    harness.put("latin1.txt", "café\n".encode("latin-1"))
    m = harness.run()
    assert m.pipelines["p"].dead_lettered == 1
    dlq = harness.dlq_messages()
    assert _attr(dlq[0], "s3flow.error-class") == "UndecodableContentError"


def test_missing_object_is_acked_without_output(harness: Harness) -> None:
    harness.configure()
    harness.send_raw(json.dumps({"Records": [s3_event(harness.bucket, "never-existed.txt")]}))
    m = harness.run()
    p = m.pipelines["p"]
    assert p.objects_skipped == 1 and p.acked == 1 and p.dead_lettered == 0
    assert harness.output_keys() == [] and harness.depth(harness.dlq_url) == (0, 0)


def test_poison_message_goes_to_dlq_at_once(harness: Harness) -> None:
    harness.configure()
    harness.send_raw("this is not json")
    harness.send_raw(json.dumps({"hello": "world"}))
    m = harness.run()
    assert m.pipelines["p"].dead_lettered == 2
    dlq = harness.dlq_messages()
    assert {_attr(d, "s3flow.error-class") for d in dlq} == {"EnvelopeError"}
    assert {d["Body"] for d in dlq} == {"this is not json", json.dumps({"hello": "world"})}


def test_processor_exception_retries_then_dead_letters(harness: Harness) -> None:
    AlwaysFails.calls = 0
    harness.configure(
        processor="s3flow_testprocs:AlwaysFails", retry_base_s=0, retry_max_s=0, max_receive_count=2
    )
    harness.put("f.txt", b"x\n")
    m = harness.run()
    p = m.pipelines["p"]
    assert AlwaysFails.calls == 2
    assert p.retried == 1 and p.dead_lettered == 1
    dlq = harness.dlq_messages()
    assert _attr(dlq[0], "s3flow.error-class") == "RetriesExhausted.ProcessorError"
    assert "boom" in _attr(dlq[0], "s3flow.error")
    (rec,) = harness.records()
    assert rec.status.value == "dead" and rec.attempts == 2 and "boom" in (rec.last_error or "")


def test_filters_skip_non_matching_keys(harness: Harness) -> None:
    harness.configure(prefix="", suffix=".csv", key_regex=r"^data/")
    harness.put("data/a.csv", b"1\n")
    harness.put("data/b.txt", b"1\n")
    harness.put("other/c.csv", b"1\n")
    m = harness.run()
    assert harness.output_keys() == ["res/data/a.csv.json"]
    # The suffix filter is part of the bucket notification: data/b.txt sends no event.
    # The regex is applied by the worker: other/c.csv arrives and is skipped.
    assert m.pipelines["p"].messages_received == 2
    assert m.pipelines["p"].objects_skipped == 1


def test_slow_processor_outlives_visibility_timeout_once(harness: Harness, tmp_path) -> None:
    marker = tmp_path / "markers"
    marker.mkdir()
    harness.configure(
        processor="s3flow_testprocs:SlowProcessor",
        visibility_timeout_s=2,
        concurrency=4,
        options={"sleep_s": 6.5, "marker_dir": str(marker)},
    )
    harness.put("slow.txt", b"a\n")
    m = harness.run(timeout_s=60)
    started = list(marker.glob("started-*"))
    assert len(started) == 1, started  # never redelivered while being worked on
    p = m.pipelines["p"]
    assert p.visibility_extensions >= 2 and p.objects_processed == 1
    assert harness.result("slow.txt") is not None


def test_concurrency_bound_is_never_exceeded(harness: Harness) -> None:
    ConcurrencyProbe.reset()
    harness.configure(
        processor="s3flow_testprocs:ConcurrencyProbe",
        concurrency=3,
        prefetch_messages=1,
        options={"sleep_s": 0.3},
    )
    for i in range(15):
        harness.put(f"k{i}.txt", b"z\n")
    m = harness.run()
    assert len(ConcurrencyProbe.calls) == 15
    assert ConcurrencyProbe.peak == 3  # reached, and never more
    # received and not yet settled: the working ones, at most twice as many writing
    # their outputs, the one prefetched, and those done whose
    # batched delete waits (a wave of three at most: they finish every 0.3 s and wait
    # ack_batch_window_s, 0.05 s)
    assert m.pipelines["p"].max_in_flight <= 13
    assert len(harness.output_keys()) == 15


def test_a_message_waiting_for_its_batched_delete_does_not_hold_a_slot(
    harness: Harness,
) -> None:
    ConcurrencyProbe.reset()
    settings = harness.configure(
        processor="s3flow_testprocs:ConcurrencyProbe", concurrency=1, options={"sleep_s": 0.05}
    )
    # Deletes wait 5 s to fill a batch: with the slot held until the delete was
    # confirmed, the second object could not start before the first was settled; with
    # a settling permit held, at most 1 + 2 (settling: 2 x concurrency) could.
    worker = settings.worker.model_copy(update={"ack_batch_window_s": 5.0})
    harness.settings = settings.model_copy(update={"worker": worker})
    for i in range(4):
        harness.put(f"k{i}.txt", b"z\n")
    m = harness.run()
    p = m.pipelines["p"]
    assert ConcurrencyProbe.peak == 1 and len(ConcurrencyProbe.calls) == 4
    # all four done (~0.2 s each) and waiting for their delete together: it holds no permit
    assert p.max_in_flight == 4
    assert p.acked == 4 and len(harness.output_keys()) == 4
    assert harness.depth() == (0, 0)  # nothing visible, nothing in flight
    assert harness.depth(harness.dlq_url) == (0, 0) and harness.dlq_messages() == []


def test_an_object_writing_its_outputs_gives_its_slot_to_the_next(harness: Harness) -> None:
    ReadThenSlowWrite.reset()
    harness.configure(
        processor="s3flow_testprocs:ReadThenSlowWrite",
        concurrency=2,
        prefetch_messages=1,
        options={"read_s": 0.05, "write_s": 0.6},
    )
    for i in range(10):
        harness.put(f"k{i}.txt", b"z\n" * 100)
    m = harness.run()
    p = m.pipelines["p"]
    # Reading is bounded by the slots; writes go on beside it, under the second budget.
    assert ReadThenSlowWrite.peak_reading <= 2
    assert ReadThenSlowWrite.peak_writing > 2  # slots were handed over mid-object
    # 2 reading, at most 2 x 2 writing with a settling permit (a message finding none
    # free keeps its slot); received: 3 x concurrency + the one prefetched at most
    assert ReadThenSlowWrite.peak_total <= 6 and p.max_in_flight <= 7
    assert p.objects_processed == 10 and p.acked == 10 and len(harness.output_keys()) == 10
    assert harness.depth() == (0, 0)
    assert harness.depth(harness.dlq_url) == (0, 0) and harness.dlq_messages() == []


class _SettleTimes(WorkerObserver):
    """Wall-clock time at which each message was settled, by the keys it named."""

    def __init__(self) -> None:
        self.at: list[tuple[float, list[str]]] = []

    def message_settled(self, pipeline: str, message: ReceivedMessage, outcome: Outcome) -> None:
        keys = [r["s3"]["object"]["key"] for r in json.loads(message.body)["Records"]]
        self.at.append((time.time(), keys))


def _markers(marker: Path, kind: str, key: str) -> list[Path]:
    return list(marker.glob(f"{kind}-{key}-*"))


def test_a_duplicate_delivery_is_acknowledged_without_waiting_for_a_slot(
    harness: Harness, tmp_path: Path
) -> None:
    marker = tmp_path / "m"
    marker.mkdir()
    opts = {"concurrency": 1, "prefetch_messages": 3}
    harness.configure(
        processor="s3flow_testprocs:SlowProcessor",
        options={"sleep_s": 0.01, "marker_dir": str(marker)},
        **opts,
    )
    harness.put("old.txt", b"a\n")
    harness.put("slow.txt", b"a\n")
    harness.purge()
    old = json.dumps({"Records": [harness.event("old.txt", sequencer="0100")]})
    harness.send_raw(old)
    harness.run()  # old.txt is done
    harness.configure(
        provision_it=False,
        processor="s3flow_testprocs:SlowProcessor",
        options={"sleep_s": 4.0, "marker_dir": str(marker)},
        **opts,
    )
    harness.send_raw(json.dumps({"Records": [harness.event("slow.txt")]}))
    for _ in range(3):
        harness.send_raw(old)
    settled = _SettleTimes()
    p = harness.run(observer=settled).pipelines["p"]
    assert p.objects_processed == 1 and p.duplicates == 3
    # The one slot was busy with slow.txt for 4 s: the duplicates, received beside
    # it, were acknowledged at once instead of waiting for it.
    (slow_done,) = _markers(marker, "done", "slow.txt")
    dup_times = [t for t, keys in settled.at if keys == ["old.txt"]]
    assert len(dup_times) == 3 and max(dup_times) < slow_done.stat().st_mtime
    assert harness.depth() == (0, 0) and harness.depth(harness.dlq_url) == (0, 0)


def test_a_record_waiting_for_a_key_held_by_a_prefetched_message_does_not_deadlock(
    harness: Harness, tmp_path: Path
) -> None:
    # M = [a, b] takes the one slot for a; N = [b] is prefetched and holds b's key
    # lock while it waits for a slot. M must give its slot back between a and b, or
    # M waits for N's lock while N waits for M's slot.
    marker = tmp_path / "m"
    marker.mkdir()
    harness.configure(
        processor="s3flow_testprocs:SlowProcessor",
        options={"sleep_s": 0.5, "marker_dir": str(marker)},
        concurrency=1,
        prefetch_messages=1,
    )
    harness.put("a.txt", b"a\n")
    harness.put("b.txt", b"b\n")
    harness.purge()
    a = harness.event("a.txt", sequencer="0200")
    b = harness.event("b.txt", sequencer="0201")
    harness.send_raw(json.dumps({"Records": [a, b]}))
    harness.send_raw(json.dumps({"Records": [b]}))
    p = harness.run(timeout_s=30).pipelines["p"]
    assert len(_markers(marker, "done", "a.txt")) == 1
    assert len(_markers(marker, "done", "b.txt")) == 1  # once: the other is a duplicate
    assert p.objects_processed == 2 and p.duplicates == 1 and p.acked == 2
    assert harness.depth() == (0, 0) and harness.depth(harness.dlq_url) == (0, 0)


def test_local_directory_output(harness: Harness, tmp_path) -> None:
    out = tmp_path / "results"
    harness.configure(output=str(out))
    harness.put("logs/x y.txt", b"1\n2\n")
    harness.run()
    doc = json.loads((out / "logs" / "x y.txt.json").read_text())
    assert doc["lines"] == 2 and doc["key"] == "logs/x y.txt"


@pytest.mark.parametrize(
    ("executor", "fast_path"),
    [("inline", True), ("inline", False), ("pool", True), ("subprocess", True)],
)
def test_an_event_whose_upload_was_overwritten_is_superseded_not_run_on_new_bytes(
    harness: Harness, executor: str, fast_path: bool
) -> None:
    """Two uploads of a key, then their two events (with sequencers, as AWS sends them)
    in order: the first one's object is the second upload's bytes now. It ran the
    processor on them under upload 1's identity (the work twice; rows downstream twice
    for csv-to-kafka). Its read is conditional on its eTag: refused (412), it is
    settled as superseded, and the second upload's own event processes the object."""
    if not fast_path:
        harness.aws = {"fast_path": False}
    harness.configure(executor=executor)
    harness.put("m1.txt", b"one\n")
    first = harness.event("m1.txt", sequencer="0100")
    harness.put("m1.txt", b"two\ntwo\n")
    second = harness.event("m1.txt", sequencer="0200")
    harness.purge()  # moto's own events (no sequencer): replaced by AWS-style ones
    e1, e2 = first["s3"]["object"]["eTag"], second["s3"]["object"]["eTag"]
    assert e1 != e2
    harness.send_raw(json.dumps({"Records": [first]}))
    harness.send_raw(json.dumps({"Records": [second]}))

    p = harness.run().pipelines["p"]

    assert (p.objects_processed, p.objects_skipped, p.dead_lettered) == (1, 1, 0)
    res = harness.result("m1.txt")
    assert res is not None and res["lines"] == 2 and res["etag"] == e2, res
    recs = {r.version: r for r in harness.records("m1.txt")}
    assert set(recs) == {f"{e1}@0100", f"{e2}@0200"}, list(recs)
    old, new = recs[f"{e1}@0100"], recs[f"{e2}@0200"]
    assert old.status is FileStatus.COMPLETED and old.outputs == [] and old.failures == 0
    assert new.status is FileStatus.COMPLETED and new.outputs, new
    done = {h.version: h.detail for h in harness.history("m1.txt") if h.new is FileStatus.COMPLETED}
    assert done[f"{e1}@0100"] == (
        f"superseded: the object was overwritten since this event (upload eTag {e1} is "
        "not the object now)"
    ), done
    assert harness.depth() == (0, 0) and harness.depth(harness.dlq_url) == (0, 0)
