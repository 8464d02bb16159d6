"""Progress events: the job worker publishes them, the web's consumer stores and fans them out.

The job worker sends each event as one message on the progress FIFO queue
(``MessageGroupId`` = job id, so one job's events stay in order;
``MessageDeduplicationId`` from the event id). :class:`ProgressConsumer`
reads that queue in order, appends each event to the job's log in the state
store (idempotent by event id, which also assigns the SSE sequence number),
calls ``on_event`` for live fan-out, and only then deletes the messages.

Bridge and web write their events (``job.created``, ``file.received``,
``job.queued``, ``job.expired``) straight to the store: they already hold it,
and the bridge must know the job's state before it queues it.

An event the store cannot take right now (:class:`~s3flow.errors.S3flowError`:
the store is busy or away) holds back only its own job: the rest of that job's
messages in the batch are left too (their order must hold) and made visible
again after a short, growing delay (ChangeMessageVisibilityBatch), while the
other jobs' messages of the batch are stored and deleted as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from s3flow.closing import cancel_and_wait
from s3flow.errors import EnvelopeError, S3flowError, aws_errors
from s3flow.state.jobs import EventType, JobEvent, JobStore

__all__ = [
    "BadProgressMessageError",
    "ProgressConsumer",
    "ProgressMessage",
    "ProgressPublisher",
    "StepProgress",
]

log = logging.getLogger("s3flow.jobs.progress")

#: Long-poll wait of the consumer; short, so a stopping web process lets an
#: on-wire receive finish instead of leaving a job's messages (and, in a FIFO
#: queue, the rest of that job's events) invisible.
_WAIT_S = 2
#: What a malformed message raises while it is parsed or folded into its job (a nesting
#: too deep for the JSON parser is a RecursionError).
_MALFORMED = (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError)
#: A message whose event could not be stored (and the rest of its job's messages of the
#: batch) is visible again after this many seconds times 2 ** (its receives - 1), at most
#: _HOLD_MAX_S: soon, not after the queue's visibility timeout (30 s).
_HOLD_BASE_S = 1
_HOLD_MAX_S = 30


class BadProgressMessageError(EnvelopeError):
    """A progress-queue message that is not a progress event s3flow can store (poison).

    The consumer logs it and deletes it: retrying cannot fix it, and in a FIFO
    queue it would hold back the events of its job that follow it.
    """


@dataclass(frozen=True)
class ProgressMessage:
    """One event on the progress queue."""

    job_id: str
    event_id: str
    type: EventType
    data: dict[str, Any]

    def to_body(self) -> str:
        """The message body (JSON)."""
        return json.dumps(
            {
                "job_id": self.job_id,
                "event_id": self.event_id,
                "type": str(self.type),
                "data": self.data,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_body(cls, body: str) -> ProgressMessage:
        """Parse a body; :class:`S3flowError` saying what is wrong for anything else."""
        try:
            doc = json.loads(body)
            return cls(
                job_id=str(doc["job_id"]),
                event_id=str(doc["event_id"]),
                type=EventType(doc["type"]),
                data=dict(doc.get("data") or {}),
            )
        except _MALFORMED as exc:
            raise BadProgressMessageError(
                f"not a progress event ({type(exc).__name__}: {str(exc)[:200]}): {body[:200]!r}"
            ) from exc


def _dedup_id(event_id: str) -> str:
    # FIFO dedup ids: at most 128 characters of a limited alphabet.
    return hashlib.sha256(event_id.encode("utf-8")).hexdigest()


@dataclass(eq=False)
class ProgressPublisher:
    """Sends one job's events to the progress FIFO queue, in order."""

    sqs: Any
    queue_url: str
    job_id: str
    #: The step of the last ``step.started`` sent and not completed since (None: none):
    #: the step a ``job.failed`` of this attempt names.
    running_step: int | None = field(init=False, default=None)

    async def publish(self, event_id: str, type_: EventType, data: dict[str, Any]) -> None:
        """Send one event; returns once SQS has it (retries are botocore's)."""
        msg = ProgressMessage(job_id=self.job_id, event_id=event_id, type=type_, data=data)
        with aws_errors("SendMessage"):
            await self.sqs.send_message(
                QueueUrl=self.queue_url,
                MessageBody=msg.to_body(),
                MessageGroupId=self.job_id,
                MessageDeduplicationId=_dedup_id(event_id),
            )
        step = data.get("step")
        if type_ is EventType.STEP_STARTED and isinstance(step, int):
            self.running_step = step
        elif type_ is EventType.STEP_COMPLETED and step == self.running_step:
            self.running_step = None


@dataclass(eq=False)
class StepProgress:
    """``step.progress`` for one step, at most once per ``interval_s`` (the last one always).

    ``add`` is called from a processor's ``report_progress`` (sync, cheap);
    :meth:`maybe_publish` sends when the interval has passed.
    """

    publisher: ProgressPublisher
    _: KW_ONLY
    step: int
    attempt: int
    interval_s: float
    bytes_total: int
    clock: Callable[[], float] = time.monotonic
    bytes_done: int = field(init=False, default=0)
    files_done: int = field(init=False, default=0)
    _last: float = field(init=False)
    _n: int = field(init=False, default=0)
    _dirty: bool = field(init=False, default=False)
    #: Stored bytes of the current input not counted yet (None: no input is current).
    _file_left: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._last = self.clock()

    def start_file(self, size: int | None) -> None:
        """The next input, of ``size`` stored bytes: what :meth:`add` counts for it stops
        there (a compressed file's processor reports the larger decompressed bytes)."""
        self._file_left = size

    def add(self, nbytes: int) -> None:
        """Count bytes read (a processor's ``report_progress``)."""
        if self._file_left is not None:
            nbytes = min(nbytes, self._file_left)
            self._file_left -= nbytes
        self.bytes_done += nbytes
        self._dirty = True

    def file_done(self) -> None:
        """Count one input file finished (all of its stored bytes, however many were
        reported)."""
        self.bytes_done += self._file_left or 0
        self._file_left = None
        self.files_done += 1
        self._dirty = True

    def data(self) -> dict[str, Any]:
        """The event's data."""
        return {
            "step": self.step,
            "attempt": self.attempt,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "files_done": self.files_done,
        }

    async def maybe_publish(self, *, force: bool = False) -> bool:
        """Publish if something changed and the interval passed (or ``force``)."""
        now = self.clock()
        if not self._dirty or (not force and now - self._last < self.interval_s):
            return False
        self._n += 1
        self._last = now
        self._dirty = False
        await self.publisher.publish(
            f"{self.publisher.job_id}:step.progress:{self.step}:{self.attempt}:{self._n}",
            EventType.STEP_PROGRESS,
            self.data(),
        )
        return True


@dataclass(eq=False)
class ProgressConsumer:
    """Progress queue -> the job's event log in the store -> ``on_event`` (live fan-out).

    Use as ``async with``; it reads until the block exits. Messages are
    appended in the order received (FIFO per job) and deleted only after the
    store has them, so a crash re-delivers and the append dedups.
    """

    _: KW_ONLY
    sqs: Any
    queue_url: str
    store: JobStore
    on_event: Callable[[JobEvent], None] = lambda e: None
    wait_time_s: int = _WAIT_S
    consumed: int = field(init=False, default=0)
    #: Set after a receive that found nothing.
    idle: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _stop: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = field(init=False, default=None)

    async def __aenter__(self) -> ProgressConsumer:
        self._task = asyncio.create_task(self._run(), name="s3flow-progress-consumer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            # The receive on the wire is short (_WAIT_S): let it finish and settle.
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=self.wait_time_s + 10)
            except TimeoutError:
                await cancel_and_wait(self._task)

    async def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                n = await self.poll_once()
                delay = 0.5
            except Exception as exc:  # the consumer must outlive any one failure
                if isinstance(exc, S3flowError):
                    log.warning("progress queue: %s; retrying in %.1fs", exc, delay)
                else:  # a bug, not the queue: say so, but keep every job updating
                    log.error(
                        "progress queue: unexpected %s while consuming (a bug: please report "
                        "it with this log); retrying in %.1fs",
                        type(exc).__name__,
                        delay,
                        exc_info=exc,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                delay = min(delay * 2, 30.0)
                continue
            if n == 0:
                self.idle.set()
            else:
                self.idle.clear()

    async def poll_once(self) -> int:
        """One receive -> store -> delete round; returns how many messages it handled."""
        with aws_errors("ReceiveMessage"):
            resp = await self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=self.wait_time_s,
                MessageSystemAttributeNames=["MessageGroupId", "ApproximateReceiveCount"],
            )
        messages = resp.get("Messages") or []
        done: list[dict[str, str]] = []
        # FIFO message groups (a job's id: see ProgressPublisher) with an event the store
        # did not take: their later messages of this batch wait too, so that each job's
        # events stay in order; the other groups go on.
        held_groups: set[str] = set()
        held: list[tuple[str, dict[str, Any]]] = []
        for i, raw in enumerate(messages):
            message_id = str(raw.get("MessageId", "?"))
            group = (raw.get("Attributes") or {}).get("MessageGroupId")
            if group is not None and group in held_groups:
                held.append((group, raw))
                continue
            try:
                msg = ProgressMessage.from_body(str(raw.get("Body", "")))
            except BadProgressMessageError as exc:
                self._poison(message_id, None, exc)
                done.append({"Id": str(i), "ReceiptHandle": raw["ReceiptHandle"]})
                continue
            group = msg.job_id if group is None else group
            if group in held_groups:
                held.append((group, raw))
                continue
            try:
                event, new = await self._append(msg)
            except BadProgressMessageError as exc:
                self._poison(message_id, msg, exc)
                done.append({"Id": str(i), "ReceiptHandle": raw["ReceiptHandle"]})
                continue
            except S3flowError as exc:
                # Leave it and the rest of its job for a later receive; other jobs go on.
                log.warning(
                    "progress event %s for %s not stored yet (its job's events wait; "
                    "other jobs go on): %s",
                    msg.event_id,
                    msg.job_id,
                    exc,
                )
                held_groups.add(group)
                held.append((group, raw))
                continue
            if event is None:
                log.info(
                    "progress event %s (%s) ignored: job %s is unknown or already finished",
                    msg.event_id,
                    msg.type,
                    msg.job_id,
                )
            elif new:
                self.consumed += 1
                self.on_event(event)
            done.append({"Id": str(i), "ReceiptHandle": raw["ReceiptHandle"]})
        try:
            if done:
                with aws_errors("DeleteMessageBatch"):
                    await self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=done)
        finally:
            if held:
                await self._retry_soon(held)
        return len(messages)

    async def _retry_soon(self, held: list[tuple[str, dict[str, Any]]]) -> None:
        """Make ``held`` ((group, message) left unstored) visible again soon, in order.

        The first held message of each group comes back after a short delay, growing
        with its receives; the group's later ones at once: they stay behind it, since a
        FIFO queue gives out nothing of a group while one of its messages is in flight
        (and the emulator would hand out the last of several that come back together
        first). A failure is logged, not raised: the messages then come back after the
        queue's visibility timeout, as they would without this call.
        """
        entries = []
        delayed: set[str] = set()
        for i, (group, raw) in enumerate(held):
            delay = 0
            if group not in delayed:
                delayed.add(group)
                attrs = raw.get("Attributes") or {}
                try:
                    receives = max(int(attrs.get("ApproximateReceiveCount", 1)), 1)
                except (TypeError, ValueError):
                    receives = 1
                delay = min(_HOLD_MAX_S, _HOLD_BASE_S * 2 ** min(receives - 1, 10))
            entries.append(
                {"Id": str(i), "ReceiptHandle": raw["ReceiptHandle"], "VisibilityTimeout": delay}
            )
        try:
            with aws_errors("ChangeMessageVisibilityBatch"):
                resp = await self.sqs.change_message_visibility_batch(
                    QueueUrl=self.queue_url, Entries=entries
                )
        except S3flowError as exc:
            log.warning(
                "progress queue %s: %d unstored message(s) come back after the queue's "
                "visibility timeout instead of in a few seconds (does the web app's role "
                "allow sqs:ChangeMessageVisibility on it?): %s",
                self.queue_url,
                len(entries),
                exc,
            )
            return
        failed = resp.get("Failed") or []
        if failed:
            log.warning(
                "progress queue %s: %d unstored message(s) come back after the queue's "
                "visibility timeout instead of in a few seconds: %s",
                self.queue_url,
                len(failed),
                failed[0].get("Message") or failed[0].get("Code"),
            )

    async def _append(self, msg: ProgressMessage) -> tuple[JobEvent | None, bool]:
        """Append ``msg`` to its job's log; :class:`BadProgressMessageError` if its data cannot be.

        The store checks the data (JSON it can keep, counters that are numbers,
        outputs with every field) before it writes anything, so a refusal
        leaves the log and the job as they were.
        """
        try:
            return await self.store.append_event(
                msg.job_id, event_id=msg.event_id, type=msg.type, data=msg.data
            )
        except S3flowError:
            raise
        except _MALFORMED as exc:
            raise BadProgressMessageError(
                f"its data cannot be stored ({type(exc).__name__}: {str(exc)[:200]})"
            ) from exc

    def _poison(self, message_id: str, msg: ProgressMessage | None, exc: S3flowError) -> None:
        """Log a message that will be deleted unstored: what, which message, what to do."""
        what = "" if msg is None else f" (event {msg.event_id!r} of job {msg.job_id})"
        log.error(
            "progress queue %s: deleting message %s%s without storing it: %s. Retrying cannot "
            "fix it; check the version of whatever sends to this queue (s3flow job workers "
            "of the same release as the web app), and `s3flow jobs show` the job if it "
            "stops updating",
            self.queue_url,
            message_id,
            what,
            exc,
        )
