"""Retention and the status counters, on every backend.

The counters (``counts``) always equal a full count of the records
(``recount``); terminal records, history lines, checkpoints, free locks,
completed manifests and finished jobs expire after the retention (SQLite: the
prune deletes them; DynamoDB: their items carry ``purge_at`` for TTL, and the
counters stop counting a record at the end of its expiry day).
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

import pytest
from state_support import T0, FakeClock, backends, draft, mfile, oid, paged_backends

from s3flow.state import (
    DynamoStateStore,
    EventType,
    FileStatus,
    JobFile,
    JobRecord,
    JobStatus,
    JobStep,
    ManifestStatus,
    SqliteStateStore,
    StateStore,
)
from s3flow.state.dynamodb.codec import (
    counts_pk,
    job_event_key,
    job_key,
    manifest_key,
    record_key,
    tracked_key,
    upload_key,
)

pytestmark = pytest.mark.integration

DAY = 86_400.0
RETENTION = 30 * DAY  # the stores' default


async def check_counts(store: StateStore, *pipelines: str) -> None:
    """The counters equal a full count of the records, per pipeline and in total."""
    report = await store.recount()
    assert report.consistent, report.drift
    total: dict[str, int] = {}
    for p in pipelines:
        counts = await store.counts(p)
        assert {s: n for s, n in counts.items() if n} == report.counted.get(p, {}), p
        for s, n in counts.items():
            total[s] = total.get(s, 0) + n
    assert await store.counts() == total


async def raw(store: StateStore, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """A DynamoDB item as stored (to see its ``purge_at``)."""
    assert isinstance(store, DynamoStateStore)
    return await store._get_item(table, key)


def purge_of(item: dict[str, Any] | None) -> float | None:
    assert item is not None
    return float(item["purge_at"]["N"]) if "purge_at" in item else None


# --- the counters ------------------------------------------------------------------------


@paged_backends
async def test_counters_follow_every_transition(store: StateStore, clock: FakeClock) -> None:
    S = FileStatus
    a, b, c, d = oid("a"), oid("b"), oid("c"), oid("d")
    await check_counts(store, "p1", "p2")
    ca = await store.claim(a, pipeline="p1", owner="w", ttl_s=60)
    cb = await store.claim(b, pipeline="p1", owner="w", ttl_s=60)
    await check_counts(store, "p1")
    assert (await store.counts("p1"))["processing"] == 2
    await store.fail(a, token=ca.token, status=S.FAILED, error_class="E", error="x")
    await store.complete(b, token=cb.token, outputs=[])
    assert not await store.complete(b, token=cb.token, outputs=[])  # stale: no change
    await check_counts(store, "p1")
    ca = await store.claim(a, pipeline="p1", owner="w", ttl_s=60)
    clock.advance(61)
    ca = await store.claim(a, pipeline="p1", owner="w2", ttl_s=60)  # taken over: no change
    await store.release(a, token=ca.token)
    await check_counts(store, "p1")
    await store.claim(b, pipeline="p1", owner="w", ttl_s=60)  # a duplicate: DONE, no change
    await store.set_status(c, S.QUARANTINED, pipeline="p2", detail="bad")  # created
    await store.set_status(c, S.RECEIVED, detail="released")
    await store.set_status(d, S.COMPLETED, pipeline="p2", detail="backfill")
    cd = await store.claim(a, pipeline="p2", owner="w", ttl_s=60)  # another pipeline now
    await store.set_status(a, S.DEAD, detail="operator")
    assert not await store.complete(a, token=cd.token, outputs=[])
    await store.set_status(b, S.RECEIVED, detail="reprocess")
    await check_counts(store, "p1", "p2")
    assert await store.counts("p1") == {**{s.value: 0 for s in S}, "received": 1}
    assert await store.counts("p2") == {
        **{s.value: 0 for s in S},
        "received": 1,
        "completed": 1,
        "dead": 1,
    }


@backends
async def test_oldest_processing_is_when_it_entered_processing(
    store: StateStore, clock: FakeClock
) -> None:
    c = await store.claim(oid("a"), pipeline="p", owner="w", ttl_s=60)
    clock.advance(5)
    await store.claim(oid("b"), pipeline="p", owner="w", ttl_s=60)
    clock.advance(5)
    assert await store.renew(oid("a"), token=c.token, ttl_s=60)  # a renewal changes nothing
    assert await store.oldest_processing_at("p") == T0
    await store.complete(oid("a"), token=c.token, outputs=[])
    assert await store.oldest_processing_at("p") == T0 + 5
    clock.advance(100)  # b's claim expired: taken over, it entered processing again
    await store.claim(oid("b"), pipeline="p", owner="w2", ttl_s=60)
    assert await store.oldest_processing_at() == T0 + 110


# --- expiry of file records -------------------------------------------------------------------


@backends
async def test_terminal_records_expire_after_the_retention(
    store: StateStore, clock: FakeClock
) -> None:
    S = FileStatus
    done, failed, busy, back, late = (oid(k) for k in ("done", "failed", "busy", "back", "late"))
    c = await store.claim(done, pipeline="p", owner="w", ttl_s=60)
    await store.complete(done, token=c.token, outputs=["out"])
    c = await store.claim(failed, pipeline="p", owner="w", ttl_s=60)
    await store.fail(failed, token=c.token, status=S.FAILED, error_class="E", error="x")
    await store.claim(busy, pipeline="p", owner="w", ttl_s=10 * RETENTION)
    c = await store.claim(back, pipeline="p", owner="w", ttl_s=60)
    await store.complete(back, token=c.token, outputs=[])
    clock.advance(DAY)
    await store.set_status(back, S.RECEIVED, detail="reprocess")  # no longer terminal
    clock.advance(DAY)
    c = await store.claim(late, pipeline="p", owner="w", ttl_s=60)
    await store.fail(late, token=c.token, status=S.DEAD, error_class="E", error="gone")
    # T0 + 32 days + 30 min: "done" expired 2 days ago, "late" 30 minutes ago, the same UTC
    # day (T0 is 22:13 UTC).
    clock.advance(RETENTION + 1800)
    report = await store.prune()
    counts = await store.counts("p")
    assert (counts["completed"], counts["failed"], counts["processing"]) == (0, 1, 1)
    assert counts["received"] == 1
    await check_counts(store, "p")
    for kept in (failed, busy, back):
        assert await store.get(kept) is not None
    if isinstance(store, SqliteStateStore):
        assert report.files == 2 and report.complete
        assert counts["dead"] == 0
        assert await store.get(done) is None and await store.get(late) is None
        assert await store.history(done.bucket, done.key) == []
        assert report.history >= 6  # every line older than the retention
    else:
        assert isinstance(store, DynamoStateStore)
        assert report.removed == 0 and "TTL" in report.note
        assert counts["dead"] == 1  # counted until the end of its expiry day (today)
        item = await raw(store, store.files_table, record_key(done))
        assert purge_of(item) == math.ceil(T0 + RETENTION)  # DynamoDB deletes it by TTL
        assert purge_of(await raw(store, store.files_table, record_key(back))) is None
        assert purge_of(await raw(store, store.files_table, record_key(busy))) is None
        clock.advance(7200)  # the next UTC day
        assert (await store.counts("p"))["dead"] == 0
        await check_counts(store, "p")


@backends
async def test_retention_off_keeps_everything(store: StateStore, clock: FakeClock) -> None:
    store.retention_s = None
    c = await store.claim(oid(), pipeline="p", owner="w", ttl_s=60)
    await store.complete(oid(), token=c.token, outputs=[])
    clock.advance(10 * RETENTION)
    report = await store.prune()
    assert report.removed == 0 and "off" in report.note
    assert (await store.counts("p"))["completed"] == 1
    await check_counts(store, "p")
    assert await store.get(oid()) is not None


async def test_sqlite_prune_runs_in_bounded_batches(tmp_path: Any) -> None:
    clock = FakeClock()
    async with SqliteStateStore(tmp_path / "s.db", clock=clock) as store:
        for i in range(2500):
            c = await store.claim(oid(f"k{i}"), pipeline="p", owner="w", ttl_s=60)
            await store.complete(oid(f"k{i}"), token=c.token, outputs=[])
        clock.advance(RETENTION + 1)
        first = await store.prune(max_rows=1200)
        assert (first.files, first.complete) == (1200, False)
        assert (await store.counts("p"))["completed"] == 1300
        await check_counts(store, "p")
        rest = await store.prune()
        assert (rest.files, rest.history, rest.complete) == (1300, 5000, True)
        assert await store.counts("p") == {s.value: 0 for s in FileStatus}
        again = await store.prune()
        assert again.removed == 0


async def test_sqlite_background_prune_while_open(tmp_path: Any) -> None:
    import asyncio

    from s3flow.state.sqlite import retention

    clock = FakeClock()
    path = tmp_path / "bg.db"
    async with SqliteStateStore(path, clock=clock) as store:
        c = await store.claim(oid(), pipeline="p", owner="w", ttl_s=60)
        await store.complete(oid(), token=c.token, outputs=[])
    clock.advance(RETENTION + 1)
    old = retention.PRUNE_FIRST_S
    retention.PRUNE_FIRST_S = 0.05
    try:
        async with SqliteStateStore(path, clock=clock, prune_every_s=0.05) as store:
            for _ in range(100):
                if await store.get(oid()) is None:
                    break
                await asyncio.sleep(0.05)
            assert await store.get(oid()) is None
            assert (await store.counts("p"))["completed"] == 0
    finally:
        retention.PRUNE_FIRST_S = old


# --- checkpoints, locks, manifests, jobs ------------------------------------------------------


def _job(n: str) -> JobRecord:
    return JobRecord(
        job_id=f"job-{n}",
        upload_id=f"u-{n}",
        template="t",
        status=JobStatus.WAITING_FOR_FILES,
        files=(JobFile(name="a.txt", key=f"uploads/u-{n}/0-a.txt", size=1, content_type="t"),),
        steps=(JobStep(name="line-count"),),
        created_at=T0,
        updated_at=T0,
        expires_at=T0 + 3600,
    )


@backends
async def test_checkpoints_locks_manifests_and_jobs_expire(
    store: StateStore, clock: FakeClock
) -> None:
    await store.put_checkpoint("cp", "1")
    held = await store.acquire_lock("held", owner="w", ttl_s=100 * RETENTION)
    freed = await store.acquire_lock("freed", owner="w", ttl_s=60)
    assert held == freed == 1
    await store.release_lock("freed", owner="w", token=freed)
    dead = await store.acquire_lock("dead", owner="w", ttl_s=60)  # its holder died
    assert dead == 1
    token = await store.acquire_lock("seal:ds", owner="w", ttl_s=60)
    assert token is not None
    files = [mfile(f"2025-12-23/{i}.json") for i in range(3)]
    for f in files:
        await store.add_pending("ds", "2025-12-23", f)
    done = await store.seal_manifest(
        draft("m-done", files[:1], token), lock="seal:ds", owner="w", token=token
    )
    failed = await store.seal_manifest(
        draft("m-failed", files[1:2], token), lock="seal:ds", owner="w", token=token
    )
    assert done is not None and failed is not None
    for mid in ("m-done", "m-failed"):
        await store.mark_published(mid, f"s3://b/{mid}.json")
        await store.set_manifest_status(mid, ManifestStatus.PROCESSING)
    await store.set_manifest_status("m-done", ManifestStatus.COMPLETED)
    await store.set_manifest_status("m-failed", ManifestStatus.FAILED, detail="boom")
    await store.release_lock("seal:ds", owner="w", token=token)
    for n in ("done", "running"):
        await store.create_job(_job(n), event_id=f"{n}:created", data={})
        await store.append_event(f"job-{n}", event_id=f"{n}:q", type=EventType.JOB_QUEUED, data={})
    await store.append_event("job-done", event_id="done:c", type=EventType.JOB_COMPLETED, data={})

    clock.advance(RETENTION + DAY)
    report = await store.prune()
    if isinstance(store, SqliteStateStore):
        assert await store.get_checkpoint("cp") is None
        assert report.locks == 3  # freed, dead, seal:ds; "held" is still held
        assert await store.acquire_lock("freed", owner="x", ttl_s=60) == 1  # forgotten
        assert await store.acquire_lock("held", owner="x", ttl_s=60) is None
        assert (report.manifests, report.manifest_files) == (1, 1)
        assert await store.get_manifest("m-done") is None
        assert await store.get_tracked("ds", "2025-12-23", files[0].id) is None
        assert (report.jobs, report.job_events) == (1, 3)
        assert await store.get_job("job-done") is None
        assert await store.events("job-done") == []
    else:
        assert isinstance(store, DynamoStateStore)
        meta, man, jobs = store.meta_table, store.manifests_table, store.jobs_table
        assert purge_of(await raw(store, meta, {"pk": {"S": "checkpoint#cp"}})) == math.ceil(
            T0 + RETENTION
        )
        assert purge_of(await raw(store, meta, {"pk": {"S": "lock#freed"}})) == math.ceil(
            T0 + RETENTION
        )
        assert purge_of(await raw(store, meta, {"pk": {"S": "lock#dead"}})) == math.ceil(
            T0 + 60 + RETENTION
        )
        assert purge_of(await raw(store, meta, {"pk": {"S": "lock#held"}})) == math.ceil(
            T0 + 101 * RETENTION
        )
        assert purge_of(await raw(store, man, manifest_key("m-done"))) == math.ceil(T0 + RETENTION)
        tracked = tracked_key("ds", "2025-12-23", files[0].id)
        assert purge_of(await raw(store, man, tracked)) == math.ceil(T0 + RETENTION)
        assert purge_of(await raw(store, jobs, job_key("job-done"))) == math.ceil(T0 + RETENTION)
        assert purge_of(await raw(store, jobs, upload_key("u-done"))) == math.ceil(T0 + RETENTION)
        event = await raw(store, store.job_events_table, job_event_key("job-running", 1))
        assert purge_of(event) == math.ceil(T0 + RETENTION)  # events: by their age
        assert purge_of(await raw(store, jobs, job_key("job-running"))) is None
        assert purge_of(await raw(store, man, manifest_key("m-failed"))) is None
    # Unfinished work is kept: the failed manifest and its file, a pending file, a running job.
    assert await store.get_manifest("m-failed") is not None
    kept = await store.get_tracked("ds", "2025-12-23", files[1].id)
    assert kept is not None
    assert [t.file.key for t in await store.pending_files("ds", "2025-12-23")] == [files[2].key]
    running = await store.get_job("job-running")
    assert running is not None and running.status is JobStatus.QUEUED
    assert [m.manifest_id for m in await store.list_manifests(status=ManifestStatus.FAILED)] == [
        "m-failed"
    ]


# --- no scans on the operator's routine reads ----------------------------------------------


@pytest.mark.parametrize("make_store", ["dynamodb", "dynamodb-paged"], indirect=True)
async def test_dynamodb_status_and_listings_never_scan(store: StateStore, clock: FakeClock) -> None:
    """counts / oldest / list_files read a bounded number of items, whatever the table holds."""
    assert isinstance(store, DynamoStateStore)
    for i in range(30):
        c = await store.claim(oid(f"k{i:02d}"), pipeline="p", owner="w", ttl_s=600)
        if i % 3:
            await store.complete(oid(f"k{i:02d}"), token=c.token, outputs=[])
        clock.advance(1)
    calls: list[tuple[str, int]] = []
    real_api = store._api

    async def counting_api(op: str, table: str, **kwargs: Any) -> dict[str, Any]:
        resp = await real_api(op, table, **kwargs)
        items = resp.get("ScannedCount", len(resp.get("Items") or []))
        if op == "GetItem":
            items = 1 if resp.get("Item") else 0
        if op == "BatchGetItem":
            items = sum(len(v) for v in resp.get("Responses", {}).values())
        calls.append((op, items))
        return resp

    store._api = counting_api  # type: ignore[method-assign]
    counts = await store.counts("p")
    assert (counts["processing"], counts["completed"]) == (10, 20)
    assert await store.oldest_processing_at("p") == T0
    assert [r.key for r in await store.list_files(status=FileStatus.PROCESSING, limit=3)] == [
        "k27",
        "k24",
        "k21",
    ]
    assert len(await store.list_files(pipeline="p", limit=5)) == 5
    assert all(op != "Scan" for op, _ in calls), calls
    assert sum(n for _, n in calls) <= 2 + 32 + 1 + 2 * 3 + 6 * 5 + 6, calls
    # The counters are (pipeline, day) items in the meta table: live + one per expiry day.
    live = await raw(store, store.meta_table, {"pk": {"S": counts_pk("p")}})
    assert live is not None and live["processing"]["N"] == "10"


async def test_sqlite_routine_reads_use_indexes(tmp_path: Any) -> None:
    """Every statement counts / oldest / list_files / list_manifests run searches an index."""
    async with SqliteStateStore(tmp_path / "s.db") as store:
        for i in range(20):
            c = await store.claim(oid(f"k{i}"), pipeline="p", owner="w", ttl_s=600)
            if i % 2:
                await store.complete(oid(f"k{i}"), token=c.token, outputs=[])
        statements: list[str] = []
        await store._run(lambda conn: conn.set_trace_callback(statements.append))
        await store.counts("p")
        await store.counts()
        await store.oldest_processing_at("p")
        await store.oldest_processing_at()
        await store.list_files(status=FileStatus.COMPLETED, limit=5)
        await store.list_files(pipeline="p", limit=5)
        await store.list_files(pipeline="p", status=FileStatus.PROCESSING, limit=5)
        await store.list_files(limit=5)
        await store.list_manifests(status=ManifestStatus.SEALED, limit=5)
        await store.list_manifests(dataset="ds", limit=5)
        await store._run(lambda conn: conn.set_trace_callback(None))
        conn = sqlite3.connect(tmp_path / "s.db")
        try:
            for sql in statements:
                plan = " | ".join(str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql))
                for table in ("files", "history", "manifests", "manifest_files"):
                    assert f"SCAN {table}" not in plan.replace(f"SCAN {table} USING", ""), (
                        sql,
                        plan,
                    )
        finally:
            conn.close()


# --- upgrades ---------------------------------------------------------------------------------


async def test_sqlite_version_1_database_gains_its_counters(tmp_path: Any) -> None:
    path = tmp_path / "v1.db"
    clock = FakeClock()
    async with SqliteStateStore(path, clock=clock) as store:
        for i in range(5):
            c = await store.claim(oid(f"k{i}"), pipeline="p", owner="w", ttl_s=60)
            if i < 3:
                await store.complete(oid(f"k{i}"), token=c.token, outputs=[])
        token = await store.acquire_lock("l", owner="w", ttl_s=60)
        assert token is not None
    conn = sqlite3.connect(path)  # what s3flow before retention left
    conn.execute("DROP TABLE file_counts")
    conn.execute("DELETE FROM schema_version WHERE version > 1")
    conn.execute("UPDATE locks SET owner = NULL, expires_at = NULL")
    conn.commit()
    conn.close()
    async with SqliteStateStore(path, clock=clock) as store:
        assert (await store.counts("p"))["completed"] == 3
        await check_counts(store, "p")
        clock.advance(RETENTION + 1)
        assert (await store.prune()).locks == 1  # released before the upgrade: now aged out


async def auto_vacuum(store: SqliteStateStore) -> int:
    return int(await store._run(lambda conn: conn.execute("PRAGMA auto_vacuum").fetchone()[0]))


async def test_new_sqlite_database_vacuums_incrementally(tmp_path: Any) -> None:
    clock = FakeClock()
    async with SqliteStateStore(tmp_path / "n.db", clock=clock) as store:
        assert await auto_vacuum(store) == 2
        for i in range(600):
            c = await store.claim(oid(f"k{i}" + "x" * 200), pipeline="p", owner="w", ttl_s=60)
            await store.complete(oid(f"k{i}" + "x" * 200), token=c.token, outputs=["o" * 300])
        clock.advance(RETENTION + 1)
        report = await store.prune()
        assert report.files == 600 and report.vacuumed_pages > 0
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)  # a database created without auto-vacuum
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    async with SqliteStateStore(old) as store:
        assert await auto_vacuum(store) == 0
        before, after = await store.vacuum()
        assert before > 0 and after > 0
        assert await auto_vacuum(store) == 2


async def test_dynamodb_upgrade_adds_indexes_ttl_and_repairs_old_items(endpoint: Any) -> None:
    """Tables and items of an s3flow before retention: provision and recount --repair fix them."""
    import uuid

    from s3flow.settings import AwsSettings
    from s3flow.state.dynamodb.codec import decode_record, encode_record
    from s3flow.state.dynamodb.tables import table_definitions

    aws = AwsSettings(endpoint_url=endpoint.url, region="us-east-1")
    clock = FakeClock()
    store = DynamoStateStore(f"up-{uuid.uuid4().hex[:8]}", aws, clock=clock)
    async with store:
        # The tables as they were: no listing indexes on the files and manifests tables.
        for d in table_definitions(store.table_prefix):
            if d["TableName"] in (store.files_table, store.manifests_table):
                indexes = d.get("GlobalSecondaryIndexes", [])
                gsi = [g for g in indexes if g["IndexName"] != "listing"]
                d.pop("GlobalSecondaryIndexes", None)
                if gsi:
                    d["GlobalSecondaryIndexes"] = gsi
                used = {k["AttributeName"] for g in gsi for k in g["KeySchema"]} | {"pk", "sk"}
                d["AttributeDefinitions"] = [
                    a for a in d["AttributeDefinitions"] if a["AttributeName"] in used
                ]
            await store._client.create_table(**d)
        changes = dict(await store.ensure_tables())
        assert changes[store.files_table] == "added index listing"
        assert changes[store.manifests_table] == "added index listing"
        assert changes[store.meta_table] == "unchanged"
        assert {a for _, a in await store.ensure_ttl()} == {"enabled"}
        assert {a for _, a in await store.ensure_ttl()} == {"unchanged"}
        assert {a for _, a in await store.ensure_tables()} == {"unchanged"}
        assert "OFF" not in (await store.prune()).note
        # Two records written by the old s3flow: no listing attributes, no purge_at, not counted.
        for key, status in (("old-done", FileStatus.COMPLETED), ("old-fail", FileStatus.FAILED)):
            c = await store.claim(oid(key), pipeline="p", owner="w", ttl_s=60)
            rec = c.record
            rec.status = status
            item = encode_record(rec, 7)
            for name in ("lst", "lst_at", "purge_at"):
                item.pop(name, None)
            await store._api("PutItem", store.files_table, TableName=store.files_table, Item=item)
        report = await store.recount()
        assert report.counted == {"p": {"completed": 1, "failed": 1}}
        assert report.drift == {"p": {"completed": -1, "failed": -1, "processing": 2}}
        assert await store.list_files(pipeline="p") == []  # not in the index yet
        assert (await store.recount(repair=True)).repaired
        await check_counts(store, "p")
        assert {r.key for r in await store.list_files(pipeline="p")} == {"old-done", "old-fail"}
        done = await raw(store, store.files_table, record_key(oid("old-done")))
        assert purge_of(done) == math.ceil(T0 + RETENTION)
        assert decode_record(done or {})[0].status is FileStatus.COMPLETED
        assert purge_of(await raw(store, store.files_table, record_key(oid("old-fail")))) is None
