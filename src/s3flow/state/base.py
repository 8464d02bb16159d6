"""The StateStore protocol: file lifecycles, idempotency claims, checkpoints, locks.

One record per object version, identified by (bucket, key, version) where
version is the S3 versionId or, without versioning, the eTag. Backends
(``sqlite.py``, ``dynamodb.py``) pass one contract test suite.

Lifecycle::

    received -> processing -> completed
                           -> failed (retryable; attempts counted) -> processing | dead
                           -> dead (sent to the DLQ)
                           -> quarantined (validation / permanent content error)
    dead | quarantined | failed | completed -> received   (redrive, release, reprocess)

Claims give idempotency: :meth:`StateStore.claim` returns ``acquired`` with
a fencing token, ``done`` for a completed version, or ``busy`` while another
owner holds an unexpired claim. An expired claim is taken over and the token
increases; completing or failing with a stale token is refused.

Manifests (the ``ndjson-to-parquet`` pipeline) track files separately from the
engine's per-object lifecycle above, per ``(dataset, date)``::

    file:      pending -> manifested -> processing -> completed | failed | quarantined
    manifest:  sealing -> sealed -> processing -> completed | failed
               processing -> processing (re-entry after a crash)
               failed -> processing (retry) | sealed (operator re-publish)

:meth:`StateStore.add_pending` records a file (idempotent);
:meth:`StateStore.seal_manifest` moves pending files into one manifest under a
fenced lock, so no file lands in two manifests; a seal interrupted by a crash
is finished by the next lock holder (:meth:`StateStore.unfinished_manifests`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from s3flow.errors import S3flowError
from s3flow.state.jobs import JobStore


class StateError(S3flowError):
    """The state store failed or refused an operation."""


class TransitionError(StateError):
    """A lifecycle transition that is not allowed."""


class UnknownManifestError(StateError):
    """The state store has no manifest with that id."""


class LockLostError(StateError):
    """A fenced operation was refused: the lock is no longer held with that token."""


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
    FileStatus.COMPLETED: frozenset({FileStatus.RECEIVED}),  # reprocess on purpose
}


#: The statuses a record rests in until an operator moves it: they expire after
#: ``[state] retention_days`` (with their history). received, processing and failed
#: records are work in progress and never expire.
TERMINAL_FILE_STATUSES = frozenset({FileStatus.COMPLETED, FileStatus.DEAD, FileStatus.QUARANTINED})


def check_transition(old: FileStatus, new: FileStatus) -> None:
    """Raise TransitionError unless ``old -> new`` is allowed."""
    if new not in ALLOWED[old]:
        raise TransitionError(f"transition {old.value} -> {new.value} is not allowed")


@dataclass(frozen=True)
class ObjectId:
    """Identity of one object version."""

    bucket: str
    key: str
    version: str  # versionId, else "<eTag>@<sequencer>", else "<eTag>@t<LastModified>"


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
    #: Attempts that ended in a retryable failure since the version was first seen or
    #: last released by an operator: what the worker's ``max_receive_count`` counts.
    #: A crash (an expired claim taken over) or a shutdown release is not a failure.
    failures: int = 0

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
class FileStore(Protocol):
    """File lifecycles and idempotency claims (what the engine needs).

    Every method is safe to call from several processes (and, for DynamoDB,
    machines) at once. Times are unix seconds.
    """

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

    async def complete(
        self, oid: ObjectId, *, token: int, outputs: list[str], detail: str = ""
    ) -> bool:
        """processing -> completed (fenced), ``detail`` in its history. False if stale."""
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

    async def versions(self, bucket: str, key: str) -> list[FileRecord]:
        """The records of every version (upload) of one key, most recently updated first."""
        ...

    async def list_files(
        self,
        *,
        status: FileStatus | None = None,
        pipeline: str | None = None,
        key_prefix: str | None = None,
        limit: int = 1000,
    ) -> list[FileRecord]:
        """Records matching the filters, most recently updated first.

        Read from indexes ordered by update time, ``limit`` records at most per
        (pipeline, status): the cost follows ``limit``, not the number of
        records. ``key_prefix`` filters while reading (a rare prefix reads
        further: combine it with ``status`` / ``pipeline``).
        """
        ...

    async def counts(self, pipeline: str | None = None) -> dict[str, int]:
        """Number of records per status (every status present, zeros included).

        From counters kept with every transition (no scan). Terminal records
        count until they expire (SQLite: until pruned; DynamoDB: until the end
        of the UTC day their retention ends).
        """
        ...

    async def oldest_processing_at(self, pipeline: str | None = None) -> float | None:
        """When the oldest record still in ``processing`` entered it (None if none).

        One index lookup: a processing record's ``updated_at`` is when it
        entered processing (renewing a claim does not change it).
        """
        ...


@runtime_checkable
class MetaStore(Protocol):
    """Named counters, checkpoints and fenced locks (what processors and the engine share)."""

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


@runtime_checkable
class ManifestStore(Protocol):
    """Files tracked into manifests and the manifests themselves (ndjson-to-parquet)."""

    async def add_pending(self, dataset: str, date: str, file: ManifestFile) -> bool:
        """Track ``file`` as pending for ``(dataset, date)``.

        Idempotent: False (and nothing changes) if this (dataset, date, bucket,
        key, version) is already tracked, whatever its status.
        """
        ...

    async def get_tracked(self, dataset: str, date: str, oid: ObjectId) -> TrackedFile | None:
        """One tracked file (``oid.version`` = versionId, else eTag)."""
        ...

    async def pending_files(
        self, dataset: str, date: str, *, limit: int | None = None
    ) -> list[TrackedFile]:
        """The pending files of one (dataset, date), oldest first (at most ``limit``)."""
        ...

    async def pending(self, dataset: str, date: str) -> PendingSummary:
        """Count, bytes and oldest add time of one (dataset, date)'s pending files."""
        ...

    async def pending_dates(self, dataset: str) -> list[PendingSummary]:
        """One summary per date that has pending files, by date."""
        ...

    async def seal_manifest(
        self, draft: ManifestRecord, *, lock: str, owner: str, token: int
    ) -> ManifestRecord | None:
        """Seal ``draft`` (status sealing, ``files`` = the pending files chosen).

        Fenced: raises LockLostError unless ``lock`` is held by ``owner`` with
        ``token``. Each listed file moves ``pending -> manifested`` only if it
        is still pending (or already in this manifest), so no file is in two
        manifests; the sealed record lists exactly the files moved. Calling it
        again with an unfinished manifest (:meth:`unfinished_manifests`)
        finishes it; with a sealed one returns it unchanged. Returns None, and
        keeps no record, when no listed file could be moved.
        """
        ...

    async def mark_published(self, manifest_id: str, location: str) -> ManifestRecord:
        """Record where the sealed manifest's JSON was written (``s3://...``)."""
        ...

    async def unfinished_manifests(self, dataset: str) -> list[ManifestRecord]:
        """Manifests still sealing, or sealed but not yet published, oldest first."""
        ...

    async def get_manifest(self, manifest_id: str) -> ManifestRecord | None:
        """One manifest."""
        ...

    async def list_manifests(
        self,
        *,
        dataset: str | None = None,
        status: ManifestStatus | None = None,
        limit: int = 1000,
    ) -> list[ManifestRecord]:
        """Manifests matching the filters, newest first."""
        ...

    async def set_manifest_status(
        self,
        manifest_id: str,
        status: ManifestStatus,
        *,
        detail: str = "",
        expect: ManifestStatus | None = None,
        quarantined: Mapping[ObjectId, str] | None = None,
    ) -> ManifestRecord:
        """Move a manifest (and its files, see FILE_STATUS_OF) to ``status``.

        Raises TransitionError if the transition is not allowed (see
        MANIFEST_ALLOWED) or, with ``expect``, if the current status is another
        (compare-and-set: of two racing callers exactly one wins). StateError if
        unknown (UnknownManifestError). Entering processing counts an attempt; ``detail`` (e.g. the
        failure reason) is stored on the manifest and its files. The files
        listed in ``quarantined`` (the compaction held them out) take status
        quarantined with their reason as detail instead.
        """
        ...


@dataclass
class PruneReport:
    """What one :meth:`MaintenanceStore.prune` removed (rows / items), by kind."""

    files: int = 0  # terminal file records past their retention
    history: int = 0  # history lines older than the retention
    checkpoints: int = 0  # checkpoints not written for the retention
    locks: int = 0  # locks free (released or expired) for the retention
    manifests: int = 0  # completed manifests past their retention...
    manifest_files: int = 0  # ...and the files tracked for them
    jobs: int = 0  # finished upload jobs past their retention...
    job_events: int = 0  # ...and their event logs
    vacuumed_pages: int = 0  # pages given back to the file system (SQLite)
    complete: bool = True  # False: stopped at ``max_rows`` with more to prune
    note: str = ""  # how this backend expires records (DynamoDB: TTL)

    @property
    def removed(self) -> int:
        """Rows / items removed, every kind together."""
        return (
            self.files
            + self.history
            + self.checkpoints
            + self.locks
            + self.manifests
            + self.manifest_files
            + self.jobs
            + self.job_events
        )


@dataclass
class RecountReport:
    """The per-pipeline status counters next to a full count of the records.

    ``counted`` is the truth (every record read), ``counters`` what the
    counters said before; both map pipeline -> status -> records. ``repaired``:
    the counters were set to ``counted``.
    """

    counted: dict[str, dict[str, int]]
    counters: dict[str, dict[str, int]]
    items_read: int
    repaired: bool = False

    @property
    def drift(self) -> dict[str, dict[str, int]]:
        """``counters - counted`` where they differ (pipeline -> status -> difference)."""
        out: dict[str, dict[str, int]] = {}
        for p in sorted(set(self.counted) | set(self.counters)):
            have = self.counters.get(p, {})
            want = self.counted.get(p, {})
            diff = {
                s: have.get(s, 0) - want.get(s, 0)
                for s in sorted(set(have) | set(want))
                if have.get(s, 0) != want.get(s, 0)
            }
            if diff:
                out[p] = diff
        return out

    @property
    def consistent(self) -> bool:
        """True when every counter equals the count of its records."""
        return not self.drift


@runtime_checkable
class MaintenanceStore(Protocol):
    """Retention and counter maintenance: what ``s3flow state prune | recount`` run.

    ``retention_s`` (None: keep forever) is how long terminal file records
    (:data:`TERMINAL_FILE_STATUSES`), history lines, checkpoints, free locks,
    completed manifests and finished jobs are kept.
    """

    retention_s: float | None

    async def prune(self, *, max_rows: int | None = None) -> PruneReport:
        """Remove what outlived the retention, in bounded batches (at most ``max_rows``).

        SQLite deletes (and gives freed pages back with an incremental vacuum);
        DynamoDB expires items itself (TTL), so its prune removes nothing.
        """
        ...

    async def recount(self, *, repair: bool = False) -> RecountReport:
        """Count every record (a full read: a maintenance command) and compare the counters.

        With ``repair`` the counters are corrected (and, on DynamoDB, index
        attributes that items written by an older s3flow lack are added).
        """
        ...


@runtime_checkable
class StateStore(FileStore, MetaStore, ManifestStore, JobStore, MaintenanceStore, Protocol):
    """Where s3flow remembers what it has seen and done: every part above. Use ``async with``.

    Backends (``sqlite.py``, ``dynamodb.py``) implement all of it and pass one
    contract suite per part (``tests/integration/state/test_*_contract.py``);
    callers that need one part take that protocol.
    """

    async def __aenter__(self) -> StateStore: ...

    async def __aexit__(self, *exc: object) -> None: ...


# --- manifests ----------------------------------------------------------------------


class ManifestFileStatus(enum.StrEnum):
    """Lifecycle of one file tracked for a manifest."""

    PENDING = "pending"
    MANIFESTED = "manifested"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    QUARANTINED = "quarantined"  # held out of its manifest's compaction (see its detail)


class ManifestStatus(enum.StrEnum):
    """Lifecycle of one manifest."""

    SEALING = "sealing"  # being sealed (files moving into it); finished by the next holder
    SEALED = "sealed"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


MANIFEST_ALLOWED: dict[ManifestStatus, frozenset[ManifestStatus]] = {
    ManifestStatus.SEALING: frozenset({ManifestStatus.SEALED}),
    ManifestStatus.SEALED: frozenset({ManifestStatus.PROCESSING}),
    ManifestStatus.PROCESSING: frozenset(
        {ManifestStatus.PROCESSING, ManifestStatus.COMPLETED, ManifestStatus.FAILED}
    ),
    ManifestStatus.FAILED: frozenset({ManifestStatus.PROCESSING, ManifestStatus.SEALED}),
    ManifestStatus.COMPLETED: frozenset(),
}

#: The status a manifest's files take when the manifest enters a status.
FILE_STATUS_OF: dict[ManifestStatus, ManifestFileStatus] = {
    ManifestStatus.SEALING: ManifestFileStatus.MANIFESTED,
    ManifestStatus.SEALED: ManifestFileStatus.MANIFESTED,
    ManifestStatus.PROCESSING: ManifestFileStatus.PROCESSING,
    ManifestStatus.COMPLETED: ManifestFileStatus.COMPLETED,
    ManifestStatus.FAILED: ManifestFileStatus.FAILED,
}


def check_manifest_transition(old: ManifestStatus, new: ManifestStatus) -> None:
    """Raise TransitionError unless the manifest transition ``old -> new`` is allowed."""
    if new not in MANIFEST_ALLOWED[old]:
        raise TransitionError(f"manifest transition {old.value} -> {new.value} is not allowed")


@dataclass(frozen=True)
class ManifestFile:
    """One source file as a manifest lists it."""

    bucket: str
    key: str
    size: int
    etag: str
    version_id: str | None = None

    @property
    def version(self) -> str:
        """The version identity: the versionId, else the eTag."""
        return self.version_id or self.etag

    @property
    def id(self) -> ObjectId:
        """This file's identity (as the engine's file records use it)."""
        return ObjectId(self.bucket, self.key, self.version)

    def to_json(self) -> dict[str, object]:
        """The manifest JSON entry."""
        return {
            "bucket": self.bucket,
            "key": self.key,
            "size": self.size,
            "etag": self.etag,
            "version_id": self.version_id,
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> ManifestFile:
        """Inverse of :meth:`to_json`."""
        vid = doc.get("version_id")
        return cls(
            bucket=str(doc["bucket"]),
            key=str(doc["key"]),
            size=int(doc["size"]),  # type: ignore[call-overload]
            etag=str(doc["etag"]),
            version_id=None if vid is None else str(vid),
        )


@dataclass
class TrackedFile:
    """A file tracked for a manifest: where it is in its lifecycle."""

    dataset: str
    date: str
    file: ManifestFile
    status: ManifestFileStatus
    manifest_id: str | None = None
    added_at: float = 0.0
    updated_at: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class PendingSummary:
    """Pending files of one (dataset, date): what the seal triggers look at."""

    dataset: str
    date: str
    count: int
    bytes: int
    oldest_at: float | None  # when the oldest pending file was added (None if none)


@dataclass
class ManifestRecord:
    """One manifest: a sealed batch of files of one (dataset, date)."""

    manifest_id: str
    dataset: str
    date: str
    status: ManifestStatus
    files: list[ManifestFile]
    trigger: str  # count | bytes | age | forced
    fencing_token: int
    sealed_by: str
    created_at: float
    updated_at: float = 0.0
    location: str | None = None  # s3:// URI of the published manifest JSON (None: not yet)
    detail: str = ""
    attempts: int = 0  # times it entered processing

    @property
    def total_files(self) -> int:
        """Number of files listed."""
        return len(self.files)

    @property
    def total_bytes(self) -> int:
        """Sum of the listed files' sizes."""
        return sum(f.size for f in self.files)
