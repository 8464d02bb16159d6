"""SQLite state store: the single-node default (WAL, safe across worker processes).

:class:`SqliteStateStore` is the four parts of the StateStore protocol on one
connection: files (:mod:`.files`), counters, checkpoints and locks
(:mod:`.meta`), manifests (:mod:`.manifests`) and upload jobs with their event
logs (:mod:`.jobs`), each a mixin over
:class:`~s3flow.state.sqlite.connection.SqliteStoreBase`, which owns the
connection, its thread and transactions (see :mod:`.connection`).
"""

from __future__ import annotations

from s3flow.state.sqlite.files import FilesMixin
from s3flow.state.sqlite.jobs import JobsMixin
from s3flow.state.sqlite.manifests import ManifestsMixin
from s3flow.state.sqlite.meta import MetaMixin


class SqliteStateStore(FilesMixin, MetaMixin, ManifestsMixin, JobsMixin):
    """The StateStore protocol on one SQLite file (WAL). Use ``async with``.

    ``SqliteStateStore(path, *, clock=time.time)``: ``clock`` returns unix
    seconds; tests pass a fake one to expire claims. ``":memory:"`` works (one
    connection) but is not shared between processes.
    """

    def __repr__(self) -> str:
        return f"SqliteStateStore({self.path!r})"
