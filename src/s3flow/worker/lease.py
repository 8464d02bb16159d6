"""Visibility heartbeat: keep in-flight messages invisible while they are worked on.

Every tracked message whose visibility ends within half the visibility timeout
gets extended by another full timeout, batched through
:class:`~s3flow.worker.acks.AckBatcher` (ChangeMessageVisibilityBatch). The
extension stops at the message's job deadline (``job_timeout_s`` after its work
started, never beyond SQS's 12 h limit) plus a short grace (``JOB_STOP_GRACE_S``,
at most ``job_timeout_s``): the run is stopped at ``job_timeout_s`` by its executor
and its message settled (retried, counted as a failure) within the grace; a run that
will not stop (a processor that ignores its cancellation) has its message become
visible again then, and delivered anew. A message not started yet
(prefetched, waiting for a slot, possibly holding its claim) is extended
without a deadline: the wait is not its job's time, and letting it lapse would
hand its object to another worker while this one still means to process it.

The same beat renews the state-store claims of the objects being worked on
(``renew_claims``): one heartbeat, so a claim lives exactly as long as its
message stays leased, and a dead worker's claims expire about when its
messages become visible again. The renewals run beside the beat (one at a time,
what falls due meanwhile batched): a slow state store (a busy SQLite file,
DynamoDB throttling) must not hold back the next visibility extension.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from s3flow.closing import cancel_and_wait
from s3flow.metrics import PipelineMetrics
from s3flow.worker.acks import AckBatcher
from s3flow.worker.outcomes import RECEIVE_LIMIT_MARGIN_S, SQS_MAX_VISIBILITY_S

log = logging.getLogger("s3flow.lease")

#: How long past ``job_timeout_s`` a message stays leased (at most ``job_timeout_s``):
#: time for its run to be stopped (SIGTERM then SIGKILL, StopTask) and its retry sent.
JOB_STOP_GRACE_S = 60


@dataclass
class _Lease:
    handle: str
    visible_at: float  # monotonic time at which SQS makes it visible again
    #: SQS refuses a visibility that ends more than 12 h after the receive.
    limit_at: float
    #: The job deadline, set when its work starts (:meth:`LeaseKeeper.restart`);
    #: None before: the message is extended without one.
    deadline: float | None = None
    at_limit: bool = False  # the 12 h limit was reached (logged once)


class LeaseKeeper:
    """Heartbeats the visibility of in-flight messages of one queue. Use ``async with``."""

    def __init__(
        self,
        acks: AckBatcher,
        *,
        visibility_timeout_s: int,
        job_timeout_s: int,
        metrics: PipelineMetrics | None = None,
        renew_claims: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        self._acks = acks
        self._renew_claims = renew_claims
        self._timeout = visibility_timeout_s
        self._job_timeout = min(job_timeout_s, SQS_MAX_VISIBILITY_S)
        self._stop_grace = min(JOB_STOP_GRACE_S, job_timeout_s)
        self._metrics = metrics or PipelineMetrics()
        self._leases: dict[str, _Lease] = {}
        self._task: asyncio.Task[None] | None = None
        #: Claim renewals run beside the beats (a slow state store must not hold back
        #: the next visibility extension): the running one, and the deliveries due since.
        self._renewing: asyncio.Task[None] | None = None
        self._renew_next: dict[str, None] = {}
        # Wake up often enough to act at half the timeout, but not busily.
        self.tick_s = max(0.1, min(5.0, visibility_timeout_s / 4))

    async def __aenter__(self) -> LeaseKeeper:
        self._task = asyncio.create_task(self._run(), name="lease-heartbeat")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await cancel_and_wait(self._renewing)
        self._renewing = None

    def track(self, delivery: str, receipt_handle: str, received_at: float) -> None:
        """Start heartbeating a message received at ``received_at`` (time.monotonic()),
        kept by ``delivery`` (:attr:`~s3flow.worker.source.ReceivedMessage.delivery`:
        two copies of one message in flight at once are two leases).

        Until :meth:`restart` says its work started, it is extended without a deadline.
        """
        self._leases[delivery] = _Lease(
            handle=receipt_handle,
            visible_at=received_at + self._timeout,
            limit_at=received_at + SQS_MAX_VISIBILITY_S - RECEIVE_LIMIT_MARGIN_S,
        )

    def restart(self, delivery: str, started_at: float) -> None:
        """The message's work starts now: ``job_timeout_s`` counts from ``started_at``
        (time spent waiting for a slot, prefetched, does not use it up); the lease lasts
        the stop grace longer."""
        lease = self._leases.get(delivery)
        if lease is not None:
            lease.deadline = started_at + self._job_timeout + self._stop_grace

    def untrack(self, delivery: str) -> None:
        """Stop heartbeating (the message is being settled)."""
        self._leases.pop(delivery, None)

    def __len__(self) -> int:
        return len(self._leases)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.beat()
            except Exception:  # a heartbeat must never die of one bad beat
                log.exception("visibility heartbeat failed; trying again next tick")

    async def beat(self) -> None:
        """Extend every lease that is due now (called by the loop; public for tests)."""
        now = time.monotonic()
        due: list[tuple[str, _Lease, int]] = []
        for mid, lease in self._leases.items():
            if lease.visible_at - now > self._timeout / 2:
                continue
            # Not started: waiting for a slot does not use up the job's time.
            remaining_job = self._timeout if lease.deadline is None else lease.deadline - now
            if remaining_job <= 0:
                continue  # past the job timeout: let it become visible
            extend = int(min(self._timeout, max(1, math.ceil(remaining_job))))
            # SQS counts 12 h from the receive and refuses a change that goes beyond.
            extend = min(extend, math.floor(lease.limit_at - now))
            if extend < 1:
                if not lease.at_limit:
                    lease.at_limit = True
                    log.warning(
                        "a message (receipt handle ...%s) has been in flight for 12 h, "
                        "SQS's limit: it becomes visible again and is delivered anew",
                        lease.handle[-12:],
                    )
                continue
            due.append((mid, lease, extend))
        if not due:
            return

        async def one(mid: str, lease: _Lease, extend: int) -> None:
            if self._leases.get(mid) is not lease:
                # Settled since `due` was built: its release/retry visibility must not be
                # overridden (the check and the enqueue below run in one step).
                return
            ok = await self._acks.change_visibility(lease.handle, extend)
            if ok and mid in self._leases:
                lease.visible_at = time.monotonic() + extend
                self._metrics.visibility_extensions += 1
            elif not ok:
                log.warning(
                    "could not extend visibility of a message (receipt handle ...%s)",
                    lease.handle[-12:],
                )

        if self._renew_claims is not None:
            self._renew([mid for mid, _, _ in due])
        await asyncio.gather(*(one(mid, lease, ext) for mid, lease, ext in due))

    def _renew(self, deliveries: list[str]) -> None:
        """Renew the claims of ``deliveries`` in the background: after the renewal under
        way, if there is one (one at a time; what falls due meanwhile is batched)."""
        self._renew_next.update(dict.fromkeys(deliveries))
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.create_task(self._renewals(), name="lease-claims")

    async def _renewals(self) -> None:
        assert self._renew_claims is not None
        while self._renew_next:
            batch, self._renew_next = list(self._renew_next), {}
            try:
                await self._renew_claims(batch)
            except Exception:  # like a beat: never die of one bad renewal
                log.exception("renewing claims failed; trying again with the next beat")
