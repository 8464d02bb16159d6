"""Settling messages: batched acknowledgements and the outcome -> SQS calls.

:class:`AckBatcher` queues DeleteMessageBatch and ChangeMessageVisibilityBatch
requests and sends them in batches of up to 10 (unique entry ids) as soon as a
batch is full or ``window_s`` has passed. Every entry of every response is
checked: a ``Failed`` entry is logged, counted and reported back to the caller
as ``False``. Visibility changes go out in the order they were asked for (one
batch at a time), so a heartbeat's extension can never overtake the release
(visibility 0) that followed it.

:class:`Settler` applies an :data:`~s3flow.worker.outcomes.Outcome`: ack,
retry (visibility = backoff), dead-letter (SendMessage to the DLQ with the
reason as message attributes, then delete), release, or split (each failed
record re-sent or dead-lettered alone, then the original deleted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any

from s3flow.closing import cancel_and_wait
from s3flow.errors import S3flowError, translate_aws_error
from s3flow.metrics import PipelineMetrics
from s3flow.settings import PipelineSettings
from s3flow.state.base import StateStore
from s3flow.state.records import FileStatus
from s3flow.worker.outcomes import (
    Ack,
    DeadLetter,
    Outcome,
    RecordPart,
    Release,
    Retry,
    Split,
    backoff_s,
    visibility_left_s,
)
from s3flow.worker.policy import FAILURES_ATTR, RENEWALS_ATTR, prior_failures
from s3flow.worker.source import ReceivedMessage

log = logging.getLogger("s3flow.acks")
MAX_BATCH = 10
MAX_DELAY_S = 900  # SendMessage DelaySeconds limit


@dataclass
class _Entry:
    handle: str
    timeout_s: int | None  # None = delete
    future: asyncio.Future[bool] = field(repr=False)


class AckBatcher:
    """Owns the batched delete/visibility calls of one queue. Use ``async with``."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        *,
        window_s: float = 0.05,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self._sqs = sqs
        self._url = queue_url
        self._window = window_s
        self._metrics = metrics or PipelineMetrics()
        self._deletes: list[_Entry] = []
        self._changes: list[_Entry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._change_order = asyncio.Lock()  # visibility batches go out one at a time
        self._closed = False

    async def __aenter__(self) -> AckBatcher:
        self._task = asyncio.create_task(self._run(), name=f"acks:{self._url}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _enqueue(
        self, bucket: list[_Entry], handle: str, timeout_s: int | None
    ) -> asyncio.Future[bool]:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._closed:
            fut.set_result(False)
            return fut
        bucket.append(_Entry(handle, timeout_s, fut))
        if len(bucket) >= MAX_BATCH or self._window == 0:
            self._flush_full()
        self._wake.set()
        return fut

    async def delete(self, receipt_handle: str) -> bool:
        """Delete one message (batched). True when SQS confirmed it."""
        return await asyncio.shield(self._enqueue(self._deletes, receipt_handle, None))

    async def change_visibility(self, receipt_handle: str, timeout_s: int) -> bool:
        """Set one message's visibility timeout (batched). True when SQS confirmed it."""
        return await asyncio.shield(self._enqueue(self._changes, receipt_handle, int(timeout_s)))

    def _take(self, bucket: list[_Entry], limit: int = MAX_BATCH) -> list[_Entry]:
        # Unique receipt handles per batch; later duplicates wait for the next one.
        batch: list[_Entry] = []
        seen: set[str] = set()
        rest: list[_Entry] = []
        for e in bucket:
            if len(batch) < limit and e.handle not in seen:
                batch.append(e)
                seen.add(e.handle)
            else:
                rest.append(e)
        bucket[:] = rest
        return batch

    def _flush_full(self) -> None:
        while len(self._deletes) >= MAX_BATCH:
            self._spawn(self._take(self._deletes), delete=True)
        while len(self._changes) >= MAX_BATCH:
            self._spawn(self._take(self._changes), delete=False)

    def _flush_all(self) -> None:
        deleted: set[str] = set()
        while self._deletes:
            batch = self._take(self._deletes)
            deleted.update(e.handle for e in batch)
            self._spawn(batch, delete=True)
        if deleted:
            self._drop_moot_changes(deleted)
        while self._changes:
            self._spawn(self._take(self._changes), delete=False)

    def _drop_moot_changes(self, deleted: set[str]) -> None:
        """A visibility change (a heartbeat) queued in the window its message is deleted
        in: sent beside the delete it would fail (ReceiptHandleIsInvalid, logged as a lost
        lease) or extend nothing. It is done with, as the delete makes it moot."""
        keep = []
        for e in self._changes:
            if e.handle in deleted and e.timeout_s:
                if not e.future.done():
                    e.future.set_result(True)
            else:
                keep.append(e)
        self._changes[:] = keep

    def _spawn(self, batch: list[_Entry], *, delete: bool) -> None:
        if not batch:
            return
        task = asyncio.create_task(self._send(batch, delete=delete))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._window:
                await asyncio.sleep(self._window)
            self._flush_all()

    async def _send(self, batch: list[_Entry], *, delete: bool) -> None:
        entries: list[dict[str, Any]] = []
        for i, e in enumerate(batch):
            entry: dict[str, Any] = {"Id": f"m{i}", "ReceiptHandle": e.handle}
            if not delete:
                entry["VisibilityTimeout"] = e.timeout_s
            entries.append(entry)
        op = "DeleteMessageBatch" if delete else "ChangeMessageVisibilityBatch"
        try:
            if delete:
                resp = await self._sqs.delete_message_batch(QueueUrl=self._url, Entries=entries)
            else:
                async with self._change_order:
                    resp = await self._sqs.change_message_visibility_batch(
                        QueueUrl=self._url, Entries=entries
                    )
        except Exception as exc:
            err = translate_aws_error(exc, op)
            log.warning("%s of %d entries failed: %s", op, len(batch), err)
            self._metrics.ack_failures += len(batch) if delete else 0
            for e in batch:
                if not e.future.done():
                    e.future.set_result(False)
            return
        failed = {f.get("Id"): f for f in resp.get("Failed") or []}
        for i, e in enumerate(batch):
            f = failed.get(f"m{i}")
            if f is not None:
                if delete:
                    self._metrics.ack_failures += 1
                log.warning(
                    "%s entry failed: %s %s (sender fault: %s)",
                    op,
                    f.get("Code"),
                    f.get("Message"),
                    f.get("SenderFault"),
                )
            if not e.future.done():
                e.future.set_result(f is None)

    async def flush(self) -> None:
        """Send everything queued now and wait for the answers."""
        self._flush_all()
        if self._sends:
            await asyncio.gather(*list(self._sends), return_exceptions=True)

    async def close(self) -> None:
        """Flush pending requests and stop the background task."""
        await self.flush()
        self._closed = True
        await cancel_and_wait(self._task)
        self._task = None


_ATTR_MAX = 1024
#: The message attribute naming the message a dead-lettered one was received as.
SOURCE_MESSAGE_ID_ATTR = "s3flow.source-message-id"
#: Waits before trying again to end a dead-lettered upload's claim (a store error).
_END_CLAIM_RETRY_S = (0.2, 1.0, 3.0)
#: The message attribute `s3flow dlq redrive` sets on each copy it sends back (see
#: :func:`s3flow.ops.dlq_send.outgoing_of`). The worker carries it onto every message it
#: derives from one that has it (a record re-sent alone, a dead letter), so the redrive
#: knows a split-off record that comes back to the DLQ as one of its own copies.
REDRIVE_ID_ATTR = "s3flow.redrive-id"


#: Attributes of a message s3flow sends back to the source queue (a record re-sent
#: alone, a renewed message): why. Not ``s3flow.error-class``/``s3flow.error``, which
#: mark a message a worker dead-lettered (one the queue's redrive moves keeps these).
LAST_ERROR_CLASS_ATTR = "s3flow.last-error-class"
LAST_ERROR_ATTR = "s3flow.last-error"


def _attr(value: object) -> dict[str, str]:
    return {"DataType": "String", "StringValue": (str(value) or "-")[:_ATTR_MAX]}


def carried(msg: ReceivedMessage) -> dict[str, object]:
    """The attributes every message derived from ``msg`` carries on: its redrive id."""
    value = (msg.message_attributes.get(REDRIVE_ID_ATTR) or {}).get("StringValue")
    return {REDRIVE_ID_ATTR: value} if value else {}


@dataclass(eq=False)
class Settler:
    """Applies outcomes to the messages of one pipeline's queue."""

    acks: AckBatcher
    sqs: Any
    _: KW_ONLY
    pipeline: PipelineSettings
    queue_url: str
    dlq_url: str
    worker_id: str
    store: StateStore | None = None
    metrics: PipelineMetrics = field(default_factory=PipelineMetrics)
    #: Awaited before a message is released (the worker holds releases back while a
    #: receive is on the wire at a stop).
    before_release: Callable[[], Awaitable[None]] | None = None

    def _fallback(self, msg: ReceivedMessage, outcome: DeadLetter | Split) -> Retry:
        # A DLQ / re-send that failed: the message is retried, never lost.
        delay = backoff_s(msg.receive_count, self.pipeline.retry_base_s, self.pipeline.retry_max_s)
        if isinstance(outcome, DeadLetter):
            return Retry(delay, outcome.error_class, outcome.error)
        return Retry(delay, "SplitFailed", "could not re-send a failed record alone")

    async def settle(self, msg: ReceivedMessage, outcome: Outcome) -> Outcome:
        """Apply ``outcome`` to ``msg``; return what was really done."""
        if isinstance(outcome, DeadLetter):
            sent = await self._dead_letter(msg.body, outcome, msg=msg)
            await self._end_claims(outcome, dead=sent)
            if not sent:
                outcome = self._fallback(msg, outcome)
        elif isinstance(outcome, Split) and not await self._split(msg, outcome):
            outcome = self._fallback(msg, outcome)
        if isinstance(outcome, Ack | DeadLetter | Split):
            if await self.acks.delete(msg.receipt_handle):
                self.metrics.acked += int(isinstance(outcome, Ack | Split))
            else:
                log.warning("delete of message %s failed; it will be redelivered", msg.message_id)
        elif isinstance(outcome, Retry) and outcome.renew:
            if await self._renew(msg, outcome) and await self.acks.delete(msg.receipt_handle):
                self.metrics.retried += 1
            else:  # the copy may be on its way too: done records dedupe
                outcome = replace(outcome, renew=False)
        if isinstance(outcome, Retry) and not outcome.renew:
            self.metrics.retried += 1
            # SQS refuses a visibility ending more than 12 h after the receive (the whole
            # change fails: the retry would come when the last extension ends, early).
            delay = min(outcome.delay_s, visibility_left_s(msg.received_at, time.monotonic()))
            await self.acks.change_visibility(msg.receipt_handle, delay)
        elif isinstance(outcome, Release):
            self.metrics.released += 1
            if self.before_release is not None:
                await self.before_release()
            await self.acks.change_visibility(msg.receipt_handle, 0)
        return outcome

    async def _split(self, msg: ReceivedMessage, split: Split) -> bool:
        ok = True
        for part in split.parts:
            if isinstance(part.outcome, DeadLetter):
                sent = await self._dead_letter(part.body, part.outcome, msg=msg)
                await self._end_claims(part.outcome, dead=sent)
            else:
                sent = await self._resend(msg, part)
            ok = ok and sent
        return ok

    async def _send(
        self, url: str, body: str, attrs: dict[str, object], failed: str, delay_s: int = 0
    ) -> bool:
        """SendMessage with s3flow's attributes; False (and ``failed`` logged) on error."""
        extra = {"DelaySeconds": min(MAX_DELAY_S, delay_s)} if delay_s > 0 else {}
        try:
            await self.sqs.send_message(
                QueueUrl=url,
                MessageBody=body,
                MessageAttributes={k: _attr(v) for k, v in attrs.items()},
                **extra,
            )
        except Exception as exc:
            log.error("%s (%s)", failed, translate_aws_error(exc, "SendMessage"))
            return False
        return True

    async def _resend(self, msg: ReceivedMessage, part: RecordPart) -> bool:
        assert isinstance(part.outcome, Retry)
        sent = await self._send(
            self.queue_url,
            part.body,
            {
                FAILURES_ATTR: part.failures,
                "s3flow.split-from": msg.message_id,
                LAST_ERROR_CLASS_ATTR: part.outcome.error_class,
                LAST_ERROR_ATTR: part.outcome.error,
                **carried(msg),
            },
            f"could not re-send a failed record of message {msg.message_id} alone; "
            "retrying the whole message instead",
            delay_s=part.outcome.delay_s,
        )
        self.metrics.retried += int(sent)
        return sent

    async def _renew(self, msg: ReceivedMessage, retry: Retry) -> bool:
        """Send ``msg`` again as a new message after ``retry.delay_s`` (its receive count
        starts over; it carries its failures and redrive id).

        A capped wait (:class:`Retry`) carries the failures a worker without a state
        store counts (every receive before this one, as for a record re-sent alone) and
        one more capped renewal; another (an output down) carries its failures as they
        were. A worker with a store counts the file's failures in its record.
        """
        waits = msg.receive_count - 1 if retry.capped else 0
        return await self._send(
            self.queue_url,
            msg.body,
            {
                FAILURES_ATTR: prior_failures(msg) + waits,
                RENEWALS_ATTR: msg.whole_number_attribute(RENEWALS_ATTR) + int(retry.capped),
                "s3flow.renewed-from": msg.message_id,
                LAST_ERROR_CLASS_ATTR: retry.error_class,
                LAST_ERROR_ATTR: retry.error,
                **carried(msg),
            },
            f"could not send message {msg.message_id} again as a new one; retrying it as "
            "it is (its receive count goes on)",
            delay_s=retry.delay_s,
        )

    async def _dead_letter(self, body: str, outcome: DeadLetter, *, msg: ReceivedMessage) -> bool:
        sent = await self._send(
            self.dlq_url,
            body or "(empty body)",
            {
                "s3flow.error-class": outcome.error_class,
                "s3flow.error": outcome.error,
                "s3flow.pipeline": self.pipeline.name,
                "s3flow.source-queue": self.queue_url,
                SOURCE_MESSAGE_ID_ATTR: msg.message_id,
                "s3flow.receive-count": msg.receive_count,
                "s3flow.worker-id": self.worker_id,
                **carried(msg),
            },
            f"could not dead-letter message {msg.message_id}; retrying it instead",
        )
        self.metrics.dead_lettered += int(sent)
        return sent

    async def _end_claims(self, outcome: DeadLetter, *, dead: bool) -> None:
        """End the claims the handler kept for ``outcome`` (see
        :class:`~s3flow.worker.outcomes.HeldClaim`): dead once the DLQ has the message,
        else failed (the message is retried). Fenced: a record an operator moved
        meanwhile (a release, a redrive) stays as it is."""
        if self.store is None:
            return
        status = FileStatus.DEAD if dead else FileStatus.FAILED
        for held in outcome.claims:
            oid = held.oid
            for wait_s in (*_END_CLAIM_RETRY_S, None):
                try:
                    ended = await self.store.fail(
                        oid,
                        token=held.token,
                        status=status,
                        error_class=held.error_class,
                        error=held.error,
                    )
                    break
                except S3flowError as exc:
                    if wait_s is not None:  # a store busy or throttled for a moment
                        await asyncio.sleep(wait_s)
                        continue
                    # Dead-lettered, its message gone: nothing brings it back, so the
                    # record stays processing once its claim expires; an operator's
                    # release (which takes an expired claim) runs it again.
                    log.error(
                        "could not mark s3://%s/%s %s: %s; %s",
                        oid.bucket,
                        oid.key,
                        status.value,
                        exc,
                        f"once its claim expired, `s3flow files release {oid.key}` runs it again"
                        if dead
                        else "its message comes back and runs it again once its claim expired",
                    )
                    ended = None
            if ended is None:
                continue
            if not ended:
                log.info(
                    "s3://%s/%s (upload %s) not marked %s: it was moved on meanwhile",
                    oid.bucket,
                    oid.key,
                    oid.version,
                    status.value,
                )
