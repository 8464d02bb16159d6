"""Core integrity: identity per event, records settle alone, start-up checks, redrive, operators.

Real moto server, real SQLite state; the CLI tests run s3flow as a subprocess.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from itest_support import HERE, Harness, s3_event, spawn_worker, wait_for

from s3flow.state.records import FileStatus

pytestmark = pytest.mark.integration


def s3flow(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "s3flow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


# --- identity per event ------------------------------------------------------------------


def test_a_then_b_then_a_again_leaves_the_result_of_the_last_upload(harness: Harness) -> None:
    harness.configure()
    a, b = b"1\n2\n", b"1\n2\n3\n"
    for body, lines in ((a, 2), (b, 3), (a, 2)):
        harness.put("abc.txt", body)
        m = harness.run()
        assert m.pipelines["p"].objects_processed == 1
        result = harness.result("abc.txt")
        assert result is not None and result["lines"] == lines
        time.sleep(1.01)  # moto has no sequencer: uploads differ by LastModified (seconds)
    recs = harness.records("abc.txt")
    assert len(recs) == 3 and all(r.status is FileStatus.COMPLETED for r in recs)


def test_same_bytes_uploaded_again_after_the_result_was_deleted_is_processed(
    harness: Harness,
) -> None:
    harness.configure()
    harness.put("same.txt", b"x\ny\n")
    harness.run()
    harness.s3.delete_object(Bucket=harness.out_bucket, Key="res/same.txt.json")
    time.sleep(1.01)
    harness.put("same.txt", b"x\ny\n")  # the same bytes, a new upload
    m = harness.run()
    assert m.pipelines["p"].objects_processed == 1 and m.pipelines["p"].duplicates == 0
    assert harness.result("same.txt") is not None


def test_a_folder_marker_is_skipped_not_processed(harness: Harness) -> None:
    """A folder made in the S3 console (a 0-byte object whose key ends in /) was
    processed like a file: its result was the hidden object `res/dir/.json`."""
    harness.configure()
    harness.put("dir/", b"")
    harness.put("dir/a.txt", b"1\n2\n")
    m = harness.run()
    assert (m.pipelines["p"].objects_processed, m.pipelines["p"].objects_skipped) == (1, 1)
    assert harness.result("dir/a.txt") is not None
    listed = harness.s3.list_objects_v2(Bucket=harness.out_bucket, Prefix="res/dir/")
    assert [o["Key"] for o in listed.get("Contents", [])] == ["res/dir/a.txt.json"]
    assert harness.records("dir/") == []
    assert harness.depth() == (0, 0) and harness.depth(harness.dlq_url) == (0, 0)
    # A backfill leaves it out too: enqueued, it would stay "received" for ever.
    bf = s3flow("backfill", "-c", str(harness.write_config()), "-p", "p")
    assert bf.returncode == 0, bf.stderr
    assert "listed 2: enqueued 0, already completed 1" in bf.stdout and "filtered 1" in bf.stdout
    assert harness.depth() == (0, 0) and harness.records("dir/") == []


def test_duplicate_delivery_is_counted_in_the_summary_and_json(
    harness: Harness, tmp_path: Path
) -> None:
    harness.configure()
    harness.put("d.txt", b"1\n")
    harness.run()
    etag = harness.s3.head_object(Bucket=harness.bucket, Key="d.txt")["ETag"].strip('"')
    body = json.dumps({"Records": [s3_event(harness.bucket, "d.txt", etag=etag, sequencer=None)]})
    harness.send_raw(body)
    cfg = harness.write_config()
    text = s3flow("worker", "-c", str(cfg), "--burst")
    assert text.returncode == 0, text.stderr
    assert "processed 0, duplicates 1" in text.stderr
    assert "duplicate delivery of s3://" in text.stderr and "message " in text.stderr
    harness.send_raw(body)
    js = s3flow("--log-format", "json", "worker", "-c", str(cfg), "--burst")
    assert js.returncode == 0, js.stderr
    summary = [
        json.loads(line)
        for line in js.stderr.splitlines()
        if line.startswith("{") and "worker-summary" in line
    ]
    assert summary and summary[-1]["pipelines"]["p"]["duplicates"] == 1


# --- each record settles on its own -------------------------------------------------------


def test_a_bad_record_in_the_middle_settles_alone(harness: Harness) -> None:
    harness.configure()
    keys = [f"m/{i}.txt" for i in range(10)]
    whole = gzip.compress(b"".join(b"%d hello\n" % i for i in range(20000)))
    for i, key in enumerate(keys):
        if i == 4:
            key = keys[4] = "m/4.gz"
            harness.put(key, whole[: len(whole) // 2])
        else:
            harness.put(key, b"a\n" * (i + 1))
    harness.purge()  # moto's own events: replaced by one message with all ten records
    recs = [harness.event(k, sequencer=f"00{i:02d}") for i, k in enumerate(keys)]
    harness.send_raw(json.dumps({"Records": recs}))
    m = harness.run()
    p = m.pipelines["p"]
    assert p.objects_processed == 9 and p.dead_lettered == 1
    for i, key in enumerate(keys):
        if i != 4:
            r = harness.result(key)
            assert r is not None and r["lines"] == i + 1, key
    (dead,) = harness.dlq_messages()
    body = json.loads(dead["Body"])
    assert [r["s3"]["object"]["key"] for r in body["Records"]] == ["m/4.gz"]  # alone
    attrs = {k: v["StringValue"] for k, v in dead["MessageAttributes"].items()}
    assert attrs["s3flow.error-class"] == "CorruptDataError"
    assert harness.depth() == (0, 0)
    (rec,) = harness.records("m/4.gz")
    assert rec.status is FileStatus.DEAD


def test_a_record_that_is_no_object_event_is_dead_lettered_alone(harness: Harness) -> None:
    """A malformed record (no key) or another service's record beside good ones: the
    good ones are processed, each bad one goes to the DLQ alone with its reason (the
    whole message went there, its good records never processed nor recorded)."""
    harness.configure()
    for key in ("g/1.txt", "g/2.txt"):
        harness.put(key, b"a\nb\n")
    harness.purge()
    no_key = s3_event(harness.bucket, "x")
    del no_key["s3"]["object"]["key"]
    other = {"eventSource": "aws:sqs", "foo": 1}
    recs = [harness.event("g/1.txt", sequencer="0201"), no_key, other]
    recs.append(harness.event("g/2.txt", sequencer="0202"))
    harness.send_raw(json.dumps({"Records": recs}))
    m = harness.run()
    p = m.pipelines["p"]
    assert p.objects_processed == 2 and p.dead_lettered == 2
    for key in ("g/1.txt", "g/2.txt"):
        assert (harness.result(key) or {}).get("lines") == 2, key
        assert [r.status for r in harness.records(key)] == [FileStatus.COMPLETED]
    dead = harness.dlq_messages()
    bodies = sorted((json.loads(d["Body"])["Records"] for d in dead), key=str)
    assert bodies == sorted([[no_key], [other]], key=str)  # each alone, as it came
    reasons = {
        json.dumps(json.loads(d["Body"])["Records"][0]): d["MessageAttributes"]["s3flow.error"][
            "StringValue"
        ]
        for d in dead
    }
    # Each reason names the record as its body alone has it, and where it was.
    assert reasons[json.dumps(no_key)].startswith("Records[0].s3.object.key is missing")
    assert "(Records[1] of the message it came in)" in reasons[json.dumps(no_key)]
    assert reasons[json.dumps(other)].startswith("Records[0].eventSource is 'aws:sqs'")
    assert "(Records[2] of the message it came in)" in reasons[json.dumps(other)]
    assert harness.depth() == (0, 0)


def test_a_retryable_record_is_resent_alone_and_succeeds_later(
    harness: Harness, tmp_path: Path
) -> None:
    flag = tmp_path / "fail-once"
    flag.write_text("x")
    harness.configure(
        processor="s3flow_testprocs:FailOnceWhileFlag",
        options={"flag": str(flag), "key": "r/2.txt"},
        retry_base_s=1,
        retry_max_s=1,
    )
    keys = [f"r/{i}.txt" for i in range(4)]
    for key in keys:
        harness.put(key, b"z\n")
    harness.purge()
    recs = [harness.event(k, sequencer=f"01{i:02d}") for i, k in enumerate(keys)]
    harness.send_raw(json.dumps({"Records": recs}))
    m = harness.run()
    p = m.pipelines["p"]
    assert p.objects_processed == 4 and p.dead_lettered == 0 and p.duplicates == 0
    assert all(harness.result(k) is not None for k in keys)
    assert harness.depth() == (0, 0) and harness.depth(harness.dlq_url) == (0, 0)
    (rec,) = harness.records("r/2.txt")
    assert rec.status is FileStatus.COMPLETED and rec.failures == 1 and rec.attempts == 2


def test_retries_exhausted_are_dead_lettered_by_the_worker_with_the_reason(
    harness: Harness,
) -> None:
    harness.configure(
        processor="s3flow_testprocs:AlwaysFails",
        retry_base_s=0,
        retry_max_s=0,
        max_receive_count=2,
    )
    harness.put("f.txt", b"1\n")
    m = harness.run()
    assert m.pipelines["p"].dead_lettered == 1
    (dead,) = harness.dlq_messages()
    attrs = {k: v["StringValue"] for k, v in dead["MessageAttributes"].items()}
    assert attrs["s3flow.error-class"].startswith("RetriesExhausted.")
    assert "failed 2 times" in attrs["s3flow.error"]
    (rec,) = harness.records("f.txt")
    assert rec.status is FileStatus.DEAD and rec.failures == 2


def test_a_decompression_bomb_fails_permanently_with_the_reason(harness: Harness) -> None:
    harness.configure(max_uncompressed_bytes=1_000_000)
    harness.put("bomb.gz", gzip.compress(b"\0" * 5_000_000))
    m = harness.run()
    assert m.pipelines["p"].dead_lettered == 1
    (dead,) = harness.dlq_messages()
    attrs = {k: v["StringValue"] for k, v in dead["MessageAttributes"].items()}
    assert attrs["s3flow.error-class"] == "TooLargeError"
    assert "max_uncompressed_bytes" in attrs["s3flow.error"]


# --- start-up checks and a disappearing output -----------------------------------------------


def test_missing_output_bucket_stops_the_worker_at_start(harness: Harness) -> None:
    harness.configure()
    harness.put("x.txt", b"1\n")
    harness.configure(provision_it=False, output=f"s3://{harness.out_bucket}-missing/res/")
    cfg = harness.write_config()
    r = s3flow("worker", "-c", str(cfg), "--burst")
    assert r.returncode != 0
    assert f"{harness.out_bucket}-missing" in r.stderr and "does not exist" in r.stderr
    assert harness.depth(harness.dlq_url) == (0, 0)
    assert harness.depth()[0] == 1  # nothing was received


def test_missing_dlq_stops_the_worker_at_start(harness: Harness) -> None:
    harness.configure()
    harness.configure(provision_it=False, dlq=f"{harness.queue}-nope")
    r = s3flow("worker", "-c", str(harness.write_config()), "--burst")
    assert r.returncode != 0 and f"{harness.queue}-nope" in r.stderr


def _worker_up(harness: Harness, log: Path) -> Any:
    """A worker subprocess logging to ``log``, up: it has processed first.txt."""
    w = spawn_worker(harness.write_config(), log)
    try:
        harness.put("first.txt", b"1\n")
        wait_for(lambda: harness.result("first.txt") is not None, 60, "the first result")
    except BaseException:
        w.kill()
        w.wait()
        raise
    return w


def test_an_output_bucket_that_disappears_is_retried_not_dead_lettered(
    harness: Harness, tmp_path: Path
) -> None:
    """Not counted as failures, but each wait spent a receive: after the queue's redrive
    limit (here 3) SQS itself moved the message to the DLQ, with no reason, and its
    record still said received. Near the limit it is now sent again as a new message."""
    harness.configure(
        visibility_timeout_s=5,
        retry_base_s=1,
        retry_max_s=1,
        max_receive_count=2,
        queue_max_receive_count=3,
    )
    log = tmp_path / "w.log"
    w = _worker_up(harness, log)
    try:
        harness.s3.delete_object(Bucket=harness.out_bucket, Key="res/first.txt.json")
        harness.s3.delete_bucket(Bucket=harness.out_bucket)
        harness.put("late.txt", b"1\n2\n")
        # More waits than max_receive_count and the redrive limit: not dead-lettered.
        wait_for(lambda: log.read_text().count("output unavailable") >= 7, 90, "retries")
        assert harness.depth(harness.dlq_url) == (0, 0)
        harness.s3.create_bucket(Bucket=harness.out_bucket)
        wait_for(lambda: harness.result("late.txt") is not None, 60, "the result")
    finally:
        w.send_signal(signal.SIGTERM)
        w.wait(timeout=60)
    text = log.read_text()
    assert "does not exist" in text
    assert "sent again as a new message: the queue's redrive limit is near" in text
    assert harness.depth(harness.dlq_url) == (0, 0)
    wait_for(lambda: harness.depth() == (0, 0), 30, "the queue to be empty")
    (rec,) = harness.records("late.txt")
    assert rec.status is FileStatus.COMPLETED and rec.failures == 0


def test_a_state_store_deleted_under_a_running_worker_loses_nothing(
    harness: Harness, tmp_path: Path
) -> None:
    """Deleting the SQLite file went unnoticed: the worker wrote records to the deleted
    file and acknowledged messages whose records nobody would read again."""
    harness.configure(visibility_timeout_s=5, retry_base_s=1, retry_max_s=1)
    log = tmp_path / "w.log"
    w = _worker_up(harness, log)
    try:
        store = Path(harness.state_url.removeprefix("sqlite:"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{store}{suffix}").unlink(missing_ok=True)
        harness.put("late.txt", b"1\n2\n")
        wait_for(lambda: "was deleted while this process had it open" in log.read_text(), 60, "")
    finally:
        w.send_signal(signal.SIGTERM)
        w.wait(timeout=60)
    assert harness.result("late.txt") is None  # not processed into a lost record
    assert harness.depth(harness.dlq_url) == (0, 0)
    wait_for(lambda: harness.depth() == (1, 0), 30, "the message to be visible again")
    # a worker on a store put back (here: a new one) processes it
    assert harness.run().pipelines["p"].objects_processed == 1
    assert harness.result("late.txt") is not None


# --- operators: reprocess, release, backfill --force, status --------------------------------


def test_reprocess_release_and_forced_backfill(harness: Harness) -> None:
    harness.configure()
    for k in ("a.txt", "b.txt", "c/d.txt"):
        harness.put(k, b"1\n")
    harness.run()
    cfg = str(harness.write_config())
    plain = s3flow("backfill", "-c", cfg, "-p", "p")
    assert plain.returncode == 0 and "enqueued 0, already completed 3" in plain.stdout
    rep = s3flow("reprocess", "-c", cfg, "-p", "p", "a.txt")
    assert rep.returncode == 0, rep.stderr
    assert "enqueued 1" in rep.stdout
    m = harness.run()
    assert m.pipelines["p"].objects_processed == 1
    forced = s3flow("backfill", "-c", cfg, "-p", "p", "--force", "--prefix", "c/")
    assert forced.returncode == 0 and "enqueued 1" in forced.stdout
    assert harness.run().pipelines["p"].objects_processed == 1
    released = s3flow("files", "release", "b.txt", "-c", cfg, "-p", "p")
    assert released.returncode == 0, released.stderr
    assert "released s3://" in released.stdout
    assert harness.run().pipelines["p"].objects_processed == 1
    for k in ("a.txt", "b.txt", "c/d.txt"):
        assert all(r.status is FileStatus.COMPLETED for r in harness.records(k)), k
    missing = s3flow("files", "release", "nope.txt", "-c", cfg, "-p", "p")
    assert missing.returncode != 0 and "no record" in missing.stderr


def test_status_exits_non_zero_when_a_queue_cannot_be_read(harness: Harness) -> None:
    harness.configure()
    harness.configure(provision_it=False, queue=f"{harness.queue}-gone")
    r = s3flow("status", "-c", str(harness.write_config()))
    assert r.returncode != 0 and "does not exist" in r.stderr


# --- redrive ----------------------------------------------------------------------------


def _dlq_fill(h: Harness, n: int) -> list[str]:
    keys = [f"dl/{i}.txt" for i in range(n)]
    for k in keys:
        h.put(k, b"q\n")
    h.purge()
    for i in range(0, n, 10):
        h.sqs.send_message_batch(
            QueueUrl=h.dlq_url,
            Entries=[
                {
                    "Id": str(j),
                    "MessageBody": json.dumps({"Records": [s3_event(h.bucket, k, sequencer=None)]}),
                    "MessageAttributes": {
                        "s3flow.error-class": {"DataType": "String", "StringValue": "Old"},
                        "s3flow.error": {"DataType": "String", "StringValue": "old reason"},
                    },
                }
                for j, k in enumerate(keys[i : i + 10])
            ],
        )
    return keys


def test_an_interrupted_redrive_run_again_moves_every_message_once(
    harness: Harness, tmp_path: Path
) -> None:
    harness.configure()
    keys = _dlq_fill(harness, 60)
    cfg = str(harness.write_config())
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3flow", "dlq", "redrive", "-c", cfg, "--lease-s", "5"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill it mid-way: some moved, some held (leased) by the dead process.
    wait_for(lambda: harness.depth()[0] >= 10, 60, "a first batch on the source queue")
    proc.kill()
    proc.wait(timeout=10)
    again = s3flow("dlq", "redrive", "-c", cfg, "--lease-s", "5")
    assert again.returncode == 0, again.stderr
    # the one line on why s3flow moves the messages itself (a state store: it resets them)
    assert "StartMessageMoveTask" in again.stderr and "<html" not in again.stderr.lower()
    assert harness.depth(harness.dlq_url) == (0, 0)  # no stale copy left behind
    m = harness.run()
    p = m.pipelines["p"]
    assert p.objects_processed == len(keys)  # each object once; extra copies are duplicates
    assert all(harness.result(k) is not None for k in keys)
    assert harness.depth() == (0, 0) and harness.depth(harness.dlq_url) == (0, 0)


def test_dlq_list_explains_a_message_the_queue_moved(harness: Harness) -> None:
    harness.configure()
    harness.put("moved.txt", b"1\n")
    harness.purge()
    # as a message a worker sent back to its queue (renewed) arrives: its last error
    last = {"s3flow.last-error": {"DataType": "String", "StringValue": "bucket gone"}}
    harness.sqs.send_message(
        QueueUrl=harness.dlq_url,
        MessageBody=json.dumps({"Records": [s3_event(harness.bucket, "moved.txt")]}),
        MessageAttributes=last,
    )
    r = s3flow("dlq", "list", "-c", str(harness.write_config()), "--json")
    assert r.returncode == 0, r.stderr
    (msg,) = json.loads(r.stdout)
    assert msg["error_class"] is None and msg["last_error"] == "bucket gone"
    assert "redrive policy" in msg["state_note"] and "no record" in msg["state_note"]
    assert "not by a worker; its last error: bucket gone" in msg["state_note"]
