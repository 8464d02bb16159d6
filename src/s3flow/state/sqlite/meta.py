"""Counters, checkpoints and locks on SQLite: the MetaStore half of the state store."""

from __future__ import annotations

import sqlite3

from s3flow.state.sqlite.connection import SqliteStoreBase, in_tx

_INCR = (
    "INSERT INTO counters (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value RETURNING value"
)


class MetaMixin(SqliteStoreBase):
    """The MetaStore protocol: named counters, checkpoints and fenced locks (leases)."""

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

        return await self._run(run, read=True)

    # --- checkpoints ---------------------------------------------------------------------------

    async def get_checkpoint(self, name: str) -> str | None:
        """The stored position for ``name``."""

        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM checkpoints WHERE name = ?", (name,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(run, read=True)

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

        The row is kept on release, so tokens keep increasing across releases,
        until the lock has been free for the retention: the prune then forgets
        it and tokens start again at 1 (no holder of an older token is alive).
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

        return await self._run(lambda conn: in_tx(conn, tx))

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
        """Release a held lock; False if it was not ours any more.

        ``expires_at`` becomes the release time (what the prune goes by).
        """

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE locks SET owner = NULL, expires_at = ? "
                "WHERE name = ? AND owner = ? AND token = ?",
                (self._clock(), name, owner, token),
            )
            return cur.rowcount == 1

        return await self._run(run)
