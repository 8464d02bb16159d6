"""The DynamoDB state store: the files, meta, manifests and jobs parts on one client."""

from __future__ import annotations

from s3flow.state.dynamodb.files import FilesMixin
from s3flow.state.dynamodb.jobs import JobsMixin
from s3flow.state.dynamodb.maintenance import MaintenanceMixin
from s3flow.state.dynamodb.manifests import ManifestsMixin
from s3flow.state.dynamodb.meta import MetaMixin
from s3flow.state.dynamodb.tables import TablesMixin


class DynamoStateStore(
    MaintenanceMixin, FilesMixin, MetaMixin, ManifestsMixin, JobsMixin, TablesMixin
):
    """The StateStore protocol on six DynamoDB tables. Use ``async with``.

    The tables must exist (``s3flow provision`` calls :meth:`ensure_tables` and
    :meth:`ensure_ttl`). ``retention_s`` (None: keep forever; default 30 days)
    is how long finished records are kept: their items carry ``purge_at`` and
    DynamoDB's TTL deletes them (:mod:`.maintenance`).
    ``clock`` returns unix seconds; tests pass a fake one to expire claims.
    ``pool`` is the client's HTTP connection pool size. ``page_size`` caps the
    items each Query/Scan request reads (DynamoDB's ``Limit``; None: its 1 MB
    pages); tests set a small one to read across pages. The layout and the
    conditional writes are described in :mod:`s3flow.state.dynamodb`.
    """

    def __repr__(self) -> str:
        return f"DynamoStateStore({self.table_prefix!r})"
