"""SIGTERM while objects are in flight, with the worker as a real subprocess."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from itest_support import Harness, s3_event, spawn_worker, wait_for

from s3flow.state.records import FileStatus

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent


def _count(marker: Path, prefix: str) -> int:
    return len(list(marker.glob(f"{prefix}-*")))


def test_sigterm_lets_in_flight_work_finish(harness: Harness, tmp_path: Path) -> None:
    marker = tmp_path / "m"
    marker.mkdir()
    harness.configure(
        processor="s3flow_testprocs:SlowProcessor",
        concurrency=4,
        visibility_timeout_s=60,
        options={"sleep_s": 2.0, "marker_dir": str(marker)},
    )
    config = harness.write_config()
    for i in range(4):
        harness.put(f"k{i}.txt", b"a\nb\n")
    proc = spawn_worker(config, tmp_path / "worker.log")
    try:
        wait_for(lambda: _count(marker, "started") == 4, 30, "4 objects in flight")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "worker.log").read_text()
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _count(marker, "done") == 4
    assert elapsed < 10
    assert len(harness.output_keys()) == 4
    assert harness.depth() == (0, 0)  # all acked before exit


def test_sigterm_releases_unfinished_work_and_nothing_is_lost(
    harness: Harness, tmp_path: Path
) -> None:
    marker = tmp_path / "m"
    marker.mkdir()
    harness.configure(
        processor="s3flow_testprocs:SlowProcessor",
        concurrency=3,
        prefetch_messages=1,
        visibility_timeout_s=120,
        options={"sleep_s": 60.0, "marker_dir": str(marker)},
    )
    harness.settings.worker.shutdown_grace_s = 0.5  # type: ignore[union-attr]
    config = harness.write_config()
    for i in range(5):
        harness.put(f"k{i}.txt", b"a\n")
    proc = spawn_worker(config, tmp_path / "worker.log")
    try:
        wait_for(lambda: _count(marker, "started") == 3, 30, "3 objects in flight")
        # No more than `concurrency` worked on, and one message (prefetch_messages)
        # prefetched, waiting for a slot: one message still waits in the queue.
        wait_for(lambda: harness.depth() == (1, 4), 10, "3 in flight and 1 prefetched")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "worker.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _count(marker, "done") == 0
    # Released with visibility 0: visible again at once, not after 120 s.
    wait_for(lambda: harness.depth() == (5, 0), 10, "all 5 messages visible again")
    log = (tmp_path / "worker.log").read_text()
    assert "released 4" in log  # the 3 started and the prefetched one
    # The prefetched message took its key lock and claim while it waited for a slot:
    # both were given back with it, so no record is left claimed.
    recs = harness.records()
    assert len(recs) >= 3
    assert all(r.status is FileStatus.RECEIVED and r.claim_owner is None for r in recs), recs

    # A second worker picks everything up; each object is completed exactly once.
    harness.configure(
        provision_it=False,
        processor="s3flow_testprocs:SlowProcessor",
        concurrency=5,
        visibility_timeout_s=120,
        options={"sleep_s": 0.1, "marker_dir": str(marker)},
    )
    harness.run()
    done = sorted(p.read_text() for p in marker.glob("done-*"))
    assert done == [f"k{i}.txt" for i in range(5)]
    assert harness.depth() == (0, 0)
    assert harness.depth(harness.dlq_url) == (0, 0)  # a shutdown is no failure
    recs = harness.records()
    assert len(recs) == 5 and all(r.status is FileStatus.COMPLETED for r in recs), recs


def test_sigterm_during_a_long_poll_ends_within_the_grace_and_releases_the_work(
    harness: Harness, tmp_path: Path
) -> None:
    """The grace period counts from the signal, and a long poll waits at most the grace
    (here 1 s of the 20 s ``wait_time_s``). A receive on the wire at the signal (a long
    poll of an empty queue, a slot being free) is waited for while the in-flight object
    goes on; then that is released. The drain used to start once a 20 s poll had
    returned, so the worker ran up to ``wait_time_s`` + 5 s past the grace: past the
    stop timeout ``s3flow deploy`` sets (grace + 10 s), where it is killed with its
    message invisible and its record processing. (Cutting the poll short instead left
    it pending on the server, which took the released message: invisible again.)"""
    marker = tmp_path / "m"
    marker.mkdir()
    harness.configure(
        processor="s3flow_testprocs:SlowProcessor",
        concurrency=2,
        visibility_timeout_s=120,
        wait_time_s=20,
        options={"sleep_s": 120.0, "marker_dir": str(marker)},
    )
    harness.settings.worker.shutdown_grace_s = 1  # type: ignore[union-attr]
    config = harness.write_config()
    harness.put("slow.txt", b"a\n")
    log_path = tmp_path / "worker.log"
    proc = spawn_worker(config, log_path)
    try:
        # Dispatched, so the poller is back on the wire for the free slot (long poll).
        wait_for(lambda: _count(marker, "started") == 1, 30, "the object in flight")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_path.read_text()
    assert "receive(s) on the wire" in log, log  # the case this test is about
    assert elapsed < 12, (elapsed, log)  # a 1 s poll, grace 1 s, the release
    assert "released 1" in log
    assert harness.depth() == (1, 0)  # visible again at once, not after 120 s
    assert harness.depth(harness.dlq_url) == (0, 0)
    (rec,) = harness.records()
    assert rec.status is FileStatus.RECEIVED and rec.claim_owner is None, rec


def test_sigterm_stops_both_copies_of_a_message_delivered_twice(
    harness: Harness, tmp_path: Path
) -> None:
    """One message in flight twice in one worker (same message id, two receipt handles).

    SQS delivers at least once, and a job that overruns ``job_timeout_s`` and does not
    stop when cancelled (this processor swallows its first cancellation) is given up on:
    after the stop grace the heartbeat stops extending its message, its key lock and its
    claim, so the message comes back and this worker receives it a second time while
    the first copy still runs (the second takes over the expired lock and claim). The worker
    kept its in-flight work by message id, so the second copy took the first's place:
    SIGTERM with no grace cancelled only the second, and the worker then waited for
    the first copy's 60 s of work. Both must stop at once and be released.
    """
    marker = tmp_path / "m"
    marker.mkdir()
    harness.configure(
        processor="s3flow_testprocs:SlowProcessor",
        concurrency=2,
        visibility_timeout_s=4,
        job_timeout_s=1,
        options={"sleep_s": 60.0, "marker_dir": str(marker), "ignore_first_cancel": True},
    )
    harness.settings.worker.shutdown_grace_s = 0.0  # type: ignore[union-attr]
    config = harness.write_config()
    harness.put("k.txt", b"a\n")
    log = tmp_path / "worker.log"
    proc = spawn_worker(config, log)
    try:
        wait_for(
            lambda: _count(marker, "started") == 2,
            30,
            "the message received again and started while its first copy runs",
        )
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, log.read_text()
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert elapsed < 10, log.read_text()  # not the first copy's 60 s
    assert _count(marker, "done") == 0
    assert "released 2" in log.read_text()
    wait_for(lambda: harness.depth() == (1, 0), 10, "the message visible again")
    assert harness.depth(harness.dlq_url) == (0, 0)
    recs = harness.records()
    assert len(recs) == 1 and recs[0].status is FileStatus.RECEIVED, recs
    assert recs[0].claim_owner is None, recs


@pytest.mark.parametrize("waits_for", ["its key", "a slot"])
def test_sigterm_releases_a_waiting_message_once_the_polls_are_over(
    harness: Harness, tmp_path: Path, waits_for: str
) -> None:
    """A message waiting for its key's lock (another copy runs), or prefetched and
    waiting for a slot, was released at the signal while a receive was still on the
    wire: that poll took it again, and it was released twice, one more receive spent of
    its redrive budget."""
    marker = tmp_path / "m"
    marker.mkdir()
    harness.configure(
        processor="s3flow_testprocs:SlowProcessor",
        concurrency=4 if waits_for == "its key" else 1,
        prefetch_messages=4,
        visibility_timeout_s=120,
        wait_time_s=2,  # the queue's too: the purges below wait no longer
        options={"sleep_s": 120.0, "marker_dir": str(marker)},
    )
    harness.settings.worker.shutdown_grace_s = 2  # type: ignore[union-attr]
    config = harness.write_config()
    harness.put("k.txt", b"a\n")
    harness.purge()
    etag = harness.s3.head_object(Bucket=harness.bucket, Key="k.txt")["ETag"].strip('"')
    body = json.dumps({"Records": [s3_event(harness.bucket, "k.txt", etag=etag, sequencer="0A")]})
    harness.send_raw(body)
    if waits_for == "its key":
        harness.send_raw(body)
    else:
        harness.put("other.txt", b"b\n")  # its own event: prefetched, no slot free
    log_path = tmp_path / "worker.log"
    proc = spawn_worker(config, log_path)
    try:
        wait_for(lambda: _count(marker, "started") == 1, 30, "one copy in flight")
        if waits_for == "its key":
            wait_for(
                lambda: "with the message leased" in log_path.read_text(), 30, "the other waiting"
            )
        else:
            wait_for(lambda: harness.depth() == (0, 2), 30, "the other received, waiting")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_path.read_text()
    assert "released 2" in log, log
    assert harness.depth() == (2, 0)  # both visible again, none in flight
    assert harness.depth(harness.dlq_url) == (0, 0)  # a shutdown is no failure
    recs = harness.records()
    assert recs and all(r.status is FileStatus.RECEIVED and r.claim_owner is None for r in recs), (
        recs
    )
    got = harness.sqs.receive_message(
        QueueUrl=harness.queue_url,
        MaxNumberOfMessages=10,
        AttributeNames=["ApproximateReceiveCount"],
        WaitTimeSeconds=1,
    ).get("Messages", [])
    # each received once by the worker, once now
    assert sorted(m["Attributes"]["ApproximateReceiveCount"] for m in got) == ["2", "2"], got
