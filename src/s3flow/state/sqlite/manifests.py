"""Manifests on SQLite: the ManifestStore half of the state store.

Tracked files live in ``manifest_files`` (one row per dataset, date and object
version) and sealed manifests in ``manifests``; sealing moves the files and
writes the manifest in one transaction, under the caller's lock.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from typing import Any

from s3flow.state.manifest_lifecycle import (
    DecideManifest,
    ManifestFilter,
    ManifestStatusMixin,
    lock_lost,
    not_publishable,
)
from s3flow.state.records import (
    FILE_STATUS_OF,
    ManifestFile,
    ManifestFileStatus,
    ManifestRecord,
    ManifestStatus,
    ObjectId,
    PendingSummary,
    TrackedFile,
)
from s3flow.state.sqlite.codec import (
    MANIFEST_COLS,
    MANIFEST_FILE_COLS,
    manifest_record,
    manifest_row,
    tracked_file,
)
from s3flow.state.sqlite.connection import SqliteStoreBase, in_tx

_M_UPSERT = (
    f"INSERT INTO manifests ({MANIFEST_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (manifest_id) DO UPDATE SET status = excluded.status, files = excluded.files, "
    "updated_at = excluded.updated_at, location = excluded.location, "
    "detail = excluded.detail, attempts = excluded.attempts"
)


def _select_manifest(conn: sqlite3.Connection, manifest_id: str) -> ManifestRecord | None:
    r = conn.execute(
        f"SELECT {MANIFEST_COLS} FROM manifests WHERE manifest_id = ?", (manifest_id,)
    ).fetchone()
    return None if r is None else manifest_record(r)


class ManifestsMixin(ManifestStatusMixin, SqliteStoreBase):
    """The ManifestStore protocol: pending files, sealing, publishing, operator moves."""

    async def add_pending(self, dataset: str, date: str, file: ManifestFile) -> bool:
        """Track ``file`` as pending (see :meth:`StateStore.add_pending`)."""

        def run(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            cur = conn.execute(
                f"INSERT INTO manifest_files ({MANIFEST_FILE_COLS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, '') ON CONFLICT DO NOTHING",
                (
                    dataset,
                    date,
                    file.bucket,
                    file.key,
                    file.version,
                    file.size,
                    file.etag,
                    file.version_id,
                    ManifestFileStatus.PENDING.value,
                    now,
                    now,
                ),
            )
            return cur.rowcount == 1

        return await self._run(run)

    async def get_tracked(self, dataset: str, date: str, oid: ObjectId) -> TrackedFile | None:
        """One tracked file."""

        def run(conn: sqlite3.Connection) -> TrackedFile | None:
            r = conn.execute(
                f"SELECT {MANIFEST_FILE_COLS} FROM manifest_files WHERE dataset = ? AND date = ? "
                "AND bucket = ? AND key = ? AND version = ?",
                (dataset, date, oid.bucket, oid.key, oid.version),
            ).fetchone()
            return None if r is None else tracked_file(r)

        return await self._run(run, read=True)

    async def pending_files(
        self, dataset: str, date: str, *, limit: int | None = None
    ) -> list[TrackedFile]:
        """The pending files of one (dataset, date), oldest first."""
        sql = (
            f"SELECT {MANIFEST_FILE_COLS} FROM manifest_files "
            "WHERE dataset = ? AND status = 'pending' "
            "AND date = ? ORDER BY added_at, bucket, key, version LIMIT ?"
        )
        args = (dataset, date, -1 if limit is None else max(0, limit))
        return await self._run(
            lambda conn: [tracked_file(r) for r in conn.execute(sql, args)], read=True
        )

    async def pending(self, dataset: str, date: str) -> PendingSummary:
        """Count, bytes and oldest add time of one (dataset, date)'s pending files."""

        def run(conn: sqlite3.Connection) -> PendingSummary:
            n, total, oldest = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0), min(added_at) FROM manifest_files "
                "WHERE dataset = ? AND status = 'pending' AND date = ?",
                (dataset, date),
            ).fetchone()
            return PendingSummary(dataset, date, int(n), int(total), oldest)

        return await self._run(run, read=True)

    async def pending_dates(self, dataset: str) -> list[PendingSummary]:
        """One summary per date that has pending files, by date."""

        def run(conn: sqlite3.Connection) -> list[PendingSummary]:
            rows = conn.execute(
                "SELECT date, count(*), sum(size), min(added_at) FROM manifest_files "
                "WHERE dataset = ? AND status = 'pending' GROUP BY date ORDER BY date",
                (dataset,),
            )
            return [PendingSummary(dataset, d, int(n), int(b), a) for d, n, b, a in rows]

        return await self._run(run, read=True)

    def _check_lock(self, conn: sqlite3.Connection, lock: str, owner: str, token: int) -> None:
        row = conn.execute(
            "SELECT owner, token, expires_at FROM locks WHERE name = ?", (lock,)
        ).fetchone()
        if row is None or row[0] != owner or row[1] != token or (row[2] or 0) <= self._clock():
            raise lock_lost(lock, owner, token)

    async def seal_manifest(
        self, draft: ManifestRecord, *, lock: str, owner: str, token: int
    ) -> ManifestRecord | None:
        """Seal ``draft`` in one transaction (see :meth:`StateStore.seal_manifest`)."""

        def tx(conn: sqlite3.Connection) -> ManifestRecord | None:
            self._check_lock(conn, lock, owner, token)
            existing = _select_manifest(conn, draft.manifest_id)
            if existing is not None and existing.status is not ManifestStatus.SEALING:
                return existing
            base = existing or draft
            now = self._clock()
            moved: list[ManifestFile] = []
            for f in base.files:
                cur = conn.execute(
                    "UPDATE manifest_files SET status = 'manifested', manifest_id = ?, "
                    "updated_at = ? WHERE dataset = ? AND date = ? AND bucket = ? AND key = ? "
                    "AND version = ? AND (status = 'pending' OR "
                    "(status = 'manifested' AND manifest_id = ?))",
                    (
                        base.manifest_id,
                        now,
                        base.dataset,
                        base.date,
                        f.bucket,
                        f.key,
                        f.version,
                        base.manifest_id,
                    ),
                )
                if cur.rowcount == 1:
                    moved.append(f)
            if not moved:
                conn.execute("DELETE FROM manifests WHERE manifest_id = ?", (base.manifest_id,))
                return None
            sealed = replace(
                base,
                status=ManifestStatus.SEALED,
                files=moved,
                created_at=base.created_at or now,
                updated_at=now,
            )
            conn.execute(_M_UPSERT, manifest_row(sealed))
            return sealed

        return await self._run(lambda conn: in_tx(conn, tx))

    async def mark_published(self, manifest_id: str, location: str) -> ManifestRecord:
        """Record where the sealed manifest's JSON was written."""

        def tx(conn: sqlite3.Connection) -> ManifestRecord:
            rec = _select_manifest(conn, manifest_id)
            if rec is None or rec.status is ManifestStatus.SEALING:
                raise not_publishable(rec, manifest_id)
            new = replace(rec, location=location, updated_at=self._clock())
            conn.execute(_M_UPSERT, manifest_row(new))
            return new

        return await self._run(lambda conn: in_tx(conn, tx))

    async def unfinished_manifests(self, dataset: str) -> list[ManifestRecord]:
        """Manifests still sealing, or sealed but not yet published, oldest first."""
        sql = (
            f"SELECT {MANIFEST_COLS} FROM manifests WHERE dataset = ? AND (status = 'sealing' OR "
            "(status = 'sealed' AND location IS NULL)) ORDER BY created_at, manifest_id"
        )
        return await self._run(
            lambda conn: [manifest_record(r) for r in conn.execute(sql, (dataset,))], read=True
        )

    async def get_manifest(self, manifest_id: str) -> ManifestRecord | None:
        """One manifest."""
        return await self._run(lambda conn: _select_manifest(conn, manifest_id), read=True)

    async def _list_manifests(self, query: ManifestFilter) -> list[ManifestRecord]:
        """Manifests matching the filters, newest first."""
        where: list[str] = []
        args: list[Any] = []
        if query.dataset is not None:
            where.append("dataset = ?")
            args.append(query.dataset)
        if query.status is not None:
            where.append("status = ?")
            args.append(query.status.value)
        sql = f"SELECT {MANIFEST_COLS} FROM manifests"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, manifest_id DESC LIMIT ?"
        args.append(query.limit)
        return await self._run(
            lambda conn: [manifest_record(r) for r in conn.execute(sql, args)], read=True
        )

    async def _move_manifest(
        self,
        manifest_id: str,
        decide: DecideManifest,
        held: dict[ObjectId, str],
    ) -> ManifestRecord:
        """The manifest and its files in one transaction."""

        def tx(conn: sqlite3.Connection) -> ManifestRecord:
            new = decide(_select_manifest(conn, manifest_id), self._clock())
            conn.execute(_M_UPSERT, manifest_row(new))
            conn.execute(
                "UPDATE manifest_files SET status = ?, detail = ?, updated_at = ? "
                "WHERE manifest_id = ?",
                (FILE_STATUS_OF[new.status].value, new.detail, new.updated_at, manifest_id),
            )
            for oid, reason in held.items():
                conn.execute(
                    "UPDATE manifest_files SET status = ?, detail = ?, updated_at = ? "
                    "WHERE manifest_id = ? AND bucket = ? AND key = ? AND version = ?",
                    (
                        ManifestFileStatus.QUARANTINED.value,
                        reason,
                        new.updated_at,
                        manifest_id,
                        oid.bucket,
                        oid.key,
                        oid.version,
                    ),
                )
            return new

        return await self._run(lambda conn: in_tx(conn, tx))
