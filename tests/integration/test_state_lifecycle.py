"""File lifecycle with the state store: duplicates, two workers, crash before ack, quarantine."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlencode

import pytest
from itest_support import Harness, s3_event, spawn_worker, wait_for

from s3flow.app import open_store
from s3flow.ops.files import release_quarantined
from s3flow.state.records import FileStatus, ObjectId

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent


def test_second_delivery_of_completed_object_is_a_duplicate(harness: Harness) -> None:
    harness.configure()
    harness.put("dup.txt", b"1\n2\n")
    m1 = harness.run()
    assert m1.pipelines["p"].objects_processed == 1
    etag = harness.s3.head_object(Bucket=harness.bucket, Key="dup.txt")["ETag"].strip('"')
    # moto's event again (no sequencer): the same upload, identified by (eTag, LastModified).
    again = s3_event(harness.bucket, "dup.txt", etag=etag, sequencer=None)
    harness.send_raw(json.dumps({"Records": [again]}))
    # An event with a sequencer is its own identity: processed once, then a duplicate.
    with_seq = json.dumps({"Records": [s3_event(harness.bucket, "dup.txt", etag=etag)]})
    harness.send_raw(with_seq)
    harness.send_raw(with_seq)
    m2 = harness.run()
    p = m2.pipelines["p"]
    assert p.duplicates == 2 and p.objects_processed == 1
    recs = harness.records()
    assert {r.version.split("@")[0] for r in recs} == {etag}
    assert all(r.status is FileStatus.COMPLETED and r.attempts == 1 for r in recs)
    assert all(r.outputs == [f"s3://{harness.out_bucket}/res/dup.txt.json"] for r in recs)


def test_two_workers_same_object_processed_exactly_once(harness: Harness, tmp_path: Path) -> None:
    marker = tmp_path / "m"
    marker.mkdir()
    harness.configure(
        processor="s3flow_testprocs:SlowProcessor",
        concurrency=2,
        visibility_timeout_s=20,
        options={"sleep_s": 1.5, "marker_dir": str(marker)},
    )
    cfg = harness.write_config()
    harness.put("once.txt", b"a\nb\n")
    etag = harness.s3.head_object(Bucket=harness.bucket, Key="once.txt")["ETag"].strip('"')
    event = s3_event(harness.bucket, "once.txt", etag=etag, sequencer=None)  # as moto sends it
    body = json.dumps({"Records": [event]})
    for _ in range(3):  # the same upload delivered again: four deliveries in all
        harness.send_raw(body)
    w1 = spawn_worker(cfg, tmp_path / "w1.log", "--burst")
    w2 = spawn_worker(cfg, tmp_path / "w2.log", "--burst")
    try:
        assert w1.wait(timeout=90) == 0, (tmp_path / "w1.log").read_text()
        assert w2.wait(timeout=90) == 0, (tmp_path / "w2.log").read_text()
    finally:
        for w in (w1, w2):
            if w.poll() is None:
                w.kill()
    assert len(list(marker.glob("done-*"))) == 1  # one processing, whatever the deliveries
    assert harness.output_keys() == ["res/once.txt.json"]
    (rec,) = harness.records()
    assert rec.status is FileStatus.COMPLETED and rec.attempts == 1
    assert harness.depth() == (0, 0)


CRASHER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from s3flow.app import run_worker
    from s3flow.settings import load_settings
    from s3flow.worker.engine import WorkerObserver

    class KillAfterRecord(WorkerObserver):
        def object_finished(self, pipeline, event, result, error):
            # Output written and state recorded; the ack has not been sent.
            os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(run_worker(load_settings(sys.argv[1]), burst=True, observer=KillAfterRecord()))
    """
)


def test_kill_9_between_output_and_ack_is_recognised_as_done(
    harness: Harness, tmp_path: Path
) -> None:
    marker = tmp_path / "m"
    marker.mkdir()
    harness.configure(
        processor="s3flow_testprocs:SlowProcessor",
        visibility_timeout_s=2,
        options={"sleep_s": 0, "marker_dir": str(marker)},
    )
    cfg = harness.write_config()
    harness.put("crash.txt", b"1\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHER, str(cfg)], env=env, capture_output=True, timeout=60
    )
    assert crashed.returncode == -9
    assert len(list(marker.glob("done-*"))) == 1
    assert harness.output_keys() == ["res/crash.txt.json"]
    first_output = harness.s3.head_object(Bucket=harness.out_bucket, Key="res/crash.txt.json")
    # The message was never acked: it comes back after the visibility timeout.
    m = harness.run()
    p = m.pipelines["p"]
    assert p.duplicates == 1 and p.objects_processed == 0
    assert len(list(marker.glob("done-*"))) == 1  # no second processing
    again = harness.s3.head_object(Bucket=harness.out_bucket, Key="res/crash.txt.json")
    assert again["LastModified"] == first_output["LastModified"]  # no second output
    assert harness.depth() == (0, 0)


def _tags(h: Harness, key: str) -> dict[str, str]:
    tags = h.s3.get_object_tagging(Bucket=h.bucket, Key=key)["TagSet"]
    return {t["Key"]: t["Value"] for t in tags}


def test_quarantine_bad_files_and_keep_running(harness: Harness) -> None:
    harness.configure(
        options={"text_encoding": "utf-8"},
        on_permanent_error="quarantine",
        validation={"min_bytes": 2, "max_bytes": 10_000},
    )
    harness.put("too-big.txt", b"x\n" * 10_000)
    harness.put("too-small.txt", b"x")
    harness.put("latin1.txt", "café\n".encode("latin-1"))
    whole = gzip.compress("".join(f"{i}\n" for i in range(5000)).encode())
    harness.put("truncated.gz", whole[: len(whole) // 2])
    harness.put("good.txt", b"fine\n")
    m = harness.run()
    p = m.pipelines["p"]
    assert p.quarantined == 4 and p.objects_processed == 1 and p.dead_lettered == 0
    assert harness.depth() == (0, 0) and harness.depth(harness.dlq_url) == (0, 0)
    by_key = {r.key: r for r in harness.records()}
    assert by_key["good.txt"].status is FileStatus.COMPLETED
    for key, needle in [
        ("too-big.txt", "above the maximum"),
        ("too-small.txt", "below the minimum"),
        ("latin1.txt", "not utf-8"),
        ("truncated.gz", "truncated gzip"),
    ]:
        rec = by_key[key]
        assert rec.status is FileStatus.QUARANTINED, key
        assert needle in (rec.last_error or ""), (key, rec.last_error)
        tags = _tags(harness, key)
        assert tags["s3flow-status"] == "quarantined"
        assert needle.split()[0] in tags["s3flow-reason"]


def test_quarantine_keeps_the_objects_own_tags(harness: Harness) -> None:
    """S3 allows 10 tags: the object's own are kept; the quarantine tags take the room
    left (the state store records the quarantine whatever fits)."""
    harness.configure(validation={"max_bytes": 3})
    own = {n: {f"t{i}": f"v{i}" for i in range(n)} for n in (8, 9, 10)}
    for n, tags in own.items():
        harness.put(f"tagged-{n}.txt", b"1\n2\n3\n", Tagging=urlencode(tags))
    m = harness.run()
    assert m.pipelines["p"].quarantined == 3
    assert harness.depth() == (0, 0) and harness.depth(harness.dlq_url) == (0, 0)
    by_key = {r.key: r for r in harness.records()}
    for n, tags in own.items():
        key = f"tagged-{n}.txt"
        assert by_key[key].status is FileStatus.QUARANTINED, key
        assert "above the maximum" in (by_key[key].last_error or ""), key
        now = _tags(harness, key)
        assert {k: v for k, v in now.items() if k.startswith("t")} == tags, key
        marks = {k: v for k, v in now.items() if k.startswith("s3flow-")}
        assert list(marks) == ["s3flow-status", "s3flow-reason"][: 10 - n], key
        assert all(v == "quarantined" for k, v in marks.items() if k == "s3flow-status")


def test_quarantined_file_can_be_released(harness: Harness) -> None:
    settings = harness.configure(validation={"max_bytes": 3})
    harness.put("big.txt", b"1\n2\n3\n")
    harness.run()
    assert harness.records()[0].status is FileStatus.QUARANTINED
    settings = harness.configure(provision_it=False, validation={"max_bytes": 100})

    async def release() -> list[ObjectId]:
        async with open_store(settings) as store:
            assert store is not None
            return await release_quarantined(
                settings, settings.pipelines[0], store, "big.txt", None
            )

    assert len(asyncio.run(release())) == 1
    assert "s3flow-status" not in _tags(harness, "big.txt")
    m = harness.run()
    assert m.pipelines["p"].objects_processed == 1
    (rec,) = harness.records()
    assert rec.status is FileStatus.COMPLETED
    wait_for(lambda: harness.result("big.txt") is not None, 5, "result")


def test_dynamodb_backend_provisioned_and_deduplicating(harness: Harness) -> None:
    from s3flow.app import provision_all

    harness.state_url = f"dynamodb://s3flow-{harness.queue}"
    settings = harness.configure(provision_it=False)
    first = asyncio.run(provision_all(settings))
    assert {c.action for c in first if c.kind == "table"} == {"created"}
    second = asyncio.run(provision_all(settings))
    assert {c.action for c in second} == {"unchanged"}
    harness.purge()
    harness.put("d.txt", b"1\n")
    assert harness.run().pipelines["p"].objects_processed == 1
    etag = harness.s3.head_object(Bucket=harness.bucket, Key="d.txt")["ETag"].strip('"')
    dup = s3_event(harness.bucket, "d.txt", etag=etag, sequencer=None)  # moto's event again
    harness.send_raw(json.dumps({"Records": [dup]}))
    m = harness.run()
    assert m.pipelines["p"].duplicates == 1 and m.pipelines["p"].objects_processed == 0
    (rec,) = harness.records()
    assert rec.status is FileStatus.COMPLETED
