"""The bridge: groups arriving upload files into jobs and queues complete jobs.

It runs as an ordinary pipeline (processor ``jobs-bridge``) on the intake
queue, so it gets the engine's claims, retries, quarantine and shutdown. For
each object under ``uploads/<upload_id>/``:

* no such upload, an index it did not declare, a size over the limit or other
  than the declared one -> quarantined with the reason (``InvalidInputError``;
  the last two also fail the job);
* otherwise ``file.received`` is appended to the job's log (idempotent);
  when no declared file is missing, ``job.queued`` is appended and one message
  goes to the processing FIFO queue (``MessageGroupId`` = upload id,
  ``MessageDeduplicationId`` = job id), sent before the append. A crash or a
  failed call between the two re-runs both: the queue dedups and so does the
  append.

A background sweep expires jobs whose files did not all arrive within
``[jobs] job_timeout_s`` (``job.expired`` naming them). Every worker sweeps;
the conditional append makes that harmless. A file arrives when it is stored
(the object's ``LastModified``, to the second; a notification's own time is not
used, `s3flow backfill` stamps the time it ran), not when its notification is
handled: a file stored after the deadline expires its waiting job, and one
stored before it whose notification still waits on the intake queue (files
uploaded while no worker ran) is received by the sweep itself, as its
notification would be. A waiting job with no file missing (its queueing failed
for good) is queued by the sweep.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from s3flow.closing import cancel_and_wait
from s3flow.errors import InvalidInputError, ObjectMissingError, S3flowError, aws_errors
from s3flow.jobs.uploads import parse_upload_key
from s3flow.processors.base import (
    OptionsProcessor,
    PipelineContext,
    ProcessContext,
    Result,
)
from s3flow.state.jobs import EventType, JobRecord, JobStatus, JobStore

__all__ = ["BridgeOptions", "BridgeProcessor", "JobMessage", "expire_overdue"]

log = logging.getLogger("s3flow.jobs.bridge")

_QUEUEABLE = frozenset({JobStatus.WAITING_FOR_FILES, JobStatus.QUEUED})


class BridgeOptions(BaseModel):
    """Options of ``jobs-bridge`` (set by s3flow from ``[jobs]``; not written by hand)."""

    model_config = ConfigDict(extra="forbid")

    processing_queue: str = Field(description="Name or URL of the processing FIFO queue.")
    max_file_bytes: int = Field(gt=0, description="Largest accepted upload.")
    sweep_interval_s: float = Field(
        default=30.0, gt=0, description="How often to expire overdue jobs."
    )


class JobMessage(BaseModel):
    """The body of a message on the processing queue."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    upload_id: str
    template: str


#: Waiting jobs read from the store per page while looking for overdue ones.
_EXPIRY_PAGE = 500


#: Given an overdue job, True when it must not expire: its missing files are in the
#: bucket, stored before its deadline (the caller has received them).
Rescue = Callable[[JobRecord], Awaitable[bool]]


async def expire_overdue(
    store: JobStore,
    *,
    now: float | None = None,
    page_size: int = _EXPIRY_PAGE,
    rescue: Rescue | None = None,
) -> list[str]:
    """Expire every waiting job past its deadline; returns their ids.

    Pages through all waiting jobs, oldest first (a deadline is not always
    ``created_at`` plus today's ``job_timeout_s``: the setting may have
    changed since), ``page_size`` jobs a read, until a page comes back empty
    (the store's listing only does so at the end), so none is missed however
    many jobs are waiting. ``rescue`` is asked first about each overdue job;
    one it cannot answer (an S3flowError) is left for the next sweep.
    """
    at = time.time() if now is None else now
    expired: list[str] = []
    after: JobRecord | None = None
    while True:
        page = await store.list_jobs(
            status=JobStatus.WAITING_FOR_FILES, limit=page_size, oldest_first=True, after=after
        )
        if not page:
            return expired
        after = page[-1]
        for job in page:
            if job.expires_at > at:
                continue
            if rescue is not None:
                try:
                    if await rescue(job):
                        continue
                except S3flowError as exc:
                    log.warning("job %s is overdue; not expired this time: %s", job.job_id, exc)
                    continue
            if await _expire(store, job):
                expired.append(job.job_id)


async def _expire(store: JobStore, job: JobRecord) -> bool:
    """Append ``job.expired`` to a job still waiting for files; True if this call did."""
    job = await store.get_job(job.job_id) or job  # files received since it was listed
    missing = job.missing
    event, new = await store.append_event(
        job.job_id,
        event_id=f"{job.job_id}:{EventType.JOB_EXPIRED}",
        type=EventType.JOB_EXPIRED,
        data={
            "missing": missing,
            "error": "these files never arrived before the job's deadline: " + ", ".join(missing),
        },
        if_status=frozenset({JobStatus.WAITING_FOR_FILES}),
    )
    if event is not None and new:
        log.info("job %s expired: %d declared file(s) never arrived", job.job_id, len(missing))
        return True
    return False


def _after_end(job: JobRecord, index: int) -> None:
    """Refuse file ``index`` when ``job`` ended (cancelled, expired, failed) without it.

    Recorded as done, it said the file was taken while the job (and `jobs retry`) said
    it never arrived; refused (the worker quarantines it), the object says why.
    """
    if job.status.terminal and not job.files[index].received:
        why = f"{job.status}: {job.error}" if job.error else str(job.status)
        raise InvalidInputError(
            f"{job.files[index].name!r} arrived after its job {job.job_id} had ended ({why}): "
            "it is part of no job; upload it again as a new job"
        )


class BridgeProcessor(OptionsProcessor[BridgeOptions]):
    """Records upload files and queues a job once all of its files are there."""

    name: ClassVar[str] = "jobs-bridge"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._sqs: Any = None
        self._s3: Any = None
        self._bucket = ""
        self._queue_url = ""
        self._store: JobStore | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, pipeline: PipelineContext) -> None:
        if pipeline.store is None or pipeline.sqs is None:
            raise S3flowError(
                "upload jobs need a state store and SQS (state.url must not be 'none')"
            )
        self._store = pipeline.store
        self._sqs = pipeline.sqs
        self._s3 = pipeline.s3
        self._bucket = pipeline.bucket
        q = self.opts.processing_queue
        if q.startswith(("http://", "https://")):
            self._queue_url = q
        else:
            with aws_errors("GetQueueUrl"):
                self._queue_url = (await self._sqs.get_queue_url(QueueName=q))["QueueUrl"]
        self._sweeper = asyncio.create_task(self._sweep(), name="s3flow-jobs-sweeper")

    async def stop(self) -> None:
        await cancel_and_wait(self._sweeper)

    async def _sweep(self) -> None:
        assert self._store is not None
        while True:
            try:
                await expire_overdue(self._store, rescue=self._arrived_in_time)
            except S3flowError as exc:
                log.warning("expiring overdue jobs failed (will try again): %s", exc)
            await asyncio.sleep(self.opts.sweep_interval_s)

    async def process(self, ctx: ProcessContext) -> Result:
        store = self._store
        if store is None:
            raise S3flowError("jobs-bridge used before start()")
        key = ctx.event.key
        parsed = parse_upload_key(key)
        if parsed is None:
            raise InvalidInputError(
                f"{key!r} is not an upload file (expected uploads/<upload_id>/<index>-<name>, "
                "written through POST /api/uploads)"
            )
        upload_id, index = parsed
        job = await store.job_for_upload(upload_id)
        if job is None:
            raise InvalidInputError(f"{key!r} belongs to no upload: upload {upload_id} is unknown")
        return await self._receive(store, job, index, key, ctx.event.size, check_time=True)

    async def _stored(self, key: str) -> tuple[float, int | None]:
        """When the upload file at ``key`` was stored (its ``LastModified``, to the second),
        and its size.

        Raises ObjectMissingError when it is gone, the translated error otherwise.
        """
        with aws_errors(f"HeadObject s3://{self._bucket}/{key}"):
            head = await self._s3.head_object(Bucket=self._bucket, Key=key)
        stored = head.get("LastModified")
        if not isinstance(stored, datetime):
            raise S3flowError(f"HeadObject s3://{self._bucket}/{key} gave no LastModified")
        size = head.get("ContentLength")
        return stored.timestamp(), size if isinstance(size, int) else None

    async def _arrived_in_time(self, job: JobRecord) -> bool:
        """Receive an overdue job's missing files that are in the bucket, stored before its
        deadline; True if all of them are (the job is then queued, or failed by a size).

        Their notifications are late, not lost: while no worker ran they waited on the
        intake queue, and the sweep runs at start, before the pollers have caught up. A
        job with no file missing that still waits (its queueing failed for good) is
        queued here.
        """
        assert self._store is not None
        found: list[tuple[int, str, int | None]] = []
        complete = True
        for index, file in enumerate(job.files):
            if file.received:
                continue
            try:
                stored, size = await self._stored(file.key)
            except ObjectMissingError:
                complete = False  # not there: the job expires
                continue
            if stored > job.expires_at:
                complete = False  # stored after the deadline: late, the job expires
                continue
            found.append((index, file.key, size))
        if complete and not found:
            log.info(
                "job %s: every file is received but it was never queued: queued now", job.job_id
            )
            await self._queue(self._store, job, {"job_id": job.job_id})
            return True
        if found:
            # Incomplete, the job expires: received first, these files are not named
            # in its expiry. Complete, the last one received queues it.
            log.info(
                "job %s: %d file(s) stored before its deadline, their notifications not "
                "yet handled: received by the expiry sweep",
                job.job_id,
                len(found),
            )
        for index, key, size in found:
            try:
                await self._receive(self._store, job, index, key, size)
            except InvalidInputError as exc:  # a size refused: the job is failed already
                log.warning("job %s: %s", job.job_id, exc)
                return True
            job = await self._store.get_job(job.job_id) or job
        return complete

    async def _receive(
        self,
        store: JobStore,
        job: JobRecord,
        index: int,
        key: str,
        size: int | None,
        *,
        check_time: bool = False,
    ) -> Result:
        """Record file ``index`` of ``job`` (stored at ``key``, ``size`` bytes) as received;
        queue the job when it was the last one missing.

        ``check_time``: handled after the job's deadline, the file's ``LastModified``
        decides: stored after it, the waiting job expires (as the sweep would have had it
        run in between) and the file is not received. A notification's own time is not
        used: `s3flow backfill` and `reprocess` stamp theirs with the time they ran.
        """
        upload_id = job.upload_id
        if index >= len(job.files) or job.files[index].key != key:
            raise InvalidInputError(
                f"{key!r} was not declared by upload {upload_id} (job {job.job_id})"
            )
        name = job.files[index].name
        if (
            check_time
            and job.status is JobStatus.WAITING_FOR_FILES
            and not job.files[index].received
            and time.time() > job.expires_at
            and (await self._stored(key))[0] > job.expires_at
        ):
            await _expire(store, job)
            return Result(
                counters={"files_late": 1},
                detail={
                    "job_id": job.job_id,
                    "upload_id": upload_id,
                    "file": name,
                    "note": "stored after the job's deadline: the job expired",
                },
            )
        if size is not None and size > self.opts.max_file_bytes:
            await self._fail(store, job, f"{name!r} is {size} bytes, over the limit")
            raise InvalidInputError(
                f"{key!r} is {size} bytes, more than max_file_bytes ({self.opts.max_file_bytes})"
            )
        declared = job.files[index].size
        if size is not None and size != declared:
            # The runner plans by the declared size (csv-to-kafka ranges): never run on another.
            await self._fail(
                store,
                job,
                f"{name!r} arrived with {size} bytes but the upload declared {declared}: "
                "upload the file again, unchanged, as a new upload",
            )
            raise InvalidInputError(
                f"{key!r} is {size} bytes, not the {declared} bytes upload {upload_id} declared"
            )
        _after_end(job, index)
        event, _ = await store.append_event(
            job.job_id,
            event_id=f"{job.job_id}:{EventType.FILE_RECEIVED}:{index}",
            type=EventType.FILE_RECEIVED,
            data={"index": index, "name": name, "key": key, "size": size},
        )
        job = await store.get_job(job.job_id) or job
        if event is None:  # the store refused it: the job ended since it was read
            _after_end(job, index)
        detail: dict[str, Any] = {"job_id": job.job_id, "upload_id": upload_id, "file": name}
        if job.missing:
            detail["waiting_for"] = job.missing
            return Result(counters={"files_received": 1}, detail=detail)
        result = await self._queue(store, job, detail)
        return Result(counters={"files_received": 1, **result.counters}, detail=result.detail)

    async def _queue(self, store: JobStore, job: JobRecord, detail: dict[str, Any]) -> Result:
        """Queue ``job``, every file of which is received (once: the FIFO queue and the
        append both deduplicate).

        The message is sent before ``job.queued`` is appended: a send that fails leaves
        the job waiting with no file missing, which the notification's retry and, after
        it, the expiry sweep queue again. Appended first, a failed send would leave a
        job that says queued with no message on its way, which nothing looks at again.
        """
        if job.status not in _QUEUEABLE:
            detail["note"] = f"job is already {job.status}"
            return Result(detail=detail)
        await self._enqueue(job)
        event, _ = await store.append_event(
            job.job_id,
            event_id=f"{job.job_id}:{EventType.JOB_QUEUED}",
            type=EventType.JOB_QUEUED,
            data={"files": len(job.files)},
            if_status=_QUEUEABLE,
        )
        if event is None:
            # Ended meanwhile (expired, failed), or its runner started it already: the
            # message is a duplicate the runner acknowledges, or it runs the job as sent.
            current = await store.get_job(job.job_id)
            status = current.status if current is not None else "gone"
            detail["note"] = f"job is already {status}"
            return Result(detail=detail)
        detail["queued"] = True
        return Result(counters={"jobs_queued": 1}, detail=detail)

    async def _enqueue(self, job: JobRecord) -> None:
        body = JobMessage(job_id=job.job_id, upload_id=job.upload_id, template=job.template)
        with aws_errors("SendMessage"):
            await self._sqs.send_message(
                QueueUrl=self._queue_url,
                MessageBody=json.dumps(body.model_dump()),
                MessageGroupId=job.upload_id,
                MessageDeduplicationId=job.job_id,
            )

    async def _fail(self, store: JobStore, job: JobRecord, error: str) -> None:
        await store.append_event(
            job.job_id,
            event_id=f"{job.job_id}:{EventType.JOB_FAILED}",
            type=EventType.JOB_FAILED,
            data={"error": error},
        )
