"""Backend-neutral lifecycle rules shared by every state store.

What a claim, a fenced finish or an operator transition does to a record is
decided here by pure functions (:func:`plan_claim`, :func:`plan_finish`,
:func:`plan_set_status`); the SQLite and DynamoDB backends only store the
result atomically, so both decide alike. :class:`FileLifecycleMixin` is the
one ``claim`` / ``complete`` / ``fail`` / ``release`` / ``set_status`` of both,
on top of the backend's atomic read-decide-write (``_mutate``), and
checks the filters of ``list_files`` once for the backends. The manifests' rules
are in :mod:`s3flow.state.manifest_lifecycle`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from typing import TypeVar, overload

from s3flow.state.records import (
    TERMINAL_FILE_STATUSES,
    Claim,
    ClaimOutcome,
    FileCursor,
    FileRecord,
    FileStatus,
    HistoryEntry,
    ManifestStatus,
    ObjectId,
    StateError,
    TransitionError,
    check_transition,
)

K = TypeVar("K")
R = TypeVar("R")
S = TypeVar("S", FileStatus, ManifestStatus)
#: What a transition writes: the new record and its history entry (None: nothing).
Plan = tuple[FileRecord, HistoryEntry] | None
#: ``decide(record or None, now)``: a transition's result and what it writes.
Decide = Callable[[FileRecord | None, float], tuple[R, Plan]]
MAX_TEXT = 2000  # error messages and details are truncated to this many characters
_FAILURES = frozenset({FileStatus.FAILED, FileStatus.DEAD, FileStatus.QUARANTINED})
#: A finish that counts a failure: retried (failed), or the last one, dead-lettered
#: (dead: the worker ends the claim it kept once the DLQ has the message).
_COUNTED = frozenset({FileStatus.FAILED, FileStatus.DEAD})


@overload
def clip(text: str) -> str: ...
@overload
def clip(text: None) -> None: ...
def clip(text: str | None) -> str | None:
    """``text`` cut to MAX_TEXT characters."""
    if text is None or len(text) <= MAX_TEXT:
        return text
    return text[: MAX_TEXT - 1] + "…"


def unseen_record(oid: ObjectId, pipeline: str, now: float) -> FileRecord:
    """The record of a version that has none yet, before its first transition (at ``now``)."""
    return FileRecord(
        bucket=oid.bucket,
        key=oid.key,
        version=oid.version,
        pipeline=pipeline,
        status=FileStatus.RECEIVED,
        created_at=now,
        updated_at=now,
    )


@dataclass(frozen=True)
class ClaimRequest:
    """What a :meth:`FileStore.claim` asks for (``size`` / ``sequencer`` None: keep)."""

    pipeline: str
    owner: str
    ttl_s: float
    size: int | None = None
    sequencer: str | None = None


def plan_claim(
    rec: FileRecord | None, oid: ObjectId, request: ClaimRequest, now: float
) -> tuple[Claim, HistoryEntry | None]:
    """Decide a claim on ``rec`` (None = no record yet).

    Returns the claim and, when it is ACQUIRED, the history entry to write
    together with ``claim.record`` (the new record). Otherwise nothing changes.
    """
    if rec is None:  # the common case, built at once (it runs for every new object)
        new = FileRecord(
            bucket=oid.bucket,
            key=oid.key,
            version=oid.version,
            pipeline=request.pipeline,
            status=FileStatus.PROCESSING,
            size=request.size,
            sequencer=request.sequencer,
            attempts=1,
            worker_id=request.owner,
            claim_owner=request.owner,
            claim_expires_at=now + request.ttl_s,
            fencing_token=1,
            timestamps={FileStatus.PROCESSING.value: now},
            created_at=now,
            updated_at=now,
        )
        entry = HistoryEntry(
            now, oid.version, None, FileStatus.PROCESSING, request.owner, "claimed"
        )
        return Claim(ClaimOutcome.ACQUIRED, 1, new), entry
    old = rec.status
    if old is FileStatus.COMPLETED:
        return Claim(ClaimOutcome.DONE, 0, rec), None
    if old is FileStatus.DEAD or old is FileStatus.QUARANTINED:
        return Claim(ClaimOutcome.PARKED, 0, rec), None
    detail = "claimed"
    if old is FileStatus.PROCESSING:
        if rec.claim_expires_at is not None and rec.claim_expires_at > now:
            return Claim(ClaimOutcome.BUSY, 0, rec), None
        detail = f"claim of {rec.claim_owner or '?'} expired: taken over"
    token = rec.fencing_token + 1
    timestamps = dict(rec.timestamps)
    timestamps[FileStatus.PROCESSING.value] = now
    new = replace(
        rec,
        pipeline=request.pipeline or rec.pipeline,
        status=FileStatus.PROCESSING,
        size=rec.size if request.size is None else request.size,
        sequencer=rec.sequencer if request.sequencer is None else request.sequencer,
        attempts=rec.attempts + 1,
        outputs=list(rec.outputs),
        worker_id=request.owner,
        claim_owner=request.owner,
        claim_expires_at=now + request.ttl_s,
        fencing_token=token,
        timestamps=timestamps,
        updated_at=now,
    )
    entry = HistoryEntry(now, oid.version, old, FileStatus.PROCESSING, request.owner, detail)
    return Claim(ClaimOutcome.ACQUIRED, token, new), entry


@dataclass(frozen=True)
class Finish:
    """A fenced ``processing -> status`` as its claim holder asks it (complete, fail, release).

    A field left None keeps the record's value.
    """

    token: int
    status: FileStatus
    outputs: list[str] | None = None
    error_class: str | None = None
    error: str | None = None
    detail: str = ""


def plan_finish(rec: FileRecord | None, finish: Finish, now: float) -> Plan:
    """The record after ``finish`` and its history entry; None if the token is stale."""
    status = finish.status
    if rec is None or rec.status is not FileStatus.PROCESSING or rec.fencing_token != finish.token:
        return None
    timestamps = dict(rec.timestamps)
    timestamps[status.value] = now
    new = replace(
        rec,
        status=status,
        outputs=list(rec.outputs if finish.outputs is None else finish.outputs),
        last_error_class=(
            rec.last_error_class if finish.error_class is None else finish.error_class
        ),
        last_error=rec.last_error if finish.error is None else clip(finish.error),
        failures=rec.failures + (1 if status in _COUNTED else 0),
        claim_owner=None,
        claim_expires_at=None,
        timestamps=timestamps,
        updated_at=now,
    )
    entry = HistoryEntry(
        now, rec.version, FileStatus.PROCESSING, status, rec.claim_owner, clip(finish.detail) or ""
    )
    return new, entry


def check_fail_status(status: FileStatus) -> None:
    """``fail`` only moves to failed, dead or quarantined."""
    if status not in _FAILURES:
        raise TransitionError(
            f"fail() moves a record to failed, dead or quarantined, not {status.value}"
        )


def plan_set_status(
    rec: FileRecord | None,
    oid: ObjectId,
    status: FileStatus,
    *,
    detail: str,
    pipeline: str,
    now: float,
) -> tuple[FileRecord, HistoryEntry]:
    """An unfenced operator transition; creates the record when missing and ``pipeline``.

    Leaving ``processing`` this way clears the claim and increases the fencing
    token, so the former holder can no longer complete, fail or renew. Entering it
    is refused: only a claim does that (with a new token and an owner), else a
    holder's stale token would be good again and the record processing with no claim.
    """
    if status is FileStatus.PROCESSING:
        raise TransitionError(
            f"s3://{oid.bucket}/{oid.key} version {oid.version!r}: only a claim moves a "
            "record to processing, not an operator's status change"
        )
    note = clip(detail) if detail and status in _FAILURES else None
    if rec is None:
        if not pipeline:
            raise StateError(
                f"no record of s3://{oid.bucket}/{oid.key} version {oid.version!r} "
                "(give pipeline= to create one)"
            )
        new = replace(
            unseen_record(oid, pipeline, now),
            status=status,
            last_error=note,
            timestamps={status.value: now},
        )
        return new, HistoryEntry(now, oid.version, None, status, None, clip(detail) or "")
    check_transition(rec.status, status)
    timestamps = dict(rec.timestamps)
    timestamps[status.value] = now
    leaving = rec.status is FileStatus.PROCESSING
    new = replace(
        rec,
        status=status,
        outputs=[] if status is FileStatus.RECEIVED else list(rec.outputs),
        last_error=note if note is not None else rec.last_error,
        # An operator release (redrive, reprocess) gives the version a fresh budget.
        failures=0 if status is FileStatus.RECEIVED else rec.failures,
        claim_owner=None,
        claim_expires_at=None,
        fencing_token=rec.fencing_token + 1 if leaving else rec.fencing_token,
        timestamps=timestamps,
        updated_at=now,
    )
    return new, HistoryEntry(now, oid.version, rec.status, status, None, clip(detail) or "")


def zero_counts() -> dict[str, int]:
    """A counts dict with every status at zero."""
    return {s.value: 0 for s in FileStatus}


# --- retention ------------------------------------------------------------------------

DAY_S = 86_400.0
#: ``[state] retention_days`` when nothing else says (the settings' default).
DEFAULT_RETENTION_DAYS = 30.0


def retention_seconds(days: float | None) -> float | None:
    """``retention_days`` in seconds; None (keep forever) for 0 or None."""
    return None if not days else float(days) * DAY_S


def purge_time(status: FileStatus, updated_at: float, retention_s: float | None) -> float | None:
    """When a record in ``status`` since ``updated_at`` expires (None: it does not).

    Only terminal records expire (:data:`TERMINAL_FILE_STATUSES`); records in
    received / processing / failed are work in progress and are kept.
    """
    if retention_s is None or status not in TERMINAL_FILE_STATUSES:
        return None
    return updated_at + retention_s


def count_delta(old: K | None, new: K) -> dict[K, int]:
    """The change a transition makes to the status counters.

    ``old`` is the counter the record was counted in before the write (None:
    the record is new), ``new`` the one after it, e.g. ``(pipeline, status)``;
    empty when they are the same.
    """
    if old == new:
        return {}
    delta = {new: 1}
    if old is not None:
        delta[old] = -1
    return delta


def as_status(kind: type[S], status: S | None) -> S | None:
    """``status`` as a member of ``kind`` (a caller may give its string value); None stays."""
    return None if status is None else kind(status)


@dataclass(frozen=True)
class FileFilter:
    """What a ``list_files`` call asks a backend for: ``limit`` > 0, ``status`` a FileStatus."""

    status: FileStatus | None
    pipeline: str | None
    key_prefix: str | None
    limit: int
    #: Only the records after this position (the last record of the previous page).
    after: FileCursor | None = None


class FileLifecycleMixin:
    """The FileStore's transitions, decided by the rules above, and its listing, for every backend.

    The backend provides ``_mutate``: read the record, call ``decide(record,
    now)`` and, when it returns a plan, write the plan's record and history
    entry atomically, conditioned on what was read (deciding again after a lost
    race). It may override ``_finish`` with a cheaper fenced write, and
    ``_claimed`` to remember the claims it acquired. It provides
    ``_list_files`` for :meth:`list_files`.
    """

    async def _mutate(
        self,
        oid: ObjectId,
        decide: Decide[R],
        *,
        assume_absent: bool = False,
    ) -> R:  # pragma: no cover - provided by the backend
        """Read, decide, write atomically; ``assume_absent``: a new record is likely."""
        raise NotImplementedError

    #: Provided by the backend: the records a filter matches, most recently updated
    #: first (``limit`` at most).
    _list_files: Callable[[FileFilter], Awaitable[list[FileRecord]]]

    def _claimed(self, oid: ObjectId, claim: Claim) -> None:
        """Called after ``claim`` acquired ``oid`` (nothing to do by default)."""

    async def claim(
        self,
        oid: ObjectId,
        *,
        pipeline: str,
        owner: str,
        ttl_s: float,
        size: int | None = None,
        sequencer: str | None = None,
    ) -> Claim:
        """Claim a version for processing (see :meth:`StateStore.claim`)."""

        request = ClaimRequest(pipeline, owner, ttl_s, size, sequencer)

        def decide(rec: FileRecord | None, now: float) -> tuple[Claim, Plan]:
            claim, entry = plan_claim(rec, oid, request, now)
            return claim, None if entry is None else (claim.record, entry)

        # A new object is the common case of a claim.
        claim = await self._mutate(oid, decide, assume_absent=True)
        if claim.outcome is ClaimOutcome.ACQUIRED:
            self._claimed(oid, claim)
        return claim

    async def _finish(self, oid: ObjectId, finish: Finish) -> bool:
        """Apply ``finish`` (see :func:`plan_finish`); False if the token is stale."""

        def decide(rec: FileRecord | None, now: float) -> tuple[bool, Plan]:
            plan = plan_finish(rec, finish, now)
            return plan is not None, plan

        return await self._mutate(oid, decide)

    async def complete(
        self, oid: ObjectId, *, token: int, outputs: list[str], detail: str = ""
    ) -> bool:
        """processing -> completed (fenced). False if the token is stale."""
        return await self._finish(
            oid, Finish(token, FileStatus.COMPLETED, outputs=outputs, detail=detail)
        )

    async def fail(
        self,
        oid: ObjectId,
        *,
        token: int,
        status: FileStatus,
        error_class: str,
        error: str,
    ) -> bool:
        """processing -> failed | dead | quarantined (fenced), recording the error."""
        check_fail_status(status)
        return await self._finish(
            oid,
            Finish(
                token,
                status,
                error_class=error_class,
                error=error,
                detail=f"{error_class}: {error}",
            ),
        )

    async def release(self, oid: ObjectId, *, token: int, detail: str = "released") -> bool:
        """processing -> received, claim cleared (shutdown). False if stale."""
        return await self._finish(oid, Finish(token, FileStatus.RECEIVED, detail=detail))

    async def set_status(
        self,
        oid: ObjectId,
        status: FileStatus,
        *,
        detail: str = "",
        pipeline: str = "",
        only_from: Collection[FileStatus | None] | None = None,
    ) -> FileRecord:
        """Unfenced operator transition (see :meth:`StateStore.set_status`)."""

        def decide(rec: FileRecord | None, now: float) -> tuple[FileRecord, Plan]:
            if only_from is not None and (rec.status if rec else None) not in only_from:
                raise TransitionError(
                    f"s3://{oid.bucket}/{oid.key} version {oid.version!r} is "
                    f"{rec.status.value if rec else 'not recorded'}, not "
                    + " or ".join(s.value if s else "unrecorded" for s in only_from)
                    + f": left as it is (not set to {status.value})"
                )
            new, entry = plan_set_status(
                rec, oid, status, detail=detail, pipeline=pipeline, now=now
            )
            return new, (new, entry)

        return await self._mutate(oid, decide)

    async def list_files(
        self,
        *,
        status: FileStatus | None = None,
        pipeline: str | None = None,
        key_prefix: str | None = None,
        limit: int = 1000,
        after: FileCursor | None = None,
    ) -> list[FileRecord]:
        """Records matching the filters, newest first (see :meth:`StateStore.list_files`)."""
        query = FileFilter(as_status(FileStatus, status), pipeline, key_prefix, limit, after)
        return await self._list_files(query) if limit > 0 else []
