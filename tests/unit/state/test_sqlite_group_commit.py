"""SQLite store thread: calls queued together share one transaction (group commit)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from s3flow.state.records import StateError
from s3flow.state.sqlite.connection import SqliteStoreBase, in_tx


class Store(SqliteStoreBase):
    """The bare store base with one table of its own."""

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        super()._create_schema(conn)
        conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER)")


def put(k: str, v: int, *, fail: bool = False) -> Callable[[sqlite3.Connection], int]:
    """A read-modify-write call: insert (k, v) in :func:`in_tx`, optionally raising after."""

    def tx(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, v))
        if fail:
            raise ValueError(f"refused {k}")
        return v

    return lambda conn: in_tx(conn, tx)


def committed(path: Path) -> dict[str, int]:
    """What another connection sees (only committed rows)."""
    with sqlite3.connect(path) as other:
        return dict(other.execute("SELECT k, v FROM t"))


async def queued_together(
    store: Store, calls: list[tuple[Callable[[sqlite3.Connection], Any], bool]]
) -> tuple[list[Any], list[str]]:
    """Queue ``calls`` while the store's thread is busy, so that one pass runs them all.

    Returns each call's result (or exception) and the SQL the connection ran meanwhile.
    """
    started, release = threading.Event(), threading.Event()
    statements: list[str] = []

    def hold(conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(statements.append)
        started.set()
        release.wait(10)

    def untrace(conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(None)

    blocker = asyncio.ensure_future(store._run(hold, alone=True))
    await asyncio.to_thread(started.wait, 10)
    futures = [asyncio.ensure_future(store._run(fn, alone=alone)) for fn, alone in calls]
    await asyncio.sleep(0)  # every call is queued
    release.set()
    await blocker
    results = await asyncio.gather(*futures, return_exceptions=True)
    await store._run(untrace, alone=True)
    return results, statements


async def test_calls_queued_together_commit_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with Store(path) as store:
        results, sql = await queued_together(store, [(put(f"k{i}", i), False) for i in range(5)])
    assert results == [0, 1, 2, 3, 4]
    assert sql.count("BEGIN IMMEDIATE") == 1
    assert sql.count("COMMIT") == 1
    assert sql.count("SAVEPOINT in_tx") == 5
    assert committed(path) == {f"k{i}": i for i in range(5)}


async def test_a_call_that_raises_undoes_only_its_own_changes(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with Store(path) as store:
        results, sql = await queued_together(
            store, [(put("a", 1), False), (put("b", 2, fail=True), False), (put("c", 3), False)]
        )
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], ValueError) and "refused b" in str(results[1])
    assert sql.count("COMMIT") == 1
    assert committed(path) == {"a": 1, "c": 3}


async def test_a_database_error_runs_every_call_alone(tmp_path: Path) -> None:
    """One call's SQL error rolls the group back; each call then runs as if alone."""
    path = tmp_path / "s.db"

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    async with Store(path) as store:
        results, sql = await queued_together(
            store, [(put("a", 1), False), (broken, False), (put("c", 3), False)]
        )
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], StateError)
    assert "no_such_table" in str(results[1])
    assert "ROLLBACK" in sql
    assert sql.count("BEGIN IMMEDIATE") == 3  # the group, then a and c alone
    assert committed(path) == {"a": 1, "c": 3}


async def test_alone_calls_run_outside_any_group(tmp_path: Path) -> None:
    seen: list[bool] = []

    def probe(conn: sqlite3.Connection) -> None:
        seen.append(conn.in_transaction)

    async with Store(tmp_path / "s.db") as store:
        await queued_together(
            store, [(put("a", 1), False), (put("b", 2), False), (probe, True), (probe, False)]
        )
    assert seen == [False, False]  # alone, and a group of one is no group


@pytest.mark.parametrize("n", [1, 40])
async def test_results_are_committed_when_they_arrive(tmp_path: Path, n: int) -> None:
    path = tmp_path / "s.db"
    async with Store(path) as store:
        for i in range(n):
            assert await store._run(put(f"k{i}", i)) == i
            assert committed(path)[f"k{i}"] == i
        await asyncio.gather(*(store._run(put(f"g{i}", i)) for i in range(n)))
        assert len(committed(path)) == 2 * n


async def test_reads_take_no_part_in_a_group(tmp_path: Path) -> None:
    """A read never holds the write lock: it runs between groups, outside a transaction."""
    seen: list[bool] = []

    def probe(conn: sqlite3.Connection) -> None:
        seen.append(conn.in_transaction)

    async with Store(tmp_path / "s.db") as store:
        futures = [
            asyncio.ensure_future(store._run(put("a", 1))),
            asyncio.ensure_future(store._run(probe, read=True)),
            asyncio.ensure_future(store._run(put("b", 2))),
        ]
        await asyncio.gather(*futures)
        _, sql = await queued_together(store, [(put("c", 3), False), (put("d", 4), False)])
    assert seen == [False]
    assert sql.count("BEGIN IMMEDIATE") == 1  # c and d together


async def test_a_plain_write_rerun_after_a_group_rollback_counts_once(tmp_path: Path) -> None:
    """A write outside in_tx is part of the group: rolled back with it, run again once."""
    path = tmp_path / "s.db"

    def bump(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k, v) VALUES ('n', 1) ON CONFLICT(k) DO UPDATE SET v = v + 1")

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    async with Store(path) as store:
        await queued_together(store, [(bump, False), (broken, False), (bump, False)])
    assert committed(path) == {"n": 2}


async def test_a_call_that_commits_by_itself_is_not_applied_twice(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    def rogue(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t (k, v) VALUES ('r', 9)")
        conn.execute("COMMIT")  # a call must not do this; the store copes
        return "done"

    async with Store(path) as store:
        results, _ = await queued_together(
            store, [(put("a", 1), False), (rogue, False), (put("c", 3), False)]
        )
    assert results == [1, "done", 3]
    assert committed(path) == {"a": 1, "r": 9, "c": 3}
