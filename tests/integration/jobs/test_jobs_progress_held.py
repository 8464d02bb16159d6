"""The web's progress consumer when the store refuses one job's event for a moment (a busy
SQLite, a throttled DynamoDB): only that job's events wait, and not for the queue's 30 s
visibility timeout; every other job's events are stored at once. A real progress FIFO
queue (emulator) and a real SQLite store."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from jobs_support import waiting_job

from s3flow.aws import open_clients
from s3flow.jobs.progress import ProgressConsumer, ProgressPublisher
from s3flow.local.endpoint import LocalEndpoint
from s3flow.settings import AwsSettings
from s3flow.state.jobs import EventType, JobEvent, JobStatus
from s3flow.state.records import StateError
from s3flow.state.sqlite import SqliteStateStore

pytestmark = pytest.mark.integration


class BusyOnceStore(SqliteStateStore):
    """A store that refuses the events in :attr:`busy` once each (StateError), like a lock."""

    busy: set[str]

    async def append_event(
        self,
        job_id: str,
        *,
        event_id: str,
        type: EventType,  # the JobStore protocol's name
        data: dict[str, Any],
        if_status: frozenset[JobStatus] | None = None,
    ) -> tuple[JobEvent | None, bool]:
        if event_id in self.busy:
            self.busy.discard(event_id)
            raise StateError("database is locked")
        return await super().append_event(
            job_id, event_id=event_id, type=type, data=data, if_status=if_status
        )


class RefusesVisibilityChanges:
    """An SQS client whose role lacks sqs:ChangeMessageVisibility (AccessDenied)."""

    def __init__(self, sqs: Any) -> None:
        self._sqs = sqs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    async def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        error = {"Error": {"Code": "AccessDenied", "Message": "not allowed"}}
        raise ClientError(error, "ChangeMessageVisibilityBatch")


def _queue(sqs: Any, visibility_s: int) -> str:
    return str(
        sqs.create_queue(
            QueueName=f"p{uuid.uuid4().hex[:12]}-progress.fifo",
            Attributes={
                "FifoQueue": "true",
                "ContentBasedDeduplication": "false",
                "VisibilityTimeout": str(visibility_s),
            },
        )["QueueUrl"]
    )


def _depth(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


async def _run(
    endpoint: LocalEndpoint, sqs: Any, tmp_path: Path, *, visibility_s: int, refuse: bool
) -> dict[str, float]:
    """Jobs a and b, four events each (a's first refused once); when each job had them all."""
    url = _queue(sqs, visibility_s)
    a, b = "job-a" + uuid.uuid4().hex, "job-b" + uuid.uuid4().hex
    aws = AwsSettings(endpoint_url=endpoint.url, region="us-east-1")
    async with BusyOnceStore(tmp_path / "state.db") as store, open_clients(aws) as clients:
        store.busy = {f"{a}:started"}
        for job_id in (a, b):
            await store.create_job(waiting_job(job_id), event_id=f"{job_id}:created", data={})
            # a's events first: the batch holds a's, then b's
            pub = ProgressPublisher(clients.sqs, url, job_id)
            started = {"step": 0, "name": "line-count", "inputs": 1, "attempt": 1}
            await pub.publish(f"{job_id}:started", EventType.STEP_STARTED, started)
            for i in range(3):
                progress = {"step": 0, "bytes_done": i, "bytes_total": 3, "files_done": 0}
                await pub.publish(f"{job_id}:p{i}", EventType.STEP_PROGRESS, progress)
        sqs_client = RefusesVisibilityChanges(clients.sqs) if refuse else clients.sqs
        done: dict[str, float] = {}
        t0 = time.monotonic()
        async with ProgressConsumer(sqs=sqs_client, queue_url=url, store=store, wait_time_s=1):
            while len(done) < 2 and time.monotonic() - t0 < visibility_s + 15:
                for job_id in (a, b):
                    if job_id not in done and len(await store.events(job_id)) == 5:
                        done[job_id] = time.monotonic() - t0
                await asyncio.sleep(0.05)
        sent = ["created", "started", "p0", "p1", "p2"]
        for job_id in (a, b):  # each job's events once, in the order they were sent
            names = [e.event_id.rsplit(":", 1)[1] for e in await store.events(job_id)]
            if refuse and job_id == a:
                # Timed out together, a group's messages come back from the emulator
                # last first (moto; SQS keeps their order): only "each once" holds here.
                assert sorted(names) == sorted(sent), names
                continue
            assert names == sent, names
            record = await store.get_job(job_id)
            assert record is not None and record.steps[0].progress["bytes_done"] == 2
    assert _depth(sqs, url) == 0
    return {"a": done.get(a, -1.0), "b": done.get(b, -1.0)}


async def test_an_event_the_store_refuses_holds_back_only_its_job_and_only_briefly(
    endpoint: LocalEndpoint, sqs: Any, tmp_path: Path
) -> None:
    took = await _run(endpoint, sqs, tmp_path, visibility_s=30, refuse=False)
    assert 0 <= took["b"] < 5, took  # the other job did not wait for a's event
    assert 0 <= took["a"] < 10, took  # a's came back in seconds, not after 30 s


async def test_without_leave_to_change_visibility_the_job_waits_for_the_timeout_only(
    endpoint: LocalEndpoint, sqs: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    took = await _run(endpoint, sqs, tmp_path, visibility_s=4, refuse=True)
    assert 0 <= took["b"] < 3, took
    assert 4 <= took["a"] < 12, took  # the queue's visibility timeout
    assert any("sqs:ChangeMessageVisibility" in r.getMessage() for r in caplog.records)
