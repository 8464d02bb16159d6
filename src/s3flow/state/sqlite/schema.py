"""The SQLite database's format: schema version, tables, additive migrations, WAL.

:func:`create_schema` runs on every open (inside the opening transaction): it
creates what is missing, adds columns introduced after a database was created,
and refuses a database written by a newer s3flow.

Version 2 (retention) added ``file_counts`` (records per pipeline and status,
kept in the transaction of every transition: what ``s3flow status`` reads) and
the indexes the prune walks. Opening a version-1 database upgrades it once: the
counters are counted from the records (one full read of ``files``) and the
locks released before the upgrade get a release time (the upgrade's). An older
s3flow then refuses the database (it would not keep the counters).

A new database is created with ``auto_vacuum = INCREMENTAL`` (:func:`prepare_new`,
before WAL and the tables: SQLite only takes it then), so a prune can give freed
pages back to the file system. An existing database keeps its mode: ``s3flow
state prune --vacuum`` switches it with one ``VACUUM`` (a full rewrite).
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable

from s3flow.state.records import StateError

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 10_000

SCHEMA = (
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
    # Records per (pipeline, status), changed in the transaction of every transition and
    # prune (schema version 2): `s3flow status` reads these rows, never `files`.
    """CREATE TABLE IF NOT EXISTS file_counts (
        pipeline TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (pipeline, status)
    )""",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS checkpoints_updated ON checkpoints (updated_at)",
    # ``expires_at`` is when a held lock expires, or when a free one was released.
    """CREATE TABLE IF NOT EXISTS locks (
        name TEXT PRIMARY KEY, owner TEXT, token INTEGER NOT NULL, expires_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS locks_expires ON locks (expires_at)",
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
    "CREATE INDEX IF NOT EXISTS manifests_status ON manifests (status, created_at)",
    # Upload jobs and their event logs (additive tables: an older database gains them on
    # open). ``record`` is the whole JobRecord (``s3flow.state.jobs.job_to_json``); the
    # other columns repeat the fields that are looked up or listed by, written with it.
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY,
        upload_id TEXT NOT NULL UNIQUE,
        template TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        last_seq INTEGER NOT NULL,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at)",
    """CREATE TABLE IF NOT EXISTS job_events (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (job_id, seq),
        UNIQUE (job_id, event_id)
    )""",
)


def enable_wal(
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


def prepare_new(conn: sqlite3.Connection) -> bool:
    """Give a brand-new (empty) database file incremental auto-vacuum; True if it was new.

    Must run before WAL is switched on and outside a transaction: SQLite fixes
    the auto-vacuum mode when the file's first page is written.
    """
    if conn.execute("PRAGMA page_count").fetchone()[0] != 0:
        return False
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    return True


#: The tables of the current schema (what a read-only open checks for).
TABLES = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", " ".join(SCHEMA)))


def _version(conn: sqlite3.Connection, path: str) -> int | None:
    """The schema version of the database (None: it has none); a newer one is refused."""
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    found = None
    if row is not None:
        vrow = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        found = vrow[0] if vrow else None
    if found is not None and found > SCHEMA_VERSION:
        raise StateError(
            f"state store {path} has schema version {found}; this s3flow "
            f"understands up to {SCHEMA_VERSION} (upgrade s3flow)"
        )
    return found


def check_schema(conn: sqlite3.Connection, path: str) -> None:
    """Check, changing nothing, that the database has the current schema (a read-only
    open: what :func:`create_schema` would add or upgrade is an error saying so)."""
    found = _version(conn, path)
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if found is None:
        raise StateError(
            f"state store {path} is not an s3flow state store (no schema version): nothing to read"
        )
    columns = {r[1] for r in conn.execute("PRAGMA table_info(files)")}
    if found < SCHEMA_VERSION or set(TABLES) - have or "failures" not in columns:
        raise StateError(
            f"state store {path} was written by an older s3flow (schema version {found}) "
            "and is opened read-only, so it cannot be upgraded: open it once where it is "
            "writable (a worker's start upgrades it), then read it"
        )


def create_schema(conn: sqlite3.Connection, path: str, now: float | None = None) -> None:
    """Create missing tables, add newer columns, check the version (in a transaction).

    ``path`` only names the store in the error raised for a newer database;
    ``now`` (unix seconds) stamps locks released before an upgrade to version 2.
    """
    found = _version(conn, path)
    for stmt in SCHEMA:
        conn.execute(stmt)
    # Columns added after a database was created (additive, default-valued).
    have = {r[1] for r in conn.execute("PRAGMA table_info(files)")}
    if "failures" not in have:
        conn.execute("ALTER TABLE files ADD COLUMN failures INTEGER NOT NULL DEFAULT 0")
    if found == SCHEMA_VERSION:
        return
    # Version 2: the status counters, counted once from the records; free locks get a
    # release time so that the prune can forget them one retention later.
    conn.execute("DELETE FROM file_counts")
    conn.execute(
        "INSERT INTO file_counts (pipeline, status, n) "
        "SELECT pipeline, status, count(*) FROM files GROUP BY pipeline, status"
    )
    conn.execute(
        "UPDATE locks SET expires_at = ? WHERE expires_at IS NULL",
        (time.time() if now is None else now,),
    )
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
