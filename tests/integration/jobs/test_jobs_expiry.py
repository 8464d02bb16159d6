"""The bridge's expiry sweep on real stores (a SQLite file, DynamoDB on the emulator): an
overdue job is found however many jobs are waiting, and the listing it pages with."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

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
        # The session's emulator (the endpoint fixture points AWS_ENDPOINT_URL at it).
        ddb = boto3.client(
            "dynamodb", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1"
        )
        items = [encode_job(replace(j, last_seq=0)) for j in jobs]
        for i in range(0, len(items), 25):
            batch = [{"PutRequest": {"Item": item}} for item in items[i : i + 25]]
            left = ddb.batch_write_item(RequestItems={store.jobs_table: batch})
            assert not left.get("UnprocessedItems"), left
        return
    for job in jobs:
        await store.create_job(job, event_id=f"{job.job_id}:created", data={})


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
