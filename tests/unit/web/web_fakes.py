"""An in-memory JobStore and S3 stand-in for the web unit tests."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from s3flow.state.jobs import (
    EventType,
    JobEvent,
    JobFile,
    JobPosition,
    JobRecord,
    JobStatus,
    JobStep,
    apply_event,
)


class FakeJobStore:
    """The JobStore protocol in a dict, with switches to make reads fail or count them."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}
        self.logs: dict[str, list[JobEvent]] = {}
        self.reads = 0
        self.fail_reads = 0  # the next N events() calls raise

    async def create_job(self, job: JobRecord, *, event_id: str, data: dict[str, Any]) -> JobEvent:
        if job.job_id in self.jobs:
            return self.logs[job.job_id][0]
        event = JobEvent(job.job_id, 1, event_id, EventType.JOB_CREATED, data, time.time())
        self.jobs[job.job_id] = replace(job, last_seq=1)
        self.logs[job.job_id] = [event]
        return event

    async def get_job(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    async def job_for_upload(self, upload_id: str) -> JobRecord | None:
        return next((j for j in self.jobs.values() if j.upload_id == upload_id), None)

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        limit: int = 50,
        oldest_first: bool = False,
        after: JobPosition | None = None,
    ) -> list[JobRecord]:
        def order(j: JobPosition) -> tuple[float, str]:
            return (j.created_at, j.job_id)

        jobs = [j for j in self.jobs.values() if status is None or j.status is status]
        if after is not None:
            past = order(after)
            jobs = [j for j in jobs if (order(j) > past if oldest_first else order(j) < past)]
        return sorted(jobs, key=order, reverse=not oldest_first)[:limit]

    async def append_event(
        self,
        job_id: str,
        *,
        event_id: str,
        type: EventType,
        data: dict[str, Any],
        if_status: frozenset[JobStatus] | None = None,
    ) -> tuple[JobEvent | None, bool]:
        job = self.jobs.get(job_id)
        if job is None or job.status.terminal:
            return None, False
        if if_status is not None and job.status not in if_status:
            return None, False
        log = self.logs[job_id]
        for existing in log:
            if existing.event_id == event_id:
                return existing, False
        at = time.time()
        event = JobEvent(job_id, len(log) + 1, event_id, type, data, at)
        log.append(event)
        self.jobs[job_id] = replace(apply_event(job, type, data, at), last_seq=event.seq)
        return event, True

    async def events(self, job_id: str, *, after_seq: int = 0, limit: int = 1000) -> list[JobEvent]:
        self.reads += 1
        await asyncio.sleep(0)  # a real store hands off to its thread or the network
        if self.fail_reads:
            self.fail_reads -= 1
            raise OSError("the store is unreachable")
        return [e for e in self.logs.get(job_id, []) if e.seq > after_seq][:limit]

    # --- helpers -------------------------------------------------------------------------

    async def new_job(self, job_id: str = "job-1", *, steps: int = 1) -> JobRecord:
        now = time.time()
        job = JobRecord(
            job_id=job_id,
            upload_id=f"up-{job_id}",
            template="count",
            status=JobStatus.WAITING_FOR_FILES,
            files=(JobFile("a.txt", f"uploads/{job_id}/0-a.txt", 3, "text/plain"),),
            steps=tuple(JobStep("line-count") for _ in range(steps)),
            created_at=now,
            updated_at=now,
            expires_at=now + 60,
        )
        await self.create_job(job, event_id=f"{job_id}:created", data={"template": "count"})
        return self.jobs[job_id]

    async def add(self, job_id: str, type_: EventType, **data: Any) -> JobEvent:
        n = len(self.logs[job_id]) + 1
        event, new = await self.append_event(
            job_id, event_id=f"{job_id}:{n}", type=type_, data=data
        )
        assert event is not None and new
        return event


class FakeS3:
    """Presigning without a network: what the API asks of S3."""

    def __init__(self) -> None:
        self.presigned_gets: list[dict[str, Any]] = []

    async def generate_presigned_post(self, **kwargs: Any) -> dict[str, Any]:
        return {
            "url": f"http://s3.test/{kwargs['Bucket']}",
            "fields": {"key": kwargs["Key"], **kwargs.get("Fields", {}), "policy": "p"},
        }

    async def generate_presigned_url(self, op: str, **kwargs: Any) -> str:
        self.presigned_gets.append(kwargs)
        params = kwargs["Params"]
        return f"http://s3.test/{params['Bucket']}/{params['Key']}?sig=1"
