"""The jobs bridge judges a file's arrival by when it was stored (LastModified), on the
emulator and a real SQLite store: a notification made after the deadline by `s3flow
reprocess` (its eventTime is when it ran) does not expire a job whose file was in time;
a stray object after the deadline is refused, not taken as the job's late file; a job
with every file received that still waits is queued by the expiry sweep, and one whose
message could not be sent is left waiting for it, never 'queued' with no message."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from itest_support import wait_for

from s3flow.aws import open_clients
from s3flow.errors import InvalidInputError, S3flowError
from s3flow.events import ObjectEvent
from s3flow.jobs.bridge import BridgeProcessor, expire_overdue
from s3flow.processors.base import PipelineContext, ProcessContext
from s3flow.settings import AwsSettings
from s3flow.state import SqliteStateStore
from s3flow.state.jobs import EventType, JobFile, JobRecord, JobStatus, JobStep

pytestmark = pytest.mark.integration


@dataclass
class Bridge:
    processor: BridgeProcessor
    store: SqliteStateStore
    s3: Any
    bucket: str
    queue_url: str

    def event(self, key: str, size: int) -> ObjectEvent:
        # As `s3flow reprocess` makes it: eventTime is when the command ran.
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        return ObjectEvent(self.bucket, key, "ObjectCreated:Put", size=size, event_time=now)

    async def process(self, key: str, size: int) -> Any:
        ctx = ProcessContext(
            event=self.event(key, size),
            pipeline="jobs-intake",
            worker_id="w",
            s3=self.s3,
            sink=None,  # type: ignore[arg-type]  # the bridge writes no output
            store=self.store,
        )
        return await self.processor.process(ctx)

    async def job(self, name: str, files: list[str], expires_in_s: float) -> JobRecord:
        upload = uuid.uuid4().hex
        now = time.time()
        job = JobRecord(
            job_id=f"job-{name}-{upload[:6]}",
            upload_id=upload,
            template="count",
            status=JobStatus.WAITING_FOR_FILES,
            files=tuple(
                JobFile(name=f, key=f"uploads/{upload}/{i}-{f}", size=2, content_type="text/plain")
                for i, f in enumerate(files)
            ),
            steps=(JobStep(name="line-count"),),
            created_at=now,
            updated_at=now,
            expires_at=now + expires_in_s,
        )
        await self.store.create_job(job, event_id=f"{job.job_id}:created", data={})
        return job


@pytest.fixture()
async def bridge(endpoint: Any, s3: Any, sqs: Any, tmp_path: Path) -> AsyncIterator[Bridge]:
    bucket = f"b-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    queue = f"q-{uuid.uuid4().hex[:10]}.fifo"
    url = sqs.create_queue(QueueName=queue, Attributes={"FifoQueue": "true"})["QueueUrl"]
    aws = AwsSettings(endpoint_url=endpoint.url, region="us-east-1")
    async with SqliteStateStore(tmp_path / "state.db") as store, open_clients(aws) as clients:
        processor = BridgeProcessor(
            {"processing_queue": url, "max_file_bytes": 1000, "sweep_interval_s": 3600}
        )
        await processor.start(
            PipelineContext(
                pipeline="jobs-intake",
                bucket=bucket,
                worker_id="w",
                s3=clients.s3,
                sink=None,  # type: ignore[arg-type]
                store=store,
                sqs=clients.sqs,
            )
        )
        try:
            yield Bridge(processor, store, clients.s3, bucket, url)
        finally:
            await processor.stop()


def _queued(sqs: Any, url: str) -> int:
    return int(
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])[
            "Attributes"
        ]["ApproximateNumberOfMessages"]
    )


async def test_a_reprocessed_file_stored_in_time_is_received_after_the_deadline(
    bridge: Bridge, s3: Any, sqs: Any
) -> None:
    job = await bridge.job("intime", ["a.txt"], expires_in_s=2)
    s3.put_object(Bucket=bridge.bucket, Key=job.files[0].key, Body=b"1\n")
    wait_for(lambda: time.time() > job.expires_at + 1.5, 30, "the deadline")
    result = await bridge.process(job.files[0].key, 2)
    assert result.counters == {"files_received": 1, "jobs_queued": 1}, result
    got = await bridge.store.get_job(job.job_id)
    assert got is not None and got.status is JobStatus.QUEUED
    assert _queued(sqs, bridge.queue_url) == 1


async def test_a_file_stored_after_the_deadline_expires_its_job(bridge: Bridge, s3: Any) -> None:
    job = await bridge.job("late", ["a.txt"], expires_in_s=1)
    wait_for(lambda: time.time() > job.expires_at + 1.5, 30, "the deadline")
    s3.put_object(Bucket=bridge.bucket, Key=job.files[0].key, Body=b"1\n")
    result = await bridge.process(job.files[0].key, 2)
    assert result.counters == {"files_late": 1}, result
    got = await bridge.store.get_job(job.job_id)
    assert got is not None and got.status is JobStatus.EXPIRED


async def test_a_stray_object_after_the_deadline_is_refused_not_taken_as_late(
    bridge: Bridge, s3: Any
) -> None:
    job = await bridge.job("stray", ["a.txt"], expires_in_s=1)
    wait_for(lambda: time.time() > job.expires_at + 1.5, 30, "the deadline")
    stray = f"uploads/{job.upload_id}/0-other.txt"
    s3.put_object(Bucket=bridge.bucket, Key=stray, Body=b"1\n")
    with pytest.raises(InvalidInputError, match="was not declared by upload"):
        await bridge.process(stray, 2)
    got = await bridge.store.get_job(job.job_id)
    assert got is not None and got.status is JobStatus.WAITING_FOR_FILES


async def test_a_waiting_job_with_every_file_received_is_queued_by_the_sweep(
    bridge: Bridge, sqs: Any
) -> None:
    """Its queueing failed for good (the intake message ran out of retries): it waited for
    ever, neither queued nor expired."""
    job = await bridge.job("stuck", ["a.txt"], expires_in_s=-10)
    await bridge.store.append_event(
        job.job_id,
        event_id=f"{job.job_id}:{EventType.FILE_RECEIVED}:0",
        type=EventType.FILE_RECEIVED,
        data={"index": 0, "name": "a.txt", "key": job.files[0].key, "size": 2},
    )
    expired = await expire_overdue(bridge.store, rescue=bridge.processor._arrived_in_time)
    assert expired == []
    got = await bridge.store.get_job(job.job_id)
    assert got is not None and got.status is JobStatus.QUEUED
    assert _queued(sqs, bridge.queue_url) == 1


async def test_a_job_whose_message_could_not_be_sent_is_not_left_queued(
    bridge: Bridge, s3: Any, sqs: Any
) -> None:
    """The processing queue is unreachable when the last file arrives (here: a queue that
    does not exist): the notification fails, the job still waits with no file missing
    (not 'queued' with no message on its way), and the sweep after its deadline sends it."""
    job = await bridge.job("unsent", ["a.txt"], expires_in_s=2)
    s3.put_object(Bucket=bridge.bucket, Key=job.files[0].key, Body=b"1\n")
    good_url = bridge.processor._queue_url
    bridge.processor._queue_url = good_url.replace("/q-", "/gone-")
    with pytest.raises(S3flowError):
        await bridge.process(job.files[0].key, 2)
    got = await bridge.store.get_job(job.job_id)
    assert got is not None and got.status is JobStatus.WAITING_FOR_FILES
    assert got.missing == []
    assert _queued(sqs, good_url) == 0

    bridge.processor._queue_url = good_url  # the queue is back (`s3flow provision`)
    wait_for(lambda: time.time() > job.expires_at + 1.5, 30, "the deadline")
    expired = await expire_overdue(bridge.store, rescue=bridge.processor._arrived_in_time)
    assert expired == []
    got = await bridge.store.get_job(job.job_id)
    assert got is not None and got.status is JobStatus.QUEUED
    assert _queued(sqs, good_url) == 1


async def test_a_retried_notification_sends_the_job_once(bridge: Bridge, s3: Any, sqs: Any) -> None:
    """A crash after the send and before `job.queued` was recorded: the notification's
    retry sends again (the FIFO queue deduplicates by job id) and records it."""
    job = await bridge.job("twice", ["a.txt"], expires_in_s=60)
    s3.put_object(Bucket=bridge.bucket, Key=job.files[0].key, Body=b"1\n")
    await bridge.processor._enqueue(job)  # the first attempt got this far
    result = await bridge.process(job.files[0].key, 2)
    assert result.counters == {"files_received": 1, "jobs_queued": 1}, result
    got = await bridge.store.get_job(job.job_id)
    assert got is not None and got.status is JobStatus.QUEUED
    assert _queued(sqs, bridge.queue_url) == 1


async def test_an_expiry_names_only_the_files_that_did_not_arrive(bridge: Bridge, s3: Any) -> None:
    """a.txt was stored in time (its notification not handled yet: no worker ran), b.txt
    never: the job expires naming b.txt only, with a.txt received. It named both."""
    # 3 s: LastModified is in whole seconds, and a.txt must be stored in time on a loaded
    # machine too.
    job = await bridge.job("half", ["a.txt", "b.txt"], expires_in_s=3)
    s3.put_object(Bucket=bridge.bucket, Key=job.files[0].key, Body=b"1\n")
    wait_for(lambda: time.time() > job.expires_at + 1.5, 30, "the deadline")
    expired = await expire_overdue(bridge.store, rescue=bridge.processor._arrived_in_time)
    assert expired == [job.job_id]
    got = await bridge.store.get_job(job.job_id)
    assert got is not None and got.status is JobStatus.EXPIRED
    assert [f.received for f in got.files] == [True, False]
    events = await bridge.store.events(job.job_id)
    (last,) = [e for e in events if e.type is EventType.JOB_EXPIRED]
    assert last.data["missing"] == ["b.txt"], last.data
    assert last.data["error"].endswith("before the job's deadline: b.txt")


async def test_a_file_of_a_cancelled_job_is_refused_not_recorded_as_taken(
    bridge: Bridge, s3: Any
) -> None:
    """Uploaded after its job was cancelled: the file was recorded as done while the
    job (and `jobs retry`) said it never arrived. It is refused (the worker quarantines
    it with this reason), and the job is left as it was."""
    from s3flow.ops.jobs import cancel_job

    job = await bridge.job("cancelled", ["a.txt"], expires_in_s=600)
    await cancel_job(bridge.store, job.job_id)
    s3.put_object(Bucket=bridge.bucket, Key=job.files[0].key, Body=b"1\n")
    with pytest.raises(InvalidInputError, match=r"'a.txt' arrived after its job .* had ended"):
        await bridge.process(job.files[0].key, 2)
    got = await bridge.store.get_job(job.job_id)
    assert got is not None and got.status is JobStatus.FAILED and got.missing == ["a.txt"]
