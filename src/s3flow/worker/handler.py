"""One SQS message -> one explicit outcome.

:class:`MessageHandler` parses the envelope and runs each record on its own:
identify the upload, claim it, validate, process, record the result. It
decides, never settles: the engine passes the :mod:`~s3flow.worker.outcomes`
value to :class:`~s3flow.worker.acks.Settler`.

Identity is per event (:mod:`~s3flow.worker.identity`). A duplicate delivery of
the same event is acknowledged without work and counted; a new upload is
processed.

A claim held by another worker never spends the message's retry budget: the
handler waits for it with the message still leased (:mod:`~s3flow.worker.holds`
takes, tracks and renews the key locks and claims), and the worker counts
failures in the state store, not receives. What a failed record becomes is the
failure policy's call (:mod:`~s3flow.worker.policy`).

After validation the pipeline's routing table picks the record's processor, executor
and options (:mod:`~s3flow.routing`; a HEAD and the tags are looked up once, only when
a rule needs them); no matching rule quarantines the object with the reason. The
chosen executor runs it (:mod:`s3flow.executors`); before the record counts as done
its declared outputs are verified (:mod:`~s3flow.worker.verify`); the route taken is
recorded in the file's history and the Result's detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from s3flow.errors import (
    Disposition,
    EnvelopeError,
    HoldLostError,
    ObjectMissingError,
    ProcessorError,
    S3flowError,
)
from s3flow.events import ObjectEvent, parse_body
from s3flow.executors import ExecutorSet, ObjectJob, processor_key
from s3flow.metrics import PipelineMetrics
from s3flow.processors.base import Processor, Result
from s3flow.processors.registry import default_executor_for, portable_spec, processor_class
from s3flow.routing import NoRoute, Route, RouteRule, RoutingTable
from s3flow.settings import AwsSettings, PipelineSettings, WorkerSettings
from s3flow.sinks.base import Sink
from s3flow.sinks.receipts import WriteReceipt
from s3flow.state.base import StateStore
from s3flow.state.records import Claim, ClaimOutcome, ObjectId
from s3flow.state.taking import give_back_claim
from s3flow.validation import validate
from s3flow.worker.holds import Holds, KeyLock
from s3flow.worker.identity import (
    as_identified,
    identify,
    is_stale,
    newer_upload_done,
    settle_stale,
)
from s3flow.worker.outcomes import (
    Ack,
    DeadLetter,
    Outcome,
    RecordOutcome,
    RecordPart,
    Release,
    Retry,
    Split,
)
from s3flow.worker.policy import Attempt, FailurePolicy, merge_failures
from s3flow.worker.routes import ObjectLookup, choose_route
from s3flow.worker.source import ReceivedMessage
from s3flow.worker.verify import verify_outputs

#: Seconds between two warnings about skipped events of one cause (another bucket,
#: a key outside the pipeline's prefix or suffix).
SKIP_WARN_EVERY_S = 600

log = logging.getLogger("s3flow.worker")
T = TypeVar("T")


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
        """A message was acked, retried, dead-lettered, split or released."""


class Handler(Protocol):
    """What a :class:`~s3flow.worker.engine.PipelineRunner` drives: message -> outcome.

    ``takes_slot``: False, the runner waits for a processing slot before
    :meth:`handle`; True, the handler awaits ``msg.begin_work()`` itself once what
    is left needs a slot (what comes before only waits on the state store), and
    releases the message if it returns False.
    """

    takes_slot: bool

    async def handle(self, msg: ReceivedMessage) -> Outcome:
        """Work on ``msg``; return how to settle it (never raise for a message's fault)."""
        ...

    async def renew_claims(self, deliveries: list[str]) -> None:
        """Extend what is held for these deliveries (``ReceivedMessage.delivery``),
        called with their visibility beat."""
        ...


@dataclass
class QueueRuntime:
    """A queue whose messages are not S3 events, with its own handler (upload jobs).

    ``settings`` gives the runner its concurrency, visibility, wait and retry
    settings; its processor, bucket and output are not used.
    """

    settings: PipelineSettings
    queue_url: str
    dlq_url: str
    handler: Handler
    #: The queue's counters, shared with ``handler`` (it counts what it processed).
    metrics: PipelineMetrics = field(default_factory=PipelineMetrics)


@dataclass
class PipelineRuntime:
    """A pipeline's settings resolved into live parts (see ``s3flow.app``).

    ``route`` is the pipeline's filter; ``routes`` its routing table (None: built from
    the settings); ``processors`` the instances its routes run inline, by
    :func:`~s3flow.executors.processor_key` (``processor`` is always among them);
    ``processor`` is None when every route runs the pipeline's processor in a container.
    """

    settings: PipelineSettings
    queue_url: str
    dlq_url: str
    processor: Processor | None
    sink: Sink
    route: Route
    routes: RoutingTable | None = None
    processors: dict[str, Processor] = field(default_factory=dict)
    #: The source queue's redrive maxReceiveCount as read at start (None: not read;
    #: the configured ``redrive_max_receive_count`` is used).
    redrive_limit: int | None = None

    @property
    def renew_at(self) -> int:
        """The receive from which a wait that is not the file's fault (an output, an
        executor or the state store out of reach) sends the message again as a new
        one: one before the queue's redrive limit, which would move it to the DLQ
        with no reason."""
        limit = self.redrive_limit or self.settings.redrive_max_receive_count
        return max(1, limit - 1)

    def __post_init__(self) -> None:
        if self.routes is None:
            self.routes = RoutingTable.from_settings(self.settings, default_executor_for)
        p = self.settings
        if self.processor is not None:
            self.processors.setdefault(
                processor_key(portable_spec(p.processor), p.options), self.processor
            )

    def all_processors(self) -> list[Processor]:
        """Every distinct processor instance (for their start/stop hooks)."""
        out: list[Processor] = []
        for proc in [self.processor, *self.processors.values()]:
            if proc is not None and not any(proc is seen for seen in out):
                out.append(proc)
        return out


class MessageHandler:
    """Turns one received message into an :data:`~s3flow.worker.outcomes.Outcome`.

    A record's key lock, claim and superseded check are taken before its processing
    slot (``msg.begin_work()``): those are state-store round trips, and a prefetched
    message does them while it waits, so a slot freed starts reading at once. A
    duplicate or superseded delivery never takes a slot.
    """

    takes_slot = True

    def __init__(
        self,
        rt: PipelineRuntime,
        *,
        s3: Any,
        store: StateStore | None,
        worker: WorkerSettings,
        metrics: PipelineMetrics,
        observer: WorkerObserver,
        stop: asyncio.Event,
        claim_ttl_s: float = 0,
        executors: ExecutorSet | None = None,
        aws: AwsSettings | None = None,
    ) -> None:
        """``stop``: set when the worker stops (a message waiting for a key lock or claim
        then gives up, released). ``executors`` run the records
        (default: this pipeline's, inline only unless the routes name others; the caller
        then closes them); ``aws`` is what pool, subprocess and container runs build their
        clients from."""
        self.rt = rt
        self.p = rt.settings
        self._s3 = s3
        self._aws = aws or AwsSettings()
        self.routes: RoutingTable = rt.routes or RoutingTable.from_settings(
            self.p, default_executor_for
        )
        self.executors = executors or ExecutorSet(
            self.p, s3=s3, sink=rt.sink, store=store, processors=rt.processors, aws=self._aws
        )
        self._declared_by_spec: dict[str, tuple[str | None, bool]] = {}
        #: Deliveries whose work was cancelled (shutdown) while a result was being
        #: recorded: see :meth:`_recorded`.
        self._cut_short: set[str] = set()
        self._store = store
        self._worker = worker
        self.metrics = metrics
        self._observer = observer
        self._holds = Holds(
            store, self.p, worker_id=worker.worker_id, stop=stop, claim_ttl_s=claim_ttl_s
        )
        self._policy = FailurePolicy(
            self.p, s3=s3, store=store, metrics=metrics, renew_at=rt.renew_at
        )
        # cause of skipped events -> (when last warned about, skipped since unsaid)
        self._skips: dict[str, tuple[float, int]] = {}

    # --- the message ----------------------------------------------------------------

    async def handle(self, msg: ReceivedMessage) -> Outcome:
        """Run every record of ``msg``; return how to settle it."""
        try:
            return await self._handle(msg)
        finally:
            self._cut_short.discard(msg.delivery)

    async def _recorded(self, msg: ReceivedMessage, call: Awaitable[T]) -> T:
        """``await call`` (a write that records a result, or gives back the record's key
        lock) to its end, even when the message's work is cancelled meanwhile (shutdown).

        Cancelled while the store completes a record, the record may be completed all
        the same (the store's thread or the request had started): the message must
        then be acknowledged, not released to be received again. So the call is
        finished, the cancellation taken back, and the delivery marked cut short:
        :meth:`_handle` settles what is done and releases what is left, instead of
        working on its next record.
        """
        doing = asyncio.ensure_future(call)
        try:
            return await asyncio.shield(doing)
        except asyncio.CancelledError:
            result = await doing
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self._cut_short.add(msg.delivery)
            return result

    async def _handle(self, msg: ReceivedMessage) -> Outcome:
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
        failed: list[tuple[ObjectEvent, RecordOutcome]] = []
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
                self._skipped(event, reason)
                continue
            if event.is_folder_marker:
                # A folder made in the S3 console: no file, nothing to process.
                self.metrics.objects_skipped += 1
                log.info("skipping %s: a folder marker (0 bytes, key ends in /)", event.uri())
                continue
            # Only the last record hands the slot over: an earlier one has more to read.
            last = event is env.events[-1]
            outcome = await self._record(msg, event, msg.reading_done if last else None)
            if isinstance(outcome, Release):
                # shutdown: the whole message comes back; done records dedupe
                return await self._released(outcome, failed)
            if not last and msg.delivery in self._cut_short:
                return await self._released(
                    Release("shutdown: not finished within shutdown_grace_s"), failed
                )
            if not last:
                # No slot is held while the next record waits for its lock and claim
                # (a slot held there could wait on a prefetched message that waits
                # for a slot).
                msg.pause_work()
            if outcome is not None:
                failed.append((event, outcome))
        if not failed and not env.bad_records:
            return Ack()
        if not env.bad_records and (len(env.events) == 1 or any(e.raw is None for e, _ in failed)):
            return failed[0][1] if len(failed) == 1 else merge_failures(failed)
        # Several records, some failed or not object events: each settles alone.
        parts = []
        for event, outcome in failed:
            assert not isinstance(outcome, Release)
            failures = self._policy.failures_now(msg, None) if isinstance(outcome, Retry) else 0
            parts.append(RecordPart(event.record_body(), outcome, failures))
        for bad in env.bad_records:
            log.error(
                "message %s on %s: Records[%d] is not an S3 object event, dead-lettering "
                "it alone (the message's other records are processed): %s",
                msg.message_id,
                self.p.name,
                bad.index,
                bad.error,
            )
            dead = DeadLetter(bad.error.error_class, str(bad.error))
            parts.append(RecordPart(bad.record_body(), dead))
        log.info(
            "message %s: %d of %d records failed; they settle alone, the rest is done",
            msg.message_id,
            len(parts),
            len(env.events) + len(env.bad_records),
        )
        return Split(tuple(parts))

    def _skipped(self, event: ObjectEvent, reason: str) -> None:
        """Log an event the pipeline's route does not take (it is deleted).

        A filter S3 notifications cannot apply (``key_regex``) doing its job: debug.
        Another bucket's event, or a key outside the prefix or suffix, is the queue
        getting what the pipeline does not take (a notification pointed at the wrong
        queue, a config changed since ``s3flow provision``): a warning, at most once per
        cause every :data:`SKIP_WARN_EVERY_S`, with how many were skipped meanwhile.
        """
        self.metrics.objects_skipped += 1
        log.debug("pipeline %s skips %s: %s", self.p.name, event.uri(), reason)
        foreign = event.bucket != self.p.bucket
        if not foreign and reason.startswith("key does not match"):
            return
        cause = f"bucket {event.bucket}" if foreign else reason
        now = time.monotonic()
        warned_at, unsaid = self._skips.get(cause, (-SKIP_WARN_EVERY_S, 0))
        if now - warned_at < SKIP_WARN_EVERY_S:
            self._skips[cause] = (warned_at, unsaid + 1)
            return
        self._skips[cause] = (now, 0)
        more = f"; {unsaid} more skipped since the last warning" if unsaid else ""
        if foreign:
            log.warning(
                "pipeline %s: queue %s holds events of bucket %r, not of its bucket "
                "%r; they are skipped and deleted (check the pipeline's bucket and "
                "the bucket notifications; said at most every %d s)%s",
                self.p.name,
                self.p.queue,
                event.bucket,
                self.p.bucket,
                SKIP_WARN_EVERY_S,
                more,
            )
            return
        log.warning(
            "pipeline %s: queue %s holds the event of %s, but its %s; skipped and deleted "
            "(the object stays). The bucket's notification sends keys the pipeline does "
            "not take: was its prefix or suffix changed since `s3flow provision`? Run it "
            "again to match the notification to the config (said at most every %d s)%s",
            self.p.name,
            self.p.queue,
            event.uri(),
            reason,
            SKIP_WARN_EVERY_S,
            more,
        )

    # --- one record ----------------------------------------------------------------

    async def _record(
        self,
        msg: ReceivedMessage,
        event: ObjectEvent,
        reading_done: Callable[[], None] | None = None,
    ) -> RecordOutcome | None:
        """Identify, claim, validate, process, record. None = done (ack-able)."""
        asked_at = int(time.time())
        try:
            oid, head = await identify(self._s3, event)
        except S3flowError as err:
            if isinstance(err, ObjectMissingError):
                await self._settle_stale(msg, event, asked_at, "the object no longer exists")
            return await self._failed(Attempt(msg, event), err)
        if is_stale(event, head):
            modified = (head or {}).get("LastModified")
            before = int(modified.timestamp()) if isinstance(modified, datetime) else asked_at
            await self._settle_stale(
                msg, event, before, f"superseded: the object is upload {oid.version} now"
            )
        event = as_identified(event, head)
        if self._store is None:
            return await self._claimed(msg, event, oid, head, reading_done)
        # One upload of a key at a time (across workers): each reads the object as it
        # is then, so the last one to run reads the newest upload.
        lock = await self._holds.lock_key(msg, event)
        if not isinstance(lock, KeyLock):
            return lock
        try:
            return await self._claimed(msg, event, oid, head, reading_done)
        finally:
            # Finished even when cancelled meanwhile: a release cut short would leave the
            # key locked until its TTL, and a decided outcome (the record may be
            # completed) is not undone by a cancellation that comes during the release.
            await self._recorded(msg, self._holds.unlock(msg.delivery, lock))

    async def _settle_stale(
        self, msg: ReceivedMessage, event: ObjectEvent, before: int, why: str
    ) -> None:
        """Settle the records of the uploads ``event`` names that are no longer the object
        (see :func:`~s3flow.worker.identity.settle_stale`); a store error is logged only:
        the message's own work goes on."""
        try:
            done = await settle_stale(
                self._store,
                event,
                before,
                why=why,
                pipeline=self.p.name,
                owner=f"{self._worker.worker_id}:{msg.message_id}",
                ttl_s=self._holds.ttl_s,
            )
        except S3flowError as exc:
            log.warning("%s: earlier uploads' records not settled: %s", event.uri(), exc)
            return
        for version in done:
            log.info("%s: upload %s settled without work: %s", event.uri(), version, why)

    async def _claimed(
        self,
        msg: ReceivedMessage,
        event: ObjectEvent,
        oid: ObjectId,
        head: dict[str, Any] | None,
        reading_done: Callable[[], None] | None = None,
    ) -> RecordOutcome | None:
        """Claim the upload, then validate, process and record it."""
        token: int | None = None
        failures_before = 0
        store = self._store
        version = oid.version
        if store is not None:
            got = await self._holds.claim(msg, event, oid)
            if not isinstance(got, Claim):
                return got
            if got.outcome is ClaimOutcome.DONE:
                self.metrics.duplicates += 1
                await store.incr(f"duplicates:{self.p.name}")
                log.info(
                    "duplicate delivery of %s (version %s, message %s): already completed, "
                    "acknowledged without work",
                    event.uri(),
                    version,
                    msg.message_id,
                )
                return None
            if got.outcome is ClaimOutcome.PARKED:
                self.metrics.objects_skipped += 1
                log.info(
                    "%s (version %s) is %s: not processed again until released "
                    "(s3flow files release / reprocess)",
                    event.uri(),
                    version,
                    got.record.status.value,
                )
                return None
            token, failures_before = got.token, got.record.failures
        attempt = Attempt(msg, event, oid, token, failures_before)
        try:
            if store is not None and token is not None:
                self._holds.track_claim(msg.delivery, oid, token)
                newer = await newer_upload_done(store, event, oid)
                if newer is not None:
                    await self._recorded(
                        msg,
                        store.complete(
                            oid, token=token, outputs=[], detail=f"superseded by upload {newer}"
                        ),
                    )
                    self.metrics.objects_skipped += 1
                    log.info(
                        "%s: event %s is older than upload %s, already processed: "
                        "acknowledged without work",
                        event.uri(),
                        version,
                        newer,
                    )
                    return None
            lookup = ObjectLookup(self._s3, event, head)
            if self.p.validation.active:
                try:
                    reason = await self._validate(event, lookup)
                    if reason is not None:
                        return await self._policy.quarantine(
                            event, oid, token, reason, "ValidationFailed"
                        )
                except S3flowError as exc:
                    return await self._failed(attempt, exc)
            try:
                rule = await choose_route(self.routes, event, lookup)
                if isinstance(rule, NoRoute):
                    return await self._policy.quarantine(event, oid, token, rule.reason, "NoRoute")
            except S3flowError as exc:  # the lookup, or the tagging (retryable, object gone)
                return await self._failed(attempt, exc)
            if not await msg.begin_work():
                # Stopping while waiting for a slot: nothing was done, give it all back.
                await self._give_back(oid, token)
                return Release("stopping: the work had not started")
            return await self._run_processor(attempt, rule, reading_done)
        except BaseException:
            # Cancelled (shutdown) or an unexpected error: never leave the claim held.
            await self._give_back(oid, token)
            raise
        finally:
            self._holds.forget_claim(msg.delivery, oid)

    async def _released(
        self, release: Release, failed: list[tuple[ObjectEvent, RecordOutcome]]
    ) -> Release:
        """``release`` for the whole message: the claims kept for its earlier records'
        dead letters (see :class:`~s3flow.worker.outcomes.HeldClaim`) are given back, so
        that the message's next delivery runs them at once instead of waiting them out."""
        for _, outcome in failed:
            if isinstance(outcome, DeadLetter):
                for held in outcome.claims:
                    await self._give_back(held.oid, held.token)
        return release

    async def _give_back(self, oid: ObjectId | None, token: int | None) -> None:
        """Release the claim ``token`` on ``oid``, if any (best effort; finished before a
        cancellation goes on, so the claim is free before the worker closes its store).

        A claim already finished (completed, failed) makes this a fenced no-op.
        """
        if self._store is not None and oid is not None and token is not None:
            with contextlib.suppress(S3flowError):
                await give_back_claim(self._store, oid, token=token)

    def _declared(self, spec: str) -> tuple[str | None, bool]:
        """What processor ``spec`` declares for output verification: its
        ``output_content_type`` (None: not checked) and ``verified_by_write``."""
        if spec not in self._declared_by_spec:
            try:
                cls = processor_class(spec)
            except S3flowError:
                cls = None
            self._declared_by_spec[spec] = (
                getattr(cls, "output_content_type", None),
                bool(getattr(cls, "verified_by_write", False)),
            )
        return self._declared_by_spec[spec]

    async def _run_processor(
        self, attempt: Attempt, rule: RouteRule, reading_done: Callable[[], None] | None = None
    ) -> RecordOutcome | None:
        event, oid, token = attempt.event, attempt.oid, attempt.token
        job = ObjectJob(
            processor=portable_spec(rule.processor),
            options=dict(rule.options),
            event=event,
            output=self.p.output,
            aws=self._aws,
            pipeline=self.p.name,
            route=rule.name,
            worker_id=self._worker.worker_id,
            max_uncompressed_bytes=self.p.max_uncompressed_bytes,
            timeout_s=self._time_left(attempt.msg),
        )
        content_type, by_write = self._declared(rule.processor)
        # Filled by the inline executor's sink only: outputs written elsewhere are fetched.
        receipts: dict[str, WriteReceipt] | None = (
            {} if by_write and self.p.verify_outputs and self.p.verify_outputs_by_write else None
        )
        delivery = attempt.msg.delivery
        fenced = self._store is not None and token is not None
        lost = self._holds.lost(delivery) if fenced else None

        async def fence() -> None:
            if not await self._holds.fence(delivery):
                raise HoldLostError(f"{event.uri()}: {_LOST}")

        self._observer.object_started(self.p.name, event)
        try:
            run = self.executors.run(
                rule.executor,
                job,
                lambda n: self._observer.object_progress(self.p.name, event, n),
                reading_done=reading_done,
                receipts=receipts,
                waited=attempt.msg.work_waited,
                before_write=fence if fenced else None,
            )
            result = await run if lost is None else await _unless(run, lost, event)
            if lost is not None and lost.is_set():
                return await self._lost(event, oid, token)
            if self.p.verify_outputs:
                await verify_outputs(
                    self._s3, result.outputs, content_type=content_type, receipts=receipts
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if lost is not None and lost.is_set():
                # whatever the processor made of the fence's error
                return await self._lost(event, oid, token)
            if isinstance(exc, S3flowError):
                return await self._failed(attempt, exc)
            log.exception("processor %s raised on %s", rule.processor, event.uri())
            err = ProcessorError(f"{type(exc).__name__}: {exc}".strip())
            return await self._failed(attempt, err)
        refs = {k: result.detail[k] for k in ("task_arn", "job_arn") if result.detail.get(k)}
        result.detail["route"] = {
            "name": rule.name,
            "processor": rule.processor,
            "executor": rule.executor,
            **refs,
        }
        history = rule.describe() + "".join(f", {v}" for v in refs.values())
        stored = True
        if self._store is not None and oid is not None and token is not None:
            stored = await self._recorded(
                attempt.msg,
                self._store.complete(oid, token=token, outputs=result.outputs, detail=history),
            )
        if not stored:
            log.warning(
                "%s: the claim expired while processing and another worker took it over; "
                "outputs written before this was known stay (the other worker writes its "
                "own over them)",
                event.uri(),
            )
        self.metrics.objects_processed += 1
        self.metrics.bytes_in += int(result.counters.get("bytes_in", 0))
        self.metrics.bytes_out += int(result.counters.get("bytes_out", 0))
        # Called after the state is recorded and before the ack (crash tests hook here).
        self._observer.object_finished(self.p.name, event, result, None)
        return None

    async def _lost(self, event: ObjectEvent, oid: ObjectId | None, token: int | None) -> Release:
        """The run's lock or claim was lost: nothing more is written nor recorded, and the
        message goes back to the queue (no failure counted): its next delivery finds the
        other worker's result (a duplicate, or superseded by a newer upload).

        Only the key lock may have been lost: the claim, if still this run's, is given
        back (fenced by its token), so the message's next delivery need not wait it out.
        """
        log.warning("%s: %s", event.uri(), _LOST)
        await self._give_back(oid, token)
        return Release(_LOST)

    def _time_left(self, msg: ReceivedMessage) -> float:
        """What is left of ``job_timeout_s`` for ``msg``'s run (counted from when its work
        started: an earlier record of the message used some), at least a second."""
        started = msg.started_at if msg.started_at is not None else time.monotonic()
        return max(1.0, started + self.p.job_timeout_s - time.monotonic())

    async def _validate(self, event: ObjectEvent, lookup: ObjectLookup) -> str | None:
        size, ctype = event.size, None
        head = lookup.cached_head
        if head is None and (size is None or self.p.validation.content_types):
            try:
                head = await lookup.head()
            except S3flowError as err:
                if err.disposition is Disposition.SKIP:
                    return None  # gone: the processor's read reports it
                raise
        if head is not None:
            size, ctype = int(head.get("ContentLength", 0)), head.get("ContentType")
        return validate(self.p.validation, event.key, size, ctype)

    async def _failed(self, attempt: Attempt, exc: S3flowError) -> RecordOutcome | None:
        """Report the failure, then let the failure policy decide the record's outcome."""
        self._observer.object_finished(self.p.name, attempt.event, None, exc)
        return await self._policy.failed(attempt, exc)

    # --- heartbeat ---------------------------------------------------------------------

    async def renew_claims(self, deliveries: list[str]) -> None:
        """Extend the locks and claims held for these deliveries (with their visibility beat)."""
        await self._holds.renew(deliveries)


_LOST = (
    "its key lock or claim expired and another worker took it over (this worker stalled "
    "past the claim's TTL, or the state store was out of reach): the run was stopped and "
    "wrote nothing more; the message is released"
)


async def _unless(run: Awaitable[Result], lost: asyncio.Event, event: ObjectEvent) -> Result:
    """``run``'s result; HoldLostError when ``lost`` is set first (the run is then
    cancelled and waited for, so that it writes nothing after this returns)."""
    task = asyncio.ensure_future(run)
    waiter = asyncio.ensure_future(lost.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled (a shutdown): the run goes too
        task.cancel()
        waiter.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)
        raise
    waiter.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise HoldLostError(f"{event.uri()}: {_LOST}")
