"""The ndjson-manifest builder end to end: moto S3+SQS, real SQLite / DynamoDB, real workers."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from itest_support import Harness, spawn_worker, wait_for

from s3flow.settings import AwsSettings
from s3flow.state import (
    DynamoStateStore,
    ManifestFileStatus,
    ManifestRecord,
    ManifestStatus,
    ObjectId,
    StateStore,
    open_state_store,
)

pytestmark = pytest.mark.integration

DAY = "2025-12-23"


def line(i: int, pad: int = 0) -> bytes:
    return (json.dumps({"id": i, "ts": f"{DAY}T10:00:00Z", "pad": "x" * pad}) + "\n").encode()


def body(n_records: int = 3, size: int | None = None) -> bytes:
    data = b"".join(line(i) for i in range(n_records))
    if size is not None:  # exactly `size` bytes: the last record padded
        head = b"".join(line(i) for i in range(n_records - 1))
        last = line(n_records - 1)
        data = head + line(n_records - 1, size - len(head) - len(last))
        assert len(data) == size
    return data


def options(**over: Any) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "dataset": "events",
        "min_bytes": 10,
        "max_bytes": 100_000,
        "manifest_max_files": 1000,
        "manifest_max_bytes": 10_000_000,
        "manifest_max_wait_s": 3600,
    }
    opts.update(over)
    return opts


def store_of(h: Harness) -> StateStore:
    assert h.settings is not None
    return open_state_store(h.settings.state.url, h.settings.aws)


async def _manifests(h: Harness) -> list[ManifestRecord]:
    async with store_of(h) as store:
        return await store.list_manifests(dataset="events")


def manifests(h: Harness) -> list[ManifestRecord]:
    return asyncio.run(_manifests(h))


def pending_count(h: Harness, day: str = DAY) -> int:
    async def go() -> int:
        async with store_of(h) as store:
            return (await store.pending("events", day)).count

    return asyncio.run(go())


def published(h: Harness, m: ManifestRecord) -> dict[str, Any]:
    """The manifest JSON at the recorded location (it must exist)."""
    assert m.location is not None and m.location.startswith("s3://")
    bucket, _, key = m.location[5:].partition("/")
    assert key == f"manifests/events/date={m.date}/{m.manifest_id}.json"
    doc: dict[str, Any] = json.loads(h.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return doc


def check_document(h: Harness, m: ManifestRecord) -> None:
    doc = published(h, m)
    assert doc["version"] == 1 and doc["manifest_id"] == m.manifest_id
    assert (doc["dataset"], doc["date"], doc["trigger"]) == ("events", m.date, m.trigger)
    assert doc["fencing_token"] == m.fencing_token and doc["sealed_by"] == m.sealed_by
    assert doc["total_files"] == len(doc["files"]) == m.total_files
    assert doc["total_bytes"] == sum(f["size"] for f in doc["files"]) == m.total_bytes
    for f in doc["files"]:
        head = h.s3.head_object(Bucket=f["bucket"], Key=f["key"])
        assert (f["size"], f["etag"]) == (head["ContentLength"], head["ETag"].strip('"'))
        assert f["version_id"] is None


@pytest.mark.timeout(90)
def test_count_trigger_seals_at_the_threshold(harness: Harness) -> None:
    # Manifests go to the source bucket (the default): the builder must skip them.
    harness.configure(processor="ndjson-manifest", options=options(manifest_max_files=5))
    for i in range(12):
        harness.put(f"{DAY}/part-{i:03d}.ndjson", body(3))
    harness.run(timeout_s=60)
    ms = manifests(harness)
    assert [(m.total_files, m.trigger, m.status) for m in ms] == [
        (5, "count", ManifestStatus.SEALED)
    ] * 2
    for m in ms:
        check_document(harness, m)
    keys = [f.key for m in ms for f in m.files]
    assert len(set(keys)) == 10
    assert pending_count(harness) == 2  # below every threshold: waits (age trigger)


@pytest.mark.timeout(90)
def test_a_file_overwritten_before_its_first_notification_is_listed_as_it_is_now(
    harness: Harness,
) -> None:
    """Without a versionId or sequencer (moto sends none) the worker takes a file's upload
    from a HEAD: the object as it is now. The manifest listed the first notification's
    eTag though: compaction of it then failed for good (PreconditionFailed), and the
    second upload was dropped as a duplicate of the first's record."""
    harness.configure(processor="ndjson-manifest", options=options(manifest_max_files=2))
    harness.put(f"{DAY}/a.ndjson", body(3))
    harness.put(f"{DAY}/a.ndjson", body(5))  # overwritten before the worker ran
    harness.put(f"{DAY}/b.ndjson", body(2))
    harness.run(timeout_s=60)
    (m,) = manifests(harness)
    assert sorted(f.key for f in m.files) == [f"{DAY}/a.ndjson", f"{DAY}/b.ndjson"]
    check_document(harness, m)  # every file's eTag and size are the object's now
    assert pending_count(harness) == 0


@pytest.mark.timeout(90)
def test_manifest_prefix_overlapping_the_inputs_skips_only_manifests(harness: Harness) -> None:
    # Inputs are 2025-12-23/...; manifests go to 2025-manifests/events/date=...: the
    # prefix "2025-" covers both, and only the manifest objects are skipped.
    harness.configure(
        processor="ndjson-manifest", options=options(manifest_max_files=5, manifest_prefix="2025-")
    )
    for i in range(6):
        harness.put(f"{DAY}/part-{i:03d}.ndjson", body(3))
    harness.run(timeout_s=60)
    ms = manifests(harness)
    assert [(m.total_files, m.trigger) for m in ms] == [(5, "count")]
    assert ms[0].location == (
        f"s3://{harness.bucket}/2025-events/date={DAY}/{ms[0].manifest_id}.json"
    )
    assert pending_count(harness) == 1  # the manifest object itself was not tracked


@pytest.mark.timeout(90)
def test_bytes_trigger_seals_at_the_threshold(harness: Harness) -> None:
    harness.configure(
        processor="ndjson-manifest",
        options=options(manifest_max_bytes=3000, manifest_bucket=harness.out_bucket),
    )
    for i in range(7):
        harness.put(f"{DAY}/part-{i:03d}.ndjson", body(3, size=1000))
    harness.run(timeout_s=60)
    ms = manifests(harness)
    assert [(m.total_files, m.total_bytes, m.trigger) for m in ms] == [(3, 3000, "bytes")] * 2
    for m in ms:
        check_document(harness, m)
        assert m.location is not None and m.location.startswith(f"s3://{harness.out_bucket}/")
    assert pending_count(harness) == 1


def write_config(h: Harness, path: Path, opts: dict[str, Any], **pipeline: Any) -> Path:
    assert h.settings is not None
    p = h.settings.pipelines[0]
    lines = [
        "[worker]",
        "shutdown_grace_s = 10",
        "ack_batch_window_s = 0.02",
        "[state]",
        f"url = {json.dumps(h.settings.state.url)}",
        "[[pipelines]]",
        f"name = {json.dumps(p.name)}",
        'processor = "ndjson-manifest"',
        f"bucket = {json.dumps(p.bucket)}",
        f"queue = {json.dumps(p.queue)}",
        f"output = {json.dumps(p.output)}",
        f"concurrency = {pipeline.get('concurrency', 4)}",
        "visibility_timeout_s = 30",
        "wait_time_s = 1",
        "retry_base_s = 1",
        "[pipelines.options]",
    ]
    for k, v in opts.items():
        lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.timeout(90)
def test_age_trigger_seals_a_small_batch(harness: Harness, tmp_path: Path) -> None:
    harness.configure(processor="ndjson-manifest", options=options())
    # 6 s: the three files are tracked well within it even on a loaded machine, so the
    # timer seals all three at once.
    opts = options(manifest_max_wait_s=6, seal_interval_s=0.3, manifest_bucket=harness.out_bucket)
    cfg = write_config(harness, tmp_path / "s3flow.toml", opts)
    log = tmp_path / "worker.log"
    proc = spawn_worker(cfg, log)  # a long-running worker: only the timer can seal
    try:
        for i in range(3):
            harness.put(f"{DAY}/part-{i:03d}.ndjson", body(2))
        wait_for(lambda: pending_count(harness) == 3, 30, "3 pending files")
        assert manifests(harness) == []  # not before the wait is over
        ms = wait_for(lambda: manifests(harness), 30, "a manifest sealed by age")
        (m,) = ms
        assert (m.total_files, m.trigger, m.status) == (3, "age", ManifestStatus.SEALED)
        wait_for(lambda: manifests(harness)[0].location, 10, "the manifest published")
        check_document(harness, manifests(harness)[0])
        assert pending_count(harness) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()[-3000:]


@pytest.mark.timeout(90)
def test_invalid_files_are_quarantined_and_the_worker_goes_on(harness: Harness) -> None:
    harness.configure(
        processor="ndjson-manifest",  # quarantines whatever on_permanent_error says
        options=options(max_bytes=5000, manifest_bucket=harness.out_bucket),
    )
    bad: dict[str, tuple[bytes, str]] = {
        f"{DAY}/malformed.ndjson": (b'{"id": 1, oops\n{"id": 2}\n', "not valid JSON"),
        f"{DAY}/array.ndjson": (b'[1, 2, 3]\n{"id": 2}\n', "first record is a JSON list"),
        f"{DAY}/small.ndjson": (b"{}\n", "below the minimum of 10 bytes"),
        f"{DAY}/big.ndjson": (body(3, size=6000), "above the maximum of 5000 bytes"),
        # A valid gzip header, then a deflate block of the reserved type 3.
        f"{DAY}/corrupt.ndjson.gz": (gzip.compress(body(50))[:10] + b"\xff" * 64, "not readable"),
        f"{DAY}/latin1.ndjson": (
            '{"name": "café"}\n'.encode("latin-1") + b"\n" * 20,
            "not readable: first record is not UTF-8",
        ),
        "undated/x.ndjson": (body(2), "no date in the key"),
        # Deeper than Python's json reads (it raised RecursionError: retried, then the DLQ)
        f"{DAY}/deep.ndjson": (b'{"x": ' + b"[" * 2000 + b"]" * 2000 + b"}\n", "too deeply"),
    }
    for key, (data, _) in bad.items():
        harness.put(key, data)
    harness.put(f"{DAY}/good.ndjson.gz", gzip.compress(body(40)))
    harness.put(f"{DAY}/good.ndjson", b"\n\n" + body(2))  # leading blank lines are fine
    metrics = harness.run(timeout_s=60)
    assert metrics.total("quarantined") == len(bad)
    assert metrics.total("dead_lettered") == 0

    async def records() -> dict[str, Any]:
        async with store_of(harness) as store:
            return {r.key: r for r in await store.list_files(pipeline="p")}

    recs = asyncio.run(records())
    for key, (_, reason) in bad.items():
        assert recs[key].status.value == "quarantined", key
        assert recs[key].last_error_class == "InvalidNdjsonError"
        assert reason in (recs[key].last_error or ""), (key, recs[key].last_error)
        tags = {
            t["Key"]: t["Value"]
            for t in harness.s3.get_object_tagging(Bucket=harness.bucket, Key=key)["TagSet"]
        }
        assert tags["s3flow-status"] == "quarantined" and tags["s3flow-reason"], key
    assert recs[f"{DAY}/good.ndjson.gz"].status.value == "completed"
    assert pending_count(harness) == 2


def _all_published(h: Harness) -> list[dict[str, Any]]:
    ms = manifests(h)
    return [published(h, m) for m in ms]


def _run_four_builders(harness: Harness, tmp_path: Path, n_files: int) -> None:
    opts = options(
        manifest_max_files=3,  # small batches: many seals race (a broken lock shows)
        manifest_max_bytes=3000,  # some batches seal on bytes, some on count
        seal_on_stop=True,
        seal_interval_s=0.5,
    )
    cfg = write_config(harness, tmp_path / "s3flow.toml", opts, concurrency=4)
    expected = set()
    for i in range(n_files):
        day = ("2025-12-23", "2025-12-24")[i % 2]
        key = f"{day}/part-{i:03d}.ndjson"
        harness.put(key, body(2, size=400 + (i % 5) * 300))
        expected.add(key)
    wait_for(lambda: sum(harness.depth()) >= n_files, 30, "every notification queued")
    procs = [spawn_worker(cfg, tmp_path / f"w{i}.log", "--burst") for i in range(4)]
    try:
        for p in procs:
            p.wait(timeout=100)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(4)]
    assert [p.returncode for p in procs] == [0] * 4, [t[-2000:] for t in logs]
    # The queue was shared: several builders tracked files (and raced to seal them).
    counts = [re.search(r"(\d+) objects processed", t) for t in logs]
    assert sum(1 for c in counts if c and int(c.group(1)) > 0) >= 2, [t[-500:] for t in logs]
    docs = _all_published(harness)
    listed = [f["key"] for d in docs for f in d["files"]]
    assert len(listed) == len(set(listed)), "a file is in two manifests"
    assert set(listed) == expected, f"missing: {sorted(expected - set(listed))}"
    for d in docs:
        assert d["total_files"] <= 3 and (d["total_bytes"] <= 3000 or d["total_files"] == 1)
        assert {f["key"][:10] for f in d["files"]} == {d["date"]}
    assert pending_count(harness, "2025-12-23") == pending_count(harness, "2025-12-24") == 0

    async def tracked() -> None:
        async with store_of(harness) as store:
            for d in docs:
                for f in d["files"]:
                    oid = ObjectId(f["bucket"], f["key"], f["etag"])
                    t = await store.get_tracked("events", d["date"], oid)
                    assert t is not None and t.status is ManifestFileStatus.MANIFESTED
                    assert t.manifest_id == d["manifest_id"]

    asyncio.run(tracked())


@pytest.mark.timeout(150)
def test_four_builders_on_one_queue_sqlite(harness: Harness, tmp_path: Path) -> None:
    harness.configure(processor="ndjson-manifest", options=options())
    _run_four_builders(harness, tmp_path, 60)


@pytest.mark.timeout(150)
def test_four_builders_on_one_queue_dynamodb(harness: Harness, tmp_path: Path) -> None:
    harness.state_url = f"dynamodb://mb-{uuid.uuid4().hex[:8]}"
    harness.configure(processor="ndjson-manifest", options=options())
    assert harness.settings is not None
    aws = AwsSettings(endpoint_url=harness.endpoint.url, region="us-east-1")
    asyncio.run(DynamoStateStore(harness.state_url[len("dynamodb://") :], aws).ensure_tables())
    _run_four_builders(harness, tmp_path, 40)


@pytest.mark.timeout(90)
def test_burst_worker_without_new_files_seals_batches_due_by_age(harness: Harness) -> None:
    """The sealer starts with the worker, not with the first file it sees."""
    opts = options(manifest_max_wait_s=8, seal_interval_s=0.2, manifest_bucket=harness.out_bucket)
    harness.configure(processor="ndjson-manifest", options=opts)
    for i in range(2):
        harness.put(f"{DAY}/part-{i:03d}.ndjson", body(2))
    harness.run()  # tracks both; exits before they are due (seal_on_stop is off; 8 s
    # leaves a loaded machine time to exit)
    assert pending_count(harness) == 2
    assert manifests(harness) == []

    async def oldest_age_s() -> float:
        async with store_of(harness) as store:
            oldest = (await store.pending("events", DAY)).oldest_at
        return 0.0 if oldest is None else time.time() - oldest

    wait_for(lambda: asyncio.run(oldest_age_s()) > 8, 30, "the batch to be due")
    metrics = harness.run()  # an empty queue: no file to trigger anything
    assert metrics.pipelines["p"].objects_processed == 0
    (m,) = manifests(harness)
    assert (m.total_files, m.trigger) == (2, "age")
    assert pending_count(harness) == 0
