"""DynamoDB state store: the multi-node backend (conditional writes, fencing tokens).

Six tables, PAY_PER_REQUEST, created by :meth:`DynamoStateStore.ensure_tables`
(``s3flow provision``, :mod:`.tables`):

``<prefix>-files``
    One item per object version. ``pk`` = ``json.dumps([bucket, key])`` (no
    separator ambiguity), ``sk`` = ``"v:" + version`` (key attributes may not
    be empty strings; the version may be ""). Besides the FileRecord fields an
    item carries ``rev``, a revision number increased by every write, and
    ``lst`` = ``[pipeline, status]`` / ``lst_at`` = ``updated_at``: the global
    secondary index ``listing`` (ALL) holds every record by pipeline and status,
    ordered by update time (``list_files``, ``oldest_processing_at``).
``<prefix>-history``
    One item per transition. ``pk`` as above; ``sk`` =
    ``<microseconds, 17 digits>#<rev, 10 digits>#<random>``, so a Query
    returns a key's transitions oldest first (ties broken by revision).
``<prefix>-meta``
    ``pk`` = ``counter#<name>`` (attribute ``n``), ``checkpoint#<name>``
    (``val``), ``lock#<name>`` (``owner``, ``token``, ``expires_at``), and the
    files' status counters: ``fcount#[pipeline]`` and
    ``fcount#[pipeline, day]`` (a number per status) with their registry
    ``fcounts`` (see :mod:`.counters`).
``<prefix>-manifests``
    Manifests and the files tracked for them (``pk``/``sk``), keys JSON-encoded:
    a tracked file is ``pk = ["file", dataset, date]``, ``sk = [bucket, key,
    version]``; a manifest ``pk = ["manifest", id]``, ``sk = "m"``; a marker of
    an unfinished seal ``pk = ["unfinished", dataset]``, ``sk = id``. A sparse
    global secondary index ``pending`` (``pending_ds``, ``pending_sk =
    <date>#<added micros>#<sk>``) holds exactly the pending files, so the sealer
    reads only those. The index is eventually consistent; that is safe because
    every move out of pending is a conditional write (``status = pending``):
    a file seen late waits for the next seal, a file seen stale is not moved.
    Sealing is not one transaction (TransactWriteItems takes 100 items, a
    manifest 200+ files): the manifest is written first as ``sealing`` with the
    files chosen, each file is moved conditionally, then the manifest is
    ``sealed`` with exactly the files moved. A builder that dies midway leaves
    the marker; the next lock holder finishes the same manifest. A second
    sparse, KEYS_ONLY index ``listing`` (``mls = [dataset, status]``, ``mls_at
    = <created micros>#<id>``) lists the manifests; ``pk = ["datasets"]``,
    ``sk = dataset`` names the datasets.
``<prefix>-jobs``
    Upload jobs (``pk``): a job is ``job#<job_id>`` (the record as JSON in
    ``record``, plus ``status``, ``created_at``, ``last_seq``, ``upload_id``,
    ``listed``); ``upload#<upload_id>`` names its job (``job_id``: one
    consistent GetItem for ``job_for_upload``, and one job per upload, enforced
    by the creation's condition); ``event#["<job_id>","<event_id>"]`` marks an
    event id as logged (``seq``). A sparse, KEYS_ONLY global secondary index
    ``status`` (``status``, ``listed = <created micros>#<job_id>``) holds the
    jobs by status, newest last: ``list_jobs(status=...)`` is one Query and a
    BatchGetItem of the records; ``list_jobs()`` queries the six statuses at
    once and merges them. That beats a second index with one fixed partition
    ("all" by created_at): six small Queries per unfiltered listing instead of a
    second index write per job and a single hot index partition. KEYS_ONLY
    because the index then changes only with a job's status, not with every
    event folded into the record.
``<prefix>-job-events``
    The event logs: ``job_id`` (hash), ``seq`` (number range), with
    ``event_id``, ``type``, ``data`` (JSON), ``at``. ``events`` is a Query.

A key that holds an object key (``pk`` of files and history, a tracked file's ``sk``)
and would exceed DynamoDB's limits (partition key 2,048 bytes, sort key 1,024, of a
table or an index; S3 keys of 1,024 bytes grow when JSON-escaped) is stored as
``sha256:<hex>`` of its text instead (:func:`.codec.fit_key`): lookups compute it the
same way, and the items keep ``bucket`` and ``key`` as attributes.

Every lifecycle change is decided by the same rules as the SQLite store
(:mod:`s3flow.state.sqlite`) and written with a condition, so a stale token is
refused and exactly one of several concurrent claims wins:

- ``claim`` first tries to create the record (PutItem, ``attribute_not_exists``);
  if it exists, the failed condition returns the current item
  (``ReturnValuesOnConditionCheckFailure``), the claim is decided on it and
  written with a PutItem conditioned on the revision read. A lost race
  decides again on the item that won. A new object costs 2 calls (record +
  history), a duplicate of a completed one 1.
- ``complete`` / ``fail`` / ``release``: one UpdateItem conditioned on
  ``status = processing AND fencing_token = token`` (ReturnValues ALL_OLD),
  then the history entry: 2 calls.
- ``set_status``: GetItem, then the revision-conditioned PutItem, then history.
- ``renew``, counters and locks: one conditional UpdateItem each.

The history entry is a PutItem after the record's write succeeded: a crash
between the two (or a failed history write, which is only logged) can lose a
history line, never show a transition that did not happen. Not
``TransactWriteItems``: twice the write cost on AWS, and moto's implementation
snapshots and restores whole tables, which loses concurrent writes under
contention and costs O(table size) per call.

Jobs are the exception (:mod:`.jobs`): a job's log must have no gaps and its
record must never disagree with it, so ``create_job`` and ``append_event`` are
each one TransactWriteItems (the record conditioned on the ``last_seq`` and
``status`` read, the event and its event-id marker on not existing); a writer
that loses the race folds again on the record returned with the cancellation.
On moto this needs the patched server (writes serialised, see
:func:`s3flow.local.moto_server.patch_moto_dynamodb`) for concurrent appends,
and each transaction copies the two jobs tables (fine for tests and a dev box).

Nothing an operator runs routinely scans: ``counts`` reads the status
counters (updated by an ``ADD`` after each transition; the crash window this
leaves is described in :mod:`.counters`), ``oldest_processing_at`` and
``list_files`` the ``listing`` index, ``list_manifests`` the manifests table's
``listing`` index. Only :meth:`~.maintenance.MaintenanceMixin.recount`
(``s3flow state recount``) scans.

Retention: every table has TTL on ``purge_at`` (:meth:`~.tables.TablesMixin.ensure_ttl`);
finished records, history lines, checkpoints, free locks, completed manifests
and finished jobs carry it (:mod:`.maintenance` lists the rules).

Times come from ``clock`` on each client: machines sharing a table need
synchronised clocks (claim TTLs should be much larger than the skew).

The store is split by concern: :mod:`.codec` (items <-> records, keys),
:mod:`.client` (the client, error translation, paging, the conditional Put),
:mod:`.tables`, :mod:`.files`, :mod:`.meta` (counters, checkpoints, locks),
:mod:`.manifests`, :mod:`.jobs`, :mod:`.maintenance` (prune, recount);
:mod:`.store` puts them together.
"""

from s3flow.state.dynamodb.store import DynamoStateStore

__all__ = ["DynamoStateStore"]
