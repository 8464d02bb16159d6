"""The dead-letter queue: inspect it, redrive it (restartable)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from s3flow.app import dlq_url, queue_url
from s3flow.aws import AwsClients, open_clients, queue_depths
from s3flow.closing import finish_despite_cancel
from s3flow.errors import (
    EnvelopeError,
    ObjectMissingError,
    S3flowError,
    aws_errors,
    translate_aws_error,
)
from s3flow.events import ObjectEvent, parse_body
from s3flow.ops.dlq_send import (
    MAX_BATCH_ENTRIES,
    Outgoing,
    Reset,
    Sent,
    outgoing_of,
    send_all,
    short_reason,
)
from s3flow.routing import Route
from s3flow.settings import PipelineSettings, Settings
from s3flow.state.base import StateStore
from s3flow.state.records import FileRecord, FileStatus, ObjectId, TransitionError
from s3flow.worker.acks import LAST_ERROR_ATTR, REDRIVE_ID_ATTR, SOURCE_MESSAGE_ID_ATTR
from s3flow.worker.identity import event_second, identify, upload_second

log = logging.getLogger("s3flow.ops")

#: The system attributes a redrive reads: FIFO messages keep their group and dedup id.
_SYSTEM_ATTRIBUTES = ["SentTimestamp", "MessageGroupId", "MessageDeduplicationId"]


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
    #: A FIFO queue's message group (None on a standard queue).
    group_id: str | None = None
    #: The last error a worker saw before it sent the message back to its queue (a
    #: renewed message, a record re-sent alone), when the queue's redrive moved it.
    last_error: str | None = None


def _attr(msg: dict[str, Any], name: str) -> str | None:
    v = (msg.get("MessageAttributes") or {}).get(name)
    return str(v["StringValue"]) if v and "StringValue" in v else None


def _keys(body: str) -> list[str]:
    try:
        return [e.uri() for e in parse_body(body).events]
    except EnvelopeError:
        return []


def _at_least_one(max_n: int | None) -> None:
    if max_n is not None and max_n < 1:
        raise ValueError(f"max_n must be at least 1 (got {max_n}); None means no limit")


async def _urls(clients: AwsClients, p: PipelineSettings) -> tuple[str, str]:
    src = await queue_url(clients.sqs, p.queue, what=f"pipeline {p.name!r}")
    return src, await dlq_url(clients.sqs, p, src)


async def _upload_of(s3: Any, event: ObjectEvent) -> ObjectId | None:
    """The upload the worker will take ``event`` for (its identity, as the worker reads
    it: :func:`~s3flow.worker.identity.identify`), or None when the object is gone.

    Raises the translated S3flowError when the HEAD it may need fails otherwise.
    """
    try:
        oid, _ = await identify(s3, event)
    except ObjectMissingError:
        return None
    return oid


def _describe(r: FileRecord) -> str:
    err = f"; last error {r.last_error_class}: {r.last_error}" if r.last_error else ""
    return f"upload {r.version} {r.status.value} after {r.attempts} attempt(s){err}"


async def _state_note(s3: Any, store: StateStore | None, body: str) -> str | None:
    """What the state store last recorded for the uploads a DLQ message body names.

    The record of the very upload each event names (its identity, as the worker
    reads it); when that cannot be told (the object is gone, its HEAD failed) the
    most recently updated record of the key, saying so.
    """
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
        try:
            oid = await _upload_of(s3, e)
        except S3flowError as exc:
            notes.append(
                f"{e.uri()}: which upload the message names is unknown ({short_reason(exc)}); "
                f"latest record: {_describe(recs[0])}"
            )
            continue
        if oid is None:
            notes.append(
                f"{e.uri()}: the object no longer exists; latest record: {_describe(recs[0])}"
            )
            continue
        rec = next((r for r in recs if r.version == oid.version), None)
        if rec is None:
            notes.append(
                f"{e.uri()}: no record of upload {oid.version} (never started); "
                f"{len(recs)} record(s) of other uploads"
            )
        else:
            notes.append(f"{e.uri()}: {_describe(rec)}")
    return "; ".join(notes) or None


async def list_dlq(
    settings: Settings,
    p: PipelineSettings,
    *,
    max_n: int = 100,
    store: StateStore | None = None,
) -> list[DlqMessage]:
    """Peek at up to ``max_n`` (at least 1) DLQ messages (visible again right after).

    A message without s3flow's attributes was moved by the queue's redrive
    policy, not by a worker: its ``state_note`` says what the state store last
    recorded for the uploads it names.
    """
    _at_least_one(max_n)
    out: list[DlqMessage] = []  # distinct: a peek gives each message once
    async with open_clients(settings.aws) as clients:
        _, dlq = await _urls(clients, p)
        async with _peeking(clients, dlq) as peek:
            async for msg in peek.messages(max_n):
                await _note_state(clients, store, msg)
                out.append(msg)
    return out


#: Most DLQ messages :func:`find_dlq_message` looks at by default.
FIND_MAX_SCAN = 10_000


@dataclass
class DlqSearch:
    """What :func:`find_dlq_message` found, and how far it looked."""

    found: DlqMessage | None
    looked_at: int
    #: Not every message was looked at: ``max_scan`` was reached, or the scan outlasted
    #: the peek's hold and the DLQ gave back messages already seen.
    incomplete: bool


async def find_dlq_message(
    settings: Settings,
    p: PipelineSettings,
    message_id: str,
    *,
    max_scan: int = FIND_MAX_SCAN,
    store: StateStore | None = None,
) -> DlqSearch:
    """Look for the DLQ message ``message_id`` among at most ``max_scan`` messages.

    Peeks until it comes up or the DLQ has nothing more to give; every message peeked
    is visible again right after. Only the message found gets a state note (see
    :func:`list_dlq`).
    """
    _at_least_one(max_scan)
    seen = 0
    async with open_clients(settings.aws) as clients:
        _, dlq = await _urls(clients, p)
        async with _peeking(clients, dlq) as peek:
            async for msg in peek.messages(max_scan):
                seen += 1
                if msg.message_id == message_id:
                    await _note_state(clients, store, msg)
                    return DlqSearch(msg, seen, incomplete=False)
            return DlqSearch(None, seen, incomplete=peek.came_round or seen >= max_scan)


@dataclass
class RedriveReport:
    """What a redrive did."""

    method: str  # "message-move-task" | "receive-send-delete"
    moved: int = 0
    failed: int = 0  # messages that could not be moved (still on the DLQ): len(unsent)
    waited_for: int = 0  # DLQ messages leased by an interrupted run that were waited for
    note: str = ""  # why the fallback was used
    #: DLQ message id -> why it could not be moved (it is still on the DLQ).
    unsent: dict[str, str] = field(default_factory=dict)
    #: Why the run stopped before the DLQ was empty ("" when it did not).
    stopped: str = ""
    #: Copies this run moved that came back to the DLQ while it went on (a worker failed
    #: them again): left there, never moved twice by one run.
    arrived: int = 0


class RedriveError(S3flowError):
    """Some DLQ messages could not be moved and are still on the DLQ.

    ``report`` says what was moved and why each of the others was not.
    """

    def __init__(self, message: str, report: RedriveReport) -> None:
        super().__init__(message)
        self.report = report


#: How long a peek holds each message it received (it is made visible again as soon as
#: the peek ends). A redrive waits this long, and a bit, for messages a peek holds.
_PEEK_HOLD_S = 30


class _Peek:
    """Peeks at a DLQ: :meth:`messages` gives each message once; every message it
    received is held (hidden from other readers) until :func:`_peeking` ends."""

    def __init__(self, clients: Any, dlq: str) -> None:
        self._clients = clients
        self._dlq = dlq
        self.handles: list[str] = []
        #: The DLQ gave back only messages already seen: the scan outlasted the hold
        #: (:data:`_PEEK_HOLD_S`), and messages not seen yet may still be there.
        self.came_round = False

    async def messages(self, n: int) -> AsyncIterator[DlqMessage]:
        """Up to ``n`` distinct DLQ messages; ends early when the DLQ is empty or gives
        only messages already seen (then :attr:`came_round` is set)."""
        seen: set[str] = set()
        while len(seen) < n:
            with aws_errors(f"reading the DLQ {self._dlq}"):
                resp = await self._clients.sqs.receive_message(
                    QueueUrl=self._dlq,
                    MaxNumberOfMessages=min(MAX_BATCH_ENTRIES, n - len(seen)),
                    WaitTimeSeconds=1,
                    VisibilityTimeout=_PEEK_HOLD_S,
                    MessageAttributeNames=["All"],
                    MessageSystemAttributeNames=_SYSTEM_ATTRIBUTES,
                )
            msgs = resp.get("Messages") or []
            self.handles.extend(m["ReceiptHandle"] for m in msgs)
            if not msgs:
                return
            new = [m for m in msgs if m["MessageId"] not in seen]
            if not new:
                self.came_round = True
                return
            for m in new:
                seen.add(m["MessageId"])
                yield _message_of(m)


@contextlib.asynccontextmanager
async def _peeking(clients: Any, dlq: str) -> AsyncIterator[_Peek]:
    """A :class:`_Peek` of ``dlq``; when the block ends every message it received is
    made visible again."""
    peek = _Peek(clients, dlq)
    try:
        yield peek
    finally:
        handles = peek.handles
        for i in range(0, len(handles), MAX_BATCH_ENTRIES):
            entries = [
                {"Id": str(j), "ReceiptHandle": h, "VisibilityTimeout": 0}
                for j, h in enumerate(handles[i : i + MAX_BATCH_ENTRIES])
            ]
            with contextlib.suppress(Exception):
                await clients.sqs.change_message_visibility_batch(QueueUrl=dlq, Entries=entries)


def _message_of(m: dict[str, Any]) -> DlqMessage:
    """A received DLQ message as s3flow shows it (no state note yet)."""
    system = m.get("Attributes") or {}
    sent = system.get("SentTimestamp")
    return DlqMessage(
        message_id=m["MessageId"],
        body=m.get("Body", ""),
        error_class=_attr(m, "s3flow.error-class"),
        error=_attr(m, "s3flow.error"),
        pipeline=_attr(m, "s3flow.pipeline"),
        receive_count=_attr(m, "s3flow.receive-count"),
        sent_at=datetime.fromtimestamp(int(sent) / 1000, UTC).isoformat() if sent else None,
        keys=_keys(m.get("Body", "")),
        group_id=system.get("MessageGroupId"),
        last_error=_attr(m, LAST_ERROR_ATTR),
    )


async def _note_state(clients: Any, store: StateStore | None, msg: DlqMessage) -> None:
    """A message s3flow did not dead-letter gets what the state store knows of it."""
    if msg.error_class is None:
        note = await _state_note(clients.s3, store, msg.body)
        last = f"; its last error: {msg.last_error}" if msg.last_error else ""
        msg.state_note = (
            "moved by the queue's redrive policy (maxReceiveCount), not by a "
            "worker" + last + (f"; state store: {note}" if note else "")
        )


async def _reset_state(
    s3: Any, store: StateStore | None, route: Route, body: str, resets: list[Reset]
) -> None:
    """Give the uploads a redriven body names a fresh start (dead/failed -> received).

    Only the record of the upload each event names, found as the worker will find it
    (:func:`~s3flow.worker.identity.identify`): a record of another upload of the key
    set to received would have no message behind it and stay received for ever. An
    object that is gone has nothing to reset (the worker acknowledges its message as
    vanished). Each record reset is appended to ``resets``; raises S3flowError when
    the upload cannot be told (a HEAD refused) or the store fails.
    """
    if store is None:
        return
    try:
        events = parse_body(body).events
    except EnvelopeError:
        return  # a poison body: the worker dead-letters it again, touching no record
    for e in events:
        if not e.is_created or route.rejects(e) is not None:
            continue  # the worker claims no record for it
        recs = await store.versions(e.bucket, e.key)
        if not any(r.status in (FileStatus.DEAD, FileStatus.FAILED) for r in recs):
            continue  # nothing to reset (and no HEAD needed)
        oid = await _upload_of(s3, e)
        rec = next((r for r in recs if oid is not None and r.version == oid.version), None)
        if rec is None:
            rec = _overwritten_upload(e, recs, oid)
        if rec is None or rec.status not in (FileStatus.DEAD, FileStatus.FAILED):
            continue
        try:
            await store.set_status(
                rec.id, FileStatus.RECEIVED, detail="redriven", only_from=(rec.status,)
            )
        except TransitionError:
            continue  # it moved on meanwhile (claimed, completed): the worker decides
        resets.append(Reset(rec.id, rec.status, rec.last_error))


def _overwritten_upload(
    event: ObjectEvent, recs: list[FileRecord], current: ObjectId | None
) -> FileRecord | None:
    """The dead or failed record of the upload an event without versionId or sequencer
    names, when the key holds an upload of other bytes now (``current``), or none: of
    its eTag, the one uploaded nearest the event's time (else the newest).

    Such an upload is ``<eTag>@t<second>`` and is never processed again; reset, the
    worker settles it as superseded (or gone). Left dead, it stayed dead for good with
    its message consumed. With the same bytes there now, which upload the message
    names cannot be told: none is reset."""
    if event.event_version is not None or not event.etag:
        return None
    prefix = f"{event.etag.strip(chr(34))}@t"
    if current is not None and current.version.startswith(prefix):
        return None
    dead = [
        r
        for r in recs
        if r.version.startswith(prefix) and r.status in (FileStatus.DEAD, FileStatus.FAILED)
    ]
    when = event_second(event.event_time)

    def nearest(r: FileRecord) -> tuple[float, float]:
        second = upload_second(r.version)
        off = abs(second - when) if second is not None and when is not None else 0
        return (off, -r.updated_at)

    return min(dead, key=nearest, default=None)


async def _restore(store: StateStore | None, resets: list[Reset]) -> None:
    """Put back the records of a message that surely was not sent.

    A record that was dead goes back to dead. One that was failed goes to dead too:
    the store allows no received -> failed transition, and dead ("its message is on
    the DLQ") is where it now is; `dlq redrive` and `backfill` both take it again.
    Its last error is kept.
    """
    if store is None:
        return
    for r in resets:
        try:
            await store.set_status(
                r.oid,
                FileStatus.DEAD,
                detail=r.error or "its DLQ message could not be redriven",
                only_from=(FileStatus.RECEIVED,),
            )
        except TransitionError:
            continue  # moved on meanwhile (a new notification was claimed): leave it
        except Exception as exc:
            log.warning(
                "s3://%s/%s (upload %s) says received although its message stayed on the DLQ "
                "(it could not be set back to %s: %s); `s3flow dlq redrive` moves it again",
                r.oid.bucket,
                r.oid.key,
                r.oid.version,
                r.was.value,
                exc,
            )


async def _leased(sqs: Any, url: str) -> int:
    return (await queue_depths(sqs, url)).in_flight


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
    """Move DLQ messages (at most ``max_n``, at least 1) back to the source queue;
    restartable.

    Uses SQS StartMessageMoveTask where the endpoint supports it (no ``max_n``
    given and no state ``store``: a move made by SQS cannot set each message's
    records back from ``dead`` to ``received``, and the worker would acknowledge
    a redriven message of a dead object without processing it); otherwise
    receive -> send -> delete, deleting a DLQ message only after its copy is on
    the source queue. Sends are packed by size (SQS takes at most 1 MiB per
    batch); a batch SQS refuses is sent one message at a time. A FIFO queue's
    messages keep their message group (and get a deduplication id the source
    queue does not remember). Interrupted (SIGINT, an error), the batch in hand
    is settled first: sent copies are deleted from the DLQ, unsent ones made
    visible again. Killed outright, the DLQ messages it held come back after
    ``lease_s``: the next run waits for them (calling ``on_wait(count,
    seconds)``) and moves them too, so no stale copy with an old reason is left
    behind; a message moved twice is processed once (the second copy is a
    duplicate for the state store).

    Raises :class:`RedriveError` (its ``report`` says what was moved) when some
    messages could not be moved: they stay on the DLQ, and the records set to
    received for them are put back to dead, unless the send may have arrived
    (see :func:`_settle_batch`).
    """
    _at_least_one(max_n)
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
                "StartMessageMoveTask cannot do that, so it is not used"
            )
        elif max_n is not None:
            note = "a limited redrive (--max) moves messages itself"
        else:
            note = ""  # the caller asked for receive + send + delete
        report = RedriveReport("receive-send-delete", note=note)
        route = Route.from_settings(p)
        with aws_errors(f"moving messages from {dlq} to {src}"):
            await _move_all(
                clients, route, src, dlq, max_n, store, lease_s, report, on_moved, on_wait
            )
        if report.unsent:
            raise RedriveError(_unsent_text(p, src, dlq, report), report)
        return report


def _unsent_text(p: PipelineSettings, src: str, dlq: str, report: RedriveReport) -> str:
    """What could not be moved, why, and what to do."""
    shown = [f"{mid}: {why}" for mid, why in list(report.unsent.items())[:5]]
    more = len(report.unsent) - len(shown)
    stopped = f"; stopped early: {report.stopped}" if report.stopped else ""
    return (
        f"dlq redrive of pipeline {p.name!r}: {len(report.unsent)} message(s) could not be "
        f"moved to {src} and are still on the DLQ {dlq} ({report.moved} moved{stopped}). "
        + ("; ".join(shown) + (f"; and {more} more" if more else "")).rstrip(".")
        + ". Their objects' records are as before the redrive (one that was failed now "
        "says dead; a message whose send may have arrived left its records received). "
        "Fix the cause (`s3flow provision` creates a missing queue; a message larger than "
        "the source queue's MaximumMessageSize needs a larger limit) and run "
        f"`s3flow dlq redrive -p {p.name}` again"
    )


async def _move_all(
    clients: Any,
    route: Route,
    src: str,
    dlq: str,
    max_n: int | None,
    store: StateStore | None,
    lease_s: int,
    report: RedriveReport,
    on_moved: Callable[[int], None],
    on_wait: Callable[[int, float], None],
) -> None:
    """Receive -> send -> delete until the DLQ is empty or ``max_n`` are moved.

    A copy this run sent that comes back to the DLQ (a worker beside it failed it
    again, or a record of it re-sent alone; or the queue's redrive policy moved it
    itself: see :class:`_SentCopies`) is not moved again: that would chase the worker
    for ever. It is held until the run ends, then made visible, and counted in
    ``report.arrived``.
    """
    # Messages that could not be moved stay leased until the run ends (so they are not
    # tried again and again), then are made visible.
    held: dict[str, dict[str, Any]] = {}
    copies = _SentCopies()
    arrived: set[str] = set()
    try:
        await _wait_for_leased(clients.sqs, dlq, lease_s, report, on_wait)
        while max_n is None or report.moved < max_n:
            want = (
                MAX_BATCH_ENTRIES if max_n is None else min(MAX_BATCH_ENTRIES, max_n - report.moved)
            )
            msgs = await _receive(clients.sqs, dlq, want, lease_s)
            if not msgs:
                if await _leased(clients.sqs, dlq) <= len(held):
                    break
                await _wait_for_leased(clients.sqs, dlq, lease_s, report, on_wait, own=len(held))
                continue
            late = [m for m in msgs if copies.came_back(m)]
            if late:
                arrived.update(m["MessageId"] for m in late)
                report.arrived = len(arrived)
            # A held message whose lease ran out (a run longer than ``lease_s``) comes
            # back too: it is not tried again in this run (one whose send may have
            # arrived would be moved twice), only held under its new receipt handle.
            again = [m for m in msgs if m["MessageId"] in held or copies.came_back(m)]
            if again:
                held.update((m["MessageId"], m) for m in again)  # the newest receipt handle
                taken = {m["MessageId"] for m in again}
                msgs = [m for m in msgs if m["MessageId"] not in taken]
                if not msgs:
                    continue
            kept = await _move_batch(clients, route, src, dlq, msgs, store, report, copies)
            fresh = [m for m in kept if m["MessageId"] not in held]
            for m in msgs:
                held.pop(m["MessageId"], None)
            held.update((m["MessageId"], m) for m in kept)
            on_moved(len(msgs) - len(kept))
            if fresh and len(kept) == len(msgs):
                # Nothing of a batch could be sent (a missing queue, no permission...):
                # the rest would fail alike.
                left = (await queue_depths(clients.sqs, dlq)).total - len(held)
                if left > 0:
                    report.stopped = (
                        f"no message of a batch could be sent, so {left} more were not tried"
                    )
                break
    finally:
        await finish_despite_cancel(_release(clients.sqs, dlq, list(held.values())))
        report.failed = len(report.unsent)


class _SentCopies:
    """The copies one redrive run put on the source queue, to know them when they come
    back to the DLQ.

    Each copy carries a redrive id, ``<run>/<DLQ message id>`` (``run``: random, one per
    run), in its ``s3flow.redrive-id`` attribute, which the worker carries onto every
    message it derives from it: the dead letter of the copy, and a record split off
    and re-sent alone, then dead-lettered itself (whose ``s3flow.source-message-id``
    names the re-sent message, not the copy). A DLQ message is one of this run's
    copies come back when its MessageId is a copy's (the queue's redrive policy moved
    the copy itself), its ``s3flow.source-message-id`` names a copy (a dead letter of
    it; also for a copy without a redrive id: see
    :func:`~s3flow.ops.dlq_send.outgoing_of`), or its ``s3flow.redrive-id`` is one
    this run gave.
    """

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex[:12]
        self._ids: set[str] = set()  # the ids SQS gave the copies
        self._redrive_ids: set[str] = set()

    def redrive_id(self, msg: dict[str, Any]) -> str:
        """The redrive id of the copy of DLQ message ``msg``."""
        return f"{self.run}/{msg['MessageId']}"

    def add(self, o: Outgoing) -> None:
        """Remember ``o``'s copy: sent, or maybe sent (a timeout; if it arrived and comes
        back it is not moved again either, its DLQ message is still held)."""
        if o.sent is Sent.NO:
            return
        if o.copy_id:
            self._ids.add(o.copy_id)
        if o.redrive_id:
            self._redrive_ids.add(o.redrive_id)

    def came_back(self, msg: dict[str, Any]) -> bool:
        """Whether DLQ message ``msg`` is one of these copies come back."""
        return (
            msg["MessageId"] in self._ids
            or _attr(msg, SOURCE_MESSAGE_ID_ATTR) in self._ids
            or _attr(msg, REDRIVE_ID_ATTR) in self._redrive_ids
        )


async def _receive(sqs: Any, dlq: str, want: int, lease_s: int) -> list[dict[str, Any]]:
    """Receive up to ``want`` DLQ messages, leased for ``lease_s``.

    Interrupted while the call is on the wire, it lets the answer come (at most the
    1 s wait) and makes what it brings visible again before the cancellation goes
    on: cut short, those messages would stay hidden for the whole lease.
    """
    call = asyncio.ensure_future(
        sqs.receive_message(
            QueueUrl=dlq,
            MaxNumberOfMessages=want,
            WaitTimeSeconds=1,
            VisibilityTimeout=lease_s,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=_SYSTEM_ATTRIBUTES,
        )
    )
    try:
        resp = await asyncio.shield(call)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await finish_despite_cancel(_release(sqs, dlq, (await call).get("Messages") or []))
        raise
    return list(resp.get("Messages") or [])


async def _wait_for_leased(
    sqs: Any,
    dlq: str,
    lease_s: int,
    report: RedriveReport,
    on_wait: Callable[[int, float], None],
    own: int = 0,
) -> None:
    """Wait (at most a lease and a bit) for DLQ messages someone else holds (``own``:
    how many this run holds itself)."""
    held = await _leased(sqs, dlq) - own
    if held <= 0:
        return
    # Held by an interrupted redrive or a `dlq list` peek: they come back soon.
    limit = max(lease_s, 30) + 5
    on_wait(held, limit)
    report.waited_for = max(report.waited_for, held)
    deadline = time.monotonic() + limit
    while held > 0 and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        held = await _leased(sqs, dlq) - own
    if held > 0:
        log.warning("%d DLQ messages are still leased by someone else; not waiting longer", held)


async def _move_batch(
    clients: Any,
    route: Route,
    src: str,
    dlq: str,
    msgs: list[dict[str, Any]],
    store: StateStore | None,
    report: RedriveReport,
    copies: _SentCopies,
) -> list[dict[str, Any]]:
    """Send one received batch to the source queue, then delete what was sent from the
    DLQ (the copies go to ``copies``). Returns the messages not moved (still leased; the
    caller releases them)."""
    fifo = src.endswith(".fifo")
    outgoing = [outgoing_of(m, fifo, copies.redrive_id(m)) for m in msgs]
    finished = False
    try:
        ready: list[Outgoing] = []
        for o in outgoing:  # state first: a redriven object must not be parked as dead
            try:
                await _reset_state(clients.s3, store, route, o.msg["Body"], o.resets)
            except S3flowError as exc:
                o.reason = f"its objects' records could not be set to received: {exc}"
                continue
            ready.append(o)
        await send_all(clients.sqs, src, ready)
        finished = True
    finally:
        # Also on SIGINT / cancellation: what was sent is deleted, the rest released.
        try:
            await finish_despite_cancel(_settle_batch(clients.sqs, store, dlq, outgoing, finished))
        except asyncio.CancelledError:
            if finished:  # the unsent were left leased for the caller, who never gets them
                unsent = [o.msg for o in outgoing if o.sent is not Sent.YES]
                await finish_despite_cancel(_release(clients.sqs, dlq, unsent))
            raise
    report.moved += sum(o.sent is Sent.YES for o in outgoing)
    for o in outgoing:
        copies.add(o)
    for o in outgoing:
        if o.sent is Sent.YES:
            report.unsent.pop(o.msg["MessageId"], None)  # came back and moved this time
        else:
            report.unsent[o.msg["MessageId"]] = o.reason or "not sent"
    return [o.msg for o in outgoing if o.sent is not Sent.YES]


async def _settle_batch(
    sqs: Any, store: StateStore | None, dlq: str, outgoing: list[Outgoing], finished: bool
) -> None:
    """Delete the sent messages from the DLQ, put back the records of those surely not
    sent, and (when interrupted: ``finished`` False) release the unsent ones."""
    delete = [o.msg for o in outgoing if o.sent is Sent.YES]
    if delete:
        dele = await sqs.delete_message_batch(
            QueueUrl=dlq,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(delete)
            ],
        )
        for f in dele.get("Failed") or []:
            log.warning("DLQ delete failed (the message may be redriven twice): %s", f)
    # A message whose send may have arrived (a timeout, a 5xx, an interruption during the
    # call) leaves its records received: put back to dead, its copy, if it arrived, would
    # be acknowledged by the worker without work (dead is parked). Received, it is
    # processed if it arrived; if not, its DLQ copy, which stays, is moved by the next
    # redrive (a duplicate is processed once).
    for o in outgoing:
        if o.sent is Sent.NO:
            await _restore(store, o.resets)
    if not finished:
        await _release(sqs, dlq, [o.msg for o in outgoing if o.sent is not Sent.YES])


async def _release(sqs: Any, dlq: str, msgs: list[dict[str, Any]]) -> None:
    """Make ``msgs`` visible on the DLQ again (best effort: their lease ends anyway)."""
    for i in range(0, len(msgs), MAX_BATCH_ENTRIES):
        with contextlib.suppress(Exception):
            await sqs.change_message_visibility_batch(
                QueueUrl=dlq,
                Entries=[
                    {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for j, m in enumerate(msgs[i : i + MAX_BATCH_ENTRIES])
                ],
            )


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
            reason = short_reason(translate_aws_error(exc, "StartMessageMoveTask"))
            note = (
                "this endpoint does not support StartMessageMoveTask "
                f"({reason}); moving messages with receive + send + delete instead"
            )
            log.debug("%s", note)  # the caller shows it (the CLI prints report.note)
            return None, note
    return RedriveReport("message-move-task"), ""
