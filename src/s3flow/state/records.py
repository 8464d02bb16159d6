"""The state store's records, statuses, transitions and errors (the protocols are in
:mod:`s3flow.state.base`, which describes the lifecycles)."""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from dataclasses import dataclass, field

from s3flow.errors import S3flowError

#: Every public name (what :mod:`s3flow.state` re-exports).
__all__ = [
    "ALLOWED",
    "FILE_STATUS_OF",
    "MANIFEST_ALLOWED",
    "TERMINAL_FILE_STATUSES",
    "Claim",
    "ClaimOutcome",
    "FileCursor",
    "FileRecord",
    "FileStatus",
    "HistoryEntry",
    "LockLostError",
    "ManifestFile",
    "ManifestFileStatus",
    "ManifestRecord",
    "ManifestStatus",
    "ManifestTooLargeError",
    "ObjectId",
    "PendingSummary",
    "PruneReport",
    "RecountReport",
    "StateError",
    "TrackedFile",
    "TransitionError",
    "UnknownManifestError",
    "check_manifest_transition",
    "check_transition",
]


class StateError(S3flowError):
    """The state store failed or refused an operation."""


class TransitionError(StateError):
    """A lifecycle transition that is not allowed."""


class UnknownManifestError(StateError):
    """The state store has no manifest with that id."""


class LockLostError(StateError):
    """A fenced operation was refused: the lock is no longer held with that token."""


class ManifestTooLargeError(StateError):
    """The store cannot hold a manifest listing that many files (DynamoDB: one item of
    400 KB): nothing was written; seal fewer files."""


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


#: Longest file cursor token taken (a key is at most 1,024 bytes; base64 adds a third).
MAX_FILE_CURSOR_CHARS = 8192


@dataclass(frozen=True)
class FileCursor:
    """A position in a files listing's order, ``updated_at`` newest first, then
    ``(bucket, key, version)``: the last record of a page, as an opaque token.

    It holds the position itself, so a page boundary stays valid when that record
    changes or expires (a record updated while a listing is paged moves ahead of
    the pages already read: it is not listed again).
    """

    updated_at: float
    bucket: str
    key: str
    version: str

    @classmethod
    def of(cls, record: FileRecord) -> FileCursor:
        """The cursor just past ``record`` (the last record of a page)."""
        return cls(record.updated_at, record.bucket, record.key, record.version)

    def passes(self, record: FileRecord) -> bool:
        """Whether ``record`` comes after this position in the listing's order."""
        if record.updated_at != self.updated_at:
            return record.updated_at < self.updated_at
        return (record.bucket, record.key, record.version) > (self.bucket, self.key, self.version)

    def token(self) -> str:
        """URL-safe text: base64url of ``[updated_at, bucket, key, version]``, no padding."""
        doc = [self.updated_at, self.bucket, self.key, self.version]
        raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def from_token(cls, token: str) -> FileCursor | None:
        """The cursor ``token`` stands for, or None when it is not one :meth:`token` made."""
        if not 0 < len(token) <= MAX_FILE_CURSOR_CHARS or not token.isascii():
            return None
        try:
            doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            return None
        if not (isinstance(doc, list) and len(doc) == 4):
            return None
        at, *names = doc
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            return None
        if not all(isinstance(n, str) for n in names) or not names[0] or not names[1]:
            return None
        return cls(float(at), names[0], names[1], names[2])


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
        """The manifest JSON entry (a literal: ``asdict`` costs 35 times as much)."""
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
