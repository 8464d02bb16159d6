"""The bridge's expiry sweep on real stores (a SQLite file, DynamoDB on the emulator): an
overdue job is found however many jobs are waiting, and the listing it pages with."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from jobs_support import waiting_job

from s3flow.jobs.bridge import expire_overdue
from s3flow.local.endpoint import LocalEndpoint
from s3flow.settings import AwsSettings
from s3flow.state import DynamoStateStore, SqliteStateStore, StateStore
from s3flow.state.dynamodb.codec import encode_job
from s3flow.state.jobs import EventType, JobRecord, JobStatus

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "dynamodb"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    s: StateStore
    if request.param == "sqlite":
        s = SqliteStateStore(tmp_path / "state.db")
    else:
        endpoint: LocalEndpoint = request.getfixturevalue("endpoint")
        aws = AwsSettings(endpoint_url=endpoint.url, region="us-east-1")
        s = DynamoStateStore(f"x-{uuid.uuid4().hex[:10]}", aws)
        await s.ensure_tables()
    async with s as opened:
        yield opened


async def _create(store: StateStore, jobs: list[JobRecord]) -> None:
    """Store ``jobs``: through ``create_job`` on SQLite; as BatchWriteItem of their records on
    DynamoDB (moto takes ~60 ms a create_job transaction: a thousand would take a minute)."""
    if isinstance(store, DynamoStateStore):
        _put_items(store, [encode_job(replace(j, last_seq=0)) for j in jobs])
        return
    for job in jobs:
        await store.create_job(job, event_id=f"{job.job_id}:created", data={})


def _put_items(store: DynamoStateStore, items: list[dict[str, Any]]) -> None:
    """BatchWriteItem ``items`` into the store's jobs table on the session's emulator
    (the endpoint fixture points AWS_ENDPOINT_URL at it)."""
    ddb = boto3.client(
        "dynamodb", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1"
    )
    for i in range(0, len(items), 25):
        batch = [{"PutRequest": {"Item": item}} for item in items[i : i + 25]]
        left = ddb.batch_write_item(RequestItems={store.jobs_table: batch})
        assert not left.get("UnprocessedItems"), left


async def test_overdue_jobs_are_expired_behind_a_thousand_waiting_ones(store: StateStore) -> None:
    now = 1_000.0
    # The oldest job is overdue; so is a newer one whose deadline was set by a shorter
    # job_timeout_s. A thousand and one newer jobs are waiting, not overdue.
    old = waiting_job("job-old", created_at=100.0, expires_at=200.0)
    newer = waiting_job("job-newer-short", created_at=50_000.0, expires_at=300.0)
    waiting = [waiting_job(f"job-w{i:04d}", 10_000.0 + i, 10**12) for i in range(1001)]
    await _create(store, [old, newer, *waiting])
    expired = await expire_overdue(store, now=now)
    assert sorted(expired) == ["job-newer-short", "job-old"]
    for job_id in ("job-old", "job-newer-short"):
        job = await store.get_job(job_id)
        assert job is not None and job.status is JobStatus.EXPIRED
        assert (await store.events(job_id))[-1].type is EventType.JOB_EXPIRED
    assert await expire_overdue(store, now=now) == []  # nothing left to do
    left = await store.list_jobs(status=JobStatus.WAITING_FOR_FILES, limit=2000)
    assert len(left) == 1001


async def test_list_jobs_pages_in_either_order(store: StateStore) -> None:
    jobs = [waiting_job(f"job-{i}", created_at=float(i // 2), expires_at=10**12) for i in range(7)]
    await _create(store, jobs)
    await store.append_event(
        "job-3", event_id="job-3:q", type=EventType.JOB_QUEUED, data={"files": 1}
    )
    for oldest_first in (True, False):
        for status in (None, JobStatus.WAITING_FOR_FILES):
            seen: list[str] = []
            after = None
            while page := await store.list_jobs(
                status=status, limit=2, oldest_first=oldest_first, after=after
            ):
                seen += [j.job_id for j in page]
                after = page[-1]
            want = [j.job_id for j in jobs if status is None or j.job_id != "job-3"]
            assert seen == (want if oldest_first else want[::-1]), (oldest_first, status)


@pytest.mark.parametrize("store", ["dynamodb"], indirect=True)
async def test_a_page_of_lagging_index_entries_does_not_end_the_sweep(store: StateStore) -> None:
    """DynamoDB's status index lags a status change: its oldest "waiting" entries can be of
    jobs already queued (here: items whose index attribute says waiting, their records
    queued). A page holding only those is dropped, not taken for the end of the listing:
    the overdue jobs behind it are listed and expire."""
    assert isinstance(store, DynamoStateStore)
    now = 1_000.0
    lagging = [
        replace(waiting_job(f"job-l{i}", 100.0 + i, 200.0), status=JobStatus.QUEUED)
        for i in range(5)
    ]
    _put_items(store, [{**encode_job(j), "status": {"S": "waiting_for_files"}} for j in lagging])
    overdue = [waiting_job(f"job-o{i}", created_at=500.0 + i, expires_at=600.0) for i in range(3)]
    await _create(store, overdue)
    first = await store.list_jobs(status=JobStatus.WAITING_FOR_FILES, limit=2, oldest_first=True)
    assert [j.job_id for j in first] == ["job-o0", "job-o1"]  # past two pages of lagging keys
    assert await expire_overdue(store, now=now, page_size=2) == ["job-o0", "job-o1", "job-o2"]
    for job in overdue:
        got = await store.get_job(job.job_id)
        assert got is not None and got.status is JobStatus.EXPIRED
    for job in lagging:  # queued: not the sweep's to expire
        got = await store.get_job(job.job_id)
        assert got is not None and got.status is JobStatus.QUEUED
