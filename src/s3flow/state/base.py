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

The records, statuses, transition tables and errors are in :mod:`s3flow.state.records`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol, runtime_checkable

from s3flow.state.jobs import JobStore
from s3flow.state.records import (
    Claim,
    FileCursor,
    FileRecord,
    FileStatus,
    HistoryEntry,
    ManifestFile,
    ManifestRecord,
    ManifestStatus,
    ObjectId,
    PendingSummary,
    PruneReport,
    RecountReport,
    TrackedFile,
)


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

    async def release(self, oid: ObjectId, *, token: int, detail: str = "released") -> bool:
        """processing -> received, claim cleared (shutdown; an operator's release of a
        claim that expired, ``detail`` in its history). False if the token is stale."""
        ...

    async def set_status(
        self,
        oid: ObjectId,
        status: FileStatus,
        *,
        detail: str = "",
        pipeline: str = "",
        only_from: Collection[FileStatus | None] | None = None,
    ) -> FileRecord:
        """Unfenced operator transition (quarantine release, redrive, backfill mark).

        Creates the record (as ``status``) if it does not exist and
        ``pipeline`` is given. Raises TransitionError if not allowed, or, with
        ``only_from``, if the record is not in one of those states (None in it: no
        record yet), checked in the same atomic write: a change made meanwhile by
        someone else is never overwritten.
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
        after: FileCursor | None = None,
    ) -> list[FileRecord]:
        """Records matching the filters, most recently updated first.

        The order is ``updated_at`` newest first, then ``(bucket, key, version)``.
        Read from indexes ordered by update time, ``limit`` records at most per
        (pipeline, status): the cost follows ``limit``, not the number of
        records. ``key_prefix`` filters while reading (a rare prefix reads
        further: combine it with ``status`` / ``pipeline``). ``after``: only the
        records past this position in that order (:meth:`FileCursor.of` the last
        record of the previous page), so a caller can page through every record
        (:func:`file_page`).
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


async def file_page(
    store: StateStore,
    *,
    status: FileStatus | None = None,
    pipeline: str | None = None,
    key_prefix: str | None = None,
    limit: int = 1000,
    after: FileCursor | None = None,
) -> tuple[list[FileRecord], FileCursor | None]:
    """One page of ``list_files`` (newest first) and the cursor of the next.

    The cursor is None when no record follows: the store is asked for one record more
    than the page holds, so a page that ends the listing never leads to an empty one.
    """
    listed = await store.list_files(
        status=status, pipeline=pipeline, key_prefix=key_prefix, limit=limit + 1, after=after
    )
    page = listed[:limit]
    return page, FileCursor.of(page[-1]) if len(listed) > limit and page else None
