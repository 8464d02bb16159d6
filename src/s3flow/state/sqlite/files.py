"""Files and idempotency on SQLite: the FileStore half of the state store.

The transitions themselves (claim, complete, fail, release, set_status) and
their rules are backend-neutral, in :mod:`s3flow.state.lifecycle`, shared with
the DynamoDB backend; this module's ``_mutate`` reads the record, applies the
rule and writes the result, its history entry and the change to
``file_counts`` (records per pipeline and status) in one ``BEGIN IMMEDIATE``
transaction: the counters always agree with the records, whatever process
dies when.

Reads go through indexes: ``counts`` reads ``file_counts``;
``oldest_processing_at`` takes the smallest ``updated_at`` of the processing
records (``files_pipeline`` / ``files_status``: a processing record's
``updated_at`` is when it entered processing); ``list_files`` walks the index
of its filters newest first, from its cursor on, and stops at ``limit`` (one walk
per status, merged, when only the pipeline is given).

Claims return ``token == 0`` unless the outcome is ``ACQUIRED``.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from s3flow.state.lifecycle import (
    Decide,
    FileFilter,
    FileLifecycleMixin,
    R,
    count_delta,
    zero_counts,
)
from s3flow.state.records import FileRecord, FileStatus, HistoryEntry, ObjectId
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


class FilesMixin(FileLifecycleMixin, SqliteStoreBase):
    """The FileStore protocol: claims, fenced finishes, operator moves and queries."""

    async def _mutate(
        self,
        oid: ObjectId,
        decide: Decide[R],
        *,
        assume_absent: bool = False,
    ) -> R:
        """Read, decide and write in one transaction (``assume_absent`` changes nothing)."""

        def tx(conn: sqlite3.Connection) -> R:
            old = _select(conn, oid)
            result, plan = decide(old, self._clock())
            if plan is not None:
                _write(conn, old, *plan)
            return result

        return await self._run(lambda conn: in_tx(conn, tx))

    async def renew(self, oid: ObjectId, *, token: int, ttl_s: float) -> bool:
        """Extend a held claim; False if the token is stale."""

        def run(conn: sqlite3.Connection) -> bool:
            expires = self._clock() + ttl_s
            cur = conn.execute(_RENEW, (expires, oid.bucket, oid.key, oid.version, token))
            return cur.rowcount == 1

        return await self._run(run)

    async def get(self, oid: ObjectId) -> FileRecord | None:
        """One version's record."""
        return await self._run(lambda conn: _select(conn, oid), read=True)

    async def versions(self, bucket: str, key: str) -> list[FileRecord]:
        """The records of every version of one key, most recently updated first."""

        def run(conn: sqlite3.Connection) -> list[FileRecord]:
            rows = conn.execute(
                f"SELECT {FILE_COLS} FROM files "
                "WHERE bucket = ? AND key = ? ORDER BY updated_at DESC",
                (bucket, key),
            ).fetchall()
            return [file_record(r) for r in rows]

        return await self._run(run, read=True)

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

        return await self._run(run, read=True)

    async def _list_files(self, query: FileFilter) -> list[FileRecord]:
        """Records matching the filters, most recently updated first (index walks)."""
        filter_args: list[Any] = []
        filter_sql = ""
        if query.key_prefix:
            filter_sql = " AND substr(key, 1, ?) = ?"
            filter_args = [len(query.key_prefix), query.key_prefix]
        if query.after is not None:
            # Past the cursor in (updated_at DESC, bucket, key, version): the first term
            # bounds the index walk, the second skips what the last page ended with.
            a = query.after
            filter_sql += (
                " AND updated_at <= ? AND (updated_at < ? OR (bucket, key, version) > (?, ?, ?))"
            )
            filter_args += [a.updated_at, a.updated_at, a.bucket, a.key, a.version]
        order = " ORDER BY updated_at DESC, bucket, key, version LIMIT ?"
        if query.pipeline is not None and query.status is None:
            # files_pipeline is (pipeline, status, updated_at): one walk per status, merged.
            parts = []
            args: list[Any] = []
            for st in FileStatus:
                parts.append(
                    f"SELECT * FROM (SELECT {FILE_COLS} FROM files WHERE pipeline = ? "
                    f"AND status = ?{filter_sql}{order})"
                )
                args += [query.pipeline, st.value, *filter_args, query.limit]
            sql = " UNION ALL ".join(parts) + order
            args.append(query.limit)
        else:
            where: list[str] = []
            args = []
            if query.status is not None:
                where.append("status = ?")
                args.append(query.status.value)
            if query.pipeline is not None:
                where.append("pipeline = ?")
                args.append(query.pipeline)
            sql = f"SELECT {FILE_COLS} FROM files"
            if not where:  # newest first along files_updated (the planner may prefer a scan)
                sql += " INDEXED BY files_updated"
            if filter_args:
                where.append(filter_sql[len(" AND ") :])
                args += filter_args
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += order
            args.append(query.limit)
        return await self._run(
            lambda conn: [file_record(r) for r in conn.execute(sql, args)], read=True
        )

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

        return await self._run(run, read=True)

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

        return await self._run(run, read=True)
