"""The worker engine: dispatch, concurrency, failure policy, graceful shutdown.

One :class:`PipelineRunner` per pipeline owns its pollers, slots, heartbeat
and batched acks. Each message is handled by one task that turns it into an
explicit outcome (:mod:`s3flow.worker.outcomes`) and settles it:

* ``Ack`` - delete (batched);
* ``Retry`` - ChangeMessageVisibility to a jittered exponential backoff;
* ``DeadLetter`` - SendMessage to the DLQ with the error as message attributes,
  then delete (if the send fails the message is retried instead: never lost);
* ``Release`` - visibility 0 (shutdown).

A message's slot is held from receive until it is settled, so at most
``concurrency`` messages (and objects) are in flight per pipeline.
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

from s3flow.errors import (
    Disposition,
    EnvelopeError,
    ProcessorError,
    S3flowError,
    translate_aws_error,
)
from s3flow.events import ObjectEvent, parse_body
from s3flow.metrics import PipelineMetrics, WorkerMetrics
from s3flow.processors.base import PipelineContext, ProcessContext, Processor, Result
from s3flow.quarantine import tag_quarantined
from s3flow.routing import Route
from s3flow.settings import PipelineSettings, WorkerSettings
from s3flow.sinks.base import Sink
from s3flow.state.base import ClaimOutcome, FileStatus, ObjectId, StateStore
from s3flow.validation import validate
from s3flow.worker.acks import AckBatcher
from s3flow.worker.lease import LeaseKeeper
from s3flow.worker.outcomes import Ack, DeadLetter, Outcome, Release, Retry, backoff_s
from s3flow.worker.source import QueueSource, ReceivedMessage, Slots

log = logging.getLogger("s3flow.worker")

_ATTR_MAX = 1024


class WorkerObserver:
    """No-op hooks the engine calls; subclass to show progress or collect results."""

    def object_started(self, pipeline: str, event: ObjectEvent) -> None:
        """An object's processing starts."""

    def object_progress(self, pipeline: str, event: ObjectEvent, nbytes: int) -> None:
        """``nbytes`` more (uncompressed) bytes of the object were processed."""

    def object_finished(
        self, pipeline: str, event: ObjectEvent, result: Result | None, error: S3flowError | None
    ) -> None:
        """An object finished: ``result`` on success, else the classified error."""

    def message_settled(self, pipeline: str, message: ReceivedMessage, outcome: Outcome) -> None:
        """A message was acked, retried, dead-lettered or released."""


@dataclass
class PipelineRuntime:
    """A pipeline's settings resolved into live parts (see ``s3flow.app``)."""

    settings: PipelineSettings
    queue_url: str
    dlq_url: str
    processor: Processor
    sink: Sink
    route: Route


class PipelineRunner:
    """Runs one pipeline: pollers -> handlers -> settle."""

    def __init__(
        self,
        rt: PipelineRuntime,
        *,
        sqs: Any,
        s3: Any,
        acks: AckBatcher,
        lease: LeaseKeeper,
        worker: WorkerSettings,
        metrics: PipelineMetrics,
        observer: WorkerObserver,
        stop: asyncio.Event,
        burst: bool,
        store: StateStore | None = None,
        claim_ttl_s: float = 0,
    ) -> None:
        self.rt = rt
        self._store = store
        self._claim_ttl = claim_ttl_s or rt.settings.visibility_timeout_s * 1.5
        self._claims: dict[tuple[str, str], tuple[ObjectId, int]] = {}
        self._dead: dict[str, list[ObjectId]] = {}  # message id -> objects to mark dead
        self.p = rt.settings
        self._sqs = sqs
        self._s3 = s3
        self._acks = acks
        self._lease = lease
        self._worker = worker
        self.metrics = metrics
        self._observer = observer
        self._stop = stop
        self._burst = burst
        self.slots = Slots(self.p.concurrency)
        self.drained = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self._work: dict[str, asyncio.Task[Outcome]] = {}
        self._in_flight = 0
        n = worker.pollers_per_pipeline or max(1, min(4, self.p.concurrency // 10))
        wait = min(self.p.wait_time_s, 1) if burst else self.p.wait_time_s
        self._sources = [
            QueueSource(
                sqs, rt.queue_url, self.slots, self._dispatch, wait_time_s=wait, metrics=metrics
            )
            for _ in range(n)
        ]
        self._pollers: list[asyncio.Task[None]] = []

    # --- polling -----------------------------------------------------------

    async def run(self) -> None:
        """Poll until stopped (or, in burst mode, until the queue is drained)."""
        self._pollers = [
            asyncio.create_task(src.run(self._stop, self._on_empty), name=f"poll:{self.p.name}:{i}")
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
        """Cancel the pollers at once (an in-progress long poll is abandoned)."""
        for t in self._pollers:
            t.cancel()
        for t in self._pollers:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await t
                except Exception:
                    log.exception("poller of %s failed", self.p.name)

    async def _on_empty(self) -> None:
        # Slots reserved by a poller that is mid-receive do not count: a message
        # it is about to get is invisible, so the depth check below sees it.
        if not self._burst or self._handlers:
            return
        try:
            attrs = (
                await self._sqs.get_queue_attributes(
                    QueueUrl=self.rt.queue_url,
                    AttributeNames=[
                        "ApproximateNumberOfMessages",
                        "ApproximateNumberOfMessagesNotVisible",
                        "ApproximateNumberOfMessagesDelayed",
                    ],
                )
            ).get("Attributes", {})
        except Exception as exc:
            log.warning(
                "cannot read queue depth: %s", translate_aws_error(exc, "GetQueueAttributes")
            )
            return
        left = sum(int(v) for v in attrs.values())
        if left == 0 and not self._handlers:
            log.info("pipeline %s: queue drained (burst mode)", self.p.name)
            self.drained.set()

    def _dispatch(self, msg: ReceivedMessage) -> None:
        self._lease.track(msg.message_id, msg.receipt_handle, msg.received_at)
        task = asyncio.create_task(self._handle(msg), name=f"msg:{msg.message_id}")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    # --- handling ------------------------------------------------------------

    async def _handle(self, msg: ReceivedMessage) -> None:
        self._in_flight += 1
        self.metrics.max_in_flight = max(self.metrics.max_in_flight, self._in_flight)
        work = asyncio.create_task(self._process_message(msg))
        self._work[msg.message_id] = work
        try:
            try:
                outcome: Outcome = await work
            except asyncio.CancelledError:
                outcome = Release("shutdown: not finished within shutdown_grace_s")
            except Exception as exc:
                log.exception("internal error handling message %s", msg.message_id)
                outcome = Retry(
                    backoff_s(msg.receive_count, self.p.retry_base_s, self.p.retry_max_s),
                    type(exc).__name__,
                    str(exc),
                )
            finally:
                self._work.pop(msg.message_id, None)
                self._lease.untrack(msg.message_id)
            await self._settle(msg, outcome)
        finally:
            self._in_flight -= 1
            await self.slots.release(1)

    async def _process_message(self, msg: ReceivedMessage) -> Outcome:
        try:
            env = parse_body(msg.body)
        except EnvelopeError as exc:
            log.error(
                "message %s on %s is not a known envelope, dead-lettering: %s",
                msg.message_id,
                self.p.name,
                exc,
            )
            return DeadLetter(exc.error_class, str(exc))
        if env.test_event:
            self.metrics.test_events += 1
            log.info("message %s is an s3:TestEvent; acknowledged", msg.message_id)
            return Ack("s3:TestEvent")
        for event in env.events:
            if not event.is_created:
                self.metrics.objects_skipped += 1
                if event.is_removed and self.p.ignore_removed:
                    log.debug("ignoring %s for %s", event.event_name, event.uri())
                else:
                    log.info("no action for %s on %s", event.event_name, event.uri())
                continue
            reason = self.rt.route.rejects(event)
            if reason is not None:
                self.metrics.objects_skipped += 1
                log.debug("pipeline %s skips %s: %s", self.p.name, event.uri(), reason)
                continue
            failure = await self._process_object(msg, event)
            if failure is not None:
                return failure
        return Ack()

    async def _process_object(self, msg: ReceivedMessage, event: ObjectEvent) -> Outcome | None:
        """Validate, claim, process, record. None = done with this object (ack-able)."""
        oid = ObjectId(event.bucket, event.key, event.version_id or event.etag or "")
        token: int | None = None
        store = self._store
        if store is not None:
            claim = await store.claim(
                oid,
                pipeline=self.p.name,
                owner=self._worker.worker_id,
                ttl_s=self._claim_ttl,
                size=event.size,
                sequencer=event.sequencer,
            )
            if claim.outcome is ClaimOutcome.DONE:
                self.metrics.duplicates += 1
                await store.incr(f"duplicates:{self.p.name}")
                log.info("%s was already completed: duplicate acknowledged", event.uri())
                return None
            if claim.outcome is ClaimOutcome.PARKED:
                self.metrics.objects_skipped += 1
                log.info(
                    "%s is %s: not processed again until released",
                    event.uri(),
                    claim.record.status.value,
                )
                return None
            if claim.outcome is ClaimOutcome.BUSY:
                # Usually a duplicate delivery racing the first: look again soon.
                delay = backoff_s(msg.receive_count, self.p.retry_base_s, self.p.retry_max_s)
                delay = max(1, min(delay, self.p.visibility_timeout_s))
                log.info(
                    "%s is being processed elsewhere; looking again in %ds", event.uri(), delay
                )
                return Retry(delay, "ClaimBusy", "another worker holds the claim")
            token = claim.token
            self._claims[(msg.message_id, event.key)] = (oid, token)
        try:
            # Validated under the claim, so quarantining is fenced like any outcome.
            if self.p.validation.active:
                reason = await self._validate(event)
                if reason is not None:
                    await self._quarantine(event, oid, token, reason, "ValidationFailed")
                    return None
            return await self._run_processor(msg, event, oid, token)
        except asyncio.CancelledError:
            if store is not None and token is not None:
                await asyncio.shield(store.release(oid, token=token))
            raise
        finally:
            self._claims.pop((msg.message_id, event.key), None)

    async def _run_processor(
        self, msg: ReceivedMessage, event: ObjectEvent, oid: ObjectId, token: int | None
    ) -> Outcome | None:
        ctx = ProcessContext(
            event=event,
            pipeline=self.p.name,
            worker_id=self._worker.worker_id,
            s3=self._s3,
            sink=self.rt.sink,
            report_progress=lambda n: self._observer.object_progress(self.p.name, event, n),
            store=self._store,
        )
        self._observer.object_started(self.p.name, event)
        try:
            result = await self.rt.processor.process(ctx)
        except asyncio.CancelledError:
            raise
        except S3flowError as exc:
            return await self._failed(msg, event, oid, token, exc)
        except Exception as exc:
            log.exception("processor %s raised on %s", self.p.processor, event.uri())
            err = ProcessorError(f"{type(exc).__name__}: {exc}".strip())
            return await self._failed(msg, event, oid, token, err)
        stored = True
        if self._store is not None and token is not None:
            stored = await self._store.complete(oid, token=token, outputs=result.outputs)
        if not stored:
            log.warning("%s: claim lost before completion (another worker took over)", event.uri())
        self.metrics.objects_processed += 1
        self.metrics.bytes_in += int(result.counters.get("bytes_in", 0))
        self.metrics.bytes_out += int(result.counters.get("bytes_out", 0))
        # Called after the state is recorded and before the ack (crash tests hook here).
        self._observer.object_finished(self.p.name, event, result, None)
        return None

    async def _validate(self, event: ObjectEvent) -> str | None:
        size, ctype = event.size, None
        if size is None or self.p.validation.content_types:
            try:
                head = await self._s3.head_object(Bucket=event.bucket, Key=event.key)
            except Exception as exc:
                err = translate_aws_error(exc, f"HeadObject {event.uri()}")
                if err.disposition is Disposition.SKIP:
                    return None  # gone: the processor's read reports it
                raise err from exc
            size, ctype = int(head.get("ContentLength", 0)), head.get("ContentType")
        return validate(self.p.validation, event.key, size, ctype)

    async def _quarantine(
        self, event: ObjectEvent, oid: ObjectId, token: int | None, reason: str, error_class: str
    ) -> None:
        """Tag the object and record it as quarantined; its message is then acked."""
        await tag_quarantined(self._s3, event.bucket, event.key, reason, event.version_id)
        if self._store is not None and token is not None:
            await self._store.fail(
                oid,
                token=token,
                status=FileStatus.QUARANTINED,
                error_class=error_class,
                error=reason,
            )
        self.metrics.quarantined += 1
        log.warning("%s quarantined (%s): %s", event.uri(), error_class, reason)

    async def _failed(
        self,
        msg: ReceivedMessage,
        event: ObjectEvent,
        oid: ObjectId,
        token: int | None,
        exc: S3flowError,
    ) -> Outcome | None:
        self._observer.object_finished(self.p.name, event, None, exc)
        where = f"{event.uri()} (message {msg.message_id}, receive #{msg.receive_count})"
        status = FileStatus.DEAD
        outcome: Outcome | None
        if exc.disposition is Disposition.SKIP:
            self.metrics.objects_skipped += 1
            log.warning("%s: %s; acknowledging without output", where, exc)
            status, outcome = FileStatus.FAILED, None
        elif exc.disposition is Disposition.RETRYABLE:
            if msg.receive_count >= self.p.max_receive_count:
                log.error("%s failed on its last allowed receive: %s", where, exc)
                outcome = DeadLetter(f"RetriesExhausted.{exc.error_class}", str(exc))
            else:
                delay = backoff_s(msg.receive_count, self.p.retry_base_s, self.p.retry_max_s)
                log.warning(
                    "%s failed (%s), retrying in %ds: %s", where, exc.error_class, delay, exc
                )
                status, outcome = FileStatus.FAILED, Retry(delay, exc.error_class, str(exc))
        elif exc.disposition is Disposition.QUARANTINE or self.p.on_permanent_error == "quarantine":
            await self._quarantine(event, oid, token, str(exc), exc.error_class)
            return None
        else:
            log.error("%s failed permanently (%s), dead-lettering: %s", where, exc.error_class, exc)
            outcome = DeadLetter(exc.error_class, str(exc))
        if self._store is not None and token is not None:
            # Recorded as failed now; marked dead only once the DLQ has the message.
            await self._store.fail(
                oid,
                token=token,
                status=FileStatus.FAILED,
                error_class=exc.error_class,
                error=str(exc),
            )
            if status is FileStatus.DEAD:
                self._dead.setdefault(msg.message_id, []).append(oid)
        return outcome

    async def renew_claims(self) -> None:
        """Extend the state-store claims of objects in progress (called periodically)."""
        if self._store is None:
            return
        for oid, token in list(self._claims.values()):
            if not await self._store.renew(oid, token=token, ttl_s=self._claim_ttl):
                log.warning("claim on s3://%s/%s was lost", oid.bucket, oid.key)

    # --- settling ------------------------------------------------------------

    async def _settle(self, msg: ReceivedMessage, outcome: Outcome) -> None:
        dead = self._dead.pop(msg.message_id, [])
        if isinstance(outcome, DeadLetter) and await self._send_to_dlq(msg, outcome):
            for oid in dead:
                try:
                    if self._store is not None:
                        await self._store.set_status(oid, FileStatus.DEAD, detail=outcome.error)
                except S3flowError as exc:
                    log.warning("could not mark s3://%s/%s dead: %s", oid.bucket, oid.key, exc)
        elif isinstance(outcome, DeadLetter):
            outcome = Retry(
                backoff_s(msg.receive_count, self.p.retry_base_s, self.p.retry_max_s),
                outcome.error_class,
                outcome.error,
            )
        if isinstance(outcome, Ack | DeadLetter):
            if await self._acks.delete(msg.receipt_handle):
                self.metrics.acked += int(isinstance(outcome, Ack))
            else:
                log.warning("delete of message %s failed; it will be redelivered", msg.message_id)
        elif isinstance(outcome, Retry):
            self.metrics.retried += 1
            await self._acks.change_visibility(msg.receipt_handle, outcome.delay_s)
        elif isinstance(outcome, Release):
            self.metrics.released += 1
            await self._acks.change_visibility(msg.receipt_handle, 0)
        self._observer.message_settled(self.p.name, msg, outcome)

    async def _send_to_dlq(self, msg: ReceivedMessage, outcome: DeadLetter) -> bool:
        def attr(value: object) -> dict[str, str]:
            return {"DataType": "String", "StringValue": (str(value) or "-")[:_ATTR_MAX]}

        try:
            await self._sqs.send_message(
                QueueUrl=self.rt.dlq_url,
                MessageBody=msg.body or "(empty body)",
                MessageAttributes={
                    "s3flow.error-class": attr(outcome.error_class),
                    "s3flow.error": attr(outcome.error),
                    "s3flow.pipeline": attr(self.p.name),
                    "s3flow.source-queue": attr(self.rt.queue_url),
                    "s3flow.source-message-id": attr(msg.message_id),
                    "s3flow.receive-count": attr(msg.receive_count),
                    "s3flow.worker-id": attr(self._worker.worker_id),
                },
            )
        except Exception as exc:
            log.error(
                "could not dead-letter message %s (%s); retrying it instead",
                msg.message_id,
                translate_aws_error(exc, "SendMessage (DLQ)"),
            )
            return False
        self.metrics.dead_lettered += 1
        return True

    # --- shutdown -------------------------------------------------------------

    async def drain(self, grace_s: float) -> None:
        """Give in-flight messages ``grace_s`` to finish, then release the rest."""
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=grace_s)
        for work in list(self._work.values()):
            work.cancel()
        while self._handlers:
            await asyncio.wait(set(self._handlers))


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
    ) -> None:
        self._clients = clients
        self._store = store
        self._claim_ttl_s = claim_ttl_s
        self._runtimes = runtimes
        self._ws = worker
        self._observer = observer or WorkerObserver()
        self._burst = burst
        self._stop = asyncio.Event()
        self._signals = 0
        self.metrics = WorkerMetrics()
        self.runners: list[PipelineRunner] = []
        self._grace_cut = asyncio.Event()

    def stop(self) -> None:
        """Ask the worker to shut down gracefully (what SIGTERM/SIGINT do)."""
        self._stop.set()

    def _on_signal(self, signame: str) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s received: stopping polling, finishing in-flight work", signame)
            self.stop()
        else:
            log.warning("%s received again: releasing in-flight work now", signame)
            self._grace_cut.set()

    async def run(self, *, handle_signals: bool = False) -> WorkerMetrics:
        """Run until stopped; return the counters."""
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig.name)
        try:
            async with AsyncExitStack() as stack:
                for rt in self._runtimes:
                    m = self.metrics.for_pipeline(rt.settings.name)
                    acks = await stack.enter_async_context(
                        AckBatcher(
                            self._clients.sqs,
                            rt.queue_url,
                            window_s=self._ws.ack_batch_window_s,
                            metrics=m,
                        )
                    )
                    lease = await stack.enter_async_context(
                        LeaseKeeper(
                            acks,
                            visibility_timeout_s=rt.settings.visibility_timeout_s,
                            job_timeout_s=rt.settings.job_timeout_s,
                            metrics=m,
                        )
                    )
                    start = getattr(rt.processor, "start", None)
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
                            )
                        )
                    self.runners.append(
                        PipelineRunner(
                            rt,
                            sqs=self._clients.sqs,
                            s3=self._clients.s3,
                            acks=acks,
                            lease=lease,
                            worker=self._ws,
                            metrics=m,
                            observer=self._observer,
                            stop=self._stop,
                            burst=self._burst,
                            store=self._store,
                            claim_ttl_s=self._claim_ttl_s,
                        )
                    )
                started = time.monotonic()
                renewer = asyncio.create_task(self._renew_claims_forever())
                try:
                    await asyncio.gather(*(r.run() for r in self.runners))
                    # Polling has stopped (signal, or every queue drained).
                    await self._drain_all()
                finally:
                    renewer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await renewer
                for rt in self._runtimes:
                    stop = getattr(rt.processor, "stop", None)
                    if stop is not None:
                        await stop()
                log.info(
                    "worker stopped after %.1fs: %d objects processed, %d dead-lettered, "
                    "%d retried, %d released",
                    time.monotonic() - started,
                    self.metrics.total("objects_processed"),
                    self.metrics.total("dead_lettered"),
                    self.metrics.total("retried"),
                    self.metrics.total("released"),
                )
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        return self.metrics

    async def _renew_claims_forever(self) -> None:
        if self._store is None or not self.runners:
            return
        period = min(r._claim_ttl for r in self.runners) / 3
        while True:
            await asyncio.sleep(period)
            for r in self.runners:
                try:
                    await r.renew_claims()
                except S3flowError as exc:
                    log.warning("renewing claims failed: %s", exc)

    async def _drain_all(self) -> None:
        grace = self._ws.shutdown_grace_s
        drains: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*(r.drain(grace) for r in self.runners))
        )
        cut: asyncio.Future[Any] = asyncio.ensure_future(self._grace_cut.wait())
        done, _ = await asyncio.wait({drains, cut}, return_when=asyncio.FIRST_COMPLETED)
        if cut in done:
            await asyncio.gather(*(r.drain(0) for r in self.runners))
            await drains
        cut.cancel()
