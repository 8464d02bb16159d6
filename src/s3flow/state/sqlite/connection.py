"""The SQLite store's connection: opening it, its thread, and transactions.

One connection per store, used only from one dedicated thread (a
single-worker executor), so the event loop never blocks on SQLite and calls
from many tasks are serialised without a lock. Several worker *processes* may
share one database file: every read-modify-write runs in a ``BEGIN IMMEDIATE``
transaction (:func:`in_tx`: the database write lock is taken before the row is
read), and ``busy_timeout`` makes a process wait for another's write instead of
failing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self, TypeVar

from s3flow.state.base import StateError
from s3flow.state.sqlite.schema import BUSY_TIMEOUT_MS, create_schema, enable_wal

T = TypeVar("T")


def in_tx(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
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


class SqliteStoreBase:
    """Owns one SQLite file's connection and thread; the store's mixins build on it.

    ``async with`` opens the file (see :meth:`__aenter__`); :meth:`_run` runs a
    function of the connection on the store's thread, turning SQLite errors
    into :class:`StateError`. ``clock`` returns unix seconds; tests pass a fake
    one to expire claims.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> Self:
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
            enable_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            in_tx(conn, self._create_schema)
        except sqlite3.Error as exc:
            conn.close()
            raise StateError(f"state store {self.path}: cannot open: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        create_schema(conn, self.path)

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
