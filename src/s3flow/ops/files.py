"""One object's records: release it, whatever its state, for reprocessing."""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
import time
from dataclasses import dataclass
from typing import Any

from s3flow.app import queue_url
from s3flow.aws import open_clients
from s3flow.errors import ObjectMissingError, S3flowError, translate_aws_error
from s3flow.events import ObjectEvent, content_version
from s3flow.ops.backfill import claim_ends, live_claim, s3_notification_body
from s3flow.processors.registry import processor_class
from s3flow.quarantine import untag
from s3flow.routing import Route
from s3flow.settings import PipelineSettings, Settings
from s3flow.state.base import StateStore
from s3flow.state.records import FileRecord, FileStatus, ObjectId, TransitionError

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
        "skips it as already queued while its queue holds any message): once the queue "
        f"is reachable (`s3flow provision` creates a missing one), run {_again(p, key, version)}"
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


_CONTENT_VERSION = re.compile(r"@t\d+\Z")


@dataclass
class _Target:
    """A record a notification can reach, and that notification's body."""

    record: FileRecord
    body: str


_HEADS_AT_ONCE = 16


async def _reachable(
    s3: Any, p: PipelineSettings, region: str, r: FileRecord, current: ObjectId, head: Any
) -> _Target | None:
    """The notification that makes the worker claim ``r`` again, or None when the bytes
    of ``r``'s upload are gone (the object was replaced since, or the version deleted).

    Its identity decides (see :mod:`s3flow.worker.identity`): a versionId is read as
    that version; ``<eTag>@<sequencer>`` is the current object if the eTag still is;
    ``<eTag>@t<LastModified>`` is the current upload's only if it is its identity.
    """
    if "@" not in r.version:  # a versionId: that version, while the bucket keeps it
        try:
            got = await s3.head_object(Bucket=p.bucket, Key=r.key, VersionId=r.version)
        except Exception as exc:
            err = translate_aws_error(
                exc, f"HeadObject s3://{p.bucket}/{r.key} version {r.version}"
            )
            if isinstance(err, ObjectMissingError):
                return None  # that version was deleted
            raise err from exc
        etag = str(got.get("ETag", "")).strip('"')
        size = int(got.get("ContentLength", 0))
        return _Target(
            r, s3_notification_body(p.bucket, r.key, size, etag, region, version_id=r.version)
        )
    etag = str(head.get("ETag", "")).strip('"')
    size = int(head.get("ContentLength", 0))
    if r.version == current.version:
        return _Target(r, s3_notification_body(p.bucket, r.key, size, etag, region))
    tag, sequencer = r.version.split("@", 1)
    if _CONTENT_VERSION.search(r.version) or tag != etag:
        return None  # an earlier upload: the object holds other bytes now
    return _Target(
        r, s3_notification_body(p.bucket, r.key, size, etag, region, sequencer=sequencer)
    )


def _replaced(p: PipelineSettings, key: str, version: str, current: ObjectId) -> S3flowError:
    """The error for ``--version`` naming an upload whose bytes are gone."""
    return S3flowError(
        f"files release: version {version!r} of s3://{p.bucket}/{key} is an earlier upload "
        f"whose bytes are gone (replaced or deleted since; the current upload is "
        f"{current.version!r}), so it cannot be processed again and nothing was changed. "
        f"`s3flow files release {shlex.quote(key)} -p {shlex.quote(p.name)}` (without "
        "--version) releases the current upload"
    )


async def _releasable(
    p: PipelineSettings, store: StateStore, records: list[FileRecord]
) -> list[FileRecord]:
    """``records`` less those the pipeline's processor says a release would not change
    (its ``refuse_release`` hook); raises S3flowError with its reason if none is left."""
    refuse = getattr(processor_class(p.processor), "refuse_release", None)
    if refuse is None:
        return records
    kept, reasons = [], []
    for r in records:
        why = await refuse(p, r, store)
        if why is None:
            kept.append(r)
        else:
            reasons.append(why)
    if not kept:
        raise S3flowError(f"files release: {reasons[0]}")
    return kept


async def release(
    settings: Settings, p: PipelineSettings, store: StateStore, key: str, version: str | None
) -> list[ObjectId]:
    """Release ``key`` whatever its state: untag if quarantined, reset, enqueue again.

    Every recorded upload (or only ``version``) whose bytes the bucket still holds and
    that is not being processed right now (a ``processing`` record whose claim expired
    was left by a worker that stopped: it is released) goes back to ``received``, and gets a
    notification with its own identity, so the worker claims that very record: the
    current upload, and in a versioned bucket any version still there. Records of
    earlier uploads whose bytes were replaced are left as they are (``version`` naming
    one is refused); with none of the current upload, the object as it is now is
    enqueued. Raises S3flowError when nothing could be released, saying why: a key the
    pipeline does not take (its prefix, suffix, key_regex) is refused before anything
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
    records = await _releasable(p, store, records)
    region = settings.aws.region
    async with open_clients(settings.aws) as clients:
        src = await queue_url(clients.sqs, p.queue, what=f"pipeline {p.name!r}")
        try:
            head = await clients.s3.head_object(Bucket=p.bucket, Key=key)
        except Exception as exc:
            raise translate_aws_error(exc, f"HeadObject s3://{p.bucket}/{key}") from exc
        etag = str(head.get("ETag", "")).strip('"')
        current = ObjectId(p.bucket, key, content_version(etag, head["LastModified"]))
        heads = asyncio.Semaphore(_HEADS_AT_ONCE)

        async def reachable(r: FileRecord) -> _Target | None:
            async with heads:  # a versioned key may have many versions, each a HEAD
                return await _reachable(clients.s3, p, region, r, current, head)

        # Every HEAD ends before the clients close; then the first error is raised.
        got = await asyncio.gather(*(reachable(r) for r in records), return_exceptions=True)
        reached: list[_Target | None] = []
        for g in got:
            if isinstance(g, BaseException):
                raise g
            reached.append(g)
        if version is not None and None in reached:
            raise _replaced(p, key, version, current)
        targets = [t for t in reached if t is not None]
        # A processing record whose claim expired was left by a worker that stopped
        # (killed, its machine lost): nothing is processing it, so it is released.
        now = time.time()
        busy = [t.record for t in targets if live_claim(t.record, now)]
        targets = [t for t in targets if not live_claim(t.record, now)]
        if busy and not targets:
            raise S3flowError(
                f"s3://{p.bucket}/{key} is being processed right now by "
                f"{busy[0].claim_owner}; release it once that attempt ends (its claim "
                f"expires {claim_ends(busy[0], now)}: if that worker stopped, a release "
                "after then takes the object from it)"
            )
        bodies = [t.body for t in targets] or [
            s3_notification_body(p.bucket, key, int(head.get("ContentLength", 0)), etag, region)
        ]
        # The records are reset (and the tags removed) BEFORE the notifications are sent,
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
            if any(t.record.status is FileStatus.QUARANTINED for t in targets):
                await untag(clients.s3, p.bucket, key)
            step = "setting its records to received"
            released = []
            for t in targets:
                if t.record.status is FileStatus.PROCESSING:  # its claim expired
                    # Fenced by the stopped worker's token: a worker that took the
                    # claim over meanwhile holds a newer one, and keeps it.
                    if not await store.release(
                        t.record.id,
                        token=t.record.fencing_token,
                        detail=f"released by an operator (the claim of "
                        f"{t.record.claim_owner} had expired)",
                    ):
                        continue  # a worker claimed it meanwhile: it is processed now
                elif t.record.status is not FileStatus.RECEIVED:
                    try:
                        await store.set_status(
                            t.record.id,
                            FileStatus.RECEIVED,
                            detail="released by an operator",
                            only_from=(t.record.status,),
                        )
                    except TransitionError:
                        continue  # a worker claimed it meanwhile: it is processed now
                released.append(t.body)
            step = f"SendMessage to {src}"
            for body in released if targets else bodies:
                await clients.sqs.send_message(QueueUrl=src, MessageBody=body)
        except Exception as exc:
            raise _unsent(p, key, version, step, exc) from exc
    return [t.record.id for t in targets] or [current]


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
