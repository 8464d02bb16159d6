"""Upload jobs and their event logs (the JobStore protocol), on every backend.

The DynamoDB parameters are skipped until :class:`DynamoStateStore` implements
the protocol (they run on their own as soon as it has ``append_event``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from state_support import T0, FakeClock

from s3flow.state import (
    DynamoStateStore,
    EventType,
    JobCursor,
    JobEvent,
    JobFile,
    JobOutput,
    JobRecord,
    JobStatus,
    JobStep,
    SqliteStateStore,
    StateError,
    StateStore,
    StepStatus,
    apply_event,
)
from s3flow.state.sqlite.schema import SCHEMA_VERSION

pytestmark = pytest.mark.integration

_NO_DYNAMO_JOBS = not hasattr(DynamoStateStore, "append_event")


def _dynamo(backend: str) -> Any:
    return pytest.param(
        backend,
        marks=pytest.mark.skipif(_NO_DYNAMO_JOBS, reason="DynamoDB JobStore not implemented yet"),
    )


job_backends = pytest.mark.parametrize("make_store", ["sqlite", _dynamo("dynamodb")], indirect=True)
# Listings also run on a DynamoDB store that reads 2 items per page.
paged_job_backends = pytest.mark.parametrize(
    "make_store", ["sqlite", _dynamo("dynamodb"), _dynamo("dynamodb-paged")], indirect=True
)
# Races need DynamoDB conditional writes that are atomic (see conftest.make_store).
race_job_backends = pytest.mark.parametrize(
    "make_store", ["sqlite", _dynamo("dynamodb-atomic")], indirect=True
)


def job(
    n: int | str = 1,
    *,
    files: int = 2,
    steps: tuple[str, ...] = ("line-count", "zip"),
    created_at: float = T0,
) -> JobRecord:
    """A new job waiting for ``files`` declared files, with one step per name."""
    upload_id = f"u{n}"
    return JobRecord(
        job_id=f"job-{n}",
        upload_id=upload_id,
        template="count",
        status=JobStatus.WAITING_FOR_FILES,
        files=tuple(
            JobFile(
                name=f"f{i}.txt",
                key=f"uploads/{upload_id}/{i}-f{i}.txt",
                size=10 + i,
                content_type="text/plain",
            )
            for i in range(files)
        ),
        steps=tuple(JobStep(name=s) for s in steps),
        created_at=created_at,
        updated_at=created_at,
        expires_at=created_at + 3600,
    )


async def create(store: StateStore, rec: JobRecord) -> JobEvent:
    """Store ``rec`` with its job.created event (event id ``<job_id>:created``)."""
    return await store.create_job(
        rec, event_id=f"{rec.job_id}:created", data={"upload_id": rec.upload_id}
    )


async def append(
    store: StateStore,
    job_id: str,
    type_: EventType,
    event_id: str | None = None,
    if_status: frozenset[JobStatus] | None = None,
    **data: Any,
) -> tuple[JobEvent | None, bool]:
    """Append one event (event id defaults to ``<job_id>:<type>``)."""
    return await store.append_event(
        job_id,
        event_id=event_id or f"{job_id}:{type_}",
        type=type_,
        data=data,
        if_status=if_status,
    )


def fold(created: JobRecord, events: list[JobEvent]) -> JobRecord:
    """What the stored record must be: ``created`` folded with every event after seq 1."""
    rec = replace(created, last_seq=1)
    for e in events[1:]:
        rec = replace(apply_event(rec, e.type, e.data, e.at), last_seq=e.seq)
    return rec


# --- create, get, lookups ------------------------------------------------------------------


@job_backends
async def test_create_get_and_job_for_upload(store: StateStore, clock: FakeClock) -> None:
    rec = job()
    data = {"upload_id": "u1", "files": [{"name": "f0.txt", "size": 10}], "note": "é ✓"}
    clock.advance(2)
    event = await store.create_job(rec, event_id="job-1:created", data=data)
    assert event == JobEvent("job-1", 1, "job-1:created", EventType.JOB_CREATED, data, T0 + 2)
    stored = replace(rec, last_seq=1)
    assert await store.get_job("job-1") == stored
    assert await store.job_for_upload("u1") == stored
    assert await store.events("job-1") == [event]
    assert await store.get_job("job-2") is None
    assert await store.job_for_upload("u2") is None
    assert await store.job_for_upload("job-1") is None  # ids are not interchangeable
    assert await store.events("job-2") == []
    assert stored.missing == ["f0.txt", "f1.txt"]


@job_backends
async def test_create_is_idempotent_by_job_id(store: StateStore, clock: FakeClock) -> None:
    first = await create(store, job())
    clock.advance(5)
    again = await store.create_job(
        replace(job(), template="other", status=JobStatus.QUEUED),
        event_id="another-id",
        data={"x": 1},
    )
    assert again == first
    assert await store.events("job-1") == [first]
    assert await store.get_job("job-1") == replace(job(), last_seq=1)
    # After events, creating it again still changes nothing.
    await append(store, "job-1", EventType.JOB_QUEUED)
    assert await create(store, job()) == first
    got = await store.get_job("job-1")
    assert got is not None and got.status is JobStatus.QUEUED and got.last_seq == 2
    assert [e.seq for e in await store.events("job-1")] == [1, 2]


@job_backends
async def test_an_upload_id_belongs_to_one_job(store: StateStore) -> None:
    await create(store, job(1))
    with pytest.raises(StateError):
        await create(store, replace(job(2), upload_id="u1"))
    assert await store.get_job("job-2") is None
    found = await store.job_for_upload("u1")
    assert found is not None and found.job_id == "job-1"


# --- the log: sequence numbers, idempotency, refusals ---------------------------------------


@job_backends
async def test_events_are_numbered_one_to_n_without_gaps(
    store: StateStore, clock: FakeClock
) -> None:
    await create(store, job())
    got: list[JobEvent] = []
    for i in range(6):
        clock.advance(1)
        event, new = await append(
            store, "job-1", EventType.STEP_PROGRESS, f"p{i}", step=0, bytes_done=i
        )
        assert new and event is not None
        got.append(event)
    assert [e.seq for e in got] == [2, 3, 4, 5, 6, 7]
    assert [e.at for e in got] == [T0 + 1 + i for i in range(6)]
    log = await store.events("job-1")
    assert [e.seq for e in log] == list(range(1, 8))
    assert log[1:] == got
    rec = await store.get_job("job-1")
    assert rec is not None and rec.last_seq == 7 and rec.updated_at == T0 + 6


@job_backends
async def test_append_is_idempotent_by_event_id(store: StateStore, clock: FakeClock) -> None:
    await create(store, job())
    first, new = await append(store, "job-1", EventType.FILE_RECEIVED, "recv-0", index=0)
    assert new and first is not None and first.seq == 2
    before = await store.get_job("job-1")
    clock.advance(10)
    # The same event id again (even with another type and data) returns the stored event.
    again, new = await append(store, "job-1", EventType.JOB_FAILED, "recv-0", error="x")
    assert (again, new) == (first, False)
    assert await store.get_job("job-1") == before
    assert [e.seq for e in await store.events("job-1")] == [1, 2]
    # The created event's id is in the log too.
    dup, new = await append(store, "job-1", EventType.JOB_QUEUED, "job-1:created")
    assert not new and dup is not None and dup.seq == 1 and dup.type is EventType.JOB_CREATED
    # Event ids are per job: another job may use the same one.
    await create(store, job(2))
    other, new = await append(store, "job-2", EventType.FILE_RECEIVED, "recv-0", index=1)
    assert new and other is not None and (other.job_id, other.seq) == ("job-2", 2)
    # A terminal event retried after the job ended returns the stored event too.
    done, new = await append(store, "job-1", EventType.JOB_COMPLETED, "done", outputs=[])
    assert new and done is not None
    assert await append(store, "job-1", EventType.JOB_COMPLETED, "done", outputs=[]) == (
        done,
        False,
    )


@job_backends
async def test_unknown_job_and_if_status(store: StateStore) -> None:
    assert await append(store, "job-404", EventType.JOB_QUEUED) == (None, False)
    assert await store.events("job-404") == []
    await create(store, job())
    waiting = frozenset({JobStatus.WAITING_FOR_FILES})
    running = frozenset({JobStatus.RUNNING})
    assert await append(store, "job-1", EventType.JOB_QUEUED, if_status=running) == (None, False)
    assert await append(store, "job-1", EventType.JOB_QUEUED, if_status=frozenset()) == (
        None,
        False,
    )
    rec = await store.get_job("job-1")
    assert rec is not None and rec.status is JobStatus.WAITING_FOR_FILES and rec.last_seq == 1
    assert [e.seq for e in await store.events("job-1")] == [1]
    event, new = await append(store, "job-1", EventType.JOB_QUEUED, if_status=waiting)
    assert new and event is not None and event.seq == 2
    # Now queued: a second expiry-style guarded append is refused; its event id stays free.
    assert await append(store, "job-1", EventType.JOB_EXPIRED, "exp", if_status=waiting) == (
        None,
        False,
    )
    expired, new = await append(store, "job-1", EventType.JOB_EXPIRED, "exp")
    assert new and expired is not None and expired.seq == 3


@pytest.mark.parametrize(
    "terminal", [EventType.JOB_COMPLETED, EventType.JOB_FAILED, EventType.JOB_EXPIRED]
)
@job_backends
async def test_nothing_is_appended_after_a_terminal_event(
    store: StateStore, clock: FakeClock, terminal: EventType
) -> None:
    await create(store, job())
    await append(store, "job-1", EventType.JOB_QUEUED)
    end, new = await append(store, "job-1", terminal, outputs=[], error="boom")
    assert new and end is not None and end.seq == 3
    ended = await store.get_job("job-1")
    assert ended is not None and ended.status.terminal and ended.last_seq == 3
    clock.advance(60)
    for type_ in EventType:
        if type_ is EventType.JOB_CREATED or type_ is terminal:
            continue
        assert await append(store, "job-1", type_, f"late-{type_}", step=0, index=0) == (
            None,
            False,
        )
    assert await store.get_job("job-1") == ended
    assert [e.seq for e in await store.events("job-1")] == [1, 2, 3]


# --- the fold -------------------------------------------------------------------------------


@job_backends
async def test_the_fold_follows_a_job_to_completion(store: StateStore, clock: FakeClock) -> None:
    created = job()
    await create(store, created)

    async def step(type_: EventType, event_id: str, **data: Any) -> JobRecord:
        clock.advance(1)
        event, new = await append(store, "job-1", type_, event_id, **data)
        assert new and event is not None
        rec = await store.get_job("job-1")
        assert rec is not None and rec.last_seq == event.seq and rec.updated_at == clock.now
        return rec

    rec = await step(EventType.FILE_RECEIVED, "r1", index=1, key="uploads/u1/1-f1.txt")
    assert [f.received for f in rec.files] == [False, True] and rec.missing == ["f0.txt"]
    assert rec.status is JobStatus.WAITING_FOR_FILES
    rec = await step(EventType.FILE_RECEIVED, "r0", index=0)
    assert rec.missing == []
    rec = await step(EventType.JOB_QUEUED, "q")
    assert rec.status is JobStatus.QUEUED
    rec = await step(EventType.STEP_STARTED, "s0", step=0)
    assert rec.status is JobStatus.RUNNING
    assert [s.status for s in rec.steps] == [StepStatus.RUNNING, StepStatus.PENDING]
    rec = await step(EventType.STEP_PROGRESS, "p0", step=0, bytes_done=5, bytes_total=21, x=1)
    assert rec.steps[0].progress == {"bytes_done": 5, "bytes_total": 21}
    rec = await step(EventType.STEP_COMPLETED, "c0", step=0, records_done=3, bytes_done=21)
    assert rec.steps[0] == JobStep(
        "line-count", StepStatus.COMPLETED, {"records_done": 3, "bytes_done": 21}
    )
    rec = await step(EventType.STEP_STARTED, "s1", step=1)
    rec = await step(EventType.STEP_COMPLETED, "c1", step=1)
    assert rec.steps[1] == JobStep("zip", StepStatus.COMPLETED, {})
    assert rec.status is JobStatus.RUNNING and rec.outputs == ()
    outputs = [
        {"name": "counts.json", "key": "out/job-1/counts.json", "bucket": "b", "size": 7},
        {"name": "all.zip", "key": "out/job-1/all.zip", "bucket": "b"},
    ]
    rec = await step(EventType.JOB_COMPLETED, "done", outputs=outputs)
    assert rec.status is JobStatus.COMPLETED and rec.error is None
    assert rec.outputs == (
        JobOutput("counts.json", "out/job-1/counts.json", "b", 7),
        JobOutput("all.zip", "out/job-1/all.zip", "b", 0),
    )
    # The record is exactly its log folded: they never disagree.
    log = await store.events("job-1")
    assert [e.type for e in log][:3] == [
        EventType.JOB_CREATED,
        EventType.FILE_RECEIVED,
        EventType.FILE_RECEIVED,
    ]
    assert rec == fold(created, log)
    assert rec.created_at == T0 and rec.expires_at == T0 + 3600


@job_backends
async def test_job_failed_records_the_error_and_the_step(store: StateStore) -> None:
    created = job()
    await create(store, created)
    await append(store, "job-1", EventType.JOB_QUEUED)
    await append(store, "job-1", EventType.STEP_STARTED, "s1", step=1)
    await append(
        store, "job-1", EventType.JOB_FAILED, step=1, error="line 3 is not UTF-8 (byte 0xff)"
    )
    rec = await store.get_job("job-1")
    assert rec is not None and rec.status is JobStatus.FAILED
    assert rec.error == "line 3 is not UTF-8 (byte 0xff)"
    assert [s.status for s in rec.steps] == [StepStatus.PENDING, StepStatus.FAILED]
    assert rec == fold(created, await store.events("job-1"))
    # Without an error text the record still says something.
    await create(store, job(2))
    await append(store, "job-2", EventType.JOB_FAILED)
    rec2 = await store.get_job("job-2")
    assert rec2 is not None and rec2.status is JobStatus.FAILED and rec2.error == "the job failed"


@job_backends
async def test_job_expired_names_the_missing_files(store: StateStore) -> None:
    await create(store, job(files=3))
    await append(store, "job-1", EventType.FILE_RECEIVED, "r1", index=1)
    missing = ["f0.txt", "f2.txt"]
    event, new = await append(
        store,
        "job-1",
        EventType.JOB_EXPIRED,
        if_status=frozenset({JobStatus.WAITING_FOR_FILES}),
        missing=missing,
        error="these files never arrived: f0.txt, f2.txt",
    )
    assert new and event is not None and event.data["missing"] == missing
    rec = await store.get_job("job-1")
    assert rec is not None and rec.status is JobStatus.EXPIRED and rec.missing == missing
    assert rec.error == "these files never arrived: f0.txt, f2.txt"
    await create(store, job(2))
    await append(store, "job-2", EventType.JOB_EXPIRED)
    rec2 = await store.get_job("job-2")
    assert rec2 is not None and rec2.error == "the job expired"


@job_backends
async def test_status_never_moves_backward(store: StateStore) -> None:
    created = job()
    await create(store, created)
    await append(store, "job-1", EventType.STEP_STARTED, "s0", step=0)  # queued skipped
    rec = await store.get_job("job-1")
    assert rec is not None and rec.status is JobStatus.RUNNING
    # A late job.queued is logged (the stream shows it) but the job stays running.
    late, new = await append(store, "job-1", EventType.JOB_QUEUED)
    assert new and late is not None and late.seq == 3
    rec = await store.get_job("job-1")
    assert rec is not None and rec.status is JobStatus.RUNNING and rec.last_seq == 3
    assert rec == fold(created, await store.events("job-1"))


# --- listings and reading the log -------------------------------------------------------------


@paged_job_backends
async def test_list_jobs_by_status_newest_first_with_limit(store: StateStore) -> None:
    for n in range(1, 6):
        await create(store, job(n, created_at=T0 + 10 * n))
    await create(store, job(0, created_at=T0 - 100))  # created last, yet the oldest
    await append(store, "job-2", EventType.JOB_QUEUED)
    await append(store, "job-4", EventType.JOB_QUEUED)
    await append(store, "job-5", EventType.JOB_FAILED, error="x")

    def ids(jobs: list[JobRecord]) -> list[str]:
        return [j.job_id for j in jobs]

    everything = await store.list_jobs()
    assert ids(everything) == ["job-5", "job-4", "job-3", "job-2", "job-1", "job-0"]
    assert everything[0] == await store.get_job("job-5")
    assert ids(await store.list_jobs(limit=2)) == ["job-5", "job-4"]
    assert ids(await store.list_jobs(status=JobStatus.WAITING_FOR_FILES)) == [
        "job-3",
        "job-1",
        "job-0",
    ]
    assert ids(await store.list_jobs(status=JobStatus.WAITING_FOR_FILES, limit=2)) == [
        "job-3",
        "job-1",
    ]
    assert ids(await store.list_jobs(status=JobStatus.QUEUED)) == ["job-4", "job-2"]
    assert ids(await store.list_jobs(status=JobStatus.FAILED)) == ["job-5"]
    assert await store.list_jobs(status=JobStatus.COMPLETED) == []
    queued = await store.list_jobs(status=JobStatus.QUEUED)
    assert all(j.status is JobStatus.QUEUED and j.last_seq == 2 for j in queued)


@paged_job_backends
async def test_a_cursor_token_pages_like_the_record_it_was_made_from(store: StateStore) -> None:
    """The API's and CLI's paging: ``after`` given a :class:`JobCursor` decoded from its
    token, in both orders, with a status, ties in ``created_at`` broken by job id, and a
    page's last job that changed status since (the cursor is a position, not a job)."""
    created = [T0 + 0.000_001 * (n // 2) for n in range(7)]  # pairs share created_at
    for n, at in enumerate(created):
        await create(store, job(n, created_at=at))
    for oldest_first in (False, True):
        for status in (None, JobStatus.WAITING_FOR_FILES):
            whole = await store.list_jobs(status=status, limit=100, oldest_first=oldest_first)
            seen: list[JobRecord] = []
            token: str | None = None
            for _ in range(10):  # 4 pages and an empty one; a cursor ignored would loop
                after = None if token is None else JobCursor.from_token(token)
                assert token is None or after is not None
                page = await store.list_jobs(
                    status=status, limit=2, oldest_first=oldest_first, after=after
                )
                if not page:
                    break
                seen += page
                token = JobCursor.of(page[-1]).token()
            else:
                pytest.fail(f"paging did not end: {[j.job_id for j in seen]}")
            assert [j.job_id for j in seen] == [j.job_id for j in whole], (oldest_first, status)
            assert len(whole) == 7
    first = await store.list_jobs(status=JobStatus.WAITING_FOR_FILES, limit=3)
    token = JobCursor.of(first[-1]).token()
    await append(store, first[-1].job_id, EventType.JOB_QUEUED)  # the cursor's job moves on
    rest = await store.list_jobs(
        status=JobStatus.WAITING_FOR_FILES, limit=10, after=JobCursor.from_token(token)
    )
    assert [j.job_id for j in first + rest] == [f"job-{n}" for n in range(6, -1, -1)][:3] + [
        f"job-{n}" for n in range(3, -1, -1)
    ]


@paged_job_backends
async def test_jobs_created_within_one_microsecond_page_once_each(store: StateStore) -> None:
    """Jobs whose ``created_at`` differ by less than a microsecond, their ids in the
    other order: DynamoDB keeps the time to the microsecond, so a page boundary
    between them must follow the order the store lists by, or the next page
    repeats a job (or skips one)."""
    ats = {"job-z": T0 + 1e-7, "job-y": T0 + 2e-7, "job-a": T0 + 4e-7, "job-m": T0 + 5.0}
    for job_id, at in ats.items():
        await create(store, job(job_id[4:], created_at=at))
    for oldest_first in (False, True):
        whole = [j.job_id for j in await store.list_jobs(limit=10, oldest_first=oldest_first)]
        assert sorted(whole) == sorted(ats)
        for limit in (1, 2, 3):
            seen: list[str] = []
            after: JobRecord | None = None
            for _ in range(6):
                page = await store.list_jobs(limit=limit, oldest_first=oldest_first, after=after)
                if not page:
                    break
                seen += [j.job_id for j in page]
                after = page[-1]
            assert seen == whole, (oldest_first, limit)


@paged_job_backends
async def test_events_after_seq_and_limit(store: StateStore) -> None:
    await create(store, job())
    for i in range(9):
        await append(store, "job-1", EventType.STEP_PROGRESS, f"p{i}", step=0, bytes_done=i)
    everything = await store.events("job-1")
    assert [e.seq for e in everything] == list(range(1, 11))
    assert await store.events("job-1", after_seq=0) == everything
    assert await store.events("job-1", after_seq=4) == everything[4:]
    assert await store.events("job-1", after_seq=4, limit=3) == everything[4:7]
    assert await store.events("job-1", limit=1) == everything[:1]
    assert await store.events("job-1", after_seq=10) == []
    assert await store.events("job-1", after_seq=99) == []
    assert [e.data["bytes_done"] for e in everything[1:]] == list(range(9))
    assert [e.event_id for e in everything] == ["job-1:created"] + [f"p{i}" for i in range(9)]


# --- several store instances ---------------------------------------------------------------


@race_job_backends
async def test_concurrent_appends_from_two_instances_number_without_gaps(
    make_store: Callable[[], StateStore], store: StateStore
) -> None:
    """20 appends racing on one job through two store instances get seq 2..21 exactly once.

    Several rounds (jobs): a lost race shows only now and then. Five on SQLite (a
    read-then-insert outside one transaction fails about one round in three);
    two on DynamoDB, whose contended conditional writes retry slowly.
    """
    other = await make_store().__aenter__()
    try:
        pair = (store, other)
        for rnd in range(5 if isinstance(store, SqliteStateStore) else 2):
            job_id = f"job-{rnd}"
            created = await asyncio.gather(
                *(s.create_job(job(rnd), event_id="c", data={}) for s in pair)
            )
            assert created[0] == created[1] and created[0].seq == 1

            def racer(i: int, job_id: str = job_id) -> Any:
                return append(
                    pair[i % 2], job_id, EventType.STEP_PROGRESS, f"e{i}", step=0, records_done=i
                )

            results = await asyncio.gather(*(racer(i) for i in range(20)))
            assert all(new and e is not None for e, new in results)
            got = sorted((e for e, _ in results if e is not None), key=lambda e: e.seq)
            assert [e.seq for e in got] == list(range(2, 22))
            log = await store.events(job_id)
            assert [e.seq for e in log] == list(range(1, 22))
            assert log[1:] == got  # what each appender got back is what was logged
            assert await other.events(job_id) == log
            rec = await other.get_job(job_id)
            assert rec is not None and rec.last_seq == 21
            assert rec.steps[0].progress == {"records_done": log[-1].data["records_done"]}
            assert rec == fold(job(rnd), log)  # whoever wrote each event
            assert {e.event_id for e in log[1:]} == {f"e{i}" for i in range(20)}
            # The same 20 again, racing: all duplicates, nothing appended.
            again = await asyncio.gather(*(racer(i) for i in range(20)))
            assert all(not new for _, new in again)
            assert sorted((e for e, _ in again if e is not None), key=lambda e: e.seq) == got
            assert await store.events(job_id) == log
    finally:
        await other.__aexit__(None, None, None)


@job_backends
async def test_a_second_instance_sees_everything(
    make_store: Callable[[], StateStore], store: StateStore
) -> None:
    await create(store, job(1))
    await create(store, job(2, created_at=T0 + 1))
    await append(store, "job-1", EventType.FILE_RECEIVED, "r0", index=0)
    await append(store, "job-2", EventType.JOB_QUEUED)
    async with make_store() as other:
        for job_id in ("job-1", "job-2"):
            assert await other.get_job(job_id) == await store.get_job(job_id)
            assert await other.events(job_id) == await store.events(job_id)
        assert await other.job_for_upload("u2") == await store.get_job("job-2")
        assert await other.list_jobs() == await store.list_jobs()
        # Appends through either instance continue one numbering.
        event, new = await append(other, "job-1", EventType.JOB_QUEUED)
        assert new and event is not None and event.seq == 3
        mine, new = await append(store, "job-1", EventType.STEP_STARTED, "s0", step=0)
        assert new and mine is not None and mine.seq == 4
        assert await other.get_job("job-1") == await store.get_job("job-1")


# --- SQLite specifics -----------------------------------------------------------------------


async def test_sqlite_database_without_job_tables_gains_them(tmp_path: Path) -> None:
    """A database written before upload jobs existed gets the job tables on open."""
    path = tmp_path / "old.db"
    async with SqliteStateStore(path) as s:
        await s.incr("n")
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE jobs")
    conn.execute("DROP TABLE job_events")
    conn.commit()
    conn.close()
    async with SqliteStateStore(path) as s:
        assert await s.counter("n") == 1
        await create(s, job())
        assert [e.seq for e in await s.events("job-1")] == [1]
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        assert version == SCHEMA_VERSION
    finally:
        conn.close()
