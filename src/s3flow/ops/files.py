"""One object's records: release it, whatever its state, for reprocessing."""

from __future__ import annotations

import logging
import shlex

from s3flow.app import queue_url
from s3flow.aws import open_clients
from s3flow.errors import S3flowError, translate_aws_error
from s3flow.events import ObjectEvent, content_version
from s3flow.ops.backfill import s3_notification_body
from s3flow.quarantine import untag
from s3flow.routing import Route
from s3flow.settings import PipelineSettings, Settings
from s3flow.state.base import StateStore
from s3flow.state.records import FileStatus, ObjectId

log = logging.getLogger("s3flow.ops")


def _again(p: PipelineSettings, key: str, version: str | None) -> str:
    """The commands that release ``key`` again (its records may already say received)."""
    release = f"s3flow files release {shlex.quote(key)} -p {shlex.quote(p.name)}"
    if version is not None:
        release += f" --version {shlex.quote(version)}"
    return f"`{release}` (or `s3flow reprocess -p {shlex.quote(p.name)} {shlex.quote(key)}`)"


def _unsent(
    p: PipelineSettings, key: str, version: str | None, step: str, exc: BaseException
) -> S3flowError:
    """The error for a release whose notification was not sent (its quarantine tags may
    be gone and its records may say received: nothing will process it on its own).
    ``step``: what failed (an AWS call's name, or what was being done)."""
    if not isinstance(exc, S3flowError):
        exc = translate_aws_error(exc, step)
    return S3flowError(
        f"files release: s3://{p.bucket}/{key} was not enqueued for pipeline {p.name!r}: "
        f"{str(exc).rstrip('.')}. Its quarantine tags may be removed and its records may "
        "say received, yet no notification is queued for it (a plain `s3flow backfill` "
        "skips it as already queued): once the queue is reachable (`s3flow provision` "
        f"creates a missing one), run {_again(p, key, version)}"
    )


def _refused(p: PipelineSettings, key: str, why: str) -> S3flowError:
    """The error for a key the pipeline does not take (its filters reject it)."""
    return S3flowError(
        f"files release: pipeline {p.name!r} does not take s3://{p.bucket}/{key} ({why}; "
        f"its prefix {p.prefix!r}, suffix {p.suffix!r}, key_regex {p.key_regex!r}). The "
        "worker would skip its notification and its records would stay received, so "
        "nothing was changed; release it with the pipeline that takes it (-p), or widen "
        "this pipeline's filters first"
    )


async def release(
    settings: Settings, p: PipelineSettings, store: StateStore, key: str, version: str | None
) -> list[ObjectId]:
    """Release ``key`` whatever its state: untag if quarantined, reset, enqueue again.

    Every recorded version (or only ``version``) that is not being processed
    right now goes back to ``received``; one notification is enqueued for the
    object as it is now, so the worker processes its current upload. Raises
    S3flowError when nothing could be released, saying why: a key the pipeline
    does not take (its prefix, suffix, key_regex) is refused before anything
    changes, and a notification that could not be sent names the command that
    releases the object again.
    """
    why = Route.from_settings(p).rejects(ObjectEvent(p.bucket, key))
    if why is not None:
        raise _refused(p, key, why)
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
        etag = str(head.get("ETag", "")).strip('"')
        current = ObjectId(p.bucket, key, content_version(etag, head["LastModified"]))
        body = s3_notification_body(
            p.bucket, key, int(head.get("ContentLength", 0)), etag, settings.aws.region
        )
        # The records are reset (and the tags removed) BEFORE the notification is sent,
        # never after: the worker claims a received record, but acknowledges without
        # work a notification whose record says dead or quarantined (parked) or
        # completed (a duplicate). Sent first, it could be received before the reset
        # and the release would be lost, leaving a received record nothing will process.
        # So a send that fails leaves the object untagged and received with no message:
        # the error says so and names the command that sends it again (a release of a
        # received record only sends). Nothing is put back: a send that timed out may
        # have been delivered, and a record put back to dead would park that message.
        # Tags go first: a record left quarantined by a failure makes the next release
        # untag again.
        step = "removing the quarantine tags"
        try:
            if any(r.status is FileStatus.QUARANTINED for r in todo):
                await untag(clients.s3, p.bucket, key)
            step = "setting its records to received"
            for r in todo:
                await store.set_status(r.id, FileStatus.RECEIVED, detail="released by an operator")
            rec = await store.get(current)
            if rec is not None and rec.status not in (FileStatus.RECEIVED, FileStatus.PROCESSING):
                await store.set_status(
                    current, FileStatus.RECEIVED, detail="released by an operator"
                )
            step = f"SendMessage to {src}"
            await clients.sqs.send_message(QueueUrl=src, MessageBody=body)
        except Exception as exc:
            raise _unsent(p, key, version, step, exc) from exc
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
