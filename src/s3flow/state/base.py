"""The StateStore protocol: file lifecycles, idempotency claims, checkpoints, locks.

One record per object version, identified by (bucket, key, version) where
version is the S3 versionId or, without versioning, the eTag. Backends
(``sqlite.py``, ``dynamodb.py``) pass one contract test suite.

Lifecycle::

    received -> processing -> completed
                           -> failed (retryable; attempts counted) -> processing | dead
                           -> dead (sent to the DLQ)
                           -> quarantined (validation / permanent content error)
    dead | quarantined | failed -> received   (redrive / release for reprocessing)

Claims give idempotency: :meth:`StateStore.claim` returns ``acquired`` with
a fencing token, ``done`` for a completed version, or ``busy`` while another
owner holds an unexpired claim. An expired claim is taken over and the token
increases; completing or failing with a stale token is refused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from s3flow.errors import S3flowError


class StateError(S3flowError):
    """The state store failed or refused an operation."""


class TransitionError(StateError):
    """A lifecycle transition that is not allowed."""


class FileStatus(enum.StrEnum):
    """Lifecycle states of one object version."""

    RECEIVED = "received"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"
    QUARANTINED = "quarantined"


ALLOWED: dict[FileStatus, frozenset[FileStatus]] = {
    FileStatus.RECEIVED: frozenset(
        {FileStatus.PROCESSING, FileStatus.QUARANTINED, FileStatus.DEAD}
    ),
    FileStatus.PROCESSING: frozenset(
        {
            FileStatus.COMPLETED,
            FileStatus.FAILED,
            FileStatus.DEAD,
            FileStatus.QUARANTINED,
            FileStatus.RECEIVED,  # released at shutdown
        }
    ),
    FileStatus.FAILED: frozenset(
        {FileStatus.PROCESSING, FileStatus.DEAD, FileStatus.QUARANTINED, FileStatus.RECEIVED}
    ),
    FileStatus.DEAD: frozenset({FileStatus.RECEIVED}),
    FileStatus.QUARANTINED: frozenset({FileStatus.RECEIVED}),
    FileStatus.COMPLETED: frozenset(),
}


def check_transition(old: FileStatus, new: FileStatus) -> None:
    """Raise TransitionError unless ``old -> new`` is allowed."""
    if new not in ALLOWED[old]:
        raise TransitionError(f"transition {old.value} -> {new.value} is not allowed")


@dataclass(frozen=True)
class ObjectId:
    """Identity of one object version."""

    bucket: str
    key: str
    version: str  # versionId, else eTag, else "" (unknown)


class ClaimOutcome(enum.StrEnum):
    """Result of trying to claim an object version."""

    ACQUIRED = "acquired"
    DONE = "done"  # already completed: ack without work (a duplicate)
    BUSY = "busy"  # another owner holds an unexpired claim
    PARKED = "parked"  # dead or quarantined: not processed again until released


@dataclass
class FileRecord:
    """The tracked lifecycle of one object version."""

    bucket: str
    key: str
    version: str
    pipeline: str
    status: FileStatus
    size: int | None = None
    sequencer: str | None = None
    attempts: int = 0
    last_error_class: str | None = None
    last_error: str | None = None
    outputs: list[str] = field(default_factory=list)
    worker_id: str | None = None
    claim_owner: str | None = None
    claim_expires_at: float | None = None  # unix time
    fencing_token: int = 0
    timestamps: dict[str, float] = field(default_factory=dict)  # status -> unix time (latest)
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def id(self) -> ObjectId:
        """This record's identity."""
        return ObjectId(self.bucket, self.key, self.version)


@dataclass(frozen=True)
class HistoryEntry:
    """One lifecycle transition (for `s3flow files show`)."""

    at: float
    version: str
    old: FileStatus | None
    new: FileStatus
    worker_id: str | None
    detail: str = ""


@dataclass(frozen=True)
class Claim:
    """Outcome of :meth:`StateStore.claim`."""

    outcome: ClaimOutcome
    token: int
    record: FileRecord


@runtime_checkable
class StateStore(Protocol):
    """Where s3flow remembers what it has seen and done. Use ``async with``.

    Every method is safe to call from several processes (and, for DynamoDB,
    machines) at once. Times are unix seconds.
    """

    async def __aenter__(self) -> StateStore: ...

    async def __aexit__(self, *exc: object) -> None: ...

    # --- files and idempotency -------------------------------------------------

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
        """Claim a version for processing (creating its record as needed).

        ACQUIRED: status -> processing, attempts += 1, a new fencing token
        (greater than any before for this version); taken over from any
        received / failed record and from a processing record whose claim
        expired (also when ``owner`` is the same). DONE: the version is
        completed. BUSY: another claim on it has not expired. PARKED: it is
        dead or quarantined and stays so until released with set_status.
        """
        ...

    async def renew(self, oid: ObjectId, *, token: int, ttl_s: float) -> bool:
        """Extend a held claim; False if the token is stale."""
        ...

    async def complete(self, oid: ObjectId, *, token: int, outputs: list[str]) -> bool:
        """processing -> completed (fenced). False if the token is stale."""
        ...

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
        ...

    async def release(self, oid: ObjectId, *, token: int) -> bool:
        """processing -> received, claim cleared (shutdown). False if stale."""
        ...

    async def set_status(
        self, oid: ObjectId, status: FileStatus, *, detail: str = "", pipeline: str = ""
    ) -> FileRecord:
        """Unfenced operator transition (quarantine release, redrive, backfill mark).

        Creates the record (as ``status``) if it does not exist and
        ``pipeline`` is given. Raises TransitionError if not allowed.
        """
        ...

    async def get(self, oid: ObjectId) -> FileRecord | None:
        """One version's record."""
        ...

    async def history(self, bucket: str, key: str) -> list[HistoryEntry]:
        """Every transition of every version of one key, oldest first."""
        ...

    async def list_files(
        self,
        *,
        status: FileStatus | None = None,
        pipeline: str | None = None,
        key_prefix: str | None = None,
        limit: int = 1000,
    ) -> list[FileRecord]:
        """Records matching the filters, most recently updated first."""
        ...

    async def counts(self, pipeline: str | None = None) -> dict[str, int]:
        """Number of records per status (every status present, zeros included)."""
        ...

    async def oldest_processing_at(self, pipeline: str | None = None) -> float | None:
        """When the oldest record still in ``processing`` entered it (None if none)."""
        ...

    # --- counters ------------------------------------------------------------------

    async def incr(self, name: str, by: int = 1) -> int:
        """Increment a named counter (e.g. 'duplicates:<pipeline>'); return the new value."""
        ...

    async def counter(self, name: str) -> int:
        """Current value of a named counter (0 if never set)."""
        ...

    # --- checkpoints -----------------------------------------------------------------

    async def get_checkpoint(self, name: str) -> str | None:
        """The stored position for ``name``."""
        ...

    async def put_checkpoint(self, name: str, value: str) -> None:
        """Store a position for ``name`` (last write wins)."""
        ...

    # --- leases / locks ----------------------------------------------------------------

    async def acquire_lock(self, name: str, *, owner: str, ttl_s: float) -> int | None:
        """Take the lock if free or expired: return a fencing token (strictly increasing)."""
        ...

    async def renew_lock(self, name: str, *, owner: str, token: int, ttl_s: float) -> bool:
        """Extend a held lock; False if it was lost (token stale)."""
        ...

    async def release_lock(self, name: str, *, owner: str, token: int) -> bool:
        """Release a held lock; False if it was not ours any more."""
        ...
