"""A failed job names the step it failed in: the job runner (in process) on the emulator's
queues and a real SQLite store, its progress read back by the web's consumer. The job
record then shows that step failed, not running for ever."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from jobs_support import FAILS, JobsProject

from s3flow.app import open_store
from s3flow.aws import open_clients
from s3flow.jobs.bridge import JobMessage
from s3flow.jobs.progress import ProgressConsumer
from s3flow.jobs.runner import JobHandler
from s3flow.state.jobs import (
    EventType,
    JobEvent,
    JobFile,
    JobRecord,
    JobStatus,
    JobStep,
    StepStatus,
)
from s3flow.worker.outcomes import Ack
from s3flow.worker.source import ReceivedMessage

pytestmark = pytest.mark.integration


@pytest.fixture()
def project(tmp_path: Path, s3: Any, sqs: Any) -> JobsProject:
    return JobsProject(
        tmp_path,
        s3,
        sqs,
        jobs={"max_receive_count": 1},  # the first attempt is the last
        extra_templates=[
            {
                "name": "count-then-fail",
                "steps": [{"processor": "line-count"}, {"processor": FAILS}],
            }
        ],
    )


async def _fail_a_job(
    project: JobsProject, *, receive_count: int, running_step: int | None
) -> tuple[JobRecord, list[JobEvent]]:
    """A queued job of ``count-then-fail`` handled once; its record and log once it ended."""
    job_id = f"job-{uuid.uuid4().hex}"
    upload_id = uuid.uuid4().hex
    key = f"uploads/{upload_id}/0-a.txt"
    project.s3.put_object(Bucket=project.bucket, Key=key, Body=b"1\n2\n")
    now = time.time()
    job = JobRecord(
        job_id=job_id,
        upload_id=upload_id,
        template="count-then-fail",
        status=JobStatus.WAITING_FOR_FILES,
        files=(JobFile("a.txt", key, 4, "text/plain", received=True),),
        steps=(JobStep("line-count"), JobStep(FAILS)),
        created_at=now,
        updated_at=now,
        expires_at=now + 3600,
    )
    async with open_clients(project.settings.aws) as c, open_store(project.settings) as store:
        assert store is not None
        await store.create_job(job, event_id=f"{job_id}:created", data={})
        await store.append_event(
            job_id, event_id=f"{job_id}:queued", type=EventType.JOB_QUEUED, data={"files": 1}
        )
        if running_step is not None:  # an earlier attempt's worker died in this step
            await store.append_event(
                job_id,
                event_id=f"{job_id}:started",
                type=EventType.STEP_STARTED,
                data={"step": running_step, "name": "x", "inputs": 1, "attempt": 1},
            )
        url = project.url("progress.fifo")
        handler = JobHandler(
            project.settings,
            s3=c.s3,
            sqs=c.sqs,
            store=store,
            progress_queue_url=url,
            worker_id="test",
        )
        body = JobMessage(job_id=job_id, upload_id=upload_id, template="count-then-fail")
        outcome = await handler.handle(
            ReceivedMessage(
                message_id="m1",
                receipt_handle="r1",
                body=body.model_dump_json(),
                receive_count=receive_count,
                received_at=time.monotonic(),
            )
        )
        assert outcome == Ack("failed")
        async with ProgressConsumer(sqs=c.sqs, queue_url=url, store=store, wait_time_s=1):
            deadline = time.monotonic() + 15
            while True:
                record = await store.get_job(job_id)
                assert record is not None
                if record.status.terminal:
                    break
                assert time.monotonic() < deadline, f"job still {record.status}"
                await asyncio.sleep(0.05)
        return record, await store.events(job_id)


async def test_a_step_that_fails_is_named_by_job_failed_and_the_record_shows_it_failed(
    project: JobsProject,
) -> None:
    record, log = await _fail_a_job(project, receive_count=1, running_step=None)
    assert record.status is JobStatus.FAILED and "boom" in (record.error or "")
    assert log[-1].type is EventType.JOB_FAILED
    assert log[-1].data["step"] == 1  # step 0 completed, step 1 raised
    assert [s.status for s in record.steps] == [StepStatus.COMPLETED, StepStatus.FAILED]


async def test_a_worker_that_died_in_the_last_attempt_fails_the_step_it_was_in(
    project: JobsProject,
) -> None:
    record, log = await _fail_a_job(project, receive_count=2, running_step=0)
    assert record.status is JobStatus.FAILED
    assert "stopped during its last allowed attempt" in (record.error or "")
    assert log[-1].type is EventType.JOB_FAILED and log[-1].data["step"] == 0
    assert [s.status for s in record.steps] == [StepStatus.FAILED, StepStatus.PENDING]
