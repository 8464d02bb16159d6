"""The worker engine: polling, dispatch, concurrency, graceful shutdown.

One :class:`PipelineRunner` per pipeline owns its pollers, slots, heartbeat
and batched acks. Each received message gets one task: the
:class:`~s3flow.worker.handler.MessageHandler` turns it into an explicit
outcome (:mod:`s3flow.worker.outcomes`) and the
:class:`~s3flow.worker.acks.Settler` applies it (ack, retry, dead-letter,
split, release).

Three budgets bound what a pipeline holds:

* **received**, ``concurrency + prefetch_messages``: a poller reserves permits
  before it asks SQS for that many messages, so it never receives more than the
  worker can start soon. A message holds its permit until its input is read.
  The ``prefetch_messages`` beyond ``concurrency`` wait, leased, for a slot: a
  slot freed starts the next object at once instead of after a receive round trip.
  Meanwhile a message takes what only waits on the state store (key lock, claim,
  superseded check): the handler asks for its slot (``msg.begin_work()``) just
  before the work, so a duplicate never takes one. Between two records of one
  message the slot is given back, so that no slot is held while waiting for a lock.
* **slots**, ``concurrency``: held while the object's input is read and
  processed, so at most ``concurrency`` objects are worked on at once. Messages
  get their slots in the order they asked (first come, first served), so a
  message waiting, leased, for a slot is never overtaken by newer ones.
* **settling**, ``2 × concurrency``: what is left of the work after that waits
  on the network, not on this worker: writing the outputs, verifying them,
  recording the result. Two round trips or more where reading took about one,
  hence twice the slots. The processor says when its input is read
  (``ProcessContext.reading_done``); the message then trades its slot for a
  settling permit, if one is free at that moment, so that the next object can
  start; otherwise it keeps the slot until its work is done.

So at most ``3 × concurrency + prefetch_messages`` messages are being worked
on. A message whose work is over holds no permit while it is settled (its
delete waits up to ``ack_batch_window_s`` to fill a batch, then one SQS round
trip): a settlement is bounded in time, not in number, and waiting for it
must not hold back the next object's outputs.

Shutdown (SIGTERM/SIGINT, or ``stop()``): polling stops at once, but a
ReceiveMessage already on the wire is allowed to finish (cancelling it could
leave the messages the server handed out invisible for a whole visibility
timeout); whatever it brings is released at once. A long poll waits at most
``shutdown_grace_s`` (at least 1 s) for that reason. In-flight work gets
``shutdown_grace_s``, counted from the signal (:class:`ShutdownClock`), while the
receives return; the rest is released with visibility 0, acks are flushed. So the
worker is done within about ``shutdown_grace_s + 5`` s (``_RECEIVE_MARGIN_S`` for a
slow network): inside the stop timeout ``s3flow deploy`` sets (grace + 10 s). A
second signal cuts every wait short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from s3flow.aws import pin_endpoints, queue_depths
from s3flow.errors import ReceiveFailedError, S3flowError, translate_aws_error
from s3flow.executors import ExecutorSet
from s3flow.metrics import PipelineMetrics, WorkerMetrics
from s3flow.processors.base import PipelineContext
from s3flow.settings import WorkerSettings
from s3flow.state.base import StateStore
from s3flow.worker.acks import AckBatcher, Settler
from s3flow.worker.drain import queue_drained
from s3flow.worker.handler import (
    Handler,
    MessageHandler,
    PipelineRuntime,
    QueueRuntime,
    WorkerObserver,
)
from s3flow.worker.lease import LeaseKeeper
from s3flow.worker.outcomes import Outcome, Release, Retry, backoff_s
from s3flow.worker.policy import RENEWED_NOTE, may_renew
from s3flow.worker.source import QueueSource, ReceivedMessage, Slots
from s3flow.worker.waiting import first_set

__all__ = ["PipelineRunner", "PipelineRuntime", "QueueRuntime", "Worker", "WorkerObserver"]

log = logging.getLogger("s3flow.worker")

#: Longest a stopping runner waits for receives on the wire beyond their wait time
#: (which is at most the grace period: a slow network).
_RECEIVE_MARGIN_S = 5.0
#: Burst mode: failed receives in a row after which the worker gives up with an error.
BURST_RECEIVE_ATTEMPTS = 4


class ShutdownClock:
    """The grace period of a shutdown, counted from when it was asked for (the signal).

    Waiting for receives on the wire and draining in-flight work share it: counted
    from when polling had stopped, the drain could end up to a long poll (20 s) past
    the grace, and past the stop timeout of the platform, which then kills the worker
    before it releases its messages.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._started: float | None = None

    def start(self) -> None:
        """The shutdown begins now (later calls keep the first time)."""
        if self._started is None:
            self._started = time.monotonic()

    def left(self) -> float:
        """Seconds of the grace period left (all of it before :meth:`start`)."""
        if self._started is None:
            return self.grace_s
        return max(0.0, self.grace_s - (time.monotonic() - self._started))


class PipelineRunner:
    """Runs one pipeline: pollers -> handler -> settler."""

    def __init__(
        self,
        rt: PipelineRuntime | QueueRuntime,
        *,
        sqs: Any,
        acks: AckBatcher,
        lease: LeaseKeeper,
        handler: Handler,
        settler: Settler,
        metrics: PipelineMetrics,
        observer: WorkerObserver,
        stop: asyncio.Event,
        cut: asyncio.Event,
        burst: bool,
        clock: ShutdownClock,
        pollers: int = 0,
        polls_over: asyncio.Event | None = None,
    ) -> None:
        self.rt = rt
        self.p = rt.settings
        self._sqs = sqs
        self._acks = acks
        self._lease = lease
        self.handler = handler
        self._settler = settler
        self.metrics = metrics
        self._observer = observer
        self._stop = stop
        self._cut = cut
        self._clock = clock
        self._burst = burst
        self._halt = asyncio.Event()  # pollers stop: worker stopping, or drained (burst)
        #: Set once polling has ended and no receive of this pipeline is on the wire: a
        #: message released at a stop before that would be taken again by a poll the
        #: server still holds.
        self.polls_over = polls_over or asyncio.Event()
        #: Received and not yet settling (reserved by the pollers before each receive).
        self.received = Slots(self.p.concurrency + self.p.prefetch)
        self.slots = Slots(self.p.concurrency)
        self._settling = Slots(2 * self.p.concurrency)
        self.drained = asyncio.Event()
        #: Set when the runner drains: a prefetched message not yet started is released.
        self._draining = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self._work: dict[str, asyncio.Task[Outcome]] = {}
        self._in_flight = 0
        self._dispatched = 0  # messages received so far (burst mode's drain check)
        # One receive brings at most 10: enough pollers to refill every permit at once.
        n = pollers or max(1, min(4, -(-self.received.capacity // 10)))
        # A long poll waits at most the shutdown grace (at least 1 s): a stop waits for
        # the receives on the wire (one cut short would leave what the server hands out
        # to it invisible until its visibility timeout), so they must end within it.
        self._wait_s = (
            min(self.p.wait_time_s, 1)
            if burst
            else min(self.p.wait_time_s, max(1, int(clock.grace_s)))
        )
        self._sources = [
            QueueSource(
                sqs,
                rt.queue_url,
                self.received,
                self._dispatch,
                wait_time_s=self._wait_s,
                metrics=metrics,
                # With messages prefetched, a receive waits for up to half a batch of
                # free permits (as Broadway's min_demand; half the prefetch when that is
                # smaller): a receive costs a round trip whether it brings one message
                # or ten, and the prefetched messages left keep the slots busy meanwhile.
                min_batch=max(1, min(5, (self.p.prefetch + 1) // 2)),
                visibility_timeout_s=rt.settings.visibility_timeout_s,
            )
            for _ in range(n)
        ]
        self._pollers: list[asyncio.Task[None]] = []
        # Burst mode gives up on a queue it cannot read (there is nothing to drain).
        self._give_up_after = BURST_RECEIVE_ATTEMPTS if burst else None
        #: Why polling ended early (burst mode: the queue could not be read), else None.
        self.failure: ReceiveFailedError | None = None

    # --- polling -----------------------------------------------------------

    async def run(self) -> None:
        """Poll until stopped (or, in burst mode, until the queue is drained)."""
        self._pollers = [
            asyncio.create_task(
                src.run(self._halt, self._on_empty, give_up_after=self._give_up_after),
                name=f"poll:{self.p.name}:{i}",
            )
            for i, src in enumerate(self._sources)
        ]
        stop_wait = asyncio.create_task(self._stop.wait())
        drained_wait = asyncio.create_task(self.drained.wait())
        try:
            await asyncio.wait(
                [*self._pollers, stop_wait, drained_wait], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop_wait.cancel()
            drained_wait.cancel()
            await self.stop_polling()

    async def stop_polling(self) -> None:
        """Stop the pollers: idle ones at once, receives on the wire once they return."""
        self._halt.set()
        on_wire = []
        for src, task in zip(self._sources, self._pollers, strict=True):
            if src.receiving and not task.done():
                on_wire.append(task)
            else:
                task.cancel()
        if on_wire:
            # Its long poll is at most the grace (see ``_wait_s``): only a slow network
            # makes it last longer, up to the margin.
            wait_s = self._wait_s + _RECEIVE_MARGIN_S
            # Not cut short: the server would still hold the poll, and it takes the
            # messages released next, or new ones, out of sight for a visibility timeout.
            log.info(
                "pipeline %s: waiting up to %.0fs for %d receive(s) on the wire (what "
                "they bring is put back at once)",
                self.p.name,
                wait_s,
                len(on_wire),
            )
            cut = asyncio.create_task(self._cut.wait())
            await _wait_any_cut(on_wire, cut, wait_s)
            cut.cancel()
        for t in self._pollers:
            t.cancel()
        for t in self._pollers:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await t
                except ReceiveFailedError as exc:
                    log.error("pipeline %s: %s", self.p.name, exc)
                    self.failure = self.failure or exc
                except Exception:
                    log.exception("poller of %s failed", self.p.name)
        self.polls_over.set()

    async def _on_empty(self) -> None:
        # Slots reserved by a poller that is mid-receive do not count: a message
        # it is about to get is invisible, so the depth check sees it.
        if not self._burst or self._handlers:
            return
        seen = self._dispatched

        def busy() -> bool:
            return bool(self._handlers) or self._dispatched != seen

        if await queue_drained(self._queue_depth, busy, self._halt):
            log.info("pipeline %s: queue drained (burst mode)", self.p.name)
            # Halt first: this poller must not start another receive that the stop
            # would then have to wait out.
            self._halt.set()
            self.drained.set()

    async def _queue_depth(self) -> int | None:
        """Messages left on the queue (visible + in flight + delayed); None if unknown."""
        try:
            depths = await queue_depths(self._sqs, self.rt.queue_url)
        except Exception as exc:
            log.warning(
                "cannot read queue depth: %s", translate_aws_error(exc, "GetQueueAttributes")
            )
            return None
        return depths.total

    def _dispatch(self, msg: ReceivedMessage) -> None:
        self._dispatched += 1
        self._lease.track(msg.delivery, msg.receipt_handle, msg.received_at)
        task = asyncio.create_task(self._handle(msg), name=f"msg:{msg.message_id}")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    # --- one message ------------------------------------------------------------

    async def _handle(self, msg: ReceivedMessage) -> None:
        self._in_flight += 1
        self.metrics.in_flight = self._in_flight
        self.metrics.max_in_flight = max(self.metrics.max_in_flight, self._in_flight)
        permits = MessagePermits(self.received, self.slots, self._settling)
        msg.reading_done = permits.hand_over
        msg.pause_work = permits.pause

        async def begin_work() -> bool:
            if permits.slot:
                return True
            if not await permits.start(self._stop, self._draining):
                return False
            if msg.started_at is None:
                # Waiting for the slot does not count against job_timeout_s.
                msg.started_at = time.monotonic()
                self._lease.restart(msg.delivery, msg.started_at)
            return True

        msg.begin_work = begin_work

        def work_waited(seconds: float) -> None:
            if msg.started_at is not None and seconds > 0:
                msg.started_at += seconds
                self._lease.restart(msg.delivery, msg.started_at)

        msg.work_waited = work_waited
        try:
            outcome: Outcome
            stopping = self._stop.is_set() or self._draining.is_set()
            if stopping or (not self.handler.takes_slot and not await begin_work()):
                # Brought by a receive that finished after shutdown began (nothing
                # taken: no lock, no claim), or still waiting for a slot when shutdown
                # (or a drain) began: not started.
                outcome = Release("received during shutdown")
            else:
                outcome = await self._work_on(msg)
            # The work is over: what is left (a batched delete or visibility change, a
            # dead-letter send) waits on SQS alone and holds no permit, so that an ack
            # waiting up to ack_batch_window_s for its batch does not hold back the next
            # object's outputs.
            permits.release()
            self._lease.untrack(msg.delivery)
            final = await self._settler.settle(msg, outcome)
            self.metrics.observe_processing(time.monotonic() - msg.received_at)
            self._observer.message_settled(self.p.name, msg, final)
        finally:
            self._lease.untrack(msg.delivery)
            self._in_flight -= 1
            self.metrics.in_flight = self._in_flight
            permits.release()

    async def _work_on(self, msg: ReceivedMessage) -> Outcome:
        work = asyncio.create_task(self.handler.handle(msg))
        self._work[msg.delivery] = work
        try:
            return await work
        except asyncio.CancelledError:
            if not work.cancelled():
                raise
            return Release("shutdown: not finished within shutdown_grace_s")
        except S3flowError as exc:
            # Classified, so not a bug here (the state store gone, say): one line, no trace.
            # Nothing was recorded: near the queue's redrive limit the message is sent
            # again as a new one, or SQS would move it to the DLQ with no reason.
            delay = backoff_s(msg.receive_count, self.p.retry_base_s, self.p.retry_max_s)
            # (a job's queue counts its attempts by receives: its runner hands jobs on).
            # At most MAX_CAPPED_RENEWALS times: an error that comes back whatever the
            # state of things is left to the queue's redrive, its last error attached.
            renew = isinstance(self.rt, PipelineRuntime) and may_renew(
                msg, self.rt.renew_at, capped=True
            )
            log.error(
                "message %s not handled, retrying it in %ds%s: %s: %s",
                msg.message_id,
                delay,
                RENEWED_NOTE if renew else "",
                exc.error_class,
                exc,
            )
            return Retry(delay, exc.error_class, str(exc), renew=renew, capped=True)
        except Exception as exc:
            log.exception("internal error handling message %s", msg.message_id)
            return Retry(
                backoff_s(msg.receive_count, self.p.retry_base_s, self.p.retry_max_s),
                type(exc).__name__,
                str(exc),
            )
        finally:
            self._work.pop(msg.delivery, None)

    # --- shutdown -------------------------------------------------------------

    async def drain(self, grace_s: float) -> None:
        """Give in-flight messages ``grace_s`` to finish, then release the rest.

        Messages still waiting for a slot are released at once, started or not.
        """
        self._draining.set()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=grace_s)
        for work in list(self._work.values()):
            work.cancel()
        while self._handlers:
            await asyncio.wait(set(self._handlers))


@dataclass
class MessagePermits:
    """One message's place in its runner's three budgets (see the module docstring).

    The received permit (reserved by the poller) from receive until its input is
    read; a slot while its input is read and processed; then a settling permit while
    its outputs are written, verified and recorded. The slot and the received permit
    go back as soon as the settling permit is held; everything goes back when the
    work is over (:meth:`release`), before the message is settled.
    """

    received: Slots
    slots: Slots
    settling: Slots
    receive: bool = True
    slot: bool = False
    settle: bool = False

    async def start(self, *stops: asyncio.Event) -> bool:
        """Wait for a slot; False if one of ``stops`` is set first (then no slot is held)."""
        if any(s.is_set() for s in stops):
            return False
        if self.slots.try_acquire():
            self.slot = True
            return True
        take = asyncio.ensure_future(self.slots.acquire_up_to(1))
        stopped = [asyncio.ensure_future(s.wait()) for s in stops]
        try:
            await asyncio.wait({take, *stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in stopped:
                waiter.cancel()
            if not take.done():
                take.cancel()
                await asyncio.gather(take, return_exceptions=True)
            if take.done() and not take.cancelled() and take.exception() is None:
                # Taken (also when this task is being cancelled): held, so released.
                self.slot = True
        return self.slot  # a slot taken as the stop came: used, the work starts

    def pause(self) -> None:
        """Give the slot back until the next :meth:`start` (between two records)."""
        if self.slot:
            self.slot = False
            self.slots.release(1)

    def hand_over(self) -> None:
        """The input is read: trade the slot for a settling permit if one is free now.

        Synchronous (a reader's ``close`` calls it); with none free the message keeps
        its slot until its work is done, as if this were never called.
        """
        if self.slot and not self.settle and self.settling.try_acquire():
            self.settle = True
            self._free_work()

    def _free_work(self) -> None:
        if self.slot:
            self.slot = False
            self.slots.release(1)
        if self.receive:
            self.receive = False
            self.received.release(1)

    def release(self) -> None:
        """The work is over: give back whatever is still held (idempotent).

        A late :meth:`hand_over` (``reading_done`` after the work) then finds no slot
        to trade and does nothing.
        """
        self._free_work()
        if self.settle:
            self.settle = False
            self.settling.release(1)


async def _wait_any_cut(
    tasks: list[asyncio.Task[None]], cut: asyncio.Task[Any], timeout_s: float
) -> None:
    """Wait until every task is done, ``cut`` fires, or ``timeout_s`` passes."""
    pending = set(tasks)
    deadline = time.monotonic() + timeout_s
    while pending and not cut.done():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        done, _ = await asyncio.wait(
            {*pending, cut}, timeout=left, return_when=asyncio.FIRST_COMPLETED
        )
        pending -= done


class Worker:
    """Runs every configured pipeline until stopped (or drained, with ``burst``)."""

    def __init__(
        self,
        clients: Any,
        runtimes: list[PipelineRuntime],
        worker: WorkerSettings,
        *,
        observer: WorkerObserver | None = None,
        burst: bool = False,
        store: StateStore | None = None,
        claim_ttl_s: float = 0,
        queues: list[QueueRuntime] | None = None,
    ) -> None:
        self._clients = clients
        self._store = store
        self._claim_ttl_s = claim_ttl_s
        self._runtimes = runtimes
        self._queues = list(queues or [])
        self._ws = worker
        self._observer = observer or WorkerObserver()
        self._burst = burst
        self._stop = asyncio.Event()
        self._signals = 0
        self.metrics = WorkerMetrics()
        self.runners: list[PipelineRunner] = []
        self._grace_cut = asyncio.Event()
        self._clock = ShutdownClock(worker.shutdown_grace_s)

    def stop(self) -> None:
        """Ask the worker to shut down gracefully (what SIGTERM/SIGINT do): the grace
        period starts now."""
        self._clock.start()
        self._stop.set()

    def _on_signal(self, signame: str) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info(
                "%s received: stopping polling, finishing in-flight work (%s again: stop "
                "waiting now)",
                signame,
                signame,
            )
            self.stop()
        else:
            log.warning("%s received again: releasing in-flight work now", signame)
            self._grace_cut.set()

    async def _runner(
        self, stack: AsyncExitStack, rt: PipelineRuntime | QueueRuntime
    ) -> PipelineRunner:
        if isinstance(rt, QueueRuntime):
            m = self.metrics.pipelines.setdefault(rt.settings.name, rt.metrics)
        else:
            m = self.metrics.for_pipeline(rt.settings.name)
        acks = await stack.enter_async_context(
            AckBatcher(
                self._clients.sqs, rt.queue_url, window_s=self._ws.ack_batch_window_s, metrics=m
            )
        )
        handler: Handler
        polls_over = asyncio.Event()
        if isinstance(rt, QueueRuntime):
            handler = rt.handler
        else:
            aws = pin_endpoints(self._clients.aws)
            # Entered before the lease and acks: closed after them, once all work is over.
            executors = await stack.enter_async_context(
                ExecutorSet(
                    rt.settings,
                    s3=self._clients.s3,
                    sink=rt.sink,
                    store=self._store,
                    processors=rt.processors,
                    aws=aws,
                    worker=self._ws,
                )
            )
            handler = MessageHandler(
                rt,
                s3=self._clients.s3,
                store=self._store,
                worker=self._ws,
                metrics=m,
                observer=self._observer,
                stop=self._stop,
                claim_ttl_s=self._claim_ttl_s,
                executors=executors,
                aws=aws,
            )
        lease = await stack.enter_async_context(
            LeaseKeeper(
                acks,
                visibility_timeout_s=rt.settings.visibility_timeout_s,
                job_timeout_s=rt.settings.job_timeout_s,
                metrics=m,
                renew_claims=handler.renew_claims,
            )
        )

        async def before_release() -> None:
            # At a stop, a message is put back once no receive of the pipeline is on
            # the wire: a poll the server still held would take it again (one more
            # receive of its budget, released twice), or a second signal.
            if self._stop.is_set() and not polls_over.is_set():
                await first_set(polls_over, self._grace_cut)

        settler = Settler(
            acks,
            self._clients.sqs,
            pipeline=rt.settings,
            queue_url=rt.queue_url,
            dlq_url=rt.dlq_url,
            worker_id=self._ws.worker_id,
            store=self._store,
            metrics=m,
            before_release=before_release,
        )
        if isinstance(rt, PipelineRuntime):
            await self._start_processors(rt)
        return PipelineRunner(
            rt,
            sqs=self._clients.sqs,
            acks=acks,
            lease=lease,
            handler=handler,
            settler=settler,
            metrics=m,
            observer=self._observer,
            stop=self._stop,
            cut=self._grace_cut,
            burst=self._burst,
            clock=self._clock,
            pollers=self._ws.pollers_per_pipeline,
            polls_over=polls_over,
        )

    async def _start_processors(self, rt: PipelineRuntime) -> None:
        """Call the start hook of every processor instance of the pipeline."""
        for proc in rt.all_processors():
            start = getattr(proc, "start", None)
            if start is not None:
                await start(
                    PipelineContext(
                        pipeline=rt.settings.name,
                        bucket=rt.settings.bucket,
                        worker_id=self._ws.worker_id,
                        s3=self._clients.s3,
                        sink=rt.sink,
                        store=self._store,
                        aws=self._clients.aws,
                        sqs=self._clients.sqs,
                    )
                )

    async def run(self, *, handle_signals: bool = False) -> WorkerMetrics:
        """Run until stopped; return the counters."""
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig.name)
        try:
            async with AsyncExitStack() as stack:
                every: list[PipelineRuntime | QueueRuntime] = [*self._runtimes, *self._queues]
                for rt in every:
                    self.runners.append(await self._runner(stack, rt))
                log.info(
                    "worker %s running: %s",
                    self._ws.worker_id,
                    ", ".join(f"{rt.settings.name} ({rt.queue_url})" for rt in every),
                )
                started = time.monotonic()
                await asyncio.gather(*(r.run() for r in self.runners))
                # Polling has stopped (signal, or every queue drained).
                await self._drain_all()
                for rt in self._runtimes:
                    for proc in rt.all_processors():
                        stop = getattr(proc, "stop", None)
                        if stop is not None:
                            await stop()
                log.info(
                    "worker stopped after %.1fs: %d objects processed, %d duplicates, "
                    "%d dead-lettered, %d retried, %d released",
                    time.monotonic() - started,
                    self.metrics.total("objects_processed"),
                    self.metrics.total("duplicates"),
                    self.metrics.total("dead_lettered"),
                    self.metrics.total("retried"),
                    self.metrics.total("released"),
                )
                failed = [r.failure for r in self.runners if r.failure is not None]
                if failed:
                    raise failed[0]
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        return self.metrics

    async def _drain_all(self) -> None:
        grace = 0.0 if self._grace_cut.is_set() else self._clock.left()
        drains: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*(r.drain(grace) for r in self.runners))
        )
        cut: asyncio.Future[Any] = asyncio.ensure_future(self._grace_cut.wait())
        done, _ = await asyncio.wait({drains, cut}, return_when=asyncio.FIRST_COMPLETED)
        if cut in done:
            await asyncio.gather(*(r.drain(0) for r in self.runners))
            await drains
        cut.cancel()
