"""SQLite state store: the single-node default (WAL, safe across worker processes).

:class:`SqliteStateStore` is the four parts of the StateStore protocol on one
connection: files (:mod:`.files`), counters, checkpoints and locks
(:mod:`.meta`), manifests (:mod:`.manifests`) and upload jobs with their event
logs (:mod:`.jobs`) and retention (prune, recount: :mod:`.retention`), each a
mixin over :class:`~s3flow.state.sqlite.connection.SqliteStoreBase`, which owns
the connection, its thread and transactions (see :mod:`.connection`).
"""

from __future__ import annotations

from s3flow.state.sqlite.files import FilesMixin
from s3flow.state.sqlite.jobs import JobsMixin
from s3flow.state.sqlite.manifests import ManifestsMixin
from s3flow.state.sqlite.meta import MetaMixin
from s3flow.state.sqlite.retention import RetentionMixin


class SqliteStateStore(FilesMixin, MetaMixin, ManifestsMixin, JobsMixin, RetentionMixin):
    """The StateStore protocol on one SQLite file (WAL). Use ``async with``.

    ``SqliteStateStore(path, *, clock=time.time, retention_s=30 days,
    prune_every_s=None)``: ``clock`` returns unix seconds; tests pass a fake
    one to expire claims. ``retention_s`` (None: keep forever) is how long
    finished records are kept; with ``prune_every_s`` a background task prunes
    them while the store is open (:mod:`.retention`). ``":memory:"`` works (one
    connection) but is not shared between processes.
    """

    def __repr__(self) -> str:
        return f"SqliteStateStore({self.path!r})"
