"""Operator tools: inspect and redrive the DLQ, backfill existing objects, release quarantine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

from s3flow.app import dlq_url, queue_url
from s3flow.aws import AwsClients, open_clients
from s3flow.errors import EnvelopeError, S3flowError, translate_aws_error
from s3flow.events import content_version, parse_body
from s3flow.quarantine import untag
from s3flow.routing import Route
from s3flow.settings import PipelineSettings, Settings
from s3flow.state.base import FileRecord, FileStatus, ObjectId, StateStore, TransitionError

log = logging.getLogger("s3flow.ops")


@dataclass
class DlqMessage:
    """One dead-lettered message with the reason s3flow recorded."""

    message_id: str
    body: str
    error_class: str | None
    error: str | None
    pipeline: str | None
    receive_count: str | None
    sent_at: str | None
    keys: list[str] = field(default_factory=list)
    #: From the state store when the message has no s3flow attributes (the queue's
    #: redrive policy moved it, e.g. after the worker itself kept dying on it).
    state_note: str | None = None


def _attr(msg: dict[str, Any], name: str) -> str | None:
    v = (msg.get("MessageAttributes") or {}).get(name)
    return str(v["StringValue"]) if v and "StringValue" in v else None


def _keys(body: str) -> list[str]:
    try:
        return [e.uri() for e in parse_body(body).events]
    except EnvelopeError:
        return []


async def _urls(clients: AwsClients, p: PipelineSettings) -> tuple[str, str]:
    src = await queue_url(clients.sqs, p.queue, what=f"pipeline {p.name!r}")
    return src, await dlq_url(clients.sqs, p, src)


async def _state_note(store: StateStore | None, body: str) -> str | None:
    """What the state store last recorded for the objects of a DLQ message body."""
    if store is None:
        return None
    try:
        events = parse_body(body).events
    except EnvelopeError:
        return None
    notes = []
    for e in events:
        recs = await store.versions(e.bucket, e.key)
        if not recs:
            notes.append(f"{e.uri()}: no record (never started)")
            continue
        r = recs[0]
        err = f"; last error {r.last_error_class}: {r.last_error}" if r.last_error else ""
        notes.append(f"{e.uri()}: {r.status.value} after {r.attempts} attempt(s){err}")
    return "; ".join(notes) or None


async def list_dlq(
    settings: Settings,
    p: PipelineSettings,
    *,
    max_n: int = 100,
    store: StateStore | None = None,
) -> list[DlqMessage]:
    """Peek at up to ``max_n`` DLQ messages (they become visible again right after).

    A message without s3flow's attributes was moved by the queue's redrive
    policy, not by a worker: its ``state_note`` says what the state store last
    recorded for its objects.
    """
    out: dict[str, DlqMessage] = {}
    handles: list[str] = []
    async with open_clients(settings.aws) as clients:
        _, dlq = await _urls(clients, p)
        try:
            while len(out) < max_n:
                resp = await clients.sqs.receive_message(
                    QueueUrl=dlq,
                    MaxNumberOfMessages=min(10, max_n - len(out)),
                    WaitTimeSeconds=1,
                    VisibilityTimeout=30,
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=["SentTimestamp"],
                )
                msgs = resp.get("Messages") or []
                if not msgs:
                    break
                for m in msgs:
                    handles.append(m["ReceiptHandle"])
                    sent = (m.get("Attributes") or {}).get("SentTimestamp")
                    out[m["MessageId"]] = DlqMessage(
                        message_id=m["MessageId"],
                        body=m.get("Body", ""),
                        error_class=_attr(m, "s3flow.error-class"),
                        error=_attr(m, "s3flow.error"),
                        pipeline=_attr(m, "s3flow.pipeline"),
                        receive_count=_attr(m, "s3flow.receive-count"),
                        sent_at=datetime.fromtimestamp(int(sent) / 1000, UTC).isoformat()
                        if sent
                        else None,
                        keys=_keys(m.get("Body", "")),
                    )
                    if out[m["MessageId"]].error_class is None:
                        note = await _state_note(store, m.get("Body", ""))
                        out[m["MessageId"]].state_note = (
                            "moved by the queue's redrive policy (maxReceiveCount), not by a "
                            "worker" + (f"; state store: {note}" if note else "")
                        )
        finally:
            for i in range(0, len(handles), 10):
                entries = [
                    {"Id": str(j), "ReceiptHandle": h, "VisibilityTimeout": 0}
                    for j, h in enumerate(handles[i : i + 10])
                ]
                with contextlib.suppress(Exception):
                    await clients.sqs.change_message_visibility_batch(QueueUrl=dlq, Entries=entries)
    return list(out.values())


@dataclass
class RedriveReport:
    """What a redrive did."""

    method: str  # "message-move-task" | "receive-send-delete"
    moved: int = 0
    failed: int = 0
    waited_for: int = 0  # DLQ messages leased by an interrupted run that were waited for
    note: str = ""  # why the fallback was used


async def _reset_state(store: StateStore | None, body: str) -> None:
    """Give the objects of a redriven body a fresh start (dead/failed -> received)."""
    if store is None:
        return
    try:
        events = parse_body(body).events
    except EnvelopeError:
        return
    for e in events:
        for rec in await store.versions(e.bucket, e.key):
            if rec.status in (FileStatus.DEAD, FileStatus.FAILED):
                with contextlib.suppress(TransitionError):
                    await store.set_status(rec.id, FileStatus.RECEIVED, detail="redriven")


async def _leased(sqs: Any, url: str) -> int:
    attrs = (
        await sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
        )
    ).get("Attributes", {})
    return int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0))


async def redrive(
    settings: Settings,
    p: PipelineSettings,
    *,
    max_n: int | None = None,
    store: StateStore | None = None,
    use_move_task: bool = True,
    lease_s: int = 30,
    on_moved: Callable[[int], None] = lambda n: None,
    on_wait: Callable[[int, float], None] = lambda n, s: None,
) -> RedriveReport:
    """Move DLQ messages back to the source queue; restartable.

    Uses SQS StartMessageMoveTask where the endpoint supports it (and no
    ``max_n`` is given); otherwise receive -> send -> delete, deleting a DLQ
    message only after its copy is on the source queue. Interrupted (SIGINT,
    an error), the batch in hand is settled first: sent copies are deleted from
    the DLQ, unsent ones made visible again. Killed outright, the DLQ messages
    it held come back after ``lease_s``: the next run waits for them (calling
    ``on_wait(count, seconds)``) and moves them too, so no stale copy with an
    old reason is left behind; a message moved twice is processed once (the
    second copy is a duplicate for the state store).
    """
    async with open_clients(settings.aws) as clients:
        src, dlq = await _urls(clients, p)
        if use_move_task and max_n is None:
            report, note = await _try_move_task(settings, src, dlq)
            if report is not None:
                return report
        else:
            note = "a limited redrive (--max) moves messages itself"
        report = RedriveReport("receive-send-delete", note=note)
        await _wait_for_leased(clients.sqs, dlq, lease_s, report, on_wait)
        while max_n is None or report.moved < max_n:
            want = 10 if max_n is None else min(10, max_n - report.moved)
            resp = await clients.sqs.receive_message(
                QueueUrl=dlq, MaxNumberOfMessages=want, WaitTimeSeconds=1, VisibilityTimeout=lease_s
            )
            msgs = resp.get("Messages") or []
            if not msgs:
                if await _leased(clients.sqs, dlq) == 0:
                    break
                await _wait_for_leased(clients.sqs, dlq, lease_s, report, on_wait)
                continue
            done = await _move_batch(clients.sqs, src, dlq, msgs, store, report)
            on_moved(done)
            if report.failed and not done:
                raise S3flowError(
                    f"could not send DLQ messages to {src}; {report.failed} left on the DLQ"
                )
        return report


async def _wait_for_leased(
    sqs: Any,
    dlq: str,
    lease_s: int,
    report: RedriveReport,
    on_wait: Callable[[int, float], None],
) -> None:
    """Wait (at most a lease and a bit) for DLQ messages someone else holds."""
    held = await _leased(sqs, dlq)
    if not held:
        return
    # Held by an interrupted redrive or a `dlq list` peek: they come back soon.
    limit = max(lease_s, 30) + 5
    on_wait(held, limit)
    report.waited_for = max(report.waited_for, held)
    deadline = time.monotonic() + limit
    while held and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        held = await _leased(sqs, dlq)
    if held:
        log.warning("%d DLQ messages are still leased by someone else; not waiting longer", held)


async def _move_batch(
    sqs: Any,
    src: str,
    dlq: str,
    msgs: list[dict[str, Any]],
    store: StateStore | None,
    report: RedriveReport,
) -> int:
    """Send one received batch to the source queue, then delete it from the DLQ."""
    sent_ok: list[dict[str, Any]] = []
    try:
        for m in msgs:  # state first: a redriven object must not be parked as dead
            await _reset_state(store, m["Body"])
        sent = await sqs.send_message_batch(
            QueueUrl=src,
            Entries=[{"Id": str(i), "MessageBody": m["Body"]} for i, m in enumerate(msgs)],
        )
        ok = {int(s["Id"]) for s in sent.get("Successful") or []}
        report.failed += len(msgs) - len(ok)
        sent_ok = [msgs[i] for i in sorted(ok)]
    finally:
        # Also on SIGINT / cancellation: what was sent is deleted, the rest released.
        unsent = [m for m in msgs if m not in sent_ok]
        await asyncio.shield(_settle_batch(sqs, dlq, sent_ok, unsent))
    report.moved += len(sent_ok)
    return len(sent_ok)


async def _settle_batch(
    sqs: Any, dlq: str, delete: list[dict[str, Any]], release: list[dict[str, Any]]
) -> None:
    if delete:
        dele = await sqs.delete_message_batch(
            QueueUrl=dlq,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(delete)
            ],
        )
        for f in dele.get("Failed") or []:
            log.warning("DLQ delete failed (the message may be redriven twice): %s", f)
    if release:
        with contextlib.suppress(Exception):
            await sqs.change_message_visibility_batch(
                QueueUrl=dlq,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(release)
                ],
            )


def _short_reason(err: S3flowError) -> str:
    """An endpoint's error in one line (some answer with a whole HTML page)."""
    text = " ".join(str(err).split())
    if "<" in text:
        text = text.split("<", 1)[0].rstrip(" :") + " (HTML error page)"
    return text[:200]


async def _try_move_task(
    settings: Settings, src: str, dlq: str
) -> tuple[RedriveReport | None, str]:
    one_try = settings.aws.model_copy(update={"max_attempts": 1})
    async with open_clients(one_try) as clients:
        try:
            attrs = {}
            for url in (src, dlq):
                a = await clients.sqs.get_queue_attributes(
                    QueueUrl=url, AttributeNames=["QueueArn"]
                )
                attrs[url] = a["Attributes"]["QueueArn"]
            await clients.sqs.start_message_move_task(
                SourceArn=attrs[dlq], DestinationArn=attrs[src]
            )
        except Exception as exc:
            reason = _short_reason(translate_aws_error(exc, "StartMessageMoveTask"))
            note = (
                "this endpoint does not support StartMessageMoveTask "
                f"({reason}); moving messages with receive + send + delete instead"
            )
            log.debug("%s", note)  # the caller shows it (the CLI prints report.note)
            return None, note
    return RedriveReport("message-move-task"), ""


def s3_notification_body(bucket: str, key: str, size: int, etag: str, region: str) -> str:
    """An S3 ObjectCreated notification body, as S3 would send it (key URL-encoded)."""
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
                        "object": {
                            "key": quote_plus(key, safe="/"),
                            "size": size,
                            "eTag": etag,
                        },
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
    filtered: int = 0
    busy: int = 0  # being processed right now (left alone, even with force)


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
) -> BackfillReport:
    """Enqueue notifications for existing objects whose current upload is not done yet.

    Safe to run twice: an object whose current upload is completed, or enqueued
    by an earlier backfill and not yet processed (``received``), is skipped.
    With ``force`` every listed object is enqueued again and its record reset,
    so it is processed anew (``s3flow reprocess``); objects being processed
    right now are left alone either way. ``keys`` names objects instead of
    listing a prefix.
    """
    route = Route.from_settings(p)
    report = BackfillReport()
    async with open_clients(settings.aws) as clients:
        src = await queue_url(clients.sqs, p.queue, what=f"pipeline {p.name!r}")
        batch: list[tuple[ObjectId, str]] = []

        async def flush() -> None:
            if not batch:
                return
            entries = [{"Id": str(i), "MessageBody": body} for i, (_, body) in enumerate(batch)]
            for _attempt in range(3):
                resp = await clients.sqs.send_message_batch(QueueUrl=src, Entries=entries)
                ok = {e["Id"] for e in resp.get("Successful") or []}
                report.enqueued += len(ok)
                entries = [e for e in entries if e["Id"] not in ok]
                if not entries:
                    break
                await asyncio.sleep(0.5)
            if entries:
                raise S3flowError(f"backfill: {len(entries)} notifications could not be sent")
            batch.clear()

        async def consider(key: str, etag: str, size: int, modified: datetime) -> None:
            report.listed += 1
            if (since and modified < since) or (
                not keys
                and (
                    (p.suffix and not key.endswith(p.suffix))
                    or (route.key_regex is not None and not route.key_regex.search(key))
                )
            ):
                report.filtered += 1
                return
            oid = ObjectId(p.bucket, key, content_version(etag, modified))
            if store is not None:
                rec = current_upload_state(await store.versions(p.bucket, key), etag, modified)
                status = rec.status if rec is not None else None
                if status is FileStatus.PROCESSING:
                    report.busy += 1
                    return
                if not force:
                    if status is FileStatus.COMPLETED:
                        report.already_done += 1
                        return
                    if status is FileStatus.RECEIVED:
                        report.already_queued += 1
                        return
                    if status is FileStatus.QUARANTINED:
                        report.filtered += 1
                        return
                if rec is not None and rec.status is FileStatus.QUARANTINED:
                    await untag(clients.s3, p.bucket, key)
                # The worker identifies a backfilled upload by (eTag, LastModified):
                # that record is the one it will claim, so it must not say "done".
                detail = "reprocess" if force else "backfill"
                current = await store.get(oid)
                if current is None or current.status is not FileStatus.RECEIVED:
                    await store.set_status(oid, FileStatus.RECEIVED, detail=detail, pipeline=p.name)
            body = s3_notification_body(p.bucket, key, size, etag, settings.aws.region)
            batch.append((oid, body))
            if len(batch) == 10:
                await flush()
            on_progress(report.listed, report.enqueued)

        try:
            if keys:
                for key in keys:
                    try:
                        head = await clients.s3.head_object(Bucket=p.bucket, Key=key)
                    except Exception as exc:
                        raise translate_aws_error(exc, f"HeadObject s3://{p.bucket}/{key}") from exc
                    await consider(
                        key,
                        str(head.get("ETag", "")).strip('"'),
                        int(head.get("ContentLength", 0)),
                        head["LastModified"],
                    )
            else:
                paginator = clients.s3.get_paginator("list_objects_v2")
                async for page in paginator.paginate(Bucket=p.bucket, Prefix=prefix or p.prefix):
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
            raise translate_aws_error(
                exc, f"backfill of s3://{p.bucket}/{prefix or p.prefix}"
            ) from exc
    return report


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
