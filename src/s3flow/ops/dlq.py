"""The dead-letter queue: inspect it, redrive it (restartable)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from s3flow.app import dlq_url, queue_url
from s3flow.aws import AwsClients, open_clients
from s3flow.errors import EnvelopeError, S3flowError, aws_errors, translate_aws_error
from s3flow.events import parse_body
from s3flow.settings import PipelineSettings, Settings
from s3flow.state.base import StateStore
from s3flow.state.records import FileStatus, TransitionError

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
            with aws_errors(f"reading the DLQ {dlq}"):
                await _peek(clients, dlq, max_n, store, out, handles)
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


async def _peek(
    clients: Any,
    dlq: str,
    max_n: int,
    store: StateStore | None,
    out: dict[str, DlqMessage],
    handles: list[str],
) -> None:
    """Receive up to ``max_n`` DLQ messages into ``out`` (their handles into ``handles``)."""
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
                sent_at=datetime.fromtimestamp(int(sent) / 1000, UTC).isoformat() if sent else None,
                keys=_keys(m.get("Body", "")),
            )
            if out[m["MessageId"]].error_class is None:
                note = await _state_note(store, m.get("Body", ""))
                out[m["MessageId"]].state_note = (
                    "moved by the queue's redrive policy (maxReceiveCount), not by a "
                    "worker" + (f"; state store: {note}" if note else "")
                )


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

    Uses SQS StartMessageMoveTask where the endpoint supports it (no ``max_n``
    given and no state ``store``: a move made by SQS cannot set each message's
    records back from ``dead`` to ``received``, and the worker would acknowledge
    a redriven message of a dead object without processing it); otherwise
    receive -> send -> delete, deleting a DLQ
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
        if use_move_task and max_n is None and store is None:
            report, note = await _try_move_task(settings, src, dlq)
            if report is not None:
                return report
        elif store is not None:
            note = (
                "with a state store each message is moved by s3flow (receive + send + "
                "delete), which sets its objects back to received; SQS's "
                "StartMessageMoveTask cannot"
            )
        else:
            note = "a limited redrive (--max) moves messages itself"
        report = RedriveReport("receive-send-delete", note=note)
        with aws_errors(f"moving messages from {dlq} to {src}"):
            await _move_all(clients, src, dlq, max_n, store, lease_s, report, on_moved, on_wait)
        return report


async def _move_all(
    clients: Any,
    src: str,
    dlq: str,
    max_n: int | None,
    store: StateStore | None,
    lease_s: int,
    report: RedriveReport,
    on_moved: Callable[[int], None],
    on_wait: Callable[[int, float], None],
) -> None:
    """Receive -> send -> delete until the DLQ is empty or ``max_n`` are moved."""
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
