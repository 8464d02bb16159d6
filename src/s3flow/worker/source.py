"""Demand-driven SQS polling.

A poller first reserves free permits (the runner's "received" budget: its
processing slots plus the messages it may prefetch), then asks SQS for exactly
that many messages (at most 10) with long polling; with fewer than
``min_batch`` free permits it does not poll at all. Unused reservations are
returned at once. Receive errors back off exponentially with jitter instead of
spinning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from s3flow.errors import ReceiveFailedError, translate_aws_error
from s3flow.metrics import PipelineMetrics

log = logging.getLogger("s3flow.source")


class Slots:
    """A first-come-first-served counting semaphore that can hand out several permits
    at once.

    Waiters are served in the order they came: a release hands its permits to the
    oldest waiter directly, and :meth:`try_acquire` takes nothing while anyone waits,
    so a message waiting for a slot is never overtaken by a newer one. Releasing and
    :meth:`try_acquire` never wait, so a synchronous callback (a processor closing its
    input) can hand a permit over.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        # (at least, at most, future of the number granted), oldest first.
        self._waiters: deque[tuple[int, int, asyncio.Future[int]]] = deque()

    @property
    def in_use(self) -> int:
        """Permits currently held (granted to a waiter counts as held)."""
        return self.capacity - self._free

    async def acquire_up_to(self, n: int, *, at_least: int = 1) -> int:
        """Wait until ``at_least`` permits are free (at most all), then take up to ``n``.

        Waits behind every earlier waiter, even when enough are free for this one.
        """
        need = max(1, min(at_least, n, self.capacity))
        if not self._waiters and self._free >= need:
            k = min(n, self._free)
            self._free -= k
            return k
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        entry = (need, max(n, need), fut)
        self._waiters.append(entry)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # granted as this task was cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._grant()  # the next waiter may fit now
            raise

    def try_acquire(self) -> bool:
        """Take one permit if one is free now and nobody waits; never waits."""
        if self._free <= 0 or self._waiters:
            return False
        self._free -= 1
        return True

    def release(self, n: int = 1) -> None:
        """Return ``n`` permits; they go to the oldest waiters first."""
        if n <= 0:
            return
        self._free = min(self.capacity, self._free + n)
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            need, most, fut = self._waiters[0]
            if fut.done():  # cancelled before it was granted anything
                self._waiters.popleft()
                continue
            if self._free < need:
                return  # strict order: later waiters wait behind this one
            self._waiters.popleft()
            k = min(most, self._free)
            self._free -= k
            fut.set_result(k)


async def _always_true() -> bool:
    return True


@dataclass
class ReceivedMessage:
    """One SQS message, with what is needed to settle it."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    received_at: float  # time.monotonic()
    attributes: dict[str, Any] = field(default_factory=dict)
    message_attributes: dict[str, Any] = field(default_factory=dict)
    #: When the message got its processing slot (time.monotonic(); None: not yet).
    started_at: float | None = field(default=None, compare=False)
    #: Set by the engine: the handler calls it when the message's input is read and
    #: only output writes are left, so the next message may start (see the engine).
    reading_done: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)
    #: Set by the engine for a handler that takes its own slot (``Handler.takes_slot``):
    #: awaited just before the work that reads the object; False when the worker stops
    #: first (the handler then gives back what it holds and releases the message).
    begin_work: Callable[[], Awaitable[bool]] = field(
        default=_always_true, repr=False, compare=False
    )
    #: Set by the engine: between two records of one message the slot is given back,
    #: so that no slot is held while the next record waits for its key lock or claim.
    pause_work: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)
    #: Set by the engine: the run has waited ``seconds`` more for its executor (a free
    #: pool process; told as it goes): ``job_timeout_s`` and the lease's deadline move
    #: on by as much, as for a message waiting for its slot.
    work_waited: Callable[[float], None] = field(
        default=lambda seconds: None, repr=False, compare=False
    )

    @classmethod
    def from_sqs(cls, raw: dict[str, Any], received_at: float) -> ReceivedMessage:
        """Build from a ReceiveMessage entry."""
        attrs = raw.get("Attributes") or {}
        try:
            count = int(attrs.get("ApproximateReceiveCount", "1"))
        except ValueError:
            count = 1
        return cls(
            message_id=str(raw.get("MessageId", "")),
            receipt_handle=str(raw.get("ReceiptHandle", "")),
            body=str(raw.get("Body", "")),
            receive_count=count,
            received_at=received_at,
            attributes=dict(attrs),
            message_attributes=dict(raw.get("MessageAttributes") or {}),
        )

    def whole_number_attribute(self, name: str) -> int:
        """The message attribute ``name`` as a whole number (0 when absent or not one)."""
        value = (self.message_attributes.get(name) or {}).get("StringValue", "0")
        try:
            return max(0, int(str(value)))
        except ValueError:
            return 0

    @property
    def delivery(self) -> str:
        """This delivery of the message: its receipt handle.

        SQS may hand one message out twice at once (at-least-once delivery; a job past
        ``job_timeout_s`` comes back; seen against moto, whose concurrent receives are
        not atomic): one message id, two receipt handles.
        What the worker keeps per in-flight message (its task, its lease, its locks
        and claims) is keyed by delivery, so the two copies never overwrite each
        other: the second waits for the first's key lock, then finds it done.
        """
        return self.receipt_handle


Handler = Callable[[ReceivedMessage], Awaitable[None]]


class QueueSource:
    """Receives messages for one queue and hands each to ``dispatch`` (one permit each)."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        permits: Slots,
        dispatch: Callable[[ReceivedMessage], None],
        *,
        wait_time_s: int,
        metrics: PipelineMetrics | None = None,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        min_batch: int = 1,
        visibility_timeout_s: int | None = None,
    ) -> None:
        """``permits``: reserved before each receive, one per message asked for;
        ``min_batch``: how many must be free before a receive (see the engine);
        ``visibility_timeout_s``: asked for on every receive (None: the queue's own).

        The lease that keeps a message invisible counts from the receive with the
        worker's ``visibility_timeout_s``: asking for it on the receive makes that true
        whatever the queue says (a queue made by hand with 30 s under a worker set to
        300 s would hand a message out again long before its first extension)."""
        self._sqs = sqs
        self.queue_url = queue_url
        self._permits = permits
        self._dispatch = dispatch
        self.wait_time_s = wait_time_s
        self._metrics = metrics or PipelineMetrics()
        self._backoff_base = backoff_base_s
        self._backoff_max = backoff_max_s
        self.min_batch = min_batch
        self._visibility: dict[str, int] = (
            {} if visibility_timeout_s is None else {"VisibilityTimeout": visibility_timeout_s}
        )
        self.empty_receives = 0  # consecutive receives that returned nothing
        #: True while a ReceiveMessage call is on the wire: cancelling it then could
        #: leave messages the server already handed out invisible for a whole timeout.
        self.receiving = False

    async def receive_once(self) -> int:
        """Reserve permits, receive up to that many messages, dispatch them; the count."""
        k = await self._permits.acquire_up_to(10, at_least=self.min_batch)
        self.receiving = True
        try:
            resp = await self._sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=k,
                WaitTimeSeconds=self.wait_time_s,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                MessageAttributeNames=["All"],
                **self._visibility,
            )
        except BaseException:
            self.receiving = False
            self._permits.release(k)
            raise
        self.receiving = False
        now = time.monotonic()
        messages = resp.get("Messages") or []
        # Dispatch before the next await so a cancellation cannot strand a message.
        for raw in messages:
            self._metrics.messages_received += 1
            self._dispatch(ReceivedMessage.from_sqs(raw, now))
        unused = k - len(messages)
        if unused > 0:
            self._permits.release(unused)
        self.empty_receives = 0 if messages else self.empty_receives + 1
        return len(messages)

    async def run(
        self,
        stop: asyncio.Event,
        on_empty: Callable[[], Awaitable[None]],
        *,
        give_up_after: int | None = None,
    ) -> None:
        """Poll until ``stop`` is set. ``on_empty`` is awaited after each empty receive.

        A receive already on the wire when ``stop`` is set is finished (its
        messages are dispatched, and the owner releases them): see ``receiving``.
        A failed receive is retried with back-off; after ``give_up_after`` failures
        in a row (None: never) :class:`~s3flow.errors.ReceiveFailedError` is raised,
        or three times as many once a receive has worked (a blip mid-drain is no
        reason to stop).
        """
        failures = 0
        limit = give_up_after
        while not stop.is_set():
            try:
                got = await self.receive_once()
                failures = 0
                if give_up_after is not None:
                    limit = 3 * give_up_after
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self._metrics.receive_errors += 1
                err = translate_aws_error(exc, "ReceiveMessage")
                if limit is not None and failures >= limit:
                    raise ReceiveFailedError(
                        f"cannot receive from {self.queue_url}: {failures} attempts in a row "
                        f"failed, the last with: {err}. Check that the queue exists, the "
                        "endpoint is reachable and the credentials may read it"
                    ) from exc
                delay = min(self._backoff_max, self._backoff_base * 2 ** min(failures, 10))
                delay = delay / 2 + random.random() * delay / 2
                log.warning(
                    "receive from %s failed (%s); retrying in %.1fs", self.queue_url, err, delay
                )
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    pass
                continue
            if got == 0:
                await on_empty()
