"""Operator tools against a real endpoint: DLQ list/redrive (crash-safe), backfill,
files release."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest
from itest_support import Harness, wait_for

from s3flow.app import open_store
from s3flow.errors import S3flowError
from s3flow.events import content_version
from s3flow.ops.backfill import backfill
from s3flow.ops.dlq import list_dlq, redrive
from s3flow.ops.files import release
from s3flow.quarantine import REASON_TAG, STATUS_TAG
from s3flow.state.records import FileStatus, ObjectId

pytestmark = pytest.mark.integration


def _all_bodies(h: Harness, url: str) -> list[str]:
    """Every body on a queue (received with a long visibility so each is seen once)."""
    out: list[str] = []
    while True:
        msgs = h.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=120, WaitTimeSeconds=0
        ).get("Messages", [])
        if not msgs:
            return out
        out += [m["Body"] for m in msgs]


def test_dlq_list_and_redrive_then_process(harness: Harness) -> None:
    settings = harness.configure()
    for i in range(3):
        harness.put(f"r{i}.txt", b"1\n")
    harness.purge()  # the files' own notifications are gone: only the DLQ has them
    for i in range(3):
        harness.sqs.send_message(
            QueueUrl=harness.dlq_url,
            MessageBody=json.dumps({"Records": [harness.event(f"r{i}.txt")]}),
            MessageAttributes={
                "s3flow.error-class": {"DataType": "String", "StringValue": "AwsError"},
                "s3flow.error": {"DataType": "String", "StringValue": "throttled, long ago"},
            },
        )
    listed = asyncio.run(list_dlq(settings, settings.pipelines[0]))
    assert len(listed) == 3 and {m.error_class for m in listed} == {"AwsError"}
    assert sorted(k for m in listed for k in m.keys) == [
        f"s3://{harness.bucket}/r{i}.txt" for i in range(3)
    ]
    wait_for(lambda: harness.depth(harness.dlq_url) == (3, 0), 5, "listing leaves them visible")
    report = asyncio.run(redrive(settings, settings.pipelines[0]))
    # moto has no StartMessageMoveTask: the receive + send + delete fallback ran.
    assert report.method == "receive-send-delete" and report.moved == 3
    assert harness.depth(harness.dlq_url) == (0, 0)
    m = harness.run()
    assert m.pipelines["p"].objects_processed == 3
    assert len(harness.output_keys()) == 3


@pytest.mark.timeout(180)
def test_redrive_killed_midway_loses_nothing(harness: Harness, tmp_path: Path) -> None:
    harness.configure()
    cfg = harness.write_config()
    n = 600
    for start in range(0, n, 10):
        harness.sqs.send_message_batch(
            QueueUrl=harness.dlq_url,
            Entries=[{"Id": str(i), "MessageBody": f"message-{start + i}"} for i in range(10)],
        )
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3flow", "dlq", "redrive", "-c", str(cfg), "--lease-s", "3"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    try:
        wait_for(lambda: harness.depth()[0] >= 20, 60, "the redrive to be under way")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    bodies = set(_all_bodies(harness, harness.queue_url))
    assert len(bodies) > 0  # usually midway; on a very fast machine it may have finished
    # Messages the killed redrive held come back after its 3 s lease; redrive
    # again until the DLQ is empty (each pass moves what is visible).
    settings = harness.settings
    assert settings is not None
    deadline = time.monotonic() + 90
    while harness.depth(harness.dlq_url) != (0, 0):
        assert time.monotonic() < deadline, f"DLQ not drained: {harness.depth(harness.dlq_url)}"
        asyncio.run(redrive(settings, settings.pipelines[0], lease_s=3, use_move_task=False))
        bodies |= set(_all_bodies(harness, harness.queue_url))
        time.sleep(0.2)  # pacing between redrive passes while held messages return
    bodies |= set(_all_bodies(harness, harness.queue_url))
    assert bodies == {f"message-{i}" for i in range(n)}  # none lost (duplicates allowed)


@pytest.mark.timeout(240)
def test_backfill_enqueues_exactly_the_unfinished_half(harness: Harness) -> None:
    # Objects that exist before any notification is configured.
    harness.s3.create_bucket(Bucket=harness.bucket)
    keys = [f"data/{i:04d}.txt" for i in range(1000)]

    def put(k: str) -> None:
        harness.s3.put_object(Bucket=harness.bucket, Key=k, Body=b"1\n2\n")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, keys))
    settings = harness.configure(concurrency=32)
    etag = harness.s3.head_object(Bucket=harness.bucket, Key=keys[0])["ETag"].strip('"')

    async def mark_half_done() -> None:
        async with open_store(settings) as store:
            assert store is not None
            for k in keys[::2]:
                oid = ObjectId(harness.bucket, k, etag)
                claim = await store.claim(oid, pipeline="p", owner="earlier", ttl_s=60)
                await store.complete(oid, token=claim.token, outputs=[])

    asyncio.run(mark_half_done())

    async def run_backfill() -> Any:
        async with open_store(settings) as store:
            return await backfill(settings, settings.pipelines[0], store=store)

    report = asyncio.run(run_backfill())
    assert report.listed == 1000 and report.enqueued == 500 and report.already_done == 500
    again = asyncio.run(run_backfill())
    assert again.enqueued == 0 and again.already_queued == 500  # safe to run twice
    m = harness.run(timeout_s=200)
    assert m.pipelines["p"].objects_processed == 500
    done = {k.removeprefix("res/").removesuffix(".json") for k in _list_all(harness)}
    assert done == set(keys[1::2])


def _list_all(h: Harness) -> list[str]:
    out: list[str] = []
    for page in h.s3.get_paginator("list_objects_v2").paginate(Bucket=h.out_bucket):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def test_backfill_status_is_recorded(harness: Harness) -> None:
    settings = harness.configure()
    harness.put("x.txt", b"1\n")
    harness.purge()

    async def go() -> FileStatus:
        async with open_store(settings) as store:
            assert store is not None
            await backfill(settings, settings.pipelines[0], store=store)
            head = harness.s3.head_object(Bucket=harness.bucket, Key="x.txt")
            version = content_version(head["ETag"], head["LastModified"])
            rec = await store.get(ObjectId(harness.bucket, "x.txt", version))
            assert rec is not None
            return rec.status

    assert asyncio.run(go()) is FileStatus.RECEIVED


def test_a_backfill_stopped_by_an_error_leaves_no_object_behind(harness: Harness) -> None:
    """An object is only recorded as queued when its notification goes out: a run that
    stops before (here: a key that does not exist) leaves the next backfill its work."""
    settings = harness.configure()
    harness.put("a.txt", b"1\n")
    harness.purge()  # no notification: the object waits for a backfill

    async def go(keys: list[str] | None, force: bool) -> Any:
        async with open_store(settings) as store:
            return await backfill(
                settings, settings.pipelines[0], keys=keys, store=store, force=force
            )

    with pytest.raises(S3flowError, match=r"missing\.txt"):
        asyncio.run(go(["a.txt", "missing.txt"], True))
    assert harness.depth() == (0, 0)
    report = asyncio.run(go(None, False))
    assert (report.enqueued, report.already_queued) == (1, 0)
    assert harness.run().pipelines["p"].objects_processed == 1
    assert harness.result("a.txt") is not None


class _Hooked:
    """A real state store whose ``set_status`` / ``get`` call a hook after they answer:
    faults at an exact moment of a backfill (a Ctrl-C, a worker's claim)."""

    def __init__(self, store: Any, **hooks: Any) -> None:
        self._store, self._hooks = store, hooks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def set_status(self, *args: Any, **kw: Any) -> Any:
        done = await self._store.set_status(*args, **kw)
        if "set_status" in self._hooks:
            await self._hooks["set_status"](args[0])
        return done

    async def get(self, oid: ObjectId) -> Any:
        rec = await self._store.get(oid)
        if "get" in self._hooks:
            await self._hooks["get"](oid)
        return rec


def _version(h: Harness, key: str) -> str:
    head = h.s3.head_object(Bucket=h.bucket, Key=key)
    return content_version(head["ETag"], head["LastModified"])


def test_a_backfill_stopped_mid_batch_sends_what_it_marked(harness: Harness) -> None:
    """Ctrl-C between setting a batch's records to received and sending its notifications
    left records saying "queued" with nothing queued: never processed, and every later
    backfill skipped them as already queued. Now the batch under way is finished first."""
    settings = harness.configure()
    keys = [f"dead{i}.txt" for i in range(5)]
    for key in keys:
        harness.put(key, b"1\n")
    harness.purge()
    for key in keys:  # dead-lettered long ago: a reprocess (forced) enqueues them again
        harness.end_record(key, _version(harness, key), FileStatus.DEAD)

    async def go() -> None:
        async with open_store(settings) as store:
            run = asyncio.current_task()
            assert run is not None

            async def stop_now(oid: ObjectId) -> None:
                if not run.cancelling():
                    run.cancel()  # what asyncio.run does on Ctrl-C (once)

            hooked = _Hooked(store, set_status=stop_now)
            with pytest.raises(asyncio.CancelledError):
                await backfill(settings, settings.pipelines[0], store=hooked, force=True)  # type: ignore[arg-type]

    asyncio.run(go())
    assert _enqueued_keys(harness) == keys  # the marked batch went out whole

    async def statuses() -> set[FileStatus]:
        async with open_store(settings) as store:
            assert store is not None
            recs = [
                await store.get(ObjectId(harness.bucket, k, _version(harness, k))) for k in keys
            ]
            return {r.status for r in recs if r is not None}

    assert asyncio.run(statuses()) == {FileStatus.RECEIVED}


def test_a_backfill_never_takes_an_object_from_a_worker_that_claimed_it(
    harness: Harness,
) -> None:
    """A worker's claim made between the listing and the batch's send was overwritten
    (processing -> received, the fencing token bumped): the worker's run was cut off as
    "claim expired" and the object processed twice."""
    settings = harness.configure()
    harness.put("new.txt", b"1\n")
    harness.purge()
    oid = ObjectId(harness.bucket, "new.txt", _version(harness, "new.txt"))
    tokens: list[int] = []

    async def go() -> Any:
        async with open_store(settings) as store:
            assert store is not None

            async def worker_claims(seen: ObjectId) -> None:
                if seen == oid and not tokens:
                    claim = await store.claim(oid, pipeline="p", owner="w1", ttl_s=60)
                    tokens.append(claim.token)

            hooked = _Hooked(store, get=worker_claims)
            report = await backfill(settings, settings.pipelines[0], store=hooked)  # type: ignore[arg-type]
            return report, await store.get(oid)

    report, rec = asyncio.run(go())
    assert rec.status is FileStatus.PROCESSING and rec.claim_owner == "w1"
    assert rec.fencing_token == tokens[0]  # the worker's claim still holds
    assert report.enqueued == 1  # its notification: the worker acknowledges it as a duplicate


def test_a_plain_backfill_leaves_a_failed_record_to_its_retry(harness: Harness) -> None:
    """A failed record (its notification comes back for the next try) was enqueued again
    with its failure count reset: two notifications, and a file that always fails never
    reached the DLQ under a backfill run on a schedule."""
    settings = harness.configure()
    harness.put("flaky.txt", b"1\n")
    harness.purge()
    oid = harness.end_record("flaky.txt", _version(harness, "flaky.txt"), FileStatus.FAILED)

    async def go() -> Any:
        async with open_store(settings) as store:
            assert store is not None
            report = await backfill(settings, settings.pipelines[0], store=store)
            return report, await store.get(oid)

    report, rec = asyncio.run(go())
    assert (report.enqueued, report.already_queued, report.awaiting_retry) == (0, 0, 1)
    assert rec.status is FileStatus.FAILED and rec.failures == 1
    assert harness.depth() == (0, 0)


def _enqueued_keys(h: Harness) -> list[str]:
    """The keys of every notification on the pipeline's queue (each received once)."""
    keys = []
    for body in _all_bodies(h, h.queue_url):
        keys += [unquote_plus(r["s3"]["object"]["key"]) for r in json.loads(body)["Records"]]
    return sorted(keys)


def test_backfill_prefix_narrows_the_pipelines_keys_and_its_filters_hold(
    harness: Harness,
) -> None:
    """--prefix narrows the pipeline's prefix and never replaces it: one outside it is
    refused (naming both); objects the suffix / key_regex reject are not enqueued, listed
    or named (reprocess KEY: refused before anything is sent)."""
    settings = harness.configure(prefix="in/", suffix=".txt", key_regex="keep")
    taken = ["in/keep-a.txt", "in/sub/keep-b.txt"]
    for k in [*taken, "in/keep-c.csv", "in/drop-d.txt", "other/keep-e.txt"]:
        harness.put(k, b"1\n")
    harness.purge()  # the notifications of the puts: the objects wait for a backfill

    async def go(**kw: Any) -> Any:
        async with open_store(settings) as store:
            return await backfill(settings, settings.pipelines[0], store=store, **kw)

    with pytest.raises(S3flowError) as outside:
        asyncio.run(go(prefix="other/"))
    assert "'other/'" in str(outside.value) and "'in/'" in str(outside.value)
    assert "'in/other/'" in str(outside.value)  # what to give instead
    assert harness.depth() == (0, 0)
    narrowed = asyncio.run(go(prefix="in/sub/"))
    assert (narrowed.listed, narrowed.enqueued) == (1, 1)
    whole = asyncio.run(go())  # in/ only: the csv and drop-d are filtered
    assert (whole.listed, whole.enqueued, whole.already_queued, whole.filtered) == (4, 1, 1, 2)
    # --since is no filter of the pipeline's: counted apart ("filtered 4" read like one)
    later = asyncio.run(go(since=datetime.now(UTC) + timedelta(days=1)))
    assert (later.listed, later.enqueued, later.older, later.filtered) == (4, 0, 4, 0)
    with pytest.raises(S3flowError, match=r"in/keep-c\.csv \(key does not end with '\.txt'\)"):
        asyncio.run(go(keys=["in/keep-a.txt", "in/keep-c.csv"], force=True))
    assert _enqueued_keys(harness) == taken


def test_a_quarantined_object_is_untagged_only_as_its_notification_is_sent(
    harness: Harness,
) -> None:
    """Reprocessing a quarantined object removes its quarantine tags with the batch that
    sends its notification: a run stopped before (here: a key that does not exist)
    leaves it tagged and quarantined, as it was, and the next run releases it."""
    settings = harness.configure()
    harness.put("q.txt", b"1\n")
    harness.purge()
    head = harness.s3.head_object(Bucket=harness.bucket, Key="q.txt")
    oid = ObjectId(harness.bucket, "q.txt", content_version(head["ETag"], head["LastModified"]))
    marks = [{"Key": STATUS_TAG, "Value": "quarantined"}, {"Key": REASON_TAG, "Value": "bad"}]

    async def quarantine() -> None:  # as the worker does: the record, then the tags
        async with open_store(settings) as store:
            assert store is not None
            claim = await store.claim(oid, pipeline="p", owner="w", ttl_s=60)
            await store.fail(
                oid, token=claim.token, status=FileStatus.QUARANTINED, error_class="E", error="bad"
            )
        harness.s3.put_object_tagging(
            Bucket=harness.bucket,
            Key="q.txt",
            Tagging={"TagSet": [*marks, {"Key": "own", "Value": "1"}]},
        )

    def tags() -> list[dict[str, str]]:
        return harness.s3.get_object_tagging(Bucket=harness.bucket, Key="q.txt")["TagSet"]  # type: ignore[no-any-return]

    async def go(keys: list[str]) -> Any:
        async with open_store(settings) as store:
            return await backfill(
                settings, settings.pipelines[0], keys=keys, store=store, force=True
            )

    asyncio.run(quarantine())
    with pytest.raises(S3flowError, match=r"missing\.txt"):
        asyncio.run(go(["q.txt", "missing.txt"]))
    assert harness.depth() == (0, 0)
    assert sorted(t["Key"] for t in tags()) == sorted([STATUS_TAG, REASON_TAG, "own"])
    assert [r.status for r in harness.records("q.txt")] == [FileStatus.QUARANTINED]
    report = asyncio.run(go(["q.txt"]))
    assert report.enqueued == 1
    assert tags() == [{"Key": "own", "Value": "1"}]
    assert harness.run().pipelines["p"].objects_processed == 1
    assert [r.status for r in harness.records("q.txt")] == [FileStatus.COMPLETED]


# --- files release ------------------------------------------------------------------------


def _quarantine(h: Harness, key: str, version: str | None = None) -> ObjectId:
    """Quarantine an upload of ``key`` as the worker does: the record, then the tags.

    ``version``: the record's identity (default: the current upload's eTag@LastModified).
    """
    if version is None:
        head = h.s3.head_object(Bucket=h.bucket, Key=key)
        version = content_version(head["ETag"], head["LastModified"])
    oid = h.end_record(key, version, FileStatus.QUARANTINED, error="bad")
    h.s3.put_object_tagging(
        Bucket=h.bucket,
        Key=key,
        Tagging={
            "TagSet": [{"Key": STATUS_TAG, "Value": "quarantined"}, {"Key": "own", "Value": "1"}]
        },
    )
    return oid


def _release(settings: Any, key: str, version: str | None = None) -> list[ObjectId]:
    async def go() -> list[ObjectId]:
        async with open_store(settings) as store:
            assert store is not None
            return await release(settings, settings.pipelines[0], store, key, version)

    return asyncio.run(go())


def test_a_release_whose_notification_cannot_be_sent_names_the_command_to_run_again(
    harness: Harness,
) -> None:
    """The records are reset (and the tags removed) before the notification is sent, so the
    worker finds the upload received when it arrives; a send that fails (here: the queue
    was deleted) says so and names the command that sends it again, which then works."""
    settings = harness.configure()
    harness.put("dir/q 1.txt", b"1\n")
    harness.purge()
    oid = _quarantine(harness, "dir/q 1.txt")
    url = harness.queue_url
    by_url = harness.configure(provision_it=False, queue=url)  # no GetQueueUrl first
    harness.sqs.delete_queue(QueueUrl=url)

    with pytest.raises(S3flowError) as failed:
        _release(by_url, "dir/q 1.txt")
    text = str(failed.value)
    assert f"s3://{harness.bucket}/dir/q 1.txt was not enqueued for pipeline 'p'" in text
    assert f"SendMessage to {url} failed" in text and "NonExistentQueue" in text
    assert "`s3flow files release 'dir/q 1.txt' -p p`" in text
    assert "`s3flow reprocess -p p 'dir/q 1.txt'`" in text
    assert "s3flow backfill" in text  # why a plain backfill will not do
    # As the error says: untagged and received, with nothing queued.
    tags = harness.s3.get_object_tagging(Bucket=harness.bucket, Key="dir/q 1.txt")["TagSet"]
    assert tags == [{"Key": "own", "Value": "1"}]
    assert [r.status for r in harness.records("dir/q 1.txt")] == [FileStatus.RECEIVED]

    settings = harness.configure()  # the queue again
    assert harness.depth() == (0, 0)

    async def plain_backfill() -> Any:
        async with open_store(settings) as store:
            return await backfill(settings, settings.pipelines[0], store=store)

    # The queue holds no message at all: a record saying received has none either, so
    # a plain backfill enqueues it again (it skipped it as already queued, for ever).
    report = asyncio.run(plain_backfill())
    assert (report.enqueued, report.requeued, report.already_queued) == (1, 1, 0)
    assert _release(settings, "dir/q 1.txt") == [oid]  # the command the error named
    assert harness.run().pipelines["p"].objects_processed == 1
    assert [r.status for r in harness.records("dir/q 1.txt")] == [FileStatus.COMPLETED]


def test_release_refuses_a_key_the_pipeline_does_not_take(harness: Harness) -> None:
    """A key outside the pipeline's filters (they changed since it was recorded) is refused
    before anything changes: the worker would skip its notification, and its record would
    say received forever."""
    harness.configure()
    harness.put("in/old.csv", b"1\n")
    harness.purge()
    _quarantine(harness, "in/old.csv")
    settings = harness.configure(provision_it=False, prefix="in/", suffix=".txt")

    with pytest.raises(S3flowError) as refused:
        _release(settings, "in/old.csv")
    text = str(refused.value)
    assert "pipeline 'p' does not take s3://" in text
    assert "key does not end with '.txt'" in text and "nothing was changed" in text
    assert harness.depth() == (0, 0)
    assert [r.status for r in harness.records("in/old.csv")] == [FileStatus.QUARANTINED]
    tags = harness.s3.get_object_tagging(Bucket=harness.bucket, Key="in/old.csv")["TagSet"]
    assert {t["Key"] for t in tags} == {STATUS_TAG, "own"}


def test_a_release_reaches_the_record_it_resets_whatever_its_identity(harness: Harness) -> None:
    """Against AWS an upload is recorded as <eTag>@<sequencer> (the event's identity): the
    release's notification carries that sequencer, so the worker claims that very record;
    without it the worker read (eTag, LastModified), processed a new record and left the
    released one received for ever."""
    harness.configure()
    harness.put("seq.txt", b"1\n2\n")
    harness.purge()
    etag = harness.s3.head_object(Bucket=harness.bucket, Key="seq.txt")["ETag"].strip('"')
    oid = _quarantine(harness, "seq.txt", f"{etag}@0064A1B2C3D4E5F601")

    assert _release(harness.settings, "seq.txt") == [oid]
    assert harness.run().pipelines["p"].objects_processed == 1
    assert [(r.id, r.status) for r in harness.records("seq.txt")] == [(oid, FileStatus.COMPLETED)]
    assert harness.result("seq.txt") is not None
    assert harness.depth() == (0, 0) and harness.dlq_messages() == []


def test_a_replaced_upload_is_not_released_and_the_current_one_is(harness: Harness) -> None:
    """An earlier upload whose bytes were overwritten cannot be processed again: --version
    naming it is refused with the reason, nothing changed; a plain release leaves its
    record as it was (it used to say received for ever) and enqueues the current upload."""
    harness.configure()
    harness.put("r.txt", b"1\n")
    harness.purge()
    old = _quarantine(harness, "r.txt")
    harness.put("r.txt", b"1\n2\n3\n")  # replaced (new eTag)
    harness.purge()

    with pytest.raises(S3flowError) as refused:
        _release(harness.settings, "r.txt", old.version)
    text = str(refused.value)
    assert f"version {old.version!r} of s3://{harness.bucket}/r.txt is an earlier upload" in text
    assert "nothing was changed" in text and "`s3flow files release r.txt -p p`" in text
    assert harness.depth() == (0, 0)
    assert [r.status for r in harness.records("r.txt")] == [FileStatus.QUARANTINED]

    head = harness.s3.head_object(Bucket=harness.bucket, Key="r.txt")
    current = ObjectId(harness.bucket, "r.txt", content_version(head["ETag"], head["LastModified"]))
    assert _release(harness.settings, "r.txt") == [current]
    assert harness.run().pipelines["p"].objects_processed == 1
    assert {r.id: r.status for r in harness.records("r.txt")} == {
        old: FileStatus.QUARANTINED,
        current: FileStatus.COMPLETED,
    }
    result = harness.result("r.txt")
    assert result is not None and result["lines"] == 3
    assert harness.depth() == (0, 0)


def test_a_release_in_a_versioned_bucket_processes_the_version_it_names(
    harness: Harness,
) -> None:
    """In a versioned bucket a record is a versionId: the release sends it, so the worker
    reads and records that version, even after a newer one landed."""
    harness.configure()
    harness.s3.put_bucket_versioning(
        Bucket=harness.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    first = harness.s3.put_object(Bucket=harness.bucket, Key="v.txt", Body=b"1\n")
    harness.s3.put_object(Bucket=harness.bucket, Key="v.txt", Body=b"1\n2\n")
    harness.purge()
    oid = _quarantine(harness, "v.txt", first["VersionId"])

    assert _release(harness.settings, "v.txt", first["VersionId"]) == [oid]
    assert harness.run().pipelines["p"].objects_processed == 1
    assert [(r.id, r.status) for r in harness.records("v.txt")] == [(oid, FileStatus.COMPLETED)]
    result = harness.result("v.txt")
    assert result is not None and result["lines"] == 1  # the version named, not the latest
    assert harness.depth() == (0, 0)

    harness.s3.delete_object(Bucket=harness.bucket, Key="v.txt", VersionId=first["VersionId"])
    with pytest.raises(S3flowError, match="is an earlier upload whose bytes are gone"):
        _release(harness.settings, "v.txt", first["VersionId"])


def test_a_record_left_processing_by_a_stopped_worker_is_released_once_its_claim_expired(
    harness: Harness,
) -> None:
    """A worker killed holding a claim left its record processing: `files release`
    refused it ("being processed right now by ...") and reprocess / backfill --force
    counted it as busy, for ever, though its claim had long expired. An expired claim
    is not busy; a live one is still left alone, saying when it expires."""
    settings = harness.configure()
    for key in ("a.txt", "b.txt", "live.txt"):
        harness.put(key, b"1\n")
    harness.purge()
    oids = {k: ObjectId(harness.bucket, k, _version(harness, k)) for k in ("a.txt", "b.txt")}
    live = ObjectId(harness.bucket, "live.txt", _version(harness, "live.txt"))

    async def claim_all() -> dict[str, int]:
        async with open_store(settings) as store:
            assert store is not None
            tokens = {}
            for key, oid in oids.items():  # the worker that held these was killed
                tokens[key] = (
                    await store.claim(oid, pipeline="p", owner="vm-dead", ttl_s=0.5)
                ).token
            await store.claim(live, pipeline="p", owner="vm-live", ttl_s=600)
            return tokens

    tokens = asyncio.run(claim_all())
    time.sleep(1)  # the dead worker's claims expire

    with pytest.raises(S3flowError, match=r"right now by vm-live.*expires at .* UTC, in \d+ s"):
        _release(settings, "live.txt")
    assert _release(settings, "a.txt") == [oids["a.txt"]]

    async def reprocess(keys: list[str]) -> Any:
        async with open_store(settings) as store:
            return await backfill(
                settings, settings.pipelines[0], keys=keys, store=store, force=True
            )

    report = asyncio.run(reprocess(["b.txt", "live.txt"]))
    assert (report.enqueued, report.busy) == (1, 1)
    assert _enqueued_keys(harness) == ["a.txt", "b.txt"]
    for key, oid in oids.items():
        (rec,) = harness.records(key)
        assert rec.status is FileStatus.RECEIVED and rec.claim_owner is None

        async def stale(oid: ObjectId = oid, token: int = tokens[key]) -> bool:
            async with open_store(settings) as store:
                assert store is not None
                return await store.complete(oid, token=token, outputs=[])

        assert not asyncio.run(stale())  # the stopped worker's token is spent
    (rec,) = harness.records("live.txt")
    assert rec.status is FileStatus.PROCESSING and rec.claim_owner == "vm-live"


def test_a_plain_backfill_leaves_dead_and_quarantined_records_and_counts_them(
    harness: Harness,
) -> None:
    """Every plain backfill enqueued each dead-lettered object again (it failed again and
    the DLQ grew by a copy per run), and counted quarantined ones as filtered."""
    settings = harness.configure()
    for key in ("dead.txt", "q.txt"):
        harness.put(key, b"1\n")
    harness.purge()
    harness.end_record("dead.txt", _version(harness, "dead.txt"), FileStatus.DEAD)
    _quarantine(harness, "q.txt")

    async def plain_backfill() -> Any:
        async with open_store(settings) as store:
            return await backfill(settings, settings.pipelines[0], store=store)

    report = asyncio.run(plain_backfill())
    assert (report.enqueued, report.dead, report.quarantined, report.filtered) == (0, 1, 1, 0)
    assert harness.depth() == (0, 0)
    assert {r.status for r in harness.records()} == {FileStatus.DEAD, FileStatus.QUARANTINED}


def test_records_left_received_with_no_message_are_enqueued_again(harness: Harness) -> None:
    """A backfill killed between setting a batch's records to received and sending it, or
    a purged queue, left records saying queued with no message: every later backfill
    skipped them as already queued. While the queue holds no message at all, a plain
    backfill enqueues them again; while it holds some, they are left as queued."""
    settings = harness.configure()
    keys = [f"k{i}.txt" for i in range(3)]
    for key in keys:
        harness.put(key, b"1\n")
    harness.purge()

    async def plain_backfill() -> Any:
        async with open_store(settings) as store:
            return await backfill(settings, settings.pipelines[0], store=store)

    assert asyncio.run(plain_backfill()).enqueued == 3
    again = asyncio.run(plain_backfill())  # the messages are there: queued
    assert (again.enqueued, again.already_queued, again.requeued) == (0, 3, 0)
    harness.purge()  # (or the run was killed before its send)
    report = asyncio.run(plain_backfill())
    assert (report.enqueued, report.already_queued, report.requeued) == (3, 0, 3)
    assert _enqueued_keys(harness) == keys
