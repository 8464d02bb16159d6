"""The SQLite store's connection: opening it, its thread, and transactions.

One connection per store, used only from one dedicated thread (a
single-worker executor), so the event loop never blocks on SQLite and calls
from many tasks are serialised without a lock. Several worker *processes* may
share one database file: every read-modify-write runs in a ``BEGIN IMMEDIATE``
transaction (:func:`in_tx`: the database write lock is taken before the row is
read), and ``busy_timeout`` makes a process wait for another's write instead of
failing. Writes queued together share one transaction (group commit:
:meth:`SqliteStoreBase._group`); reads run on their own, outside any transaction,
so they never take the write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self, TypeVar

from s3flow.state.lifecycle import DEFAULT_RETENTION_DAYS, retention_seconds
from s3flow.state.records import StateError
from s3flow.state.sqlite.schema import (
    BUSY_TIMEOUT_MS,
    check_schema,
    create_schema,
    enable_wal,
    prepare_new,
)

T = TypeVar("T")
log = logging.getLogger(__name__)


#: Results handed back to the event loop per wake-up, at most.
_BATCH = 16
#: (future, its loop, result, exception) of one finished call.
_Done = tuple[asyncio.Future[Any], asyncio.AbstractEventLoop, Any, BaseException | None]
#: A queued call: (function of the connection, its future, its loop, may join a group).
_Call = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], Any, bool]
#: ``active`` while the store's thread runs a group transaction (see ``_group``).
_GROUP = threading.local()


class _Regroup(Exception):
    """A group transaction failed as a whole: its calls run again, one at a time."""


def _settle(batch: list[_Done]) -> None:
    """On the event loop: resolve the futures of finished calls (cancelled ones are left)."""
    for fut, _, result, exc in batch:
        if fut.cancelled():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


#: (begin, undo on error, end) of a transaction, and of a savepoint inside a group.
_TRANSACTION = ("BEGIN IMMEDIATE", ("ROLLBACK",), "COMMIT")
_SAVEPOINT = ("SAVEPOINT in_tx", ("ROLLBACK TO in_tx", "RELEASE in_tx"), "RELEASE in_tx")


def in_tx(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn`` in a ``BEGIN IMMEDIATE`` transaction (write lock taken up front).

    Inside the store thread's group transaction (see :meth:`SqliteStoreBase._group`)
    ``fn`` runs in a savepoint instead: its changes are undone alone if it raises.
    Outside a group, a transaction left open is an error (``BEGIN`` fails), never
    silently joined.
    """
    grouped = getattr(_GROUP, "active", False) and conn.in_transaction
    begin, undo, done = _SAVEPOINT if grouped else _TRANSACTION
    conn.execute(begin)
    try:
        result = fn(conn)
    except BaseException:
        if conn.in_transaction:  # else SQLite has already rolled the whole transaction back
            for sql in undo:
                conn.execute(sql)
        raise
    conn.execute(done)
    return result


class SqliteStoreBase:
    """Owns one SQLite file's connection and thread; the store's mixins build on it.

    ``async with`` opens the file (see :meth:`__aenter__`); :meth:`_run` runs a
    function of the connection on the store's thread, turning SQLite errors
    into :class:`StateError`. ``clock`` returns unix seconds; tests pass a fake
    one to expire claims. ``retention_s`` (None: keep forever) is how long
    finished records are kept, ``prune_every_s`` (None: never) how often a
    background task prunes them while the store is open (see :mod:`.retention`).

    ``read_only`` opens an existing file for reading only (``mode=ro``: no schema
    change, no switch to WAL, no prune; a write is refused), so that a file or
    directory this process cannot write can still be read (see :meth:`_open_read_only`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        retention_s: float | None = retention_seconds(DEFAULT_RETENTION_DAYS),
        prune_every_s: float | None = None,
        read_only: bool = False,
    ) -> None:
        self.path = str(path)
        self._clock = clock
        self.retention_s = retention_s
        self.read_only = read_only
        self._prune_every_s = None if read_only else prune_every_s
        self._conn: sqlite3.Connection | None = None
        # (st_dev, st_ino) of the file opened; when it was last compared with the path's
        self._file_id: tuple[int, int] | None = None
        self._file_path = Path()
        self._executor: ThreadPoolExecutor | None = None
        # Calls waiting for the store's thread; _draining: a _drain pass is queued/running.
        self._calls: deque[_Call] = deque()
        self._calls_lock = threading.Lock()
        self._draining = False

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

    def _cannot_open(self, exc: OSError | sqlite3.Error) -> StateError:
        """The error of a store that cannot be opened: the reason, and what to set."""
        reason = str(exc)
        if isinstance(exc, FileExistsError | NotADirectoryError) and exc.filename:
            reason = f"{exc.filename} is not a directory"  # a file where a directory goes
        elif isinstance(exc, OSError) and exc.strerror and exc.filename:
            reason = f"{exc.filename}: {exc.strerror}"
        elif self.path != ":memory:" and Path(self.path).expanduser().is_dir():
            reason = f"{reason} ({self.path} is a directory)"
        return StateError(
            f"state store {self.path} ([state] url): cannot open: {reason}; {self._advice(exc)}"
        )

    def _advice(self, exc: OSError | sqlite3.Error) -> str:
        """What to do about ``exc``, by its cause."""
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            return (
                f"another process held its write lock for over {BUSY_TIMEOUT_MS // 1000} s "
                "(a long transaction, or an sqlite3 shell left in one): end that, then "
                "start again"
            )
        if "malformed" in text or "not a database" in text:
            return (
                "the file is damaged or is not an s3flow state store: restore it from a "
                "backup, or move it aside to start an empty store (its records are lost: "
                "objects then look new to a backfill)"
            )
        file = Path(self.path).expanduser()
        if self.read_only and file.exists() and not os.access(file.parent, os.W_OK):
            return (
                f"it is read where SQLite cannot create the -shm file a read of its -wal "
                f"file needs ({file.parent} is not writable by this process), and that -wal "
                "file holds changes not yet in the store: copy the store with its -wal file "
                "to a directory this process can write and read the copy, or read it where "
                "it is writable"
            )
        where = file if file.exists() else file.parent
        if self.path != ":memory:" and where.exists() and not os.access(where, os.W_OK):
            return (
                f"{where} is not writable by this process (a read-only file or mount; "
                "SQLite also writes its -wal and -shm files next to the store): make it "
                "writable, or set [state] url to a file in a directory this process can write"
            )
        return (
            "set [state] url to a SQLite file in a directory this process can write "
            "(e.g. 'sqlite:.s3flow/state.db')"
        )

    def _open(self) -> None:
        if self.read_only:
            self._conn = self._open_read_only()
            return
        path = self.path
        try:
            if path != ":memory:":
                file = Path(path).expanduser()
                file.parent.mkdir(parents=True, exist_ok=True)
                path = str(file)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise self._cannot_open(exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            prepare_new(conn)
            enable_wal(conn)
            # FULL: a commit is on disk (the WAL synced) before the call returns. The
            # worker deletes a message right after its record is written, so with
            # NORMAL a power loss or an OS crash could roll back a completed record (or
            # a file added to a manifest, never compacted then) whose message is gone.
            # Measured here: 0.37 instead of 0.04 ms per commit.
            conn.execute("PRAGMA synchronous = FULL")
            in_tx(conn, self._create_schema)
            if path != ":memory:":
                # absolute: a later chdir must not make the same file look gone
                self._file_path = Path(path).absolute()
                found = os.stat(self._file_path)
                self._file_id = (found.st_dev, found.st_ino)
        except sqlite3.Error as exc:
            conn.close()
            raise self._cannot_open(exc) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _file_gone(self) -> str | None:
        """Why the file this store has open is no longer the one at its path (deleted or
        replaced: what is written goes to a file nobody will read), else None. Asked on
        every pass of the store's thread: a ``stat``, about 2 µs measured here (one a second
        let a record go to the deleted file and its message be acknowledged)."""
        if self._file_id is None:
            return None
        try:
            found = os.stat(self._file_path)
        except FileNotFoundError:
            how = "deleted"
        except OSError:
            return None  # cannot tell (a permission change): carry on
        else:
            if (found.st_dev, found.st_ino) == self._file_id:
                return None
            how = "replaced by another file"
        return (
            f"state store {self.path} was {how} while this process had it open: what it "
            "writes would go to a file nobody reads (records, claims and locks lost). "
            "Stop this process, then put the store back, or start afresh with a new one "
            "(completed objects then look new to a backfill)"
        )

    def _open_read_only(self) -> sqlite3.Connection:
        """Open the existing file with ``mode=ro``: nothing is written to it.

        A WAL database read so needs its ``-shm`` file: SQLite creates it next to the
        store when it is missing. Where it cannot (a directory this process cannot
        write) and no ``-wal`` file holds changes, the file is read as ``immutable``
        (a snapshot: no locks; changes made meanwhile are not seen), with a note.
        """
        if self.path == ":memory:":
            raise StateError("an in-memory state store cannot be opened read-only")
        file = Path(self.path).expanduser().absolute()
        if not file.is_file():
            problem = "is a directory" if file.is_dir() else "does not exist"
            raise StateError(f"state store {self.path} ([state] url): {problem}")
        try:
            return self._connect_read_only(file, immutable=False)
        except sqlite3.Error as exc:
            if not self._snapshot_only(file):
                raise self._cannot_open(exc) from exc
        log.warning(
            "state store %s: read as a snapshot (SQLite immutable mode): %s is not "
            "writable, so SQLite cannot make the -shm file a shared read needs; what "
            "a worker writes to it meanwhile is not seen",
            self.path,
            file.parent,
        )
        try:
            return self._connect_read_only(file, immutable=True)
        except sqlite3.Error as exc:
            raise self._cannot_open(exc) from exc

    def _connect_read_only(self, file: Path, *, immutable: bool) -> sqlite3.Connection:
        """A ``mode=ro`` connection to ``file`` whose schema s3flow can read."""
        uri = file.as_uri() + "?mode=ro" + ("&immutable=1" if immutable else "")
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            check_schema(conn, self.path)  # the first read: fails if the -shm cannot be made
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _snapshot_only(file: Path) -> bool:
        """Whether ``file`` can be read only as a snapshot: SQLite cannot create its
        ``-shm`` file (no write access to the directory) and no ``-wal`` file holds
        changes the snapshot would miss."""
        wal, shm = Path(f"{file}-wal"), Path(f"{file}-shm")
        if os.access(file.parent, os.W_OK) or shm.exists():
            return False
        return not wal.exists() or wal.stat().st_size == 0

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        create_schema(conn, self.path, self._clock())

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def _run(
        self, fn: Callable[[sqlite3.Connection], T], *, alone: bool = False, read: bool = False
    ) -> T:
        """Run ``fn(conn)`` on the store's thread, after every call queued before it.

        Calls queue up and one pass of the thread (:meth:`_drain`) runs them in order,
        handing results back to the event loop in batches: under load a round trip costs
        a fraction of a thread hop and of a loop wake-up instead of one each. Calls
        queued together also share one transaction (group commit, see
        :meth:`_group`); ``alone`` keeps ``fn`` out of it (``VACUUM``, long batches
        other processes must not wait behind), and so does ``read`` (a read in WAL
        mode takes no lock; in a group it would hold the write lock).
        """
        executor = self._executor
        if executor is None:
            raise StateError(f"state store {self.path} is not open (use 'async with')")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        item: _Call = (fn, fut, loop, not (alone or read))
        self._calls.append(item)
        with self._calls_lock:
            start, self._draining = not self._draining, True
        if start:
            try:
                executor.submit(self._drain)
            except BaseException:  # the executor is shut down
                with self._calls_lock:
                    self._draining = False
                with contextlib.suppress(ValueError):
                    self._calls.remove(item)
                raise
        return await fut

    def _drain(self) -> None:
        """On the store's thread: run the queued calls in order, results back in batches."""
        while True:
            items: list[_Call] = []
            while len(items) < _BATCH:
                try:
                    item = self._calls.popleft()
                except IndexError:
                    break
                if not item[1].cancelled():  # as run_in_executor: cancelled while queued
                    items.append(item)
            if items:
                batch = self._run_calls(items)
                for loop in {id(b[1]): b[1] for b in batch}.values():
                    mine = [b for b in batch if b[1] is loop]
                    with contextlib.suppress(RuntimeError):  # that loop is closed
                        loop.call_soon_threadsafe(_settle, mine)
                continue
            with self._calls_lock:
                if not self._calls:
                    self._draining = False
                    return

    def _run_calls(self, items: list[_Call]) -> list[_Done]:
        """Run ``items`` in order: each run of two or more groupable calls as one group."""
        gone = self._file_gone()
        if gone is not None:
            return [(fut, loop, None, StateError(gone)) for _, fut, loop, _ in items]
        done: list[_Done] = []
        group: list[_Call] = []
        for item in [*items, None]:
            if item is not None and item[3]:
                group.append(item)
                continue
            if len(group) > 1:
                grouped = self._group(group)
                done.extend(grouped if grouped is not None else map(self._one, group))
            else:
                done.extend(map(self._one, group))
            group = []
            if item is not None:
                done.append(self._one(item))
        return done

    def _group(self, items: list[_Call]) -> list[_Done] | None:
        """Run ``items`` in one ``BEGIN IMMEDIATE`` transaction, committed once.

        Each call's :func:`in_tx` becomes a savepoint, so a call that raises undoes
        only its own changes and reports its own error. Results are handed back only
        after the ``COMMIT``. On a database error everything is rolled back and None
        returned: the caller then runs each call alone, as if the group had never been
        tried. A call must not end the transaction itself; one that does is logged,
        nothing before it is run again (it may be committed) and the rest run alone.
        """
        conn = self._conn
        if conn is None or conn.in_transaction:
            return None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            return None
        done: list[_Done] = []
        _GROUP.active = True
        try:
            for i, (fn, fut, loop, _) in enumerate(items):
                try:
                    done.append((fut, loop, fn(conn), None))
                except sqlite3.Error as exc:
                    raise _Regroup from exc
                except BaseException as exc:
                    if not conn.in_transaction:
                        raise _Regroup from exc
                    done.append((fut, loop, None, exc))
                    continue
                if not conn.in_transaction:
                    log.error("state store %s: a call ended its group's transaction", self.path)
                    _GROUP.active = False
                    return done + [self._one(item) for item in items[i + 1 :]]
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            return None
        finally:
            _GROUP.active = False
        return done

    def _one(self, item: _Call) -> _Done:
        """Run one call in its own transaction(s), its result or error as a :data:`_Done`."""
        fn, fut, loop, _ = item
        try:
            return (fut, loop, self._call(fn), None)
        except BaseException as exc:
            return (fut, loop, None, exc)

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
            opened = " (opened read-only)" if self.read_only else ""
            raise StateError(
                f"state store {self.path}{opened}: {type(exc).__name__}: {exc}"
            ) from exc
