"""Which upload an event is about (see docs/operations.md, "Identity").

Identity is per event: the versionId in a versioned bucket, else
``<eTag>@<sequencer>``, else the object's ``<eTag>@t<LastModified>`` read with a
HEAD. Sequencers also order two uploads of the same key, so an event older than
an upload already processed is recognised as superseded.

An ``<eTag>@<sequencer>`` event is never checked with a HEAD: its reads are
conditional on its eTag instead (:attr:`~s3flow.events.ObjectEvent.if_match`). When
the object was overwritten before it was processed, the first read raises
:class:`~s3flow.errors.ObjectChangedError` and the failure policy settles it as
superseded (completed without output); the newer upload's own event processes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

from s3flow.errors import aws_errors
from s3flow.events import ObjectEvent, content_version
from s3flow.state.base import StateStore
from s3flow.state.records import ClaimOutcome, FileStatus, ObjectId
from s3flow.state.taking import take_claim


async def identify(s3: Any, event: ObjectEvent) -> tuple[ObjectId, dict[str, Any] | None]:
    """The upload ``event`` is about, and the HEAD response when one was needed.

    Raises the translated :class:`~s3flow.errors.S3flowError` when that HEAD fails.
    """
    head: dict[str, Any] | None = None
    version = event.event_version
    if version is None:
        with aws_errors(f"HeadObject {event.uri()}"):
            head = await s3.head_object(Bucket=event.bucket, Key=event.key)
        version = content_version(head.get("ETag"), head.get("LastModified") or 0)
    return ObjectId(event.bucket, event.key, version), head


def as_identified(event: ObjectEvent, head: dict[str, Any] | None) -> ObjectEvent:
    """``event`` as the processor must see it: the upload :func:`identify` took.

    Identified by a HEAD (no versionId, no sequencer), the upload is the object as it
    is now, which an overwrite may have made another than the notification's: the
    event then carries the HEAD's eTag and size, so what a processor records or checks
    (a manifest's eTag, a checkpoint's version) is the upload its record is about.
    """
    if head is None:
        return event
    etag = str(head.get("ETag") or "").strip('"') or None
    size = head.get("ContentLength")
    return dataclasses.replace(
        event,
        etag=etag or event.etag,
        size=int(size) if size is not None else event.size,
    )


async def newer_upload_done(
    store: StateStore | None, event: ObjectEvent, oid: ObjectId
) -> str | None:
    """A completed upload of the same key with a later sequencer, if any (its version)."""
    if store is None or not event.sequencer:
        return None
    for rec in await store.versions(event.bucket, event.key):
        if (
            rec.status is FileStatus.COMPLETED
            and rec.version != oid.version
            and rec.sequencer
            and sequencer_after(rec.sequencer, event.sequencer)
        ):
            return rec.version
    return None


def sequencer_after(a: str, b: str) -> bool:
    """Whether S3 sequencer ``a`` is later than ``b`` (same key only).

    AWS: pad the shorter with leading zeros, then compare as strings.
    """
    a, b = a.upper(), b.upper()
    width = max(len(a), len(b))
    return a.rjust(width, "0") > b.rjust(width, "0")


#: How long settling waits for a dead worker's claim on a stale record to run out: the
#: message it held reappears when its visibility ends, about when the claim does.
STALE_CLAIM_WAIT_S = 15.0


def upload_second(version: str) -> int | None:
    """The LastModified second of an ``<eTag>@t<seconds>`` identity (None otherwise)."""
    _, sep, ts = version.rpartition("@t")
    return int(ts) if sep and ts.isdigit() else None


def is_stale(event: ObjectEvent, head: dict[str, Any] | None) -> bool:
    """Whether a HEAD shows the object is no longer the upload ``event`` named: another
    eTag, or a LastModified after the event's time (the same bytes uploaded again).
    Only then may records of the named upload be left behind (see :func:`settle_stale`)."""
    if head is None or event.event_version is not None or not event.etag:
        return False
    if str(head.get("ETag") or "").strip('"') != event.etag.strip('"'):
        return True
    modified = head.get("LastModified")
    when = event_second(event.event_time)
    return isinstance(modified, datetime) and when is not None and modified.timestamp() >= when + 1


def event_second(event_time: str | None) -> int | None:
    """An event's ``eventTime`` in whole unix seconds (None when absent or unreadable)."""
    if not event_time:
        return None
    try:
        at = datetime.fromisoformat(event_time)
    except ValueError:
        return None
    return int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp())


async def settle_stale(
    store: StateStore | None,
    event: ObjectEvent,
    before: int,
    *,
    why: str,
    pipeline: str,
    owner: str,
    ttl_s: float,
    wait_s: float = STALE_CLAIM_WAIT_S,
) -> list[str]:
    """Complete, without output, the records of the upload ``event`` names that the
    object no longer is: those of its eTag stored before second ``before`` (the current
    upload's LastModified, or the time of the HEAD that found the object gone). Returns
    their versions.

    Only for an event identified by a HEAD (no versionId, no sequencer): its upload is
    ``<eTag>@t<LastModified>``, and such a record can never be processed again. A
    worker that died holding it (processing), a failure before the overwrite (failed)
    or `s3flow backfill` (received) left it, and nothing else would ever settle it. A
    record another worker holds is waited for up to ``wait_s`` (a dead worker's claim
    runs out about when its message reappears), then left to that worker.
    """
    if store is None or event.event_version is not None or not event.etag:
        return []
    prefix = f"{event.etag.strip(chr(34))}@t"
    settled = []
    for rec in await store.versions(event.bucket, event.key):
        second = upload_second(rec.version)
        if (
            not rec.version.startswith(prefix)
            or second is None
            or second >= before
            or rec.status not in (FileStatus.RECEIVED, FileStatus.PROCESSING, FileStatus.FAILED)
        ):
            continue
        claim = await take_claim(store, rec.id, pipeline=pipeline, owner=owner, ttl_s=ttl_s)
        left = (claim.record.claim_expires_at or 0) - time.time()
        if claim.outcome is ClaimOutcome.BUSY and 0 < left <= wait_s:
            await asyncio.sleep(left + 0.5)
            claim = await take_claim(store, rec.id, pipeline=pipeline, owner=owner, ttl_s=ttl_s)
        if claim.outcome is not ClaimOutcome.ACQUIRED:
            continue
        if await store.complete(rec.id, token=claim.token, outputs=[], detail=why):
            settled.append(rec.version)
    return settled
