"""The web's progress consumer on a real progress FIFO queue (emulator) and a real SQLite store:
a malformed message is poison (logged, deleted) and the consumer goes on with every job."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from jobs_support import waiting_job

from s3flow.aws import open_clients
from s3flow.jobs.progress import ProgressConsumer, ProgressMessage
from s3flow.local.endpoint import LocalEndpoint
from s3flow.settings import AwsSettings
from s3flow.state.jobs import EventType, JobStatus
from s3flow.state.sqlite import SqliteStateStore

pytestmark = pytest.mark.integration


def _body(job_id: str, event_id: str, type_: str, data_json: str) -> str:
    """A body written by hand: ``data_json`` goes in as it is (NaN, deep nesting...)."""
    head = json.dumps({"job_id": job_id, "event_id": event_id, "type": type_})
    return head[:-1] + ', "data": ' + data_json + "}"


async def _until(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_malformed_progress_messages_are_dropped_and_consuming_goes_on(
    endpoint: LocalEndpoint, sqs: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue_url = str(
        sqs.create_queue(
            QueueName=f"p{uuid.uuid4().hex[:12]}-progress.fifo",
            Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "false"},
        )["QueueUrl"]
    )
    a, b = "job-a" + uuid.uuid4().hex, "job-b" + uuid.uuid4().hex
    deep = "[" * 100_000 + "]" * 100_000
    bad = [
        # NaN in the data: json.loads takes it, the store's JSON does not (ValueError)
        (a, _body(a, f"{a}:nan", "step.progress", '{"step": 0, "bytes_done": NaN}')),
        # a counter that is not a number (ValueError while folding it into the job)
        (a, _body(a, f"{a}:str", "step.progress", '{"step": 0, "bytes_done": "lots"}')),
        # an output without its key and bucket (KeyError while folding job.completed)
        (a, _body(a, f"{a}:out", "job.completed", '{"outputs": [{"name": "x"}]}')),
        # nested deeper than the JSON parser goes (RecursionError)
        (b, _body(b, f"{b}:deep", "step.progress", deep)),
    ]
    good = [
        (a, ProgressMessage(a, f"{a}:started", EventType.STEP_STARTED, {"step": 0}).to_body()),
        (b, ProgressMessage(b, f"{b}:started", EventType.STEP_STARTED, {"step": 0}).to_body()),
    ]
    ids: dict[str, str] = {}
    for i, (job_id, body) in enumerate([*bad, *good]):
        sent = sqs.send_message(
            QueueUrl=queue_url,
            MessageBody=body,
            MessageGroupId=job_id,
            MessageDeduplicationId=f"m{i}",
        )
        ids[sent["MessageId"]] = job_id
    caplog.set_level(logging.INFO, logger="s3flow.jobs.progress")
    aws = AwsSettings(endpoint_url=endpoint.url, region="us-east-1")
    async with SqliteStateStore(tmp_path / "state.db") as store, open_clients(aws) as clients:
        for job_id in (a, b):
            await store.create_job(waiting_job(job_id), event_id=f"{job_id}:created", data={})

        async def both_running() -> bool:
            jobs = [await store.get_job(j) for j in (a, b)]
            return all(j is not None and j.status is JobStatus.RUNNING for j in jobs)

        async with ProgressConsumer(
            sqs=clients.sqs, queue_url=queue_url, store=store, wait_time_s=1
        ) as consumer:
            await _until(both_running, 30, "the good events after the bad ones")
            assert consumer.consumed == 2
        for job_id in (a, b):
            log = await store.events(job_id)
            assert [e.type for e in log] == [EventType.JOB_CREATED, EventType.STEP_STARTED]
            job = await store.get_job(job_id)
            assert job is not None and job.outputs == () and job.steps[0].progress == {}
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attrs == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }
    dropped = [r.getMessage() for r in caplog.records if "without storing it" in r.getMessage()]
    assert len(dropped) == len(bad), dropped
    # Each names the message and, when it could be read, the event and job.
    for message_id, job_id in list(ids.items())[: len(bad)]:
        line = next(d for d in dropped if message_id in d)
        assert "Retrying cannot fix it" in line
        if job_id == a:
            assert f"of job {a}" in line
    assert any("ValueError" in d and f"{a}:nan" in d for d in dropped)
    assert any("KeyError" in d and f"{a}:out" in d for d in dropped)
    assert any("RecursionError" in d for d in dropped)
