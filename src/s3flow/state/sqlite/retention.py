"""Retention on SQLite: the bounded prune, its background task, the recount, VACUUM.

What expires, ``retention_s`` after the time named (``[state] retention_days``):

- a terminal file record (completed, dead, quarantined) after its last
  transition (received / processing / failed records are work in progress and
  are kept), with its decrement of ``file_counts`` in the same transaction;
- a history line after it was written (also one of a record still in progress:
  its recent lines stay);
- a checkpoint after its last write;
- a lock after it was released, or after it expired unreleased;
- a completed manifest after its last change, with the files tracked for it
  (sealing / sealed / processing / failed manifests and pending files are
  unfinished work and are kept);
- a finished upload job (completed, failed, expired) after its last event,
  with its event log.

:meth:`RetentionMixin.prune` deletes in batches of :data:`PRUNE_BATCH` rows, one
short ``BEGIN IMMEDIATE`` transaction each (workers in other processes wait at
most one batch), each found through an index (never a scan), then gives up to
:data:`VACUUM_PAGES` free pages back to the file system (``PRAGMA
incremental_vacuum``; a database created by an s3flow without retention needs
one ``VACUUM`` first: :meth:`RetentionMixin.vacuum`). Without the vacuum the
freed pages are reused by new records, so the file stops growing either way.

While the store is open with ``prune_every_s`` set, a background task prunes
(at most :data:`PRUNE_MAX_ROWS` rows a pass): the first pass
:data:`PRUNE_FIRST_S` after opening (a short CLI command never prunes), then
every ``prune_every_s``. Several processes may prune one file at once: each
batch is its own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable
from typing import Self

from s3flow.closing import cancel_and_wait
from s3flow.state.jobs import TERMINAL_STATUSES
from s3flow.state.records import (
    TERMINAL_FILE_STATUSES,
    FileStatus,
    PruneReport,
    RecountReport,
    StateError,
)
from s3flow.state.sqlite.connection import SqliteStoreBase, in_tx
from s3flow.state.sqlite.files import add_counts

log = logging.getLogger(__name__)

PRUNE_BATCH = 1000  # rows per transaction
PRUNE_MAX_ROWS = 50_000  # rows per background pass
PRUNE_FIRST_S = 30.0  # the first background pass, after opening
PRUNE_EVERY_S = 300.0  # the background interval open_state_store asks for
VACUUM_PAGES = 4096  # free pages given back per prune (16 MiB of 4 KiB pages)
_MANIFEST_BATCH = 20  # completed manifests per transaction (each has its files)
_JOB_BATCH = 100  # finished jobs per transaction (each has its events)

Removed = dict[str, int]
Step = Callable[[sqlite3.Connection, float, int], Removed]


def _prune_files(conn: sqlite3.Connection, cutoff: float, limit: int) -> Removed:
    """Terminal records last changed before ``cutoff`` (index ``files_status``)."""
    gone = 0
    for status in sorted(TERMINAL_FILE_STATUSES):
        rows = conn.execute(
            "SELECT rowid, pipeline FROM files WHERE status = ? AND updated_at < ? "
            "ORDER BY updated_at LIMIT ?",
            (status.value, cutoff, limit - gone),
        ).fetchall()
        if not rows:
            continue
        conn.executemany("DELETE FROM files WHERE rowid = ?", [(r[0],) for r in rows])
        delta: dict[tuple[str, FileStatus], int] = {}
        for _, pipeline in rows:
            delta[(pipeline, status)] = delta.get((pipeline, status), 0) - 1
        add_counts(conn, delta)
        gone += len(rows)
        if gone >= limit:
            break
    return {"files": gone}


def _prune_history(conn: sqlite3.Connection, cutoff: float, limit: int) -> Removed:
    """History lines written before ``cutoff``, oldest id first (no index on ``at``).

    Ids grow with time, so the oldest lines are a prefix of the id order:
    reading ``limit`` lines by id and deleting the prefix older than the
    cutoff never reads more than it deletes, plus one.
    """
    rows = conn.execute("SELECT id, at FROM history ORDER BY id LIMIT ?", (limit,)).fetchall()
    last = None
    n = 0
    for hid, at in rows:
        if at >= cutoff:
            break
        last, n = hid, n + 1
    if last is not None:
        conn.execute("DELETE FROM history WHERE id <= ?", (last,))
    return {"history": n}


def _prune_by(table: str, column: str, kind: str) -> Step:
    def step(conn: sqlite3.Connection, cutoff: float, limit: int) -> Removed:
        cur = conn.execute(
            f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "
            f"WHERE {column} < ? ORDER BY {column} LIMIT ?)",
            (cutoff, limit),
        )
        return {kind: cur.rowcount}

    return step


def _prune_manifests(conn: sqlite3.Connection, cutoff: float, limit: int) -> Removed:
    """Completed manifests unchanged since ``cutoff``, with their tracked files."""
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT manifest_id FROM manifests WHERE status = 'completed' AND created_at < ? "
            "AND updated_at < ? ORDER BY created_at LIMIT ?",
            (cutoff, cutoff, max(1, min(limit, _MANIFEST_BATCH))),
        )
    ]
    files = 0
    for mid in ids:
        files += conn.execute("DELETE FROM manifest_files WHERE manifest_id = ?", (mid,)).rowcount
        conn.execute("DELETE FROM manifests WHERE manifest_id = ?", (mid,))
    return {"manifests": len(ids), "manifest_files": files}


def _prune_jobs(conn: sqlite3.Connection, cutoff: float, limit: int) -> Removed:
    """Finished jobs whose last event is older than ``cutoff``, with their event logs."""
    ids: list[str] = []
    want = max(1, min(limit, _JOB_BATCH))
    for status in sorted(TERMINAL_STATUSES):
        ids += [
            r[0]
            for r in conn.execute(
                "SELECT job_id FROM jobs WHERE status = ? AND created_at < ? AND updated_at < ? "
                "ORDER BY created_at LIMIT ?",
                (status.value, cutoff, cutoff, want - len(ids)),
            )
        ]
        if len(ids) >= want:
            break
    events = 0
    for job_id in ids:
        events += conn.execute("DELETE FROM job_events WHERE job_id = ?", (job_id,)).rowcount
        conn.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
    return {"jobs": len(ids), "job_events": events}


#: The prune's steps, in order: (name, step, the count that says a batch was full).
_STEPS: tuple[tuple[str, Step, str], ...] = (
    ("files", _prune_files, "files"),
    ("history", _prune_history, "history"),
    ("checkpoints", _prune_by("checkpoints", "updated_at", "checkpoints"), "checkpoints"),
    ("locks", _prune_by("locks", "expires_at", "locks"), "locks"),
    ("manifests", _prune_manifests, "manifests"),
    ("jobs", _prune_jobs, "jobs"),
)


def _incremental_vacuum(conn: sqlite3.Connection) -> int:
    """Give up to VACUUM_PAGES free pages back (only in incremental auto-vacuum mode)."""
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        return 0
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    n = min(free, VACUUM_PAGES)
    if n:
        conn.execute(f"PRAGMA incremental_vacuum({n})").fetchall()
    return n


class RetentionMixin(SqliteStoreBase):
    """The MaintenanceStore protocol on SQLite, and the background prune (see the module)."""

    _prune_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        """Open the file; start the background prune when ``prune_every_s`` is set."""
        await super().__aenter__()
        every = self._prune_every_s
        if every is not None and self.retention_s is not None:
            self._prune_task = asyncio.create_task(
                self._prune_loop(min(PRUNE_FIRST_S, every), every),
                name=f"s3flow-prune {self.path}",
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop the background prune, then close."""
        task, self._prune_task = self._prune_task, None
        await cancel_and_wait(task)
        await super().__aexit__(*exc)

    async def _prune_loop(self, first_s: float, every_s: float) -> None:
        await asyncio.sleep(first_s)
        while True:
            try:
                report = await self.prune(max_rows=PRUNE_MAX_ROWS)
            except StateError as exc:
                log.warning("state store %s: prune failed (will retry): %s", self.path, exc)
            else:
                if report.removed:
                    log.info(
                        "state store %s: pruned %d rows past the retention%s",
                        self.path,
                        report.removed,
                        "" if report.complete else " (more left for the next pass)",
                    )
            await asyncio.sleep(every_s)

    async def prune(self, *, max_rows: int | None = None) -> PruneReport:
        """Delete what outlived the retention, in batches (see the module); vacuum a little."""
        report = PruneReport()
        retention = self.retention_s
        if retention is None:
            report.note = "retention is off (retention_days = 0): nothing expires"
            return report
        budget = max_rows
        for _name, step, full_when in _STEPS:
            while True:
                limit = PRUNE_BATCH if budget is None else min(PRUNE_BATCH, budget)
                if limit <= 0:
                    report.complete = False
                    break
                cutoff = self._clock() - retention

                def batch(
                    conn: sqlite3.Connection, s: Step = step, c: float = cutoff, n: int = limit
                ) -> Removed:
                    return in_tx(conn, lambda cx: s(cx, c, n))

                removed = await self._run(batch, alone=True)
                for kind, n in removed.items():
                    setattr(report, kind, getattr(report, kind) + n)
                used = sum(removed.values())
                if budget is not None:
                    budget -= used
                if removed.get(full_when, 0) < min(limit, _batch_of(full_when)):
                    break
                await asyncio.sleep(0)  # let the worker's own store calls in between
            if not report.complete:
                break
        report.vacuumed_pages = await self._run(_incremental_vacuum, alone=True)
        return report

    async def recount(self, *, repair: bool = False) -> RecountReport:
        """Count every record (reads all of ``files``) and compare with ``file_counts``.

        One transaction: with ``repair`` the counters are replaced by the count,
        exactly (writers wait for it).
        """

        def tx(conn: sqlite3.Connection) -> RecountReport:
            counted: dict[str, dict[str, int]] = {}
            total = 0
            for pipeline, status, n in conn.execute(
                "SELECT pipeline, status, count(*) FROM files GROUP BY pipeline, status"
            ):
                counted.setdefault(pipeline, {})[status] = int(n)
                total += int(n)
            counters: dict[str, dict[str, int]] = {}
            for pipeline, status, n in conn.execute("SELECT pipeline, status, n FROM file_counts"):
                if n:
                    counters.setdefault(pipeline, {})[status] = int(n)
            if repair:
                conn.execute("DELETE FROM file_counts")
                conn.execute(
                    "INSERT INTO file_counts (pipeline, status, n) "
                    "SELECT pipeline, status, count(*) FROM files GROUP BY pipeline, status"
                )
            return RecountReport(counted, counters, total, repaired=repair)

        return await self._run(lambda conn: in_tx(conn, tx), alone=True)

    async def vacuum(self) -> tuple[int, int]:
        """Rewrite the whole file (``VACUUM``) in incremental auto-vacuum mode.

        Once for a database created without it; it needs the file to itself
        for as long as it runs (stop the workers) and temporary disk space of
        about its size. Returns the file's size in bytes before and after.
        """

        def run(conn: sqlite3.Connection) -> tuple[int, int]:
            before = self._size(conn)
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return before, self._size(conn)

        return await self._run(run, alone=True)  # VACUUM cannot run inside a transaction

    def _size(self, conn: sqlite3.Connection) -> int:
        """Bytes of the database file plus its WAL (0 for ``:memory:``)."""
        if self.path == ":memory:":
            return 0
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.expanduser(self.path) + suffix)
        return total


def _batch_of(kind: str) -> int:
    """How many rows of ``kind`` make a full batch (fewer: that step is done)."""
    if kind == "manifests":
        return _MANIFEST_BATCH
    if kind == "jobs":
        return _JOB_BATCH
    return PRUNE_BATCH
