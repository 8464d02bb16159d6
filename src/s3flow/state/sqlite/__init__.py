"""SQLite state store: the single-node default (WAL, safe across worker processes).

Layout: :mod:`.schema` (tables, version, migrations, WAL), :mod:`.codec`
(rows <-> records), :mod:`.connection` (the connection, its thread,
transactions), :mod:`.files` / :mod:`.meta` / :mod:`.manifests` / :mod:`.jobs`
(one mixin per protocol part), :mod:`.retention` (prune, recount, the background
prune) and :mod:`.store` (:class:`SqliteStateStore`, all of them).
"""

from __future__ import annotations

from s3flow.state.sqlite.store import SqliteStateStore

__all__ = ["SqliteStateStore"]
