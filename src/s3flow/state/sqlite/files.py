"""Files and idempotency on SQLite: the FileStore half of the state store.

The lifecycle rules themselves (what a claim, a fenced finish or an operator
transition does to a record) are backend-neutral functions in
:mod:`s3flow.state.lifecycle`, shared with the DynamoDB backend; this module
reads the record, applies the rule and writes the result, its history entry
and the change to ``file_counts`` (records per pipeline and status) in one
``BEGIN IMMEDIATE`` transaction: the counters always agree with the records,
whatever process dies when.

Reads go through indexes: ``counts`` reads ``file_counts``;
``oldest_processing_at`` takes the smallest ``updated_at`` of the processing
records (``files_pipeline`` / ``files_status``: a processing record's
``updated_at`` is when it entered processing); ``list_files`` walks the index
of its filters newest first and stops at ``limit`` (one walk per status, merged,
when only the pipeline is given).

Claims return ``token == 0`` unless the outcome is ``ACQUIRED``.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from s3flow.state.lifecycle import (
    FencedFinishMixin,
    count_delta,
    plan_claim,
    plan_finish,
    plan_set_status,
    zero_counts,
)
from s3flow.state.records import Claim, FileRecord, FileStatus, HistoryEntry, ObjectId
from s3flow.state.sqlite.codec import FILE_COLS, file_record, file_row
from s3flow.state.sqlite.connection import SqliteStoreBase, in_tx

_SELECT_ONE = f"SELECT {FILE_COLS} FROM files WHERE bucket = ? AND key = ? AND version = ?"
_UPSERT = (
    f"INSERT INTO files ({FILE_COLS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (bucket, key, version) DO UPDATE SET pipeline = excluded.pipeline, "
    "status = excluded.status, size = excluded.size, sequencer = excluded.sequencer, "
    "attempts = excluded.attempts, last_error_class = excluded.last_error_class, "
    "last_error = excluded.last_error, outputs = excluded.outputs, "
    "worker_id = excluded.worker_id, claim_owner = excluded.claim_owner, "
    "claim_expires_at = excluded.claim_expires_at, fencing_token = excluded.fencing_token, "
    "timestamps = excluded.timestamps, updated_at = excluded.updated_at, "
    "failures = excluded.failures"
)
_INSERT_HISTORY = (
    "INSERT INTO history (bucket, key, version, at, old, new, worker_id, detail) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_RENEW = (
    "UPDATE files SET claim_expires_at = ? WHERE bucket = ? AND key = ? AND version = ? "
    "AND status = 'processing' AND fencing_token = ?"
)
_HISTORY = (
    "SELECT at, version, old, new, worker_id, detail FROM history "
    "WHERE bucket = ? AND key = ? ORDER BY id"
)


def _select(conn: sqlite3.Connection, oid: ObjectId) -> FileRecord | None:
    r = conn.execute(_SELECT_ONE, (oid.bucket, oid.key, oid.version)).fetchone()
    return None if r is None else file_record(r)


_COUNT = (
    "INSERT INTO file_counts (pipeline, status, n) VALUES (?, ?, ?) "
    "ON CONFLICT (pipeline, status) DO UPDATE SET n = n + excluded.n"
)


def add_counts(conn: sqlite3.Connection, delta: dict[tuple[str, FileStatus], int]) -> None:
    """Apply a change to ``file_counts`` (inside the caller's transaction)."""
    if delta:
        conn.executemany(_COUNT, [(p, s.value, n) for (p, s), n in delta.items() if n])


def _write(
    conn: sqlite3.Connection, old: FileRecord | None, rec: FileRecord, entry: HistoryEntry
) -> None:
    """Write ``rec`` (which was ``old``), its history entry and the counters' change."""
    before = None if old is None else (old.pipeline, old.status)
    add_counts(conn, count_delta(before, (rec.pipeline, rec.status)))
    conn.execute(_UPSERT, file_row(rec))
    conn.execute(
        _INSERT_HISTORY,
        (
            rec.bucket,
            rec.key,
            entry.version,
            entry.at,
            None if entry.old is None else entry.old.value,
            entry.new.value,
            entry.worker_id,
            entry.detail,
        ),
    )


class FilesMixin(FencedFinishMixin, SqliteStoreBase):
    """The FileStore protocol: claims, fenced finishes, operator moves and queries."""

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

        def tx(conn: sqlite3.Connection) -> Claim:
            old = _select(conn, oid)
            claim, entry = plan_claim(
                old,
                oid,
                pipeline=pipeline,
                owner=owner,
                ttl_s=ttl_s,
                size=size,
                sequencer=sequencer,
                now=self._clock(),
            )
            if entry is not None:
                _write(conn, old, claim.record, entry)
            return claim

        return await self._run(lambda conn: in_tx(conn, tx))

    async def renew(self, oid: ObjectId, *, token: int, ttl_s: float) -> bool:
        """Extend a held claim; False if the token is stale."""

        def run(conn: sqlite3.Connection) -> bool:
            expires = self._clock() + ttl_s
            cur = conn.execute(_RENEW, (expires, oid.bucket, oid.key, oid.version, token))
            return cur.rowcount == 1

        return await self._run(run)

    async def _finish(
        self,
        oid: ObjectId,
        *,
        token: int,
        status: FileStatus,
        outputs: list[str] | None = None,
        error_class: str | None = None,
        error: str | None = None,
        detail: str = "",
    ) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            old = _select(conn, oid)
            plan = plan_finish(
                old,
                token=token,
                status=status,
                now=self._clock(),
                outputs=outputs,
                error_class=error_class,
                error=error,
                detail=detail,
            )
            if plan is None:
                return False
            _write(conn, old, *plan)
            return True

        return await self._run(lambda conn: in_tx(conn, tx))

    async def set_status(
        self, oid: ObjectId, status: FileStatus, *, detail: str = "", pipeline: str = ""
    ) -> FileRecord:
        """Unfenced operator transition (see :meth:`StateStore.set_status`)."""

        def tx(conn: sqlite3.Connection) -> FileRecord:
            old = _select(conn, oid)
            new, entry = plan_set_status(
                old,
                oid,
                status,
                detail=detail,
                pipeline=pipeline,
                now=self._clock(),
            )
            _write(conn, old, new, entry)
            return new

        return await self._run(lambda conn: in_tx(conn, tx))

    async def get(self, oid: ObjectId) -> FileRecord | None:
        """One version's record."""
        return await self._run(lambda conn: _select(conn, oid))

    async def versions(self, bucket: str, key: str) -> list[FileRecord]:
        """The records of every version of one key, most recently updated first."""

        def run(conn: sqlite3.Connection) -> list[FileRecord]:
            rows = conn.execute(
                f"SELECT {FILE_COLS} FROM files "
                "WHERE bucket = ? AND key = ? ORDER BY updated_at DESC",
                (bucket, key),
            ).fetchall()
            return [file_record(r) for r in rows]

        return await self._run(run)

    async def history(self, bucket: str, key: str) -> list[HistoryEntry]:
        """Every transition of every version of one key, oldest first."""

        def run(conn: sqlite3.Connection) -> list[HistoryEntry]:
            return [
                HistoryEntry(
                    at,
                    version,
                    None if old is None else FileStatus(old),
                    FileStatus(new),
                    worker,
                    detail,
                )
                for at, version, old, new, worker, detail in conn.execute(_HISTORY, (bucket, key))
            ]

        return await self._run(run)

    async def list_files(
        self,
        *,
        status: FileStatus | None = None,
        pipeline: str | None = None,
        key_prefix: str | None = None,
        limit: int = 1000,
    ) -> list[FileRecord]:
        """Records matching the filters, most recently updated first (index walks)."""
        limit = max(0, limit)
        prefix: list[Any] = []
        prefix_sql = ""
        if key_prefix:
            prefix_sql = " AND substr(key, 1, ?) = ?"
            prefix = [len(key_prefix), key_prefix]
        order = " ORDER BY updated_at DESC, bucket, key, version LIMIT ?"
        if pipeline is not None and status is None:
            # files_pipeline is (pipeline, status, updated_at): one walk per status, merged.
            parts = []
            args: list[Any] = []
            for st in FileStatus:
                parts.append(
                    f"SELECT * FROM (SELECT {FILE_COLS} FROM files WHERE pipeline = ? "
                    f"AND status = ?{prefix_sql}{order})"
                )
                args += [pipeline, st.value, *prefix, limit]
            sql = " UNION ALL ".join(parts) + order
            args.append(limit)
        else:
            where: list[str] = []
            args = []
            if status is not None:
                where.append("status = ?")
                args.append(FileStatus(status).value)
            if pipeline is not None:
                where.append("pipeline = ?")
                args.append(pipeline)
            sql = f"SELECT {FILE_COLS} FROM files"
            if not where:  # newest first along files_updated (the planner may prefer a scan)
                sql += " INDEXED BY files_updated"
            if key_prefix:
                where.append("substr(key, 1, ?) = ?")
                args += prefix
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += order
            args.append(limit)
        return await self._run(lambda conn: [file_record(r) for r in conn.execute(sql, args)])

    async def counts(self, pipeline: str | None = None) -> dict[str, int]:
        """Number of records per status (every status present, zeros included): the counters."""
        args: tuple[str, ...] = ()
        if pipeline is None:
            sql = "SELECT status, sum(n) FROM file_counts GROUP BY status"
        else:
            sql = "SELECT status, n FROM file_counts WHERE pipeline = ?"
            args = (pipeline,)

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            out = zero_counts()
            for status, n in conn.execute(sql, args):
                out[status] = int(n)
            return out

        return await self._run(run)

    async def oldest_processing_at(self, pipeline: str | None = None) -> float | None:
        """When the oldest record still in ``processing`` entered it (one index lookup)."""
        sql = "SELECT min(updated_at) FROM files WHERE status = 'processing'"
        args: tuple[str, ...] = ()
        if pipeline is not None:
            sql += " AND pipeline = ?"
            args = (pipeline,)

        def run(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(sql, args).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._run(run)
