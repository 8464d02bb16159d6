"""Operator tools: inspect and redrive the DLQ, backfill existing objects, release quarantine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

from s3flow.app import dlq_url, queue_url
from s3flow.aws import AwsClients, open_clients
from s3flow.errors import EnvelopeError, S3flowError, translate_aws_error
from s3flow.events import parse_body
from s3flow.quarantine import untag
from s3flow.routing import Route
from s3flow.settings import PipelineSettings, Settings
from s3flow.state.base import FileStatus, ObjectId, StateStore, TransitionError

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


async def list_dlq(
    settings: Settings, p: PipelineSettings, *, max_n: int = 100
) -> list[DlqMessage]:
    """Peek at up to ``max_n`` DLQ messages (they become visible again right after)."""
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


async def _reset_state(store: StateStore | None, body: str) -> None:
    if store is None:
        return
    try:
        events = parse_body(body).events
    except EnvelopeError:
        return
    for e in events:
        oid = ObjectId(e.bucket, e.key, e.version_id or e.etag or "")
        rec = await store.get(oid)
        if rec is not None and rec.status in (FileStatus.DEAD, FileStatus.FAILED):
            with contextlib.suppress(TransitionError):
                await store.set_status(oid, FileStatus.RECEIVED, detail="redriven from the DLQ")


async def redrive(
    settings: Settings,
    p: PipelineSettings,
    *,
    max_n: int | None = None,
    store: StateStore | None = None,
    use_move_task: bool = True,
    lease_s: int = 60,
    on_moved: Callable[[int], None] = lambda n: None,
) -> RedriveReport:
    """Move DLQ messages back to the source queue.

    Uses SQS StartMessageMoveTask where the endpoint supports it (and no
    ``max_n`` is given); otherwise receive -> send -> delete, deleting a DLQ
    message only after its copy is on the source queue: a crash midway can
    leave a duplicate (harmless: claims dedupe it) but never loses one.
    """
    async with open_clients(settings.aws) as clients:
        src, dlq = await _urls(clients, p)
        if use_move_task and max_n is None:
            report = await _try_move_task(settings, src, dlq)
            if report is not None:
                return report
        report = RedriveReport("receive-send-delete")
        while max_n is None or report.moved < max_n:
            want = 10 if max_n is None else min(10, max_n - report.moved)
            resp = await clients.sqs.receive_message(
                QueueUrl=dlq, MaxNumberOfMessages=want, WaitTimeSeconds=1, VisibilityTimeout=lease_s
            )
            msgs = resp.get("Messages") or []
            if not msgs:
                break
            sent = await clients.sqs.send_message_batch(
                QueueUrl=src,
                Entries=[{"Id": str(i), "MessageBody": m["Body"]} for i, m in enumerate(msgs)],
            )
            ok = {int(s["Id"]) for s in sent.get("Successful") or []}
            report.failed += len(msgs) - len(ok)
            done = [msgs[i] for i in sorted(ok)]
            for m in done:
                await _reset_state(store, m["Body"])
            if done:
                dele = await clients.sqs.delete_message_batch(
                    QueueUrl=dlq,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(done)
                    ],
                )
                for f in dele.get("Failed") or []:
                    log.warning("DLQ delete failed (the message may be redriven twice): %s", f)
            report.moved += len(done)
            on_moved(len(done))
            if report.failed and not done:
                raise S3flowError(
                    f"could not send DLQ messages to {src}; {report.failed} left on the DLQ"
                )
        return report


async def _try_move_task(settings: Settings, src: str, dlq: str) -> RedriveReport | None:
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
            log.info(
                "StartMessageMoveTask unavailable (%s); using receive + send + delete",
                translate_aws_error(exc, "StartMessageMoveTask"),
            )
            return None
    return RedriveReport("message-move-task")


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


async def backfill(
    settings: Settings,
    p: PipelineSettings,
    *,
    prefix: str | None = None,
    since: datetime | None = None,
    store: StateStore | None = None,
    on_progress: Callable[[int, int], None] = lambda listed, enqueued: None,
) -> BackfillReport:
    """Enqueue notifications for existing objects that are not completed yet.

    Safe to run twice: objects completed, or enqueued by an earlier backfill and
    not yet processed (status ``received``), are skipped.
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
                for i, (oid, _) in enumerate(batch):
                    if str(i) in ok and store is not None:
                        await store.set_status(
                            oid, FileStatus.RECEIVED, detail="backfill", pipeline=p.name
                        )
                report.enqueued += len(ok)
                entries = [e for e in entries if e["Id"] not in ok]
                if not entries:
                    break
                await asyncio.sleep(0.5)
            if entries:
                raise S3flowError(f"backfill: {len(entries)} notifications could not be sent")
            batch.clear()

        paginator = clients.s3.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=p.bucket, Prefix=prefix or p.prefix):
                for obj in page.get("Contents") or []:
                    report.listed += 1
                    key, etag = obj["Key"], str(obj.get("ETag", "")).strip('"')
                    if (since and obj["LastModified"] < since) or (
                        (p.suffix and not key.endswith(p.suffix))
                        or (route.key_regex is not None and not route.key_regex.search(key))
                    ):
                        report.filtered += 1
                        continue
                    oid = ObjectId(p.bucket, key, etag)
                    if store is not None:
                        rec = await store.get(oid)
                        if rec is not None and rec.status is FileStatus.COMPLETED:
                            report.already_done += 1
                            continue
                        if rec is not None and rec.status in (
                            FileStatus.RECEIVED,
                            FileStatus.PROCESSING,
                        ):
                            report.already_queued += 1
                            continue
                        if rec is not None and rec.status is FileStatus.QUARANTINED:
                            report.filtered += 1
                            continue
                    body = s3_notification_body(
                        p.bucket, key, int(obj.get("Size", 0)), etag, settings.aws.region
                    )
                    batch.append((oid, body))
                    if len(batch) == 10:
                        await flush()
                    on_progress(report.listed, report.enqueued)
            await flush()
            on_progress(report.listed, report.enqueued)
        except S3flowError:
            raise
        except Exception as exc:
            raise translate_aws_error(
                exc, f"backfill of s3://{p.bucket}/{prefix or p.prefix}"
            ) from exc
    return report


async def release_quarantined(
    settings: Settings, p: PipelineSettings, store: StateStore, key: str, version: str | None
) -> list[ObjectId]:
    """Release quarantined versions of ``key``: untag, mark received, enqueue again."""
    records = [
        r
        for r in await store.list_files(status=FileStatus.QUARANTINED, key_prefix=key)
        if r.key == key and r.bucket == p.bucket and (version is None or r.version == version)
    ]
    released: list[ObjectId] = []
    async with open_clients(settings.aws) as clients:
        src = await queue_url(clients.sqs, p.queue, what=f"pipeline {p.name!r}")
        for r in records:
            head = await clients.s3.head_object(Bucket=r.bucket, Key=r.key)
            await untag(clients.s3, r.bucket, r.key)
            await store.set_status(r.id, FileStatus.RECEIVED, detail="released from quarantine")
            body = s3_notification_body(
                r.bucket,
                r.key,
                int(head.get("ContentLength", 0)),
                str(head.get("ETag", "")).strip('"'),
                settings.aws.region,
            )
            await clients.sqs.send_message(QueueUrl=src, MessageBody=body)
            released.append(r.id)
    return released
