"""SQLite state store: opening a database that other processes are opening too; commits
synced to disk."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from s3flow.state.sqlite import SqliteStateStore
from s3flow.state.sqlite.schema import enable_wal


class FlakyConn:
    """Fails ``PRAGMA journal_mode`` with a given error the first ``fails`` times."""

    def __init__(self, fails: int, message: str = "database is locked") -> None:
        self.fails = fails
        self.message = message
        self.calls = 0

    def execute(self, sql: str) -> Any:
        assert sql == "PRAGMA journal_mode = WAL"
        self.calls += 1
        if self.calls <= self.fails:
            raise sqlite3.OperationalError(self.message)
        return self

    def fetchone(self) -> tuple[str]:
        return ("wal",)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_locked_journal_switch_is_retried_until_it_succeeds() -> None:
    conn, clock = FlakyConn(fails=3), FakeClock()
    enable_wal(conn, timeout_s=10, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert conn.calls == 4
    assert clock.sleeps == [0.005, 0.01, 0.02]  # backs off


def test_lock_held_past_the_timeout_raises_the_sqlite_error() -> None:
    conn, clock = FlakyConn(fails=10_000), FakeClock()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        enable_wal(conn, timeout_s=1, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert 1 <= clock.now < 1.5
    assert max(clock.sleeps) <= 0.2


def test_other_errors_are_not_retried() -> None:
    conn, clock = FlakyConn(fails=1, message="disk I/O error"), FakeClock()
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        enable_wal(conn, timeout_s=10, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert conn.calls == 1


def test_real_file_ends_in_wal_mode(tmp_path: Any) -> None:
    conn = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    try:
        enable_wal(conn)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


async def test_the_store_syncs_each_commit(tmp_path: Any) -> None:
    """``synchronous = FULL``: the worker deletes a message right after its record is
    written, so a commit must survive a power loss (NORMAL in WAL mode does not)."""
    async with SqliteStateStore(tmp_path / "s.db") as store:
        mode = await store._run(lambda c: c.execute("PRAGMA synchronous").fetchone(), read=True)
    assert mode == (2,)  # FULL


async def test_a_damaged_file_is_named_as_damaged(tmp_path: Any) -> None:
    """Every failure to open ended "set [state] url to a SQLite file in a directory this
    process can write", also for a damaged file or a lock held too long."""
    from s3flow.state.records import StateError

    bad = tmp_path / "state.db"
    bad.write_bytes(b"this is not a database" * 200)
    with pytest.raises(StateError) as err:
        async with SqliteStateStore(bad):
            pass
    assert "the file is damaged or is not an s3flow state store" in str(err.value)
    store = SqliteStateStore(tmp_path / "other.db")
    locked = store._cannot_open(sqlite3.OperationalError("database is locked"))
    assert "another process held its write lock for over 10 s" in str(locked)
