"""Operator actions on upload jobs: cancel one, or retry it as a new job over the same files."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import replace
from typing import Any

from s3flow.errors import ObjectMissingError, S3flowError, translate_aws_error
from s3flow.settings import Settings
from s3flow.state.jobs import EventType, JobRecord, JobStatus, JobStep, JobStore

__all__ = ["cancel_job", "retry_job"]


async def cancel_job(store: JobStore, job_id: str, *, reason: str = "") -> JobRecord:
    """End a job that has not ended yet with ``job.failed`` ("cancelled by an operator")."""
    job = await store.get_job(job_id)
    if job is None:
        raise S3flowError(f"no job {job_id!r}")
    if job.status.terminal:
        raise S3flowError(f"job {job_id} is already {job.status}; nothing to cancel")
    error = "cancelled by an operator" + (f": {reason}" if reason else "")
    await store.append_event(
        job_id,
        event_id=f"{job_id}:{EventType.JOB_FAILED}",
        type=EventType.JOB_FAILED,
        data={"error": error, "cancelled": True},
    )
    return await store.get_job(job_id) or job


async def retry_job(
    settings: Settings, store: JobStore, sqs: Any, job_id: str, *, s3: Any
) -> JobRecord:
    """Run a failed job again as a new job over the same uploaded files, queued at once.

    The old job keeps its history; the new one names it (``retry_of`` in its
    ``job.created`` event). A job whose files did not all arrive, or are no longer
    in the uploads bucket (deleted, or expired by its lifecycle rule), cannot be
    retried: upload them again as a new job.

    The new job is recorded (queued) before its message is sent, so the runner
    always finds it. If the send fails, the new job is ended with ``job.failed``
    ("not queued: ...") so that no queued job is left without a message, and an
    S3flowError says so; the old job can be retried again once the cause is fixed.
    """
    if settings.jobs is None:
        raise S3flowError("upload jobs are not configured (no [jobs] table)")
    old = await store.get_job(job_id)
    if old is None:
        raise S3flowError(f"no job {job_id!r}")
    if old.status not in (JobStatus.FAILED, JobStatus.EXPIRED):
        raise S3flowError(f"job {job_id} is {old.status}: only failed or expired jobs are retried")
    template = settings.template(old.template)
    if template is None:
        raise S3flowError(f"template {old.template!r} of job {job_id} is no longer configured")
    # One retry per job: its id follows from the job's, so a second call (a double
    # click, a script run twice) finds it instead of running the files once more. A
    # retry whose message could not be sent (failed "not queued") never ran: the next
    # id is taken then.
    for attempt in range(1, _MAX_RETRY_IDS + 1):
        new_id = retry_id(job_id, attempt)
        earlier = await store.get_job(new_id)
        if earlier is None or earlier.status is JobStatus.WAITING_FOR_FILES:
            # (made, but stopped before it was queued: made again, every step idempotent)
            break
        if earlier.status is JobStatus.QUEUED:
            # Recorded, its message maybe never sent (a crash in between): send it again
            # (the runner takes a job once; SQS drops a copy sent within 5 minutes).
            await _enqueue(settings, store, job_id, earlier, sqs)
            return await store.get_job(new_id) or earlier
        if not (earlier.error or "").startswith(_NOT_QUEUED):
            raise S3flowError(
                f"job {job_id} was retried already as {new_id} ({earlier.status}): follow "
                f"it with `s3flow jobs show {new_id}`, or retry that one if it failed too"
            )
    else:
        raise S3flowError(f"job {job_id}: {_MAX_RETRY_IDS} retries were not queued; fix the cause")
    if old.missing:
        names = ", ".join(old.missing)
        if old.status is JobStatus.FAILED and old.error:
            # Failed before they were received: the job's own reason (a wrong size, a
            # cancel) says why, "never arrived" would not.
            were = "was" if len(old.missing) == 1 else "were"
            raise S3flowError(
                f"job {job_id} failed before {names} {were} received ({old.error}); "
                "upload the files again as a new job (s3flow upload)"
            )
        raise S3flowError(
            f"job {job_id}: {names} never arrived; upload the files again "
            "as a new job (s3flow upload)"
        )
    gone = await _gone_files(s3, settings.jobs.bucket, old)
    if gone:
        raise S3flowError(
            f"job {job_id}: {', '.join(gone)} {'is' if len(gone) == 1 else 'are'} no longer "
            f"in s3://{settings.jobs.bucket}/ (deleted, or expired by the uploads lifecycle "
            "rule); upload the files again as a new job (s3flow upload)"
        )
    now = time.time()
    job = replace(
        old,
        job_id=new_id,
        upload_id=uuid.uuid4().hex,
        status=JobStatus.WAITING_FOR_FILES,
        steps=tuple(JobStep(name=s.processor) for s in template.steps),
        outputs=(),
        error=None,
        created_at=now,
        updated_at=now,
        expires_at=now + settings.jobs.job_timeout_s,
        last_seq=0,
    )
    await store.create_job(
        job,
        event_id=f"{new_id}:{EventType.JOB_CREATED}",
        data={
            "upload_id": job.upload_id,
            "template": template.name,
            "files": [{"name": f.name, "key": f.key, "size": f.size} for f in job.files],
            "expires_at": job.expires_at,
            "retry_of": job_id,
        },
    )
    for i, f in enumerate(job.files):
        await store.append_event(
            new_id,
            event_id=f"{new_id}:{EventType.FILE_RECEIVED}:{i}",
            type=EventType.FILE_RECEIVED,
            data={"index": i, "name": f.name, "key": f.key, "size": f.size},
        )
    await store.append_event(
        new_id,
        event_id=f"{new_id}:{EventType.JOB_QUEUED}",
        type=EventType.JOB_QUEUED,
        data={"files": len(job.files), "retry_of": job_id},
    )
    await _enqueue(settings, store, job_id, job, sqs)
    return await store.get_job(new_id) or job


#: Retries of one job whose message could not be sent, at most (each takes a new id).
_MAX_RETRY_IDS = 20
_NOT_QUEUED = "not queued: "


def retry_id(job_id: str, attempt: int = 1) -> str:
    """The id of the job retrying ``job_id`` (the same for every call), ``attempt``
    counting retries whose message could not be sent."""
    name = f"s3flow:retry:{job_id}" + (f":{attempt}" if attempt > 1 else "")
    return f"job-{uuid.uuid5(uuid.NAMESPACE_URL, name).hex}"


async def _enqueue(
    settings: Settings, store: JobStore, job_id: str, job: JobRecord, sqs: Any
) -> None:
    """Send the processing message of ``job`` (the retry of ``job_id``); a failed send
    ends ``job`` (see :func:`_roll_back`)."""
    assert settings.jobs is not None
    queue = settings.jobs.resource("processing.fifo")
    try:
        url = (await sqs.get_queue_url(QueueName=queue))["QueueUrl"]
        await sqs.send_message(
            QueueUrl=url,
            MessageBody=json.dumps(
                {"job_id": job.job_id, "upload_id": job.upload_id, "template": job.template}
            ),
            MessageGroupId=job.upload_id,
            MessageDeduplicationId=job.job_id,
        )
    except Exception as exc:
        error = translate_aws_error(exc, f"SendMessage to the processing queue {queue}")
        # Raises, unless the job runs after all (the message went out, its answer was lost).
        await _roll_back(store, job_id, job.job_id, error)


async def _gone_files(s3: Any, bucket: str, job: JobRecord) -> list[str]:
    """The names of ``job``'s files no longer in ``bucket`` (a HEAD each)."""

    async def gone(key: str) -> bool:
        try:
            await s3.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            error = translate_aws_error(exc, f"HeadObject s3://{bucket}/{key}")
            if isinstance(error, ObjectMissingError):
                return True
            raise error from exc
        return False

    found = await asyncio.gather(*(gone(f.key) for f in job.files))
    return [f.name for f, is_gone in zip(job.files, found, strict=True) if is_gone]


async def _roll_back(store: JobStore, old_id: str, new_id: str, error: S3flowError) -> JobRecord:
    """Undo the retry ``new_id`` of ``old_id``, whose message was not sent, and raise.

    The new job, recorded as queued, is ended with ``job.failed`` ("not queued:
    ...") so that the store holds no queued job without a message; the
    S3flowError raised says so and what to do. Returns the job instead when it is
    not queued any more: the runner has it, so the message did go out.
    """
    note = f"{_NOT_QUEUED}{error}"
    try:
        _, appended = await store.append_event(
            new_id,
            event_id=f"{new_id}:{EventType.JOB_FAILED}",
            type=EventType.JOB_FAILED,
            data={"error": note, "retry_of": old_id},
            if_status=frozenset({JobStatus.QUEUED}),
        )
    except Exception as exc:
        raise S3flowError(
            f"retry of job {old_id}: {error}. Its new job {new_id} is recorded as queued but "
            f"was not sent, and marking it failed failed too ({type(exc).__name__}: {exc}): "
            f"fix the cause, then `s3flow jobs retry {old_id}` again (it sends that queued "
            "job's message)"
        ) from error
    if not appended:  # not queued any more, or failed by its runner: the message went out
        now = await store.get_job(new_id)
        if now is not None and now.status is not JobStatus.QUEUED:
            return now
    raise S3flowError(
        f"retry of job {old_id}: {error}. Nothing was queued: its new job {new_id} is marked "
        f"failed ({note!r}); fix the cause (`s3flow provision` creates missing queues), "
        f"then `s3flow jobs retry {old_id}` again"
    ) from error
