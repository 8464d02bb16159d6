"""SQLite state store: the single-node default (WAL, safe across worker processes).

One connection per store, used only from one dedicated thread (a
single-worker executor), so the event loop never blocks on SQLite and calls
from many tasks are serialised without a lock. Several worker *processes* may
share one database file: every read-modify-write runs in a ``BEGIN IMMEDIATE``
transaction (the database write lock is taken before the row is read), and
``busy_timeout`` makes a process wait for another's write instead of failing.

The lifecycle rules themselves (what a claim, a fenced finish or an operator
transition does to a record) are backend-neutral functions in
:mod:`s3flow.state.lifecycle`, shared with the DynamoDB backend.

Claims return ``token == 0`` unless the outcome is ``ACQUIRED``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from s3flow.state.base import (
    FILE_STATUS_OF,
    Claim,
    FileRecord,
    FileStatus,
    HistoryEntry,
    LockLostError,
    ManifestFile,
    ManifestFileStatus,
    ManifestRecord,
    ManifestStatus,
    ObjectId,
    PendingSummary,
    StateError,
    TrackedFile,
    UnknownManifestError,
)
from s3flow.state.lifecycle import (
    FencedFinishMixin,
    clip,
    files_from_text,
    files_to_text,
    plan_claim,
    plan_finish,
    plan_manifest_status,
    plan_set_status,
    zero_counts,
)

T = TypeVar("T")

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000


# --- SQL ------------------------------------------------------------------------------

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS files (
        bucket TEXT NOT NULL,
        key TEXT NOT NULL,
        version TEXT NOT NULL,
        pipeline TEXT NOT NULL,
        status TEXT NOT NULL,
        size INTEGER,
        sequencer TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error_class TEXT,
        last_error TEXT,
        outputs TEXT NOT NULL DEFAULT '[]',
        worker_id TEXT,
        claim_owner TEXT,
        claim_expires_at REAL,
        fencing_token INTEGER NOT NULL DEFAULT 0,
        timestamps TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        failures INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (bucket, key, version)
    )""",
    "CREATE INDEX IF NOT EXISTS files_status ON files (status, updated_at)",
    "CREATE INDEX IF NOT EXISTS files_pipeline ON files (pipeline, status, updated_at)",
    "CREATE INDEX IF NOT EXISTS files_updated ON files (updated_at)",
    """CREATE TABLE IF NOT EXISTS history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        bucket TEXT NOT NULL,
        key TEXT NOT NULL,
        version TEXT NOT NULL,
        at REAL NOT NULL,
        old TEXT,
        new TEXT NOT NULL,
        worker_id TEXT,
        detail TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX IF NOT EXISTS history_key ON history (bucket, key, id)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS locks (
        name TEXT PRIMARY KEY, owner TEXT, token INTEGER NOT NULL, expires_at REAL
    )""",
    # Manifests (additive tables: an older database gains them on open).
    """CREATE TABLE IF NOT EXISTS manifest_files (
        dataset TEXT NOT NULL,
        date TEXT NOT NULL,
        bucket TEXT NOT NULL,
        key TEXT NOT NULL,
        version TEXT NOT NULL,
        size INTEGER NOT NULL,
        etag TEXT NOT NULL,
        version_id TEXT,
        status TEXT NOT NULL,
        manifest_id TEXT,
        added_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (dataset, date, bucket, key, version)
    )""",
    "CREATE INDEX IF NOT EXISTS mfiles_status ON manifest_files (dataset, status, date, added_at)",
    "CREATE INDEX IF NOT EXISTS mfiles_manifest ON manifest_files (manifest_id)",
    """CREATE TABLE IF NOT EXISTS manifests (
        manifest_id TEXT PRIMARY KEY,
        dataset TEXT NOT NULL,
        date TEXT NOT NULL,
        status TEXT NOT NULL,
        files TEXT NOT NULL,
        trigger TEXT NOT NULL,
        fencing_token INTEGER NOT NULL,
        sealed_by TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        location TEXT,
        detail TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS manifests_dataset ON manifests (dataset, status, created_at)",
    "CREATE INDEX IF NOT EXISTS manifests_created ON manifests (created_at)",
)

_MF_COLS = (
    "dataset, date, bucket, key, version, size, etag, version_id, status, manifest_id, "
    "added_at, updated_at, detail"
)
_M_COLS = (
    "manifest_id, dataset, date, status, files, trigger, fencing_token, sealed_by, "
    "created_at, updated_at, location, detail, attempts"
)
_M_UPSERT = (
    f"INSERT INTO manifests ({_M_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (manifest_id) DO UPDATE SET status = excluded.status, files = excluded.files, "
    "updated_at = excluded.updated_at, location = excluded.location, "
    "detail = excluded.detail, attempts = excluded.attempts"
)

_COLS = (
    "bucket, key, version, pipeline, status, size, sequencer, attempts, last_error_class, "
    "last_error, outputs, worker_id, claim_owner, claim_expires_at, fencing_token, "
    "timestamps, created_at, updated_at, failures"
)
_SELECT_ONE = f"SELECT {_COLS} FROM files WHERE bucket = ? AND key = ? AND version = ?"
_UPSERT = (
    f"INSERT INTO files ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
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
_INCR = (
    "INSERT INTO counters (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value RETURNING value"
)


def _record(r: tuple[Any, ...]) -> FileRecord:
    return FileRecord(
        r[0],
        r[1],
        r[2],
        r[3],
        FileStatus(r[4]),
        r[5],
        r[6],
        r[7],
        r[8],
        r[9],
        json.loads(r[10]),
        r[11],
        r[12],
        r[13],
        r[14],
        json.loads(r[15]),
        r[16],
        r[17],
        r[18],
    )


def _row(rec: FileRecord) -> tuple[Any, ...]:
    return (
        rec.bucket,
        rec.key,
        rec.version,
        rec.pipeline,
        rec.status.value,
        rec.size,
        rec.sequencer,
        rec.attempts,
        rec.last_error_class,
        rec.last_error,
        json.dumps(rec.outputs),
        rec.worker_id,
        rec.claim_owner,
        rec.claim_expires_at,
        rec.fencing_token,
        json.dumps(rec.timestamps),
        rec.created_at,
        rec.updated_at,
        rec.failures,
    )


def _select(conn: sqlite3.Connection, oid: ObjectId) -> FileRecord | None:
    r = conn.execute(_SELECT_ONE, (oid.bucket, oid.key, oid.version)).fetchone()
    return None if r is None else _record(r)


def _tracked(r: tuple[Any, ...]) -> TrackedFile:
    return TrackedFile(
        dataset=r[0],
        date=r[1],
        file=ManifestFile(bucket=r[2], key=r[3], size=r[5], etag=r[6], version_id=r[7]),
        status=ManifestFileStatus(r[8]),
        manifest_id=r[9],
        added_at=r[10],
        updated_at=r[11],
        detail=r[12],
    )


def _manifest(r: tuple[Any, ...]) -> ManifestRecord:
    return ManifestRecord(
        manifest_id=r[0],
        dataset=r[1],
        date=r[2],
        status=ManifestStatus(r[3]),
        files=files_from_text(r[4]),
        trigger=r[5],
        fencing_token=r[6],
        sealed_by=r[7],
        created_at=r[8],
        updated_at=r[9],
        location=r[10],
        detail=r[11],
        attempts=r[12],
    )


def _manifest_row(m: ManifestRecord) -> tuple[Any, ...]:
    return (
        m.manifest_id,
        m.dataset,
        m.date,
        m.status.value,
        files_to_text(m.files),
        m.trigger,
        m.fencing_token,
        m.sealed_by,
        m.created_at,
        m.updated_at,
        m.location,
        m.detail,
        m.attempts,
    )


def _select_manifest(conn: sqlite3.Connection, manifest_id: str) -> ManifestRecord | None:
    r = conn.execute(
        f"SELECT {_M_COLS} FROM manifests WHERE manifest_id = ?", (manifest_id,)
    ).fetchone()
    return None if r is None else _manifest(r)


def _write(conn: sqlite3.Connection, rec: FileRecord, entry: HistoryEntry) -> None:
    conn.execute(_UPSERT, _row(rec))
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


def _enable_wal(
    conn: sqlite3.Connection,
    *,
    timeout_s: float = BUSY_TIMEOUT_MS / 1000,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Switch the file to WAL, retrying while another process holds it.

    When several processes open a new database at once, ``PRAGMA journal_mode``
    can fail with "database is locked" at once, without calling the busy
    handler (seen about once in 1,200 simultaneous first opens), so the
    busy timeout alone does not cover it.
    """
    deadline = clock() + timeout_s
    delay_s = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            transient = "locked" in str(exc) or "busy" in str(exc)
            if not transient or clock() >= deadline:
                raise
        sleep(delay_s)
        delay_s = min(delay_s * 2, 0.2)


def _in_tx(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn`` in a ``BEGIN IMMEDIATE`` transaction (write lock taken up front)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


# --- the store ------------------------------------------------------------------------


class SqliteStateStore(FencedFinishMixin):
    """The StateStore protocol on one SQLite file (WAL). Use ``async with``.

    ``clock`` returns unix seconds; tests pass a fake one to expire claims.
    ``":memory:"`` works (one connection) but is not shared between processes.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"SqliteStateStore({self.path!r})"

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> SqliteStateStore:
        """Open the file (creating it, its directory and the schema as needed)."""
        if self._executor is not None:
            raise StateError(f"state store {self.path} is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3flow-sqlite")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the connection and its thread."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close)
        finally:
            executor.shutdown(wait=False)

    def _open(self) -> None:
        path = self.path
        try:
            if path != ":memory:":
                file = Path(path).expanduser()
                file.parent.mkdir(parents=True, exist_ok=True)
                path = str(file)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"state store {self.path}: cannot open: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            _in_tx(conn, self._create_schema)
        except sqlite3.Error as exc:
            conn.close()
            raise StateError(f"state store {self.path}: cannot open: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        for stmt in _SCHEMA:
            conn.execute(stmt)
        # Columns added after a database was created (additive, default-valued).
        have = {r[1] for r in conn.execute("PRAGMA table_info(files)")}
        if "failures" not in have:
            conn.execute("ALTER TABLE files ADD COLUMN failures INTEGER NOT NULL DEFAULT 0")
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        found = row[0] if row else None
        if found is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif found > SCHEMA_VERSION:
            raise StateError(
                f"state store {self.path} has schema version {found}; this s3flow "
                f"understands up to {SCHEMA_VERSION} (upgrade s3flow)"
            )

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor
        if executor is None:
            raise StateError(f"state store {self.path} is not open (use 'async with')")
        return await asyncio.get_running_loop().run_in_executor(executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StateError(f"state store {self.path} is closed")
        try:
            return fn(conn)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise StateError(f"state store {self.path}: {type(exc).__name__}: {exc}") from exc

    # --- files and idempotency -----------------------------------------------------------

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

        return await self._run(lambda conn: _in_tx(conn, tx))

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

        return await self._run(lambda conn: _in_tx(conn, tx))

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

        return await self._run(lambda conn: _in_tx(conn, tx))

    async def get(self, oid: ObjectId) -> FileRecord | None:
        """One version's record."""
        return await self._run(lambda conn: _select(conn, oid))

    async def versions(self, bucket: str, key: str) -> list[FileRecord]:
        """The records of every version of one key, most recently updated first."""

        def run(conn: sqlite3.Connection) -> list[FileRecord]:
            rows = conn.execute(
                f"SELECT {_COLS} FROM files WHERE bucket = ? AND key = ? ORDER BY updated_at DESC",
                (bucket, key),
            ).fetchall()
            return [_record(r) for r in rows]

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
        sql = f"SELECT {_COLS} FROM files"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY updated_at DESC, bucket, key, version LIMIT ?"
        args.append(max(0, limit))
        return await self._run(lambda conn: [_record(r) for r in conn.execute(sql, args)])

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

    # --- counters ---------------------------------------------------------------------------

    async def incr(self, name: str, by: int = 1) -> int:
        """Increment a named counter; return the new value."""

        def run(conn: sqlite3.Connection) -> int:
            return int(conn.execute(_INCR, (name, by)).fetchone()[0])

        return await self._run(run)

    async def counter(self, name: str) -> int:
        """Current value of a named counter (0 if never set)."""

        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            return 0 if row is None else int(row[0])

        return await self._run(run)

    # --- checkpoints ---------------------------------------------------------------------------

    async def get_checkpoint(self, name: str) -> str | None:
        """The stored position for ``name``."""

        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM checkpoints WHERE name = ?", (name,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(run)

    async def put_checkpoint(self, name: str, value: str) -> None:
        """Store a position for ``name`` (last write wins)."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO checkpoints (name, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (name, value, self._clock()),
            )

        await self._run(run)

    # --- leases / locks -------------------------------------------------------------------------

    async def acquire_lock(self, name: str, *, owner: str, ttl_s: float) -> int | None:
        """Take the lock if free or expired: return a fencing token (strictly increasing).

        The row is kept on release, so tokens keep increasing across releases.
        """

        def tx(conn: sqlite3.Connection) -> int | None:
            now = self._clock()
            row = conn.execute(
                "SELECT owner, token, expires_at FROM locks WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and row[0] is not None and (row[2] or 0) > now:
                return None
            token = (0 if row is None else int(row[1])) + 1
            conn.execute(
                "INSERT INTO locks (name, owner, token, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
                "token = excluded.token, expires_at = excluded.expires_at",
                (name, owner, token, now + ttl_s),
            )
            return token

        return await self._run(lambda conn: _in_tx(conn, tx))

    async def renew_lock(self, name: str, *, owner: str, token: int, ttl_s: float) -> bool:
        """Extend a held lock; False if it was lost (token stale)."""

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE locks SET expires_at = ? WHERE name = ? AND owner = ? AND token = ?",
                (self._clock() + ttl_s, name, owner, token),
            )
            return cur.rowcount == 1

        return await self._run(run)

    async def release_lock(self, name: str, *, owner: str, token: int) -> bool:
        """Release a held lock; False if it was not ours any more."""

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE locks SET owner = NULL, expires_at = NULL "
                "WHERE name = ? AND owner = ? AND token = ?",
                (name, owner, token),
            )
            return cur.rowcount == 1

        return await self._run(run)

    # --- manifests ------------------------------------------------------------------------

    async def add_pending(self, dataset: str, date: str, file: ManifestFile) -> bool:
        """Track ``file`` as pending (see :meth:`StateStore.add_pending`)."""

        def run(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            cur = conn.execute(
                f"INSERT INTO manifest_files ({_MF_COLS}) VALUES "
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
                f"SELECT {_MF_COLS} FROM manifest_files WHERE dataset = ? AND date = ? "
                "AND bucket = ? AND key = ? AND version = ?",
                (dataset, date, oid.bucket, oid.key, oid.version),
            ).fetchone()
            return None if r is None else _tracked(r)

        return await self._run(run)

    async def pending_files(
        self, dataset: str, date: str, *, limit: int | None = None
    ) -> list[TrackedFile]:
        """The pending files of one (dataset, date), oldest first."""
        sql = (
            f"SELECT {_MF_COLS} FROM manifest_files WHERE dataset = ? AND status = 'pending' "
            "AND date = ? ORDER BY added_at, bucket, key, version LIMIT ?"
        )
        args = (dataset, date, -1 if limit is None else max(0, limit))
        return await self._run(lambda conn: [_tracked(r) for r in conn.execute(sql, args)])

    async def pending(self, dataset: str, date: str) -> PendingSummary:
        """Count, bytes and oldest add time of one (dataset, date)'s pending files."""

        def run(conn: sqlite3.Connection) -> PendingSummary:
            n, total, oldest = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0), min(added_at) FROM manifest_files "
                "WHERE dataset = ? AND status = 'pending' AND date = ?",
                (dataset, date),
            ).fetchone()
            return PendingSummary(dataset, date, int(n), int(total), oldest)

        return await self._run(run)

    async def pending_dates(self, dataset: str) -> list[PendingSummary]:
        """One summary per date that has pending files, by date."""

        def run(conn: sqlite3.Connection) -> list[PendingSummary]:
            rows = conn.execute(
                "SELECT date, count(*), sum(size), min(added_at) FROM manifest_files "
                "WHERE dataset = ? AND status = 'pending' GROUP BY date ORDER BY date",
                (dataset,),
            )
            return [PendingSummary(dataset, d, int(n), int(b), a) for d, n, b, a in rows]

        return await self._run(run)

    def _check_lock(self, conn: sqlite3.Connection, lock: str, owner: str, token: int) -> None:
        row = conn.execute(
            "SELECT owner, token, expires_at FROM locks WHERE name = ?", (lock,)
        ).fetchone()
        if row is None or row[0] != owner or row[1] != token or (row[2] or 0) <= self._clock():
            raise LockLostError(f"lock {lock!r} is no longer held by {owner} with token {token}")

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
            conn.execute(_M_UPSERT, _manifest_row(sealed))
            return sealed

        return await self._run(lambda conn: _in_tx(conn, tx))

    async def mark_published(self, manifest_id: str, location: str) -> ManifestRecord:
        """Record where the sealed manifest's JSON was written."""

        def tx(conn: sqlite3.Connection) -> ManifestRecord:
            rec = _select_manifest(conn, manifest_id)
            if rec is None:
                raise UnknownManifestError(f"no manifest {manifest_id!r}")
            if rec.status is ManifestStatus.SEALING:
                raise StateError(f"manifest {manifest_id} is not sealed yet")
            new = replace(rec, location=location, updated_at=self._clock())
            conn.execute(_M_UPSERT, _manifest_row(new))
            return new

        return await self._run(lambda conn: _in_tx(conn, tx))

    async def unfinished_manifests(self, dataset: str) -> list[ManifestRecord]:
        """Manifests still sealing, or sealed but not yet published, oldest first."""
        sql = (
            f"SELECT {_M_COLS} FROM manifests WHERE dataset = ? AND (status = 'sealing' OR "
            "(status = 'sealed' AND location IS NULL)) ORDER BY created_at, manifest_id"
        )
        return await self._run(lambda conn: [_manifest(r) for r in conn.execute(sql, (dataset,))])

    async def get_manifest(self, manifest_id: str) -> ManifestRecord | None:
        """One manifest."""
        return await self._run(lambda conn: _select_manifest(conn, manifest_id))

    async def list_manifests(
        self,
        *,
        dataset: str | None = None,
        status: ManifestStatus | None = None,
        limit: int = 1000,
    ) -> list[ManifestRecord]:
        """Manifests matching the filters, newest first."""
        where: list[str] = []
        args: list[Any] = []
        if dataset is not None:
            where.append("dataset = ?")
            args.append(dataset)
        if status is not None:
            where.append("status = ?")
            args.append(ManifestStatus(status).value)
        sql = f"SELECT {_M_COLS} FROM manifests"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, manifest_id DESC LIMIT ?"
        args.append(max(0, limit))
        return await self._run(lambda conn: [_manifest(r) for r in conn.execute(sql, args)])

    async def set_manifest_status(
        self,
        manifest_id: str,
        status: ManifestStatus,
        *,
        detail: str = "",
        expect: ManifestStatus | None = None,
        quarantined: Mapping[ObjectId, str] | None = None,
    ) -> ManifestRecord:
        """Move a manifest and its files to ``status`` (one transaction)."""

        def tx(conn: sqlite3.Connection) -> ManifestRecord:
            new = plan_manifest_status(
                _select_manifest(conn, manifest_id),
                manifest_id,
                status,
                detail=detail,
                expect=expect,
                now=self._clock(),
            )
            conn.execute(_M_UPSERT, _manifest_row(new))
            conn.execute(
                "UPDATE manifest_files SET status = ?, detail = ?, updated_at = ? "
                "WHERE manifest_id = ?",
                (FILE_STATUS_OF[status].value, clip(detail), new.updated_at, manifest_id),
            )
            for oid, reason in (quarantined or {}).items():
                conn.execute(
                    "UPDATE manifest_files SET status = ?, detail = ?, updated_at = ? "
                    "WHERE manifest_id = ? AND bucket = ? AND key = ? AND version = ?",
                    (
                        ManifestFileStatus.QUARANTINED.value,
                        clip(reason),
                        new.updated_at,
                        manifest_id,
                        oid.bucket,
                        oid.key,
                        oid.version,
                    ),
                )
            return new

        return await self._run(lambda conn: _in_tx(conn, tx))
