"""One object's records: release it, whatever its state, for reprocessing."""

from __future__ import annotations

import logging

from s3flow.app import queue_url
from s3flow.aws import open_clients
from s3flow.errors import S3flowError, aws_errors, translate_aws_error
from s3flow.events import content_version
from s3flow.ops.backfill import s3_notification_body
from s3flow.quarantine import untag
from s3flow.settings import PipelineSettings, Settings
from s3flow.state.base import StateStore
from s3flow.state.records import FileStatus, ObjectId

log = logging.getLogger("s3flow.ops")


async def release(
    settings: Settings, p: PipelineSettings, store: StateStore, key: str, version: str | None
) -> list[ObjectId]:
    """Release ``key`` whatever its state: untag if quarantined, reset, enqueue again.

    Every recorded version (or only ``version``) that is not being processed
    right now goes back to ``received``; one notification is enqueued for the
    object as it is now, so the worker processes its current upload. Raises
    S3flowError when nothing could be released, saying why.
    """
    records = [
        r
        for r in await store.versions(p.bucket, key)
        if r.pipeline == p.name and (version is None or r.version == version)
    ]
    if not records:
        raise S3flowError(
            f"no record of s3://{p.bucket}/{key}"
            + (f" version {version!r}" if version else "")
            + f" in pipeline {p.name!r} (see `s3flow files --key-prefix {key}`)"
        )
    busy = [r for r in records if r.status is FileStatus.PROCESSING]
    todo = [r for r in records if r.status not in (FileStatus.PROCESSING, FileStatus.RECEIVED)]
    if not todo and busy:
        raise S3flowError(
            f"s3://{p.bucket}/{key} is being processed right now by {busy[0].claim_owner}; "
            "release it once that attempt ends"
        )
    async with open_clients(settings.aws) as clients:
        src = await queue_url(clients.sqs, p.queue, what=f"pipeline {p.name!r}")
        try:
            head = await clients.s3.head_object(Bucket=p.bucket, Key=key)
        except Exception as exc:
            raise translate_aws_error(exc, f"HeadObject s3://{p.bucket}/{key}") from exc
        if any(r.status is FileStatus.QUARANTINED for r in todo):
            await untag(clients.s3, p.bucket, key)
        for r in todo:
            await store.set_status(r.id, FileStatus.RECEIVED, detail="released by an operator")
        etag = str(head.get("ETag", "")).strip('"')
        current = ObjectId(p.bucket, key, content_version(etag, head["LastModified"]))
        rec = await store.get(current)
        if rec is not None and rec.status not in (FileStatus.RECEIVED, FileStatus.PROCESSING):
            await store.set_status(current, FileStatus.RECEIVED, detail="released by an operator")
        body = s3_notification_body(
            p.bucket, key, int(head.get("ContentLength", 0)), etag, settings.aws.region
        )
        with aws_errors(f"SendMessage to {src} (the released s3://{p.bucket}/{key})"):
            await clients.sqs.send_message(QueueUrl=src, MessageBody=body)
    return [r.id for r in todo] or [current]


async def release_quarantined(
    settings: Settings, p: PipelineSettings, store: StateStore, key: str, version: str | None
) -> list[ObjectId]:
    """Release quarantined versions of ``key`` (see :func:`release`); [] if none."""
    records = [
        r
        for r in await store.versions(p.bucket, key)
        if r.status is FileStatus.QUARANTINED and (version is None or r.version == version)
    ]
    if not records:
        return []
    return await release(settings, p, store, key, version)
