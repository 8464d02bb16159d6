"""Which upload an event is about (see docs/operations.md, "Identity").

Identity is per event: the versionId in a versioned bucket, else
``<eTag>@<sequencer>``, else the object's ``<eTag>@t<LastModified>`` read with a
HEAD. Sequencers also order two uploads of the same key, so an event older than
an upload already processed is recognised as superseded.
"""

from __future__ import annotations

import dataclasses
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


async def settle_stale(
    store: StateStore | None,
    event: ObjectEvent,
    current: ObjectId | None,
    *,
    why: str,
    pipeline: str,
    owner: str,
    ttl_s: float,
) -> list[str]:
    """Complete, without output, the records of an upload ``event`` names that the object
    no longer is (``current``: the upload it is now; None: it is gone). Returns their
    versions.

    Only for an event identified by a HEAD (no versionId, no sequencer): its upload is
    ``<eTag>@t<LastModified>``, and a record of the event's eTag that is not the current
    upload can never be processed again. A worker that died holding it (processing),
    or `s3flow backfill` (received), left it, and nothing else would ever settle it.
    A record another worker holds now (a live claim) is left to that worker.
    """
    if store is None or event.event_version is not None or not event.etag:
        return []
    prefix = f"{event.etag.strip(chr(34))}@t"
    settled = []
    for rec in await store.versions(event.bucket, event.key):
        if (
            not rec.version.startswith(prefix)
            or (current is not None and rec.version == current.version)
            or rec.status not in (FileStatus.RECEIVED, FileStatus.PROCESSING)
        ):
            continue
        claim = await take_claim(store, rec.id, pipeline=pipeline, owner=owner, ttl_s=ttl_s)
        if claim.outcome is not ClaimOutcome.ACQUIRED:
            continue
        if await store.complete(rec.id, token=claim.token, outputs=[], detail=why):
            settled.append(rec.version)
    return settled
