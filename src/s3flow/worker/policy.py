"""The failure policy: what a record that did not succeed becomes, and what is recorded.

By the error's disposition: a vanished object, or one overwritten since the event that
named its upload (superseded: the newer upload's event processes it), is done without
output; an
unavailable output is retried without counting a failure; a retryable error is
retried with backoff until ``max_receive_count`` failures, then dead-lettered (one that
fails before its claim, with a state store, at the queue's ``redrive_max_receive_count``
receives: its receives are not all failures); a
permanent one is quarantined (when the error or ``on_permanent_error`` says so)
or dead-lettered. Failures are counted in the state store, else carried by the
message (receives plus the ``s3flow.failures`` attribute of a re-sent record).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from s3flow.errors import (
    Disposition,
    ExecutorUnavailableError,
    LookupRefusedError,
    ObjectChangedError,
    OutputUnavailableError,
    S3flowError,
)
from s3flow.events import ObjectEvent
from s3flow.metrics import PipelineMetrics
from s3flow.quarantine import tag_quarantined
from s3flow.settings import PipelineSettings
from s3flow.state.base import StateStore
from s3flow.state.records import FileStatus, ObjectId
from s3flow.worker.outcomes import DeadLetter, HeldClaim, RecordOutcome, Retry, backoff_s
from s3flow.worker.source import ReceivedMessage

log = logging.getLogger("s3flow.worker")

#: Message attribute carrying a re-sent record's failures so far.
FAILURES_ATTR = "s3flow.failures"


#: Attribute of a renewed message: its capped renewals so far (see :class:`Retry`).
RENEWALS_ATTR = "s3flow.renewals"
#: Capped renewals of one message at most; then the queue's redrive may take it.
MAX_CAPPED_RENEWALS = 3


#: What a retry's log line adds when the message is renewed.
RENEWED_NOTE = " (sent again as a new message: the queue's redrive limit is near)"
#: Waits that are the operator's problem, not the file's, and what each is called.
_UNAVAILABLE: tuple[tuple[type[S3flowError], str], ...] = (
    (OutputUnavailableError, "output"),
    (ExecutorUnavailableError, "executor"),
    (LookupRefusedError, "routing lookup"),
)


def may_renew(msg: ReceivedMessage, renew_at: int, *, capped: bool) -> bool:
    """Whether a wait that is not the file's fault renews ``msg`` (see :class:`Retry`)."""
    if msg.receive_count < renew_at:
        return False
    return not capped or msg.whole_number_attribute(RENEWALS_ATTR) < MAX_CAPPED_RENEWALS


def prior_failures(msg: ReceivedMessage) -> int:
    """Failures a re-sent record carried in its ``s3flow.failures`` attribute (0 if none)."""
    return msg.whole_number_attribute(FAILURES_ATTR)


def merge_failures(failed: list[tuple[ObjectEvent, RecordOutcome]]) -> RecordOutcome:
    """One outcome for a message whose records cannot be split (no raw records)."""
    dead = [o for _, o in failed if isinstance(o, DeadLetter)]
    if dead:
        claims = tuple(held for d in dead for held in d.claims)
        return DeadLetter(dead[0].error_class, "; ".join(d.error for d in dead), claims)
    retries = [o for _, o in failed if isinstance(o, Retry)]
    first = min(retries, key=lambda r: r.delay_s)
    return replace(
        first, renew=any(r.renew for r in retries), capped=any(r.capped for r in retries)
    )


@dataclass(frozen=True)
class Attempt:
    """One record being worked on: its message, its event and the claim held on it.

    ``oid`` and ``token`` are the claim, when one was taken; ``failures_before``
    is the failure count the claim's record had.
    """

    msg: ReceivedMessage
    event: ObjectEvent
    oid: ObjectId | None = None
    token: int | None = None
    failures_before: int = 0


class FailurePolicy:
    """Turns one record's classified error into its outcome, recording it in the store."""

    def __init__(
        self,
        settings: PipelineSettings,
        *,
        s3: Any,
        store: StateStore | None,
        metrics: PipelineMetrics,
        renew_at: int | None = None,
    ) -> None:
        self.p = settings
        #: From this receive on, a wait that is not the file's fault renews the message.
        self.renew_at = renew_at or max(1, settings.redrive_max_receive_count - 1)
        self._s3 = s3
        self._store = store
        self.metrics = metrics

    def failures_now(self, msg: ReceivedMessage, failures_before: int | None) -> int:
        """Failures of this record including the one just seen."""
        if failures_before is not None and self._store is not None:
            return failures_before + 1
        # No store: what the message says (re-sent records carry their count).
        return prior_failures(msg) + msg.receive_count

    async def failed(self, attempt: Attempt, exc: S3flowError) -> RecordOutcome | None:
        """The outcome of ``attempt``'s record after ``exc`` (None = done, ack-able)."""
        msg, event, oid, token = attempt.msg, attempt.event, attempt.oid, attempt.token
        where = f"{event.uri()} (message {msg.message_id}, receive #{msg.receive_count})"
        store = self._store if oid is not None and token is not None else None
        if exc.disposition is Disposition.SKIP:
            self.metrics.objects_skipped += 1
            # Overwritten since the event: its message says so (the newer upload's own
            # event processes the object). A run elsewhere reports it by class name.
            changed = exc.error_class == ObjectChangedError.__name__
            log.log(
                logging.INFO if changed else logging.WARNING,
                "%s: %s; acknowledging without output",
                where,
                exc,
            )
            if store is not None and oid is not None and token is not None:
                detail = str(exc) if changed else f"object no longer exists: {exc}"
                await store.complete(oid, token=token, outputs=[], detail=detail)
            return None
        what = next((name for cls, name in _UNAVAILABLE if isinstance(exc, cls)), None)
        if what is not None:
            # The operator's problem, not the file's: no failure counted.
            delay = backoff_s(msg.receive_count, self.p.retry_base_s, self.p.retry_max_s)
            # Each wait spends a receive: near the queue's redrive limit the message is
            # sent again as a new one, or SQS would move it to the DLQ with no reason.
            # A lookup refused may be this object's (a Deny on its prefix): capped.
            capped = isinstance(exc, LookupRefusedError)
            renew = may_renew(msg, self.renew_at, capped=capped)
            log.error(
                "%s: %s unavailable, retrying in %ds%s: %s",
                where,
                what,
                delay,
                RENEWED_NOTE if renew else "",
                exc,
            )
            if store is not None and oid is not None and token is not None:
                await store.release(oid, token=token)
            return Retry(delay, exc.error_class, str(exc), renew=renew, capped=capped)
        if exc.disposition is Disposition.RETRYABLE:
            n = self.failures_now(msg, attempt.failures_before if token is not None else None)
            limit, limit_name = self.p.max_receive_count, "max_receive_count"
            if self._store is not None and token is None:
                # Before its claim (the HEAD naming the upload failed) the store cannot count
                # this file's failures, and the receives also count shutdown releases and
                # crashed workers' deliveries: dead-lettered only at the queue's safety net.
                limit, limit_name = self.p.redrive_max_receive_count, "receives before a claim"
            if n >= limit:
                log.error("%s failed %d times (%s), dead-lettering: %s", where, n, limit_name, exc)
                return DeadLetter(
                    f"RetriesExhausted.{exc.error_class}",
                    f"failed {n} times; last error: {exc}",
                    self._held(oid, token, exc.error_class, str(exc)),
                )
            await self._record_failure(oid, token, exc)
            delay = backoff_s(n, self.p.retry_base_s, self.p.retry_max_s)
            log.warning(
                "%s failed (%s, failure %d of %d), retrying in %ds: %s",
                where,
                exc.error_class,
                n,
                limit,
                delay,
                exc,
            )
            return Retry(delay, exc.error_class, str(exc))
        quarantine = (
            exc.disposition is Disposition.QUARANTINE or self.p.on_permanent_error == "quarantine"
        )
        if quarantine and oid is not None:
            try:
                return await self.quarantine(event, oid, token, str(exc), exc.error_class)
            except S3flowError as tag_exc:  # retryable (counted), or the object gone
                return await self.failed(attempt, tag_exc)
        log.error("%s failed permanently (%s), dead-lettering: %s", where, exc.error_class, exc)
        return DeadLetter(
            exc.error_class, str(exc), self._held(oid, token, exc.error_class, str(exc))
        )

    def _held(
        self, oid: ObjectId | None, token: int | None, error_class: str, error: str
    ) -> tuple[HeldClaim, ...]:
        """The claim a dead-lettered record keeps until the DLQ has its message (the
        settler ends it: see :class:`HeldClaim`); none without a store or a claim."""
        if self._store is None or oid is None or token is None:
            return ()
        return (HeldClaim(oid, token, error_class, error),)

    async def _record_failure(
        self, oid: ObjectId | None, token: int | None, exc: S3flowError
    ) -> None:
        if oid is not None:
            await self._end(oid, token, FileStatus.FAILED, exc.error_class, str(exc))

    async def _end(
        self, oid: ObjectId, token: int | None, status: FileStatus, error_class: str, error: str
    ) -> bool:
        """Record ``oid``'s claimed record as ``status`` with the error; False when there
        is no record to end (no store, or no claim)."""
        if self._store is None or token is None:
            return False
        await self._store.fail(
            oid, token=token, status=status, error_class=error_class, error=error
        )
        return True

    async def quarantine(
        self, event: ObjectEvent, oid: ObjectId, token: int | None, reason: str, error_class: str
    ) -> RecordOutcome | None:
        """Tag the object and record it as quarantined (None: its record is done).

        When S3 refuses the tags for good (no ``s3:PutObjectTagging`` on the bucket,
        say), the message is dead-lettered with the reason instead: retried, it would
        fail alike on every receive. Any other tagging error (throttled, a 5xx, the
        object gone) is raised, for :meth:`failed` to retry (counted) or skip.
        """
        try:
            await tag_quarantined(self._s3, event.bucket, event.key, reason, event.version_id)
        except S3flowError as exc:
            if exc.disposition not in (Disposition.PERMANENT, Disposition.QUARANTINE):
                raise
            log.error(
                "%s could not be quarantined (%s), dead-lettering it instead: %s",
                event.uri(),
                exc,
                reason,
            )
            return DeadLetter(
                error_class,
                f"{reason} (not quarantined: {exc})",
                self._held(oid, token, error_class, reason),
            )
        await self._end(oid, token, FileStatus.QUARANTINED, error_class, reason)
        self.metrics.quarantined += 1
        log.warning("%s quarantined (%s): %s", event.uri(), error_class, reason)
        return None
