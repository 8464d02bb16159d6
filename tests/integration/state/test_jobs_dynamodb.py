"""The DynamoDB JobStore's own guarantees: racing appends, no Scan, the status index.

The protocol itself is tested on every backend in ``test_jobs_contract.py``;
here the calls the DynamoDB store makes are inspected (its ``_api`` wrapped).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from state_support import T0, FakeClock

from s3flow.state import (
    DynamoStateStore,
    EventType,
    JobRecord,
    JobStatus,
    JobStep,
    StateError,
    StateStore,
    apply_event,
)
from s3flow.state.dynamodb.client import TransactionCanceled
from s3flow.state.dynamodb.codec import job_listed

pytestmark = pytest.mark.integration


@dataclass
class Call:
    """One request the store made: operation, arguments, and its answer (None if it failed)."""

    op: str
    kwargs: dict[str, Any]
    resp: dict[str, Any] | None = None

    def items(self) -> int:
        """How many items the answer carried (Query / BatchGetItem)."""
        if self.resp is None:
            return 0
        if "Items" in self.resp:
            return len(self.resp["Items"])
        return sum(len(v) for v in self.resp.get("Responses", {}).values())


def spy(store: DynamoStateStore, calls: list[Call]) -> None:
    """Record every request ``store`` makes into ``calls``."""
    real = store._api

    async def api(op: str, table: str, **kwargs: Any) -> dict[str, Any]:
        call = Call(op, kwargs)
        calls.append(call)
        call.resp = await real(op, table, **kwargs)
        return call.resp

    store._api = api  # type: ignore[method-assign]


def job(n: int, *, created_at: float = T0) -> JobRecord:
    """A new job of upload ``u<n>`` with one step and no declared files."""
    return JobRecord(
        job_id=f"job-{n}",
        upload_id=f"u{n}",
        template="count",
        status=JobStatus.WAITING_FOR_FILES,
        files=(),
        steps=(JobStep(name="line-count"),),
        created_at=created_at,
        updated_at=created_at,
        expires_at=created_at + 3600,
    )


def ops(calls: list[Call]) -> list[str]:
    return [c.op for c in calls]


# --- racing appends ---------------------------------------------------------------------------


@pytest.mark.parametrize("make_store", ["dynamodb-atomic"], indirect=True)
async def test_twenty_concurrent_appends_from_two_instances(
    make_store: Callable[[], StateStore], store: StateStore
) -> None:
    """20 appends at once through two stores: seq 2..21, each once; a loser never re-reads."""
    assert isinstance(store, DynamoStateStore)
    other = make_store()
    assert isinstance(other, DynamoStateStore)
    async with other:
        created = job(1)
        await store.create_job(created, event_id="c", data={})
        calls: list[Call] = []
        spy(store, calls)
        spy(other, calls)
        pair = (store, other)

        async def racer(i: int) -> Any:
            return await pair[i % 2].append_event(
                "job-1",
                event_id=f"e{i}",
                type=EventType.STEP_PROGRESS,
                data={"step": 0, "records_done": i},
            )

        results = await asyncio.gather(*(racer(i) for i in range(20)))
        # One read per append: a writer that lost the race folds again on the record
        # returned with the cancellation (ALL_OLD) instead of reading it again.
        assert ops(calls).count("GetItem") == 20
        assert ops(calls).count("TransactWriteItems") >= 20
        assert set(ops(calls)) == {"GetItem", "TransactWriteItems"}
        assert all(new and e is not None for e, new in results)
        got = sorted((e for e, _ in results if e is not None), key=lambda e: e.seq)
        assert [e.seq for e in got] == list(range(2, 22))  # contiguous, no duplicate
        assert sorted(e.event_id for e in got) == sorted(f"e{i}" for i in range(20))
        log = await other.events("job-1")
        assert [e.seq for e in log] == list(range(1, 22))
        assert log[1:] == got
        # The record is its log folded, whoever wrote each event.
        rec = await store.get_job("job-1")
        expected = replace(created, last_seq=1)
        for e in log[1:]:
            expected = replace(apply_event(expected, e.type, e.data, e.at), last_seq=e.seq)
        assert rec == expected
        # The same 20 again at once: all duplicates, the log unchanged.
        again = await asyncio.gather(*(racer(i) for i in range(20)))
        assert all(not new for _, new in again)
        assert sorted((e for e, _ in again if e is not None), key=lambda e: e.seq) == got
        assert await store.events("job-1") == log


# --- no Scan, reads bounded by the limit ------------------------------------------------------


@pytest.mark.parametrize("make_store", ["dynamodb", "dynamodb-paged"], indirect=True)
async def test_job_reads_never_scan_and_read_what_they_return(
    store: StateStore, clock: FakeClock
) -> None:
    """Listings Query the ``status`` index for ``limit`` keys and fetch those records only."""
    assert isinstance(store, DynamoStateStore)
    for n in range(12):
        await store.create_job(job(n, created_at=T0 + n), event_id="c", data={})
    for n in (3, 5, 7):
        await store.append_event(f"job-{n}", event_id="q", type=EventType.JOB_QUEUED, data={})
    await store.append_event("job-9", event_id="f", type=EventType.JOB_FAILED, data={})
    calls: list[Call] = []
    spy(store, calls)

    def ids(jobs: list[JobRecord]) -> list[str]:
        return [j.job_id for j in jobs]

    assert ids(await store.list_jobs(status=JobStatus.WAITING_FOR_FILES, limit=3)) == [
        "job-11",
        "job-10",
        "job-8",
    ]
    queries = [c for c in calls if c.op == "Query"]
    assert all(c.kwargs["IndexName"] == "status" for c in queries)
    assert all(c.kwargs["ScanIndexForward"] is False and c.kwargs["Limit"] <= 3 for c in queries)
    assert sum(c.items() for c in queries) == 3  # 8 jobs wait; 3 keys read
    (batch,) = [c for c in calls if c.op == "BatchGetItem"]
    assert batch.items() == 3 and batch.kwargs["RequestItems"][store.jobs_table]["ConsistentRead"]
    calls.clear()

    assert ids(await store.list_jobs(limit=4)) == ["job-11", "job-10", "job-9", "job-8"]
    queries = [c for c in calls if c.op == "Query"]
    statuses = {c.kwargs["ExpressionAttributeValues"][":st"]["S"] for c in queries}
    assert statuses == {s.value for s in JobStatus}  # each status once, merged
    assert sum(c.items() for c in queries) <= 4 + 3 + 1  # waiting, queued, failed: ≤ limit each
    assert [c.items() for c in calls if c.op == "BatchGetItem"] == [4]
    calls.clear()

    assert ids(await store.list_jobs(status=JobStatus.QUEUED)) == ["job-7", "job-5", "job-3"]
    found = await store.job_for_upload("u5")
    assert found is not None and found.status is JobStatus.QUEUED
    assert await store.get_job("job-5") == found
    assert [e.seq for e in await store.events("job-5", after_seq=1)] == [2]
    await store.append_event("job-5", event_id="s", type=EventType.STEP_STARTED, data={"step": 0})
    await store.create_job(job(12), event_id="c", data={})
    assert "Scan" not in ops(calls)
    assert set(ops(calls)) == {"Query", "BatchGetItem", "GetItem", "TransactWriteItems"}
    assert await store.list_jobs(limit=0) == []


@pytest.mark.parametrize("make_store", ["dynamodb"], indirect=True)
async def test_a_lagging_index_entry_is_checked_on_the_record(store: StateStore) -> None:
    """The index is eventually consistent: the records listed are read, and filtered, fresh."""
    assert isinstance(store, DynamoStateStore)
    for n in (1, 2):
        await store.create_job(job(n, created_at=T0 + n), event_id="c", data={})
        await store.append_event(f"job-{n}", event_id="q", type=EventType.JOB_QUEUED, data={})
    await store.append_event("job-2", event_id="s", type=EventType.STEP_STARTED, data={"step": 0})
    running = await store.get_job("job-2")
    assert running is not None and running.status is JobStatus.RUNNING
    real = store._listed

    async def lagging(status: JobStatus, limit: int, **kw: Any) -> list[tuple[str, str]]:
        keys = await real(status, limit, **kw)
        if status is JobStatus.QUEUED:  # job-2's old entry, not yet removed from the index
            keys.append((job_listed(running), "job-2"))
        return keys

    store._listed = lagging  # type: ignore[method-assign]
    queued = await store.list_jobs(status=JobStatus.QUEUED)
    assert [j.job_id for j in queued] == ["job-1"]
    assert await store.list_jobs() == [running, await store.get_job("job-1")]  # job-2 once


# --- tables and errors ------------------------------------------------------------------------


@pytest.mark.parametrize("make_store", ["dynamodb"], indirect=True)
async def test_job_tables_and_status_index(store: StateStore) -> None:
    assert isinstance(store, DynamoStateStore)
    jobs = (await store._client.describe_table(TableName=store.jobs_table))["Table"]
    assert jobs["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    (index,) = jobs["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "status"
    assert index["Projection"]["ProjectionType"] == "KEYS_ONLY"
    assert [k["AttributeName"] for k in index["KeySchema"]] == ["status", "listed"]
    events = (await store._client.describe_table(TableName=store.job_events_table))["Table"]
    assert sorted((k["AttributeName"], k["KeyType"]) for k in events["KeySchema"]) == [
        ("job_id", "HASH"),
        ("seq", "RANGE"),
    ]


@pytest.mark.parametrize("make_store", ["dynamodb"], indirect=True)
async def test_a_transaction_cancelled_for_another_reason_is_an_error(store: StateStore) -> None:
    assert isinstance(store, DynamoStateStore)
    await store.create_job(job(1), event_id="c", data={})
    real = store._api

    async def refusing(op: str, table: str, **kwargs: Any) -> dict[str, Any]:
        if op == "TransactWriteItems":
            reasons = [{"Code": "None"}, {"Code": "ValidationError"}, {"Code": "None"}]
            raise TransactionCanceled("TransactionCanceledException", reasons)
        return await real(op, table, **kwargs)

    store._api = refusing  # type: ignore[method-assign]
    with pytest.raises(StateError, match="cancelled: None, ValidationError, None"):
        await store.append_event("job-1", event_id="q", type=EventType.JOB_QUEUED, data={})
    with pytest.raises(TypeError):  # data that is not JSON: refused before any write
        await store.append_event("job-1", event_id="x", type=EventType.JOB_QUEUED, data={"x": {1}})
