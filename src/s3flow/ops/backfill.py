"""Backfill and reprocess: enqueue notifications for objects already in the bucket."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

from s3flow.app import queue_url
from s3flow.aws import bucket_surely_missing, missing_bucket_error, open_clients
from s3flow.errors import (
    InvalidInputError,
    ObjectMissingError,
    S3flowError,
    aws_error_code,
    aws_errors,
    translate_aws_error,
)
from s3flow.events import ObjectEvent, content_version, is_folder_marker
from s3flow.quarantine import untag
from s3flow.routing import Route
from s3flow.settings import PipelineSettings, Settings
from s3flow.state.base import StateStore
from s3flow.state.records import (
    FileRecord,
    FileStatus,
    ObjectId,
    StateError,
    TransitionError,
)

log = logging.getLogger("s3flow.ops")


def s3_notification_body(
    bucket: str,
    key: str,
    size: int,
    etag: str,
    region: str,
    *,
    version_id: str | None = None,
    sequencer: str | None = None,
) -> str:
    """An S3 ObjectCreated notification body, as S3 would send it (key URL-encoded).

    ``version_id`` / ``sequencer`` give the event the identity of an upload already
    recorded (the worker then claims that record); without them the worker reads the
    object's (eTag, LastModified) as the upload's identity.
    """
    obj: dict[str, str | int] = {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag}
    if version_id is not None:
        obj["versionId"] = version_id
    if sequencer is not None:
        obj["sequencer"] = sequencer
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "awsRegion": region,
                    "eventTime": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "eventName": "ObjectCreated:Backfill",
                    "s3": {
                        "s3SchemaVersion": "1.0",
                        "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                        "object": obj,
                    },
                }
            ]
        }
    )


@dataclass
class BackfillReport:
    """What a backfill did."""

    listed: int = 0
    enqueued: int = 0
    already_done: int = 0
    already_queued: int = 0
    #: Failed records left to their retry (their notification comes back), and
    #: processing records whose claim expired (a worker stopped holding them: its
    #: message comes back); when it is gone (a crash after the DLQ send, retention)
    #: ``reprocess`` sends them again.
    awaiting_retry: int = 0
    filtered: int = 0  # the pipeline's suffix / key_regex rejects them (or folder markers)
    older: int = 0  # modified before ``since``
    busy: int = 0  # being processed right now (left alone, even with force)
    #: Dead-lettered / quarantined records: a plain backfill leaves them (their DLQ
    #: message is redriven, or they are released or reprocessed on purpose).
    dead: int = 0
    quarantined: int = 0
    #: Of ``enqueued``: records that said received (queued) while the pipeline's queue
    #: held no message at all (purged, or a run killed between its mark and its send).
    requeued: int = 0


def live_claim(record: FileRecord, now: float) -> bool:
    """Whether ``record`` is being processed right now: ``processing`` under a claim that
    has not expired. A claim left by a worker that died (SIGKILL, a lost machine) expires
    after ``claim_ttl_s``: its record is not busy, and a worker takes it over too."""
    if record.status is not FileStatus.PROCESSING:
        return False
    return record.claim_expires_at is None or record.claim_expires_at > now


def claim_ends(record: FileRecord, now: float) -> str:
    """When the live claim on ``record`` expires, for a message (``at 12:00:05 UTC, in 40 s``)."""
    at = record.claim_expires_at
    if at is None:
        return "with no expiry recorded"
    when = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"at {when}, in {max(0, round(at - now))} s"


def current_upload_state(
    records: list[FileRecord], etag: str, last_modified: datetime
) -> FileRecord | None:
    """The record of the object's current upload, if the state store has one.

    The upload is the one identified by (eTag, LastModified), or one identified
    by an event of the same eTag recorded no earlier than the upload itself
    (a sequencer or versionId identity: same bytes, processed after they landed).
    """
    version = content_version(etag, last_modified)
    uploaded = last_modified.timestamp()
    for r in records:  # most recently updated first
        if r.version == version:
            return r
    for r in records:
        if r.version.split("@", 1)[0] == etag and r.created_at >= uploaded - 1:
            return r
    return None


def _unsent(
    p: PipelineSettings, keys: list[str], exc: BaseException | None, command: str = "backfill"
) -> S3flowError:
    """The error for notifications that could not be sent (their records may say received,
    their quarantine tags may be gone); ``command``: the s3flow command that sent them."""
    why = f": {exc}" if exc is not None else ""
    shown = " ".join(keys[:10]) + (" ..." if len(keys) > 10 else "")
    return S3flowError(
        f"{command}: {len(keys)} notification(s) could not be sent to pipeline {p.name!r}'s "
        f"queue{why}. Their records may say received, so a plain backfill skips them: "
        f"`s3flow reprocess -p {p.name} {shown}` enqueues them"
    )


def listing_prefix(p: PipelineSettings, prefix: str | None, command: str = "backfill") -> str:
    """The prefix a backfill of ``p`` lists: ``prefix`` narrows the pipeline's own.

    ``prefix`` must start with the pipeline's prefix (it is used as is); any other
    is refused (S3flowError naming both, and ``command``, the s3flow command whose
    ``--prefix`` it is), since the worker would skip every notification for a key
    outside the pipeline. None: the pipeline's prefix.
    """
    if prefix is None:
        return p.prefix
    if not prefix.startswith(p.prefix):
        raise S3flowError(
            f"{command}: --prefix {prefix!r} is outside pipeline {p.name!r}'s prefix "
            f"{p.prefix!r}: --prefix narrows the pipeline's keys, it cannot replace them; "
            f"give a prefix starting with {p.prefix!r} (e.g. {p.prefix + prefix!r}), or "
            "leave it out to take all of the pipeline's keys"
        )
    return prefix


def _refused_keys(p: PipelineSettings, route: Route, keys: list[str]) -> S3flowError | None:
    """The error for named keys the pipeline does not take (None when it takes them all)."""
    refused = [
        f"{key} ({why})"
        for key in keys
        if (why := route.rejects(ObjectEvent(p.bucket, key))) is not None
    ]
    if not refused:
        return None
    shown = "; ".join(refused[:10]) + (" ..." if len(refused) > 10 else "")
    return S3flowError(
        f"reprocess: pipeline {p.name!r} does not take {len(refused)} of the keys given "
        f"(its prefix {p.prefix!r}, suffix {p.suffix!r}, key_regex {p.key_regex!r}): "
        f"{shown}. The worker would skip their notifications, so nothing was enqueued; "
        "name only keys of this pipeline, or the pipeline that takes them"
    )


async def _holds_nothing(sqs: Any, url: str) -> bool:
    """Whether the queue holds no message: none visible, in flight or delayed."""
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    with aws_errors(f"GetQueueAttributes {url}"):
        got = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
    attrs = got.get("Attributes") or {}
    return all(int(attrs.get(n, 0)) == 0 for n in names)


@dataclass
class _Pending:
    """One notification of a batch, with what is done just before the batch is sent."""

    oid: ObjectId
    body: str
    mark: str | None  # set the record to received with this detail
    was: FileStatus | None  # the record's status when listed (None: no record yet)
    untag: bool  # remove the object's quarantine tags
    token: int = 0  # was processing (its claim expired): the stopped claim's token

    @property
    def premark(self) -> bool:
        """Its record is set to received before the send: an existing record. A new
        object's record is made after the send (see ``send_batch``)."""
        return self.mark is not None and self.was is not None


async def backfill(
    settings: Settings,
    p: PipelineSettings,
    *,
    prefix: str | None = None,
    keys: list[str] | None = None,
    since: datetime | None = None,
    store: StateStore | None = None,
    force: bool = False,
    on_progress: Callable[[int, int], None] = lambda listed, enqueued: None,
    command: str = "backfill",
) -> BackfillReport:
    """Enqueue notifications for existing objects whose current upload is not done yet.

    Safe to run twice: an object whose current upload is completed, or enqueued
    by an earlier backfill and not yet processed (``received``), is skipped, and so
    are failed ones (their notification comes back) and dead-lettered or quarantined
    ones (counted apart: `dlq redrive`, `files release` or `reprocess` process them
    again). While the queue holds no message at all, ``received`` records have
    none left either: they are enqueued again (``requeued``). With ``force`` every
    listed object is enqueued again and its record reset, so it is processed anew
    (``s3flow reprocess``); objects being processed right now (under a claim that
    has not expired) are left alone either way. ``keys`` names objects instead of
    listing a prefix.

    Only objects the pipeline takes are enqueued (its prefix, suffix and
    key_regex, as the worker checks them): ``prefix`` narrows the pipeline's
    prefix (:func:`listing_prefix`), listed keys the filters reject are counted
    as filtered, and named ``keys`` it rejects are refused before anything is sent.
    ``command`` is the s3flow command its errors name (``backfill`` or ``reprocess``).
    """
    route = Route.from_settings(p)
    listed_prefix = listing_prefix(p, None if keys else prefix, command)
    if keys and (refused := _refused_keys(p, route, keys)) is not None:
        raise refused
    report = BackfillReport()
    async with open_clients(settings.aws) as clients:
        src = await queue_url(clients.sqs, p.queue, what=f"pipeline {p.name!r}")
        # A queue that holds no message at all (none visible, in flight or delayed)
        # holds none for the records that say received (queued): purged, or a run
        # killed between setting a batch's records to received and sending it. Those
        # are enqueued again (a duplicate, if the counts lag, is acknowledged as one).
        queue_empty = store is not None and await _holds_nothing(clients.sqs, src)
        requeued: set[str] = set()
        batch: list[_Pending] = []

        async def mark(item: _Pending) -> bool:
            """Set the item's record to received unless it changed since it was listed
            (a worker claimed or completed it meanwhile): then False, and it is left."""
            assert store is not None and item.mark is not None
            if item.was is FileStatus.PROCESSING:  # its claim had expired when listed
                # Fenced by that claim's token: a worker that took it over since holds
                # a newer one and keeps it.
                return await store.release(item.oid, token=item.token, detail=item.mark)
            try:
                await store.set_status(
                    item.oid,
                    FileStatus.RECEIVED,
                    detail=item.mark,
                    pipeline=p.name,
                    only_from=(item.was,),
                )
            except TransitionError:
                return False
            return True

        async def send_batch() -> None:
            # Quarantine tags are removed and records the worker would not process
            # (dead, quarantined, completed) set to received just before their
            # notifications are sent (not as each object is listed): a backfill stopped
            # before a batch goes out leaves no object untagged, nor a record saying
            # "queued", for a notification never sent. Tags go first: a record left
            # quarantined by a failure here makes the next reprocess untag again. A new
            # object's record is made after the send: the worker takes its notification
            # either way, and a stop in between only lets the next run enqueue it again.
            try:
                for item in list(batch):
                    if item.untag:
                        await untag(clients.s3, p.bucket, item.oid.key)
                    if item.premark and not await mark(item):
                        batch.remove(item)
                        report.busy += 1
            except Exception as exc:
                raise _unsent(p, [item.oid.key for item in batch], exc, command) from exc
            entries = [{"Id": str(i), "MessageBody": item.body} for i, item in enumerate(batch)]
            try:
                for _attempt in range(3):
                    if not entries:  # every item changed meanwhile: nothing to send
                        break
                    resp = await clients.sqs.send_message_batch(QueueUrl=src, Entries=entries)
                    ok = {e["Id"] for e in resp.get("Successful") or []}
                    report.enqueued += len(ok)
                    report.requeued += sum(batch[int(i)].oid.key in requeued for i in ok)
                    entries = [e for e in entries if e["Id"] not in ok]
                    if not entries:
                        break
                    await asyncio.sleep(0.5)
            except Exception as exc:
                unsent = [batch[int(e["Id"])].oid.key for e in entries]
                raise _unsent(p, unsent, exc, command) from exc
            if entries:
                raise _unsent(p, [batch[int(e["Id"])].oid.key for e in entries], None, command)
            for item in batch:
                if item.mark is not None and not item.premark:
                    try:
                        await mark(item)  # False: the worker has it already
                    except StateError as exc:  # sent: the worker records it anyway
                        log.warning("%s: not marked queued (%s)", item.oid.key, exc)
            batch.clear()

        async def flush() -> None:
            """Send the batch; a stop (Ctrl-C) meanwhile lets it finish first, so no record
            says received for a notification that was never sent."""
            if not batch:
                return
            sending = asyncio.ensure_future(send_batch())
            cancelled = False
            while not sending.done():
                try:
                    await asyncio.shield(sending)
                except asyncio.CancelledError:
                    cancelled = True  # (again): the batch still goes out first
            sending.result()
            if cancelled:
                raise asyncio.CancelledError

        async def consider(key: str, etag: str, size: int, modified: datetime) -> None:
            report.listed += 1
            # (named keys were checked against the route before anything was read)
            if since and modified < since:
                report.older += 1
                return
            if route.rejects(ObjectEvent(p.bucket, key)) or is_folder_marker(key, size):
                report.filtered += 1  # (the worker skips folder markers)
                return
            oid = ObjectId(p.bucket, key, content_version(etag, modified))
            quarantined = False
            if store is not None:
                rec = current_upload_state(await store.versions(p.bucket, key), etag, modified)
                status = rec.status if rec is not None else None
                if rec is not None and live_claim(rec, time.time()):
                    report.busy += 1
                    return
                # (a processing record whose claim expired: its worker stopped)
                if not force:
                    if status is FileStatus.COMPLETED:
                        report.already_done += 1
                        return
                    if status is FileStatus.RECEIVED and not queue_empty:
                        report.already_queued += 1
                        return
                    if status in (FileStatus.FAILED, FileStatus.PROCESSING):
                        # its notification comes back for the next try: a new one
                        # would reset its failure budget (never reaching the DLQ)
                        report.awaiting_retry += 1
                        return
                    if status is FileStatus.DEAD:
                        # its message is in the DLQ (`dlq redrive`): enqueued on every
                        # run, it failed and was dead-lettered again, copy after copy
                        report.dead += 1
                        return
                    if status is FileStatus.QUARANTINED:
                        report.quarantined += 1
                        return
                if status is FileStatus.RECEIVED and queue_empty:
                    requeued.add(key)  # said queued, and no message was left
                # Untagged in flush, with the batch that sends its notification.
                quarantined = rec is not None and rec.status is FileStatus.QUARANTINED
            # The worker identifies a backfilled upload by (eTag, LastModified): that
            # record is the one it will claim, so it must not say "done" (set in flush).
            mark: str | None = None
            was: FileStatus | None = None
            token = 0
            if store is not None:
                current = await store.get(oid)
                if current is not None and live_claim(current, time.time()):
                    report.busy += 1  # (claimed since it was listed)
                    return
                was = current.status if current is not None else None
                token = current.fencing_token if current is not None else 0
                if was is not FileStatus.RECEIVED:
                    mark = "reprocess" if force else "backfill"
            body = s3_notification_body(p.bucket, key, size, etag, settings.aws.region)
            batch.append(_Pending(oid, body, mark, was, quarantined, token))
            if len(batch) == 10:
                await flush()
            on_progress(report.listed, report.enqueued)

        try:
            if keys:
                # Every key is looked up first: one that does not exist enqueues nothing.
                heads: list[tuple[str, dict[str, Any]]] = []
                missing: list[str] = []
                for key in keys:
                    try:
                        with aws_errors(f"HeadObject s3://{p.bucket}/{key}"):
                            heads.append(
                                (key, await clients.s3.head_object(Bucket=p.bucket, Key=key))
                            )
                    except ObjectMissingError:
                        missing.append(key)
                if missing:
                    # A HEAD's 404 does not say whether the key or the bucket is missing.
                    if await bucket_surely_missing(clients.s3, p.bucket):
                        raise missing_bucket_error(p.bucket, settings.aws, f"{command}: bucket")
                    raise InvalidInputError(
                        f"{command}: no object {', '.join(map(repr, missing[:5]))}"
                        + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                        + f" in bucket {p.bucket!r}; nothing was enqueued"
                    )
                for key, head in heads:
                    await consider(
                        key,
                        str(head.get("ETag", "")).strip('"'),
                        int(head.get("ContentLength", 0)),
                        head["LastModified"],
                    )
            else:
                paginator = clients.s3.get_paginator("list_objects_v2")
                async for page in paginator.paginate(Bucket=p.bucket, Prefix=listed_prefix):
                    for obj in page.get("Contents") or []:
                        await consider(
                            obj["Key"],
                            str(obj.get("ETag", "")).strip('"'),
                            int(obj.get("Size", 0)),
                            obj["LastModified"],
                        )
            await flush()
            on_progress(report.listed, report.enqueued)
        except S3flowError:
            raise
        except Exception as exc:
            no_bucket = aws_error_code(exc) == "NoSuchBucket"
            if no_bucket and await bucket_surely_missing(clients.s3, p.bucket):
                raise missing_bucket_error(p.bucket, settings.aws, f"{command}: bucket") from exc
            raise translate_aws_error(exc, f"{command} of s3://{p.bucket}/{listed_prefix}") from exc
    return report
