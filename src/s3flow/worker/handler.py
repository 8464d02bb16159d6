"""One SQS message -> one explicit outcome.

:class:`MessageHandler` parses the envelope and runs each record on its own:
identify the upload, claim it, validate, process, record the result. It
decides, never settles: the engine passes the :mod:`~s3flow.worker.outcomes`
value to :class:`~s3flow.worker.acks.Settler`.

Identity is per event (see docs/operations.md, "Identity"): the versionId in a
versioned bucket, else ``<eTag>@<sequencer>``, else the object's
``<eTag>@t<LastModified>`` read with a HEAD. A duplicate delivery of the same
event is acknowledged without work and counted; a new upload is processed.

A claim held by another worker never spends the message's retry budget: the
handler waits for it with the message still leased (the heartbeat keeps it
invisible), and the worker counts failures in the state store, not receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from s3flow.errors import (
    Disposition,
    EnvelopeError,
    OutputUnavailableError,
    ProcessorError,
    S3flowError,
    translate_aws_error,
)
from s3flow.events import ObjectEvent, content_version, parse_body
from s3flow.metrics import PipelineMetrics
from s3flow.processors.base import ProcessContext, Processor, Result
from s3flow.quarantine import tag_quarantined
from s3flow.routing import Route
from s3flow.settings import PipelineSettings, WorkerSettings
from s3flow.sinks.base import Sink
from s3flow.state.base import Claim, ClaimOutcome, FileStatus, ObjectId, StateStore
from s3flow.validation import validate
from s3flow.worker.outcomes import (
    Ack,
    DeadLetter,
    Outcome,
    RecordPart,
    Release,
    Retry,
    Split,
    backoff_s,
)
from s3flow.worker.source import ReceivedMessage

log = logging.getLogger("s3flow.worker")
T = TypeVar("T")

#: Message attribute carrying a re-sent record's failures so far.
FAILURES_ATTR = "s3flow.failures"

_WAIT_FIRST_S = 0.5  # first look again at a busy claim; doubles up to _WAIT_MAX_S
_WAIT_MAX_S = 5.0


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


@dataclass
class PipelineRuntime:
    """A pipeline's settings resolved into live parts (see ``s3flow.app``)."""

    settings: PipelineSettings
    queue_url: str
    dlq_url: str
    processor: Processor
    sink: Sink
    route: Route


RecordOutcome = Retry | DeadLetter | Release


def prior_failures(msg: ReceivedMessage) -> int:
    """Failures a re-sent record carried in its ``s3flow.failures`` attribute (0 if none)."""
    attr = msg.message_attributes.get(FAILURES_ATTR) or {}
    try:
        return max(0, int(str(attr.get("StringValue", "0"))))
    except ValueError:
        return 0


class MessageHandler:
    """Turns one received message into an :data:`~s3flow.worker.outcomes.Outcome`."""

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
    ) -> None:
        self.rt = rt
        self.p = rt.settings
        self._s3 = s3
        self._store = store
        self._worker = worker
        self.metrics = metrics
        self._observer = observer
        self._stop = stop
        self.claim_ttl_s = claim_ttl_s or float(self.p.visibility_timeout_s)
        # message id -> claims and key locks held for it (renewed with its heartbeat)
        self._claims: dict[str, dict[ObjectId, int]] = {}
        self._locks: dict[str, dict[str, tuple[str, int]]] = {}

    # --- the message ----------------------------------------------------------------

    async def handle(self, msg: ReceivedMessage) -> Outcome:
        """Run every record of ``msg``; return how to settle it."""
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
                self.metrics.objects_skipped += 1
                log.debug("pipeline %s skips %s: %s", self.p.name, event.uri(), reason)
                continue
            outcome = await self._record(msg, event)
            if isinstance(outcome, Release):
                return outcome  # shutdown: the whole message comes back; done records dedupe
            if outcome is not None:
                failed.append((event, outcome))
        if not failed:
            return Ack()
        if len(env.events) == 1 or any(e.raw is None for e, _ in failed):
            return failed[0][1] if len(failed) == 1 else _merge(failed)
        # Several records, some failed: each failed record settles alone.
        parts = []
        for event, outcome in failed:
            assert not isinstance(outcome, Release)
            failures = self._failures_now(msg, None) if isinstance(outcome, Retry) else 0
            parts.append(RecordPart(event.record_body(), outcome, failures))
        log.info(
            "message %s: %d of %d records failed; they settle alone, the rest is done",
            msg.message_id,
            len(failed),
            len(env.events),
        )
        return Split(tuple(parts))

    # --- one record ----------------------------------------------------------------

    async def _record(self, msg: ReceivedMessage, event: ObjectEvent) -> RecordOutcome | None:
        """Identify, claim, validate, process, record. None = done (ack-able)."""
        head: dict[str, Any] | None = None
        version = event.event_version
        if version is None:
            try:
                head = await self._s3.head_object(Bucket=event.bucket, Key=event.key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                err = translate_aws_error(exc, f"HeadObject {event.uri()}")
                return await self._failed(msg, event, None, None, err, 0)
            version = content_version(head.get("ETag"), head.get("LastModified") or 0)
        oid = ObjectId(event.bucket, event.key, version)
        store = self._store
        if store is None:
            return await self._claimed(msg, event, oid, head)
        # One upload of a key at a time (across workers): each reads the object as it
        # is then, so the last one to run reads the newest upload.
        name = f"key:{self.p.name}:{event.bucket}/{event.key}"
        owner = f"{self._worker.worker_id}:{msg.message_id}"
        lock = await self._lock_key(msg, event, name, owner)
        if not isinstance(lock, int):
            return lock
        held = self._locks.setdefault(msg.message_id, {})
        held[name] = (owner, lock)
        try:
            return await self._claimed(msg, event, oid, head)
        finally:
            held.pop(name, None)
            if not held:
                self._locks.pop(msg.message_id, None)
            with contextlib.suppress(S3flowError):
                await asyncio.shield(store.release_lock(name, owner=owner, token=lock))

    async def _claimed(
        self,
        msg: ReceivedMessage,
        event: ObjectEvent,
        oid: ObjectId,
        head: dict[str, Any] | None,
    ) -> RecordOutcome | None:
        """Claim the upload, then validate, process and record it."""
        token: int | None = None
        failures_before = 0
        store = self._store
        version = oid.version
        if store is not None:
            got = await self._claim(msg, event, oid)
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
        try:
            if store is not None and token is not None:
                self._claims.setdefault(msg.message_id, {})[oid] = token
                newer = await self._newer_upload_done(event, oid)
                if newer is not None:
                    await store.complete(
                        oid, token=token, outputs=[], detail=f"superseded by upload {newer}"
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
            if self.p.validation.active:
                try:
                    reason = await self._validate(event, head)
                    if reason is not None:
                        await self._quarantine(event, oid, token, reason, "ValidationFailed")
                        return None
                except S3flowError as exc:
                    return await self._failed(msg, event, oid, token, exc, failures_before)
            return await self._run_processor(msg, event, oid, token, failures_before)
        except BaseException:
            # Cancelled (shutdown) or an unexpected error: never leave the claim held.
            # A claim already finished (completed, failed) makes this a fenced no-op.
            if store is not None and token is not None:
                with contextlib.suppress(S3flowError):
                    await asyncio.shield(store.release(oid, token=token))
            raise
        finally:
            held = self._claims.get(msg.message_id)
            if held is not None:
                held.pop(oid, None)
                if not held:
                    self._claims.pop(msg.message_id, None)

    async def _newer_upload_done(self, event: ObjectEvent, oid: ObjectId) -> str | None:
        """A completed upload of the same key with a later sequencer, if any (its version)."""
        if self._store is None or not event.sequencer:
            return None
        for rec in await self._store.versions(event.bucket, event.key):
            if (
                rec.status is FileStatus.COMPLETED
                and rec.version != oid.version
                and rec.sequencer
                and sequencer_after(rec.sequencer, event.sequencer)
            ):
                return rec.version
        return None

    async def _lock_key(
        self, msg: ReceivedMessage, event: ObjectEvent, name: str, owner: str
    ) -> int | RecordOutcome:
        """Take the key's lock; while another upload of the key is worked on, wait leased."""
        store = self._store
        assert store is not None

        async def attempt() -> tuple[int | None, float | None]:
            return await store.acquire_lock(name, owner=owner, ttl_s=self.claim_ttl_s), None

        return await self._until_free(msg, event, "KeyBusy", "another upload of the key", attempt)

    async def _claim(
        self, msg: ReceivedMessage, event: ObjectEvent, oid: ObjectId
    ) -> Claim | RecordOutcome:
        """Claim ``oid``; while another worker holds it, wait with the message leased."""
        store = self._store
        assert store is not None

        async def attempt() -> tuple[Claim | None, float | None]:
            claim = await store.claim(
                oid,
                pipeline=self.p.name,
                owner=self._worker.worker_id,
                ttl_s=self.claim_ttl_s,
                size=event.size,
                sequencer=event.sequencer,
            )
            if claim.outcome is not ClaimOutcome.BUSY:
                return claim, None
            return None, (claim.record.claim_expires_at or 0) - time.time()

        return await self._until_free(msg, event, "ClaimBusy", "another worker's claim", attempt)

    async def _until_free(
        self,
        msg: ReceivedMessage,
        event: ObjectEvent,
        error_class: str,
        what: str,
        attempt: Callable[[], Awaitable[tuple[T | None, float | None]]],
    ) -> T | RecordOutcome:
        """Call ``attempt`` until it gets something, waiting between tries with the message
        leased (its heartbeat keeps it invisible: no receive is spent).

        ``attempt`` returns (the thing, None) or (None, seconds until the holder's hold
        expires, if known). Gives up at shutdown (release) or after ``job_timeout_s``.
        """
        wait_s = _WAIT_FIRST_S
        logged = False
        while True:
            got, expires_in = await attempt()
            if got is not None:
                return got
            if self._stop.is_set():
                return Release(f"shutdown while waiting for {what}")
            if time.monotonic() - msg.received_at > self.p.job_timeout_s:
                delay = backoff_s(msg.receive_count, self.p.retry_base_s, self.p.retry_max_s)
                return Retry(
                    delay,
                    error_class,
                    f"{event.uri()}: waited for {what} for longer than job_timeout_s "
                    f"({self.p.job_timeout_s}s)",
                )
            if not logged:
                logged = True
                log.info(
                    "%s (message %s): waiting for %s with the message leased",
                    event.uri(),
                    msg.message_id,
                    what,
                )
            timeout = wait_s if expires_in is None else min(wait_s, max(0.05, expires_in + 0.05))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=timeout)
            wait_s = min(wait_s * 2, _WAIT_MAX_S)

    async def _run_processor(
        self,
        msg: ReceivedMessage,
        event: ObjectEvent,
        oid: ObjectId,
        token: int | None,
        failures_before: int,
    ) -> RecordOutcome | None:
        ctx = ProcessContext(
            event=event,
            pipeline=self.p.name,
            worker_id=self._worker.worker_id,
            s3=self._s3,
            sink=self.rt.sink,
            report_progress=lambda n: self._observer.object_progress(self.p.name, event, n),
            store=self._store,
            max_uncompressed_bytes=self.p.max_uncompressed_bytes,
        )
        self._observer.object_started(self.p.name, event)
        try:
            result = await self.rt.processor.process(ctx)
        except asyncio.CancelledError:
            raise
        except S3flowError as exc:
            return await self._failed(msg, event, oid, token, exc, failures_before)
        except Exception as exc:
            log.exception("processor %s raised on %s", self.p.processor, event.uri())
            err = ProcessorError(f"{type(exc).__name__}: {exc}".strip())
            return await self._failed(msg, event, oid, token, err, failures_before)
        stored = True
        if self._store is not None and token is not None:
            stored = await self._store.complete(oid, token=token, outputs=result.outputs)
        if not stored:
            log.warning(
                "%s: the claim expired while processing and another worker took it over; "
                "the outputs are written (both write the same keys)",
                event.uri(),
            )
        self.metrics.objects_processed += 1
        self.metrics.bytes_in += int(result.counters.get("bytes_in", 0))
        self.metrics.bytes_out += int(result.counters.get("bytes_out", 0))
        # Called after the state is recorded and before the ack (crash tests hook here).
        self._observer.object_finished(self.p.name, event, result, None)
        return None

    async def _validate(self, event: ObjectEvent, head: dict[str, Any] | None) -> str | None:
        size, ctype = event.size, None
        if head is not None:
            size, ctype = int(head.get("ContentLength", 0)), head.get("ContentType")
        elif size is None or self.p.validation.content_types:
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
        """Tag the object and record it as quarantined; its record is then done."""
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

    def _failures_now(self, msg: ReceivedMessage, failures_before: int | None) -> int:
        """Failures of this record including the one just seen."""
        if failures_before is not None and self._store is not None:
            return failures_before + 1
        # No store: what the message says (re-sent records carry their count).
        return prior_failures(msg) + msg.receive_count

    async def _failed(
        self,
        msg: ReceivedMessage,
        event: ObjectEvent,
        oid: ObjectId | None,
        token: int | None,
        exc: S3flowError,
        failures_before: int,
    ) -> RecordOutcome | None:
        self._observer.object_finished(self.p.name, event, None, exc)
        where = f"{event.uri()} (message {msg.message_id}, receive #{msg.receive_count})"
        store = self._store if oid is not None and token is not None else None
        if exc.disposition is Disposition.SKIP:
            self.metrics.objects_skipped += 1
            log.warning("%s: %s; acknowledging without output", where, exc)
            if store is not None and oid is not None and token is not None:
                await store.complete(
                    oid, token=token, outputs=[], detail=f"object no longer exists: {exc}"
                )
            return None
        if isinstance(exc, OutputUnavailableError):
            # The operator's problem, not the file's: no failure counted.
            delay = backoff_s(msg.receive_count, self.p.retry_base_s, self.p.retry_max_s)
            log.error("%s: output unavailable, retrying in %ds: %s", where, delay, exc)
            if store is not None and oid is not None and token is not None:
                await store.release(oid, token=token)
            return Retry(delay, exc.error_class, str(exc))
        if exc.disposition is Disposition.RETRYABLE:
            n = self._failures_now(msg, failures_before if token is not None else None)
            await self._record_failure(oid, token, exc)
            if n >= self.p.max_receive_count:
                log.error(
                    "%s failed %d times (max_receive_count), dead-lettering: %s", where, n, exc
                )
                return DeadLetter(
                    f"RetriesExhausted.{exc.error_class}",
                    f"failed {n} times; last error: {exc}",
                    (oid,) if store is not None and oid is not None else (),
                )
            delay = backoff_s(n, self.p.retry_base_s, self.p.retry_max_s)
            log.warning(
                "%s failed (%s, failure %d of %d), retrying in %ds: %s",
                where,
                exc.error_class,
                n,
                self.p.max_receive_count,
                delay,
                exc,
            )
            return Retry(delay, exc.error_class, str(exc))
        quarantine = (
            exc.disposition is Disposition.QUARANTINE or self.p.on_permanent_error == "quarantine"
        )
        if quarantine and oid is not None:
            await self._quarantine(event, oid, token, str(exc), exc.error_class)
            return None
        log.error("%s failed permanently (%s), dead-lettering: %s", where, exc.error_class, exc)
        # Recorded as failed now; marked dead only once the DLQ has the message.
        await self._record_failure(oid, token, exc)
        return DeadLetter(
            exc.error_class, str(exc), (oid,) if store is not None and oid is not None else ()
        )

    async def _record_failure(
        self, oid: ObjectId | None, token: int | None, exc: S3flowError
    ) -> None:
        if self._store is not None and oid is not None and token is not None:
            await self._store.fail(
                oid,
                token=token,
                status=FileStatus.FAILED,
                error_class=exc.error_class,
                error=str(exc),
            )

    # --- heartbeat ---------------------------------------------------------------------

    async def renew_claims(self, message_ids: list[str]) -> None:
        """Extend the claims held for these messages (called with their visibility beat)."""
        store = self._store
        if store is None:
            return
        for mid in message_ids:
            for name, (owner, lock) in list(self._locks.get(mid, {}).items()):
                try:
                    if not await store.renew_lock(
                        name, owner=owner, token=lock, ttl_s=self.claim_ttl_s
                    ) and self._locks.get(mid, {}).get(name) == (owner, lock):
                        log.warning("lock %s was lost (expired and taken over)", name)
                except S3flowError as exc:
                    log.warning("renewing lock %s failed: %s", name, exc)
            for oid, token in list(self._claims.get(mid, {}).items()):
                try:
                    ok = await store.renew(oid, token=token, ttl_s=self.claim_ttl_s)
                except S3flowError as exc:
                    log.warning(
                        "renewing the claim on s3://%s/%s failed: %s", oid.bucket, oid.key, exc
                    )
                    continue
                # A claim that finished meanwhile is not "lost".
                if not ok and self._claims.get(mid, {}).get(oid) == token:
                    log.warning(
                        "claim on s3://%s/%s was lost (expired and taken over elsewhere)",
                        oid.bucket,
                        oid.key,
                    )


def sequencer_after(a: str, b: str) -> bool:
    """Whether S3 sequencer ``a`` is later than ``b`` (same key only).

    AWS: pad the shorter with leading zeros, then compare as strings.
    """
    a, b = a.upper(), b.upper()
    width = max(len(a), len(b))
    return a.rjust(width, "0") > b.rjust(width, "0")


def _merge(failed: list[tuple[ObjectEvent, RecordOutcome]]) -> RecordOutcome:
    """One outcome for a message whose records cannot be split (no raw records)."""
    dead = [o for _, o in failed if isinstance(o, DeadLetter)]
    if dead:
        objects = tuple(oid for d in dead for oid in d.objects)
        return DeadLetter(dead[0].error_class, "; ".join(d.error for d in dead), objects)
    retries = [o for _, o in failed if isinstance(o, Retry)]
    return min(retries, key=lambda r: r.delay_s)
