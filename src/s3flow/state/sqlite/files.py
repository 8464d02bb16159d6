"""Files and idempotency on SQLite: the FileStore half of the state store.

The lifecycle rules themselves (what a claim, a fenced finish or an operator
transition does to a record) are backend-neutral functions in
:mod:`s3flow.state.lifecycle`, shared with the DynamoDB backend; this module
reads the record, applies the rule and writes the result (and its history
entry) in one ``BEGIN IMMEDIATE`` transaction.

Claims return ``token == 0`` unless the outcome is ``ACQUIRED``.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from s3flow.state.base import Claim, FileRecord, FileStatus, HistoryEntry, ObjectId
from s3flow.state.lifecycle import (
    FencedFinishMixin,
    plan_claim,
    plan_finish,
    plan_set_status,
    zero_counts,
)
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


def _write(conn: sqlite3.Connection, rec: FileRecord, entry: HistoryEntry) -> None:
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
            claim, entry = plan_claim(
                _select(conn, oid),
                oid,
                pipeline=pipeline,
                owner=owner,
                ttl_s=ttl_s,
                size=size,
                sequencer=sequencer,
                now=self._clock(),
            )
            if entry is not None:
                _write(conn, claim.record, entry)
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
            plan = plan_finish(
                _select(conn, oid),
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
            _write(conn, *plan)
            return True

        return await self._run(lambda conn: in_tx(conn, tx))

    async def set_status(
        self, oid: ObjectId, status: FileStatus, *, detail: str = "", pipeline: str = ""
    ) -> FileRecord:
        """Unfenced operator transition (see :meth:`StateStore.set_status`)."""

        def tx(conn: sqlite3.Connection) -> FileRecord:
            new, entry = plan_set_status(
                _select(conn, oid),
                oid,
                status,
                detail=detail,
                pipeline=pipeline,
                now=self._clock(),
            )
            _write(conn, new, entry)
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
        """Records matching the filters, most recently updated first."""
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(FileStatus(status).value)
        if pipeline is not None:
            where.append("pipeline = ?")
            args.append(pipeline)
        if key_prefix:
            where.append("substr(key, 1, ?) = ?")
            args += [len(key_prefix), key_prefix]
        sql = f"SELECT {FILE_COLS} FROM files"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY updated_at DESC, bucket, key, version LIMIT ?"
        args.append(max(0, limit))
        return await self._run(lambda conn: [file_record(r) for r in conn.execute(sql, args)])

    async def counts(self, pipeline: str | None = None) -> dict[str, int]:
        """Number of records per status (every status present, zeros included)."""
        args: tuple[str, ...] = ()
        if pipeline is None:
            sql = "SELECT status, count(*) FROM files GROUP BY status"
        else:
            sql = "SELECT status, count(*) FROM files WHERE pipeline = ? GROUP BY status"
            args = (pipeline,)

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            out = zero_counts()
            for status, n in conn.execute(sql, args):
                out[status] = n
            return out

        return await self._run(run)

    async def oldest_processing_at(self, pipeline: str | None = None) -> float | None:
        """When the oldest record still in ``processing`` entered it (None if none)."""
        sql = (
            "SELECT min(json_extract(timestamps, '$.processing')) FROM files "
            "WHERE status = 'processing'"
        )
        args: tuple[str, ...] = ()
        if pipeline is not None:
            sql += " AND pipeline = ?"
            args = (pipeline,)

        def run(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(sql, args).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._run(run)
