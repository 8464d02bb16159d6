"""DynamoDB state store: the multi-node backend (conditional writes, fencing tokens).

Four tables, PAY_PER_REQUEST, created by :meth:`DynamoStateStore.ensure_tables`
(``s3flow provision``):

``<prefix>-files``
    One item per object version. ``pk`` = ``json.dumps([bucket, key])`` (no
    separator ambiguity), ``sk`` = ``"v:" + version`` (key attributes may not
    be empty strings; the version may be ""). Besides the FileRecord fields an
    item carries ``rev``, a revision number increased by every write.
``<prefix>-history``
    One item per transition. ``pk`` as above; ``sk`` =
    ``<microseconds, 17 digits>#<rev, 10 digits>#<random>``, so a Query
    returns a key's transitions oldest first (ties broken by revision).
``<prefix>-meta``
    ``pk`` = ``counter#<name>`` (attribute ``n``), ``checkpoint#<name>``
    (``val``), ``lock#<name>`` (``owner``, ``token``, ``expires_at``).
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
    the marker; the next lock holder finishes the same manifest.

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

``list_files``, ``counts`` and ``oldest_processing_at`` Scan the files table
with filters (no GSI): fine for operator commands and dashboards on up to
some hundred thousand records; add a GSI on (pipeline, status) if that grows.

Times come from ``clock`` on each client: machines sharing a table need
synchronised clocks (claim TTLs should be much larger than the skew).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any, TypeVar

from s3flow.aws import async_client
from s3flow.errors import ConfigError, translate_aws_error
from s3flow.settings import AwsSettings
from s3flow.state.base import (
    FILE_STATUS_OF,
    Claim,
    FileRecord,
    FileStatus,
    HistoryEntry,
    LockLostError,
    ManifestFile,
    ManifestFileStatus,
    ManifestRecord,
    ManifestStatus,
    ObjectId,
    PendingSummary,
    StateError,
    TrackedFile,
    UnknownManifestError,
)
from s3flow.state.lifecycle import (
    FencedFinishMixin,
    clip,
    files_from_text,
    files_to_text,
    plan_claim,
    plan_finish,
    plan_manifest_status,
    plan_set_status,
    zero_counts,
)

log = logging.getLogger(__name__)
R = TypeVar("R")
Item = dict[str, Any]
Plan = tuple[FileRecord, HistoryEntry] | None

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,240}$")
_MAX_CONFLICT_RETRIES = 100
_PK_SK = (
    [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    [{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
)
_PK_ONLY = (
    [{"AttributeName": "pk", "KeyType": "HASH"}],
    [{"AttributeName": "pk", "AttributeType": "S"}],
)
_PENDING_INDEX = "pending"
_MANIFESTS_SCHEMA = (
    _PK_SK[0],
    [
        *_PK_SK[1],
        {"AttributeName": "pending_ds", "AttributeType": "S"},
        {"AttributeName": "pending_sk", "AttributeType": "S"},
    ],
)
_MANIFESTS_GSI = [
    {
        "IndexName": _PENDING_INDEX,
        "KeySchema": [
            {"AttributeName": "pending_ds", "KeyType": "HASH"},
            {"AttributeName": "pending_sk", "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "ALL"},
    }
]
_MOVE_PARALLEL = 16  # concurrent conditional file moves while sealing
_CONFLICT_CODES = frozenset({"ConditionalCheckFailedException", "TransactionConflictException"})


class _Conflict(Exception):
    """A condition failed: decide again (on ``item``, the current item, when known)."""

    def __init__(self, code: str, item: Item | None = None) -> None:
        super().__init__(code)
        self.item = item


# --- item encoding ---------------------------------------------------------------------


def _num(v: float) -> str:
    text = repr(v)
    if "e" in text or "E" in text:
        text = format(v, "f")
    return text


def _pk(bucket: str, key: str) -> str:
    return json.dumps([bucket, key], ensure_ascii=False, separators=(",", ":"))


def _key(oid: ObjectId) -> Item:
    return {"pk": {"S": _pk(oid.bucket, oid.key)}, "sk": {"S": "v:" + oid.version}}


_OPT_STR = ("sequencer", "last_error_class", "last_error", "worker_id", "claim_owner")


def _encode(rec: FileRecord, rev: int) -> Item:
    item: Item = {
        "pk": {"S": _pk(rec.bucket, rec.key)},
        "sk": {"S": "v:" + rec.version},
        "bucket": {"S": rec.bucket},
        "key": {"S": rec.key},
        "version": {"S": rec.version},
        "pipeline": {"S": rec.pipeline},
        "status": {"S": rec.status.value},
        "attempts": {"N": str(rec.attempts)},
        "failures": {"N": str(rec.failures)},
        "outputs": {"L": [{"S": o} for o in rec.outputs]},
        "fencing_token": {"N": str(rec.fencing_token)},
        "timestamps": {"M": {k: {"N": _num(v)} for k, v in rec.timestamps.items()}},
        "created_at": {"N": _num(rec.created_at)},
        "updated_at": {"N": _num(rec.updated_at)},
        "rev": {"N": str(rev)},
    }
    for name in _OPT_STR:
        value = getattr(rec, name)
        if value is not None:
            item[name] = {"S": value}
    if rec.size is not None:
        item["size"] = {"N": str(rec.size)}
    if rec.claim_expires_at is not None:
        item["claim_expires_at"] = {"N": _num(rec.claim_expires_at)}
    return item


def _str(item: Item, name: str) -> str | None:
    v = item.get(name)
    return None if v is None else str(v["S"])


def _float(item: Item, name: str) -> float | None:
    v = item.get(name)
    return None if v is None else float(v["N"])


def _decode(item: Item) -> tuple[FileRecord, int]:
    size = item.get("size")
    rec = FileRecord(
        bucket=item["bucket"]["S"],
        key=item["key"]["S"],
        version=item["version"]["S"],
        pipeline=item["pipeline"]["S"],
        status=FileStatus(item["status"]["S"]),
        size=None if size is None else int(size["N"]),
        sequencer=_str(item, "sequencer"),
        attempts=int(item["attempts"]["N"]),
        failures=int(item.get("failures", {"N": "0"})["N"]),
        last_error_class=_str(item, "last_error_class"),
        last_error=_str(item, "last_error"),
        outputs=[o["S"] for o in item.get("outputs", {}).get("L", [])],
        worker_id=_str(item, "worker_id"),
        claim_owner=_str(item, "claim_owner"),
        claim_expires_at=_float(item, "claim_expires_at"),
        fencing_token=int(item["fencing_token"]["N"]),
        timestamps={k: float(v["N"]) for k, v in item.get("timestamps", {}).get("M", {}).items()},
        created_at=float(item["created_at"]["N"]),
        updated_at=float(item["updated_at"]["N"]),
    )
    return rec, int(item.get("rev", {}).get("N", "0"))


def _history_item(rec: FileRecord, entry: HistoryEntry, rev: int) -> Item:
    micros = max(0, round(entry.at * 1_000_000))
    item: Item = {
        "pk": {"S": _pk(rec.bucket, rec.key)},
        "sk": {"S": f"{micros:017d}#{rev:010d}#{uuid.uuid4().hex[:8]}"},
        "version": {"S": entry.version},
        "at": {"N": _num(entry.at)},
        "new": {"S": entry.new.value},
    }
    if entry.old is not None:
        item["old"] = {"S": entry.old.value}
    if entry.worker_id is not None:
        item["worker_id"] = {"S": entry.worker_id}
    if entry.detail:
        item["detail"] = {"S": entry.detail}
    return item


def _history_entry(item: Item) -> HistoryEntry:
    old = _str(item, "old")
    return HistoryEntry(
        at=float(item["at"]["N"]),
        version=item["version"]["S"],
        old=None if old is None else FileStatus(old),
        new=FileStatus(item["new"]["S"]),
        worker_id=_str(item, "worker_id"),
        detail=_str(item, "detail") or "",
    )


def _jkey(*parts: str) -> str:
    return json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))


def _file_key(dataset: str, date: str, oid: ObjectId) -> Item:
    return {
        "pk": {"S": _jkey("file", dataset, date)},
        "sk": {"S": _jkey(oid.bucket, oid.key, oid.version)},
    }


def _manifest_key(manifest_id: str) -> Item:
    return {"pk": {"S": _jkey("manifest", manifest_id)}, "sk": {"S": "m"}}


def _marker_key(dataset: str, manifest_id: str) -> Item:
    return {"pk": {"S": _jkey("unfinished", dataset)}, "sk": {"S": manifest_id}}


def _decode_tracked(item: Item) -> TrackedFile:
    return TrackedFile(
        dataset=item["dataset"]["S"],
        date=item["date"]["S"],
        file=ManifestFile(
            bucket=item["bucket"]["S"],
            key=item["key"]["S"],
            size=int(item["size"]["N"]),
            etag=item["etag"]["S"],
            version_id=_str(item, "version_id"),
        ),
        status=ManifestFileStatus(item["status"]["S"]),
        manifest_id=_str(item, "manifest_id"),
        added_at=float(item["added_at"]["N"]),
        updated_at=float(item["updated_at"]["N"]),
        detail=_str(item, "detail") or "",
    )


def _encode_manifest(m: ManifestRecord, rev: int) -> Item:
    item: Item = {
        **_manifest_key(m.manifest_id),
        "kind": {"S": "manifest"},
        "manifest_id": {"S": m.manifest_id},
        "dataset": {"S": m.dataset},
        "date": {"S": m.date},
        "status": {"S": m.status.value},
        "files": {"S": files_to_text(m.files)},
        "trigger": {"S": m.trigger},
        "fencing_token": {"N": str(m.fencing_token)},
        "sealed_by": {"S": m.sealed_by},
        "created_at": {"N": _num(m.created_at)},
        "updated_at": {"N": _num(m.updated_at)},
        "attempts": {"N": str(m.attempts)},
        "rev": {"N": str(rev)},
    }
    if m.location is not None:
        item["location"] = {"S": m.location}
    if m.detail:
        item["detail"] = {"S": m.detail}
    return item


def _decode_manifest(item: Item) -> tuple[ManifestRecord, int]:
    rec = ManifestRecord(
        manifest_id=item["manifest_id"]["S"],
        dataset=item["dataset"]["S"],
        date=item["date"]["S"],
        status=ManifestStatus(item["status"]["S"]),
        files=files_from_text(item["files"]["S"]),
        trigger=item["trigger"]["S"],
        fencing_token=int(item["fencing_token"]["N"]),
        sealed_by=item["sealed_by"]["S"],
        created_at=float(item["created_at"]["N"]),
        updated_at=float(item["updated_at"]["N"]),
        location=_str(item, "location"),
        detail=_str(item, "detail") or "",
        attempts=int(item["attempts"]["N"]),
    )
    return rec, int(item.get("rev", {}).get("N", "0"))


async def _bounded(n: int, coros: list[Any]) -> list[Any]:
    """Await ``coros`` with at most ``n`` running at once; results in order."""
    sem = asyncio.Semaphore(n)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return list(await asyncio.gather(*(one(c) for c in coros)))


# --- the store ------------------------------------------------------------------------


class DynamoStateStore(FencedFinishMixin):
    """The StateStore protocol on three DynamoDB tables. Use ``async with``.

    The tables must exist (``s3flow provision`` calls :meth:`ensure_tables`).
    ``clock`` returns unix seconds; tests pass a fake one to expire claims.
    ``pool`` is the client's HTTP connection pool size. ``page_size`` caps the
    items each Query/Scan request reads (DynamoDB's ``Limit``; None: its 1 MB
    pages); tests set a small one to read across pages.
    """

    def __init__(
        self,
        table_prefix: str,
        aws: AwsSettings,
        *,
        clock: Callable[[], float] = time.time,
        pool: int = 10,
        page_size: int | None = None,
    ) -> None:
        if not _PREFIX_RE.match(table_prefix):
            raise ConfigError(
                f"DynamoDB table prefix {table_prefix!r} is not valid: use 1-240 of "
                "A-Z a-z 0-9 '_' '-' '.'"
            )
        self.table_prefix = table_prefix
        self.files_table = f"{table_prefix}-files"
        self.history_table = f"{table_prefix}-history"
        self.meta_table = f"{table_prefix}-meta"
        self.manifests_table = f"{table_prefix}-manifests"
        self._aws = aws
        self._clock = clock
        self._pool = pool
        self._page_size = page_size
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    def __repr__(self) -> str:
        return f"DynamoStateStore({self.table_prefix!r})"

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> DynamoStateStore:
        """Open the DynamoDB client (tables are not checked: see ensure_tables)."""
        if self._stack is not None:
            raise StateError(f"state store dynamodb://{self.table_prefix} is already open")
        stack = AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                async_client(self._aws, "dynamodb", pool=self._pool)
            )
        except Exception as exc:
            await stack.aclose()
            raise StateError(
                f"state store dynamodb://{self.table_prefix}: cannot create a client: {exc}"
            ) from exc
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the client."""
        stack, self._stack = self._stack, None
        self._client = None
        if stack is not None:
            await stack.aclose()

    async def ensure_tables(self) -> list[tuple[str, str]]:
        """Create missing tables (idempotent), wait until ACTIVE.

        Returns ``(table, "created" | "unchanged")`` pairs. An existing table
        with another key schema is an error. Works on an open or closed store.
        """
        if self._client is None:
            async with self:
                return await self.ensure_tables()
        out: list[tuple[str, str]] = []
        specs: list[tuple[str, Any, list[Any] | None]] = [
            (self.files_table, _PK_SK, None),
            (self.history_table, _PK_SK, None),
            (self.meta_table, _PK_ONLY, None),
            (self.manifests_table, _MANIFESTS_SCHEMA, _MANIFESTS_GSI),
        ]
        for table, (keys, attrs), gsi in specs:
            extra: Item = {} if gsi is None else {"GlobalSecondaryIndexes": gsi}
            try:
                await self._client.create_table(
                    TableName=table,
                    KeySchema=keys,
                    AttributeDefinitions=attrs,
                    BillingMode="PAY_PER_REQUEST",
                    **extra,
                )
                out.append((table, "created"))
            except Exception as exc:
                if _error_code(exc) != "ResourceInUseException":
                    raise self._error(exc, "CreateTable", table) from exc
                out.append((table, "unchanged"))
        for table, (keys, _attrs), _gsi in specs:
            await self._wait_active(table, keys)
        return out

    async def _wait_active(
        self, table: str, keys: list[dict[str, str]], timeout_s: float = 300
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            desc = (await self._api("DescribeTable", table, TableName=table))["Table"]
            found = sorted((k["AttributeName"], k["KeyType"]) for k in desc["KeySchema"])
            if found != sorted((k["AttributeName"], k["KeyType"]) for k in keys):
                raise StateError(
                    f"DynamoDB table {table} exists with key schema {found}; s3flow needs "
                    f"{[(k['AttributeName'], k['KeyType']) for k in keys]}"
                )
            if desc.get("TableStatus") == "ACTIVE":
                return
            if time.monotonic() > deadline:
                raise StateError(f"DynamoDB table {table} did not become ACTIVE in {timeout_s}s")
            await asyncio.sleep(1.0)

    # --- calls -----------------------------------------------------------------------------

    def _error(self, exc: BaseException, op: str, table: str) -> Exception:
        code = _error_code(exc)
        if code in _CONFLICT_CODES:
            item = (getattr(exc, "response", None) or {}).get("Item")
            return _Conflict(code, item if isinstance(item, dict) else None)
        if code == "ResourceNotFoundException":
            return StateError(
                f"state store dynamodb://{self.table_prefix}: table {table} does not exist "
                "(run `s3flow provision`)"
            )
        err = translate_aws_error(exc, f"DynamoDB {op} on {table}")
        return StateError(f"state store dynamodb://{self.table_prefix}: {err}")

    async def _api(self, op: str, table: str, **kwargs: Any) -> dict[str, Any]:
        client = self._client
        if client is None:
            raise StateError(
                f"state store dynamodb://{self.table_prefix} is not open (use 'async with')"
            )
        method = getattr(client, _snake(op))
        try:
            resp: dict[str, Any] = await method(**kwargs)
        except Exception as exc:
            raise self._error(exc, op, table) from exc
        return resp

    async def _get_item(self, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        """One item by key, strongly consistent (None when absent)."""
        resp = await self._api("GetItem", table, TableName=table, Key=key, ConsistentRead=True)
        item: dict[str, Any] | None = resp.get("Item")
        return item

    async def _read(self, oid: ObjectId) -> tuple[FileRecord | None, int]:
        item = await self._get_item(self.files_table, _key(oid))
        return (None, 0) if item is None else _decode(item)

    async def _write(self, old_rev: int | None, rec: FileRecord, entry: HistoryEntry) -> None:
        """Put ``rec`` if its revision is still ``old_rev`` (None: if absent), then its history.

        Raises _Conflict when another write came first. The history Put follows
        the record's (not one transaction: see the module docstring).
        """
        rev = (old_rev or 0) + 1
        put: Item = {"TableName": self.files_table, "Item": _encode(rec, rev)}
        if old_rev is None:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "#rev = :rev"
            put["ExpressionAttributeNames"] = {"#rev": "rev"}
            put["ExpressionAttributeValues"] = {":rev": {"N": str(old_rev)}}
        # On a failed condition the current item comes back with the error.
        put["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        await self._api("PutItem", self.files_table, **put)
        await self._put_history(rec, entry, rev)

    async def _put_history(self, rec: FileRecord, entry: HistoryEntry, rev: int) -> None:
        """Write a history entry; the transition already happened, so a failure only logs."""
        try:
            await self._api(
                "PutItem",
                self.history_table,
                TableName=self.history_table,
                Item=_history_item(rec, entry, rev),
            )
        except StateError as exc:
            log.warning(
                "history of s3://%s/%s (%s -> %s) not recorded: %s",
                rec.bucket,
                rec.key,
                entry.old.value if entry.old else "-",
                entry.new.value,
                exc,
            )

    async def _mutate(
        self,
        oid: ObjectId,
        decide: Callable[[FileRecord | None, float], tuple[R, Plan]],
        *,
        assume_absent: bool = False,
    ) -> R:
        """Read, decide, write conditioned on what was read; on a lost race decide again.

        ``assume_absent`` skips the first read (a new object is the common case
        of a claim): a failed create returns the existing item to decide on.
        """
        known: tuple[FileRecord | None, int] | None = (None, 0) if assume_absent else None
        for attempt in range(_MAX_CONFLICT_RETRIES):
            rec, rev = known if known is not None else await self._read(oid)
            result, plan = decide(rec, self._clock())
            if plan is None:
                return result
            try:
                await self._write(None if rec is None else rev, *plan)
            except _Conflict as conflict:
                known = None if conflict.item is None else _decode(conflict.item)
                if attempt >= 2:
                    await asyncio.sleep(random.uniform(0, min(0.01 * attempt, 0.2)))
                continue
            return result
        raise StateError(
            f"state store dynamodb://{self.table_prefix}: gave up on "
            f"s3://{oid.bucket}/{oid.key} after {_MAX_CONFLICT_RETRIES} conflicting writes"
        )

    async def _items(self, op: str, table: str, **kwargs: Any) -> list[Item]:
        """Every item of a Query or Scan (``op``) on ``table``, page after page.

        Follows ``LastEvaluatedKey`` (passed back as ``ExclusiveStartKey``)
        until DynamoDB returns none; a page may be empty and still not the last.
        """
        args = dict(kwargs, TableName=table)
        if self._page_size is not None:
            args["Limit"] = self._page_size
        items: list[Item] = []
        while True:
            resp = await self._api(op, table, **args)
            items += resp.get("Items") or []
            start = resp.get("LastEvaluatedKey")
            if not start:
                return items
            args["ExclusiveStartKey"] = start

    async def _scan_files(self, **kwargs: Any) -> list[Item]:
        return await self._items("Scan", self.files_table, ConsistentRead=True, **kwargs)

    # --- files and idempotency -----------------------------------------------------------

    async def claim(
        self,
        oid: ObjectId,
        *,
        pipeline: str,
        owner: str,
        ttl_s: float,
        size: int | None = None,
        sequencer: str | None = None,
    ) -> Claim:
        """Claim a version for processing (see :meth:`StateStore.claim`)."""

        def decide(rec: FileRecord | None, now: float) -> tuple[Claim, Plan]:
            claim, entry = plan_claim(
                rec,
                oid,
                pipeline=pipeline,
                owner=owner,
                ttl_s=ttl_s,
                size=size,
                sequencer=sequencer,
                now=now,
            )
            return claim, None if entry is None else (claim.record, entry)

        return await self._mutate(oid, decide, assume_absent=True)

    async def renew(self, oid: ObjectId, *, token: int, ttl_s: float) -> bool:
        """Extend a held claim; False if the token is stale."""
        try:
            await self._api(
                "UpdateItem",
                self.files_table,
                TableName=self.files_table,
                Key=_key(oid),
                UpdateExpression="SET claim_expires_at = :e ADD #rev :one",
                ConditionExpression="#st = :p AND fencing_token = :t",
                ExpressionAttributeNames={"#rev": "rev", "#st": "status"},
                ExpressionAttributeValues={
                    ":e": {"N": _num(self._clock() + ttl_s)},
                    ":one": {"N": "1"},
                    ":p": {"S": FileStatus.PROCESSING.value},
                    ":t": {"N": str(token)},
                },
            )
        except _Conflict:
            return False
        return True

    async def _finish(
        self,
        oid: ObjectId,
        *,
        token: int,
        status: FileStatus,
        outputs: list[str] | None = None,
        error_class: str | None = None,
        error: str | None = None,
        detail: str = "",
    ) -> bool:
        """A fenced ``processing -> status``: one conditional UpdateItem, then the history.

        The update mirrors :func:`plan_finish`, which is applied to the old item
        (returned by the update) to build the history entry.
        """
        now = self._clock()
        sets = [
            "#st = :st",
            "timestamps.#tsk = :now",
            "updated_at = :now",
        ]
        names = {"#st": "status", "#tsk": status.value, "#rev": "rev"}
        values: Item = {
            ":st": {"S": status.value},
            ":now": {"N": _num(now)},
            ":p": {"S": FileStatus.PROCESSING.value},
            ":t": {"N": str(token)},
            ":one": {"N": "1"},
        }
        if outputs is not None:
            sets.append("outputs = :out")
            values[":out"] = {"L": [{"S": o} for o in outputs]}
        if error_class is not None:
            sets.append("last_error_class = :ec")
            values[":ec"] = {"S": error_class}
        if error is not None:
            sets.append("last_error = :er")
            values[":er"] = {"S": clip(error)}
        adds = "ADD #rev :one"
        if status is FileStatus.FAILED:  # as plan_finish: a retryable failure is counted
            adds += ", failures :one"
        try:
            resp = await self._api(
                "UpdateItem",
                self.files_table,
                TableName=self.files_table,
                Key=_key(oid),
                UpdateExpression=(
                    f"SET {', '.join(sets)} REMOVE claim_owner, claim_expires_at {adds}"
                ),
                ConditionExpression="#st = :p AND fencing_token = :t",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_OLD",
            )
        except _Conflict:
            return False
        old, rev = _decode(resp["Attributes"])
        plan = plan_finish(
            old,
            token=token,
            status=status,
            now=now,
            outputs=outputs,
            error_class=error_class,
            error=error,
            detail=detail,
        )
        if plan is not None:  # always: the condition held
            await self._put_history(plan[0], plan[1], rev + 1)
        return True

    async def set_status(
        self, oid: ObjectId, status: FileStatus, *, detail: str = "", pipeline: str = ""
    ) -> FileRecord:
        """Unfenced operator transition (see :meth:`StateStore.set_status`)."""

        def decide(rec: FileRecord | None, now: float) -> tuple[FileRecord, Plan]:
            new, entry = plan_set_status(
                rec, oid, status, detail=detail, pipeline=pipeline, now=now
            )
            return new, (new, entry)

        return await self._mutate(oid, decide)

    async def get(self, oid: ObjectId) -> FileRecord | None:
        """One version's record."""
        return (await self._read(oid))[0]

    async def versions(self, bucket: str, key: str) -> list[FileRecord]:
        """The records of every version of one key, most recently updated first (a Query)."""
        items = await self._items(
            "Query",
            self.files_table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": _pk(bucket, key)}},
            ConsistentRead=True,
        )
        recs = [_decode(i)[0] for i in items]
        return sorted(recs, key=lambda r: r.updated_at, reverse=True)

    async def history(self, bucket: str, key: str) -> list[HistoryEntry]:
        """Every transition of every version of one key, oldest first."""
        items = await self._items(
            "Query",
            self.history_table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": _pk(bucket, key)}},
            ConsistentRead=True,
        )
        return [_history_entry(i) for i in items]

    async def list_files(
        self,
        *,
        status: FileStatus | None = None,
        pipeline: str | None = None,
        key_prefix: str | None = None,
        limit: int = 1000,
    ) -> list[FileRecord]:
        """Records matching the filters, most recently updated first (a filtered Scan)."""
        cond: list[str] = []
        names: dict[str, str] = {}
        values: Item = {}
        if status is not None:
            cond.append("#st = :st")
            names["#st"] = "status"
            values[":st"] = {"S": FileStatus(status).value}
        if pipeline is not None:
            cond.append("#pl = :pl")
            names["#pl"] = "pipeline"
            values[":pl"] = {"S": pipeline}
        if key_prefix:
            cond.append("begins_with(#k, :kp)")
            names["#k"] = "key"
            values[":kp"] = {"S": key_prefix}
        args: Item = {}
        if cond:
            args = {
                "FilterExpression": " AND ".join(cond),
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        recs = [_decode(i)[0] for i in await self._scan_files(**args)]
        recs.sort(key=lambda r: (r.bucket, r.key, r.version))
        recs.sort(key=lambda r: r.updated_at, reverse=True)
        return recs[: max(0, limit)]

    async def counts(self, pipeline: str | None = None) -> dict[str, int]:
        """Number of records per status (every status present, zeros included)."""
        args: Item = {"ProjectionExpression": "#st", "ExpressionAttributeNames": {"#st": "status"}}
        if pipeline is not None:
            args["FilterExpression"] = "#pl = :pl"
            args["ExpressionAttributeNames"]["#pl"] = "pipeline"
            args["ExpressionAttributeValues"] = {":pl": {"S": pipeline}}
        out = zero_counts()
        for item in await self._scan_files(**args):
            status = item["status"]["S"]
            out[status] = out.get(status, 0) + 1
        return out

    async def oldest_processing_at(self, pipeline: str | None = None) -> float | None:
        """When the oldest record still in ``processing`` entered it (None if none)."""
        args: Item = {
            "ProjectionExpression": "timestamps",
            "FilterExpression": "#st = :p",
            "ExpressionAttributeNames": {"#st": "status"},
            "ExpressionAttributeValues": {":p": {"S": FileStatus.PROCESSING.value}},
        }
        if pipeline is not None:
            args["FilterExpression"] += " AND #pl = :pl"
            args["ExpressionAttributeNames"]["#pl"] = "pipeline"
            args["ExpressionAttributeValues"][":pl"] = {"S": pipeline}
        times = [
            float(t["N"])
            for item in await self._scan_files(**args)
            if (t := item.get("timestamps", {}).get("M", {}).get("processing")) is not None
        ]
        return min(times) if times else None

    # --- counters ---------------------------------------------------------------------------

    async def incr(self, name: str, by: int = 1) -> int:
        """Increment a named counter; return the new value."""
        resp = await self._api(
            "UpdateItem",
            self.meta_table,
            TableName=self.meta_table,
            Key={"pk": {"S": f"counter#{name}"}},
            UpdateExpression="ADD #n :by",
            ExpressionAttributeNames={"#n": "n"},
            ExpressionAttributeValues={":by": {"N": str(by)}},
            ReturnValues="UPDATED_NEW",
        )
        return int(resp["Attributes"]["n"]["N"])

    async def counter(self, name: str) -> int:
        """Current value of a named counter (0 if never set)."""
        item = await self._meta_get(f"counter#{name}")
        return 0 if item is None or "n" not in item else int(item["n"]["N"])

    async def _meta_get(self, pk: str) -> Item | None:
        resp = await self._api(
            "GetItem",
            self.meta_table,
            TableName=self.meta_table,
            Key={"pk": {"S": pk}},
            ConsistentRead=True,
        )
        item: Item | None = resp.get("Item")
        return item

    # --- checkpoints ---------------------------------------------------------------------------

    async def get_checkpoint(self, name: str) -> str | None:
        """The stored position for ``name``."""
        item = await self._meta_get(f"checkpoint#{name}")
        return None if item is None else _str(item, "val")

    async def put_checkpoint(self, name: str, value: str) -> None:
        """Store a position for ``name`` (last write wins)."""
        await self._api(
            "PutItem",
            self.meta_table,
            TableName=self.meta_table,
            Item={
                "pk": {"S": f"checkpoint#{name}"},
                "val": {"S": value},
                "updated_at": {"N": _num(self._clock())},
            },
        )

    # --- leases / locks -------------------------------------------------------------------------

    async def acquire_lock(self, name: str, *, owner: str, ttl_s: float) -> int | None:
        """Take the lock if free or expired: return a fencing token (strictly increasing).

        The item is kept on release (owner removed), so tokens keep increasing.
        """
        now = self._clock()
        try:
            resp = await self._api(
                "UpdateItem",
                self.meta_table,
                TableName=self.meta_table,
                Key={"pk": {"S": f"lock#{name}"}},
                UpdateExpression="SET #o = :o, expires_at = :e ADD #t :one",
                ConditionExpression="attribute_not_exists(#o) OR expires_at <= :now",
                ExpressionAttributeNames={"#o": "owner", "#t": "token"},
                ExpressionAttributeValues={
                    ":o": {"S": owner},
                    ":e": {"N": _num(now + ttl_s)},
                    ":now": {"N": _num(now)},
                    ":one": {"N": "1"},
                },
                ReturnValues="UPDATED_NEW",
            )
        except _Conflict:
            return None
        return int(resp["Attributes"]["token"]["N"])

    async def _lock_update(self, name: str, owner: str, token: int, update: str, e: float) -> bool:
        try:
            await self._api(
                "UpdateItem",
                self.meta_table,
                TableName=self.meta_table,
                Key={"pk": {"S": f"lock#{name}"}},
                UpdateExpression=update,
                ConditionExpression="#o = :o AND #t = :t",
                ExpressionAttributeNames={"#o": "owner", "#t": "token"},
                ExpressionAttributeValues={
                    ":o": {"S": owner},
                    ":t": {"N": str(token)},
                    ":e": {"N": _num(e)},
                },
            )
        except _Conflict:
            return False
        return True

    async def renew_lock(self, name: str, *, owner: str, token: int, ttl_s: float) -> bool:
        """Extend a held lock; False if it was lost (token stale)."""
        return await self._lock_update(
            name, owner, token, "SET expires_at = :e", self._clock() + ttl_s
        )

    async def release_lock(self, name: str, *, owner: str, token: int) -> bool:
        """Release a held lock; False if it was not ours any more."""
        return await self._lock_update(name, owner, token, "SET expires_at = :e REMOVE #o", 0.0)

    # --- manifests ------------------------------------------------------------------------

    async def add_pending(self, dataset: str, date: str, file: ManifestFile) -> bool:
        """Track ``file`` as pending (one conditional PutItem)."""
        now = self._clock()
        key = _file_key(dataset, date, file.id)
        item: Item = {
            **key,
            "kind": {"S": "file"},
            "dataset": {"S": dataset},
            "date": {"S": date},
            "bucket": {"S": file.bucket},
            "key": {"S": file.key},
            "version": {"S": file.version},
            "size": {"N": str(file.size)},
            "etag": {"S": file.etag},
            "status": {"S": ManifestFileStatus.PENDING.value},
            "added_at": {"N": _num(now)},
            "updated_at": {"N": _num(now)},
            "pending_ds": {"S": dataset},
            "pending_sk": {"S": f"{date}#{max(0, round(now * 1_000_000)):017d}#{key['sk']['S']}"},
        }
        if file.version_id is not None:
            item["version_id"] = {"S": file.version_id}
        try:
            await self._api(
                "PutItem",
                self.manifests_table,
                TableName=self.manifests_table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
            )
        except _Conflict:
            return False
        return True

    async def get_tracked(self, dataset: str, date: str, oid: ObjectId) -> TrackedFile | None:
        """One tracked file."""
        resp = await self._api(
            "GetItem",
            self.manifests_table,
            TableName=self.manifests_table,
            Key=_file_key(dataset, date, oid),
            ConsistentRead=True,
        )
        item = resp.get("Item")
        return None if item is None else _decode_tracked(item)

    async def _pending_items(self, dataset: str, date: str | None) -> list[TrackedFile]:
        values: Item = {":ds": {"S": dataset}}
        cond = "#pds = :ds"
        names = {"#pds": "pending_ds"}
        if date is not None:
            cond += " AND begins_with(#psk, :d)"
            names["#psk"] = "pending_sk"
            values[":d"] = {"S": date + "#"}
        items = await self._items(
            "Query",
            self.manifests_table,
            IndexName=_PENDING_INDEX,
            KeyConditionExpression=cond,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
        # The index may lag the table: keep what is (still) pending.
        out = [_decode_tracked(i) for i in items]
        return [t for t in out if t.status is ManifestFileStatus.PENDING]

    async def pending_files(
        self, dataset: str, date: str, *, limit: int | None = None
    ) -> list[TrackedFile]:
        """The pending files of one (dataset, date), oldest first (index Query)."""
        files = await self._pending_items(dataset, date)
        files.sort(key=lambda t: (t.added_at, t.file.bucket, t.file.key, t.file.version))
        return files if limit is None else files[: max(0, limit)]

    async def pending(self, dataset: str, date: str) -> PendingSummary:
        """Count, bytes and oldest add time of one (dataset, date)'s pending files."""
        files = await self._pending_items(dataset, date)
        return PendingSummary(
            dataset,
            date,
            len(files),
            sum(t.file.size for t in files),
            min((t.added_at for t in files), default=None),
        )

    async def pending_dates(self, dataset: str) -> list[PendingSummary]:
        """One summary per date that has pending files, by date."""
        by_date: dict[str, list[TrackedFile]] = {}
        for t in await self._pending_items(dataset, None):
            by_date.setdefault(t.date, []).append(t)
        return [
            PendingSummary(
                dataset,
                d,
                len(fs),
                sum(t.file.size for t in fs),
                min(t.added_at for t in fs),
            )
            for d, fs in sorted(by_date.items())
        ]

    async def _read_manifest(self, manifest_id: str) -> tuple[ManifestRecord | None, int]:
        item = await self._get_item(self.manifests_table, _manifest_key(manifest_id))
        return (None, 0) if item is None else _decode_manifest(item)

    async def _fence(self, lock: str, owner: str, token: int) -> None:
        now = self._clock()
        try:
            await self._api(
                "UpdateItem",
                self.meta_table,
                TableName=self.meta_table,
                Key={"pk": {"S": f"lock#{lock}"}},
                UpdateExpression="SET #fa = :now",
                ConditionExpression="#o = :o AND #t = :t AND #ex > :now",
                ExpressionAttributeNames={
                    "#o": "owner",
                    "#t": "token",
                    "#ex": "expires_at",
                    "#fa": "fenced_at",
                },
                ExpressionAttributeValues={
                    ":o": {"S": owner},
                    ":t": {"N": str(token)},
                    ":now": {"N": _num(now)},
                },
            )
        except _Conflict as exc:
            raise LockLostError(
                f"lock {lock!r} is no longer held by {owner} with token {token}"
            ) from exc

    async def _move_file(self, m: ManifestRecord, f: ManifestFile, now: float) -> bool:
        try:
            await self._api(
                "UpdateItem",
                self.manifests_table,
                TableName=self.manifests_table,
                Key=_file_key(m.dataset, m.date, f.id),
                UpdateExpression=("SET #st = :m, #mid = :id, #up = :now REMOVE #pds, #psk"),
                ConditionExpression="#st = :p OR (#st = :m AND #mid = :id)",
                ExpressionAttributeNames={
                    "#st": "status",
                    "#mid": "manifest_id",
                    "#up": "updated_at",
                    "#pds": "pending_ds",
                    "#psk": "pending_sk",
                },
                ExpressionAttributeValues={
                    ":m": {"S": ManifestFileStatus.MANIFESTED.value},
                    ":p": {"S": ManifestFileStatus.PENDING.value},
                    ":id": {"S": m.manifest_id},
                    ":now": {"N": _num(now)},
                },
            )
        except _Conflict:
            return False
        return True

    async def _delete(self, key: Item, **cond: Any) -> bool:
        try:
            await self._api(
                "DeleteItem",
                self.manifests_table,
                TableName=self.manifests_table,
                Key=key,
                **cond,
            )
        except _Conflict:
            return False
        return True

    async def seal_manifest(
        self, draft: ManifestRecord, *, lock: str, owner: str, token: int
    ) -> ManifestRecord | None:
        """Seal ``draft``: record + marker, conditional moves, then sealed (see module doc)."""
        await self._fence(lock, owner, token)
        base, rev = await self._read_manifest(draft.manifest_id)
        if base is not None and base.status is not ManifestStatus.SEALING:
            return base
        if base is None:
            now = self._clock()
            base = replace(
                draft,
                status=ManifestStatus.SEALING,
                files=list(draft.files),
                created_at=draft.created_at or now,
                updated_at=now,
            )
            await self._api(
                "PutItem",
                self.manifests_table,
                TableName=self.manifests_table,
                Item={**_marker_key(base.dataset, base.manifest_id), "at": {"N": _num(now)}},
            )
            try:
                await self._api(
                    "PutItem",
                    self.manifests_table,
                    TableName=self.manifests_table,
                    Item=_encode_manifest(base, 1),
                    ConditionExpression="attribute_not_exists(pk)",
                )
                rev = 1
            except _Conflict:
                found, rev = await self._read_manifest(draft.manifest_id)
                if found is None:
                    raise StateError(
                        f"manifest {draft.manifest_id} vanished while being sealed"
                    ) from None
                if found.status is not ManifestStatus.SEALING:
                    return found
                base = found
        now = self._clock()
        moved_flags = await _bounded(
            _MOVE_PARALLEL, [self._move_file(base, f, now) for f in base.files]
        )
        moved = [f for f, ok in zip(base.files, moved_flags, strict=True) if ok]
        if not moved:
            await self._delete(
                _manifest_key(base.manifest_id),
                ConditionExpression="#st = :s",
                ExpressionAttributeNames={"#st": "status"},
                ExpressionAttributeValues={":s": {"S": ManifestStatus.SEALING.value}},
            )
            await self._delete(_marker_key(base.dataset, base.manifest_id))
            return None
        sealed = replace(base, status=ManifestStatus.SEALED, files=moved, updated_at=now)
        try:
            await self._api(
                "PutItem",
                self.manifests_table,
                TableName=self.manifests_table,
                Item=_encode_manifest(sealed, rev + 1),
                ConditionExpression="#st = :s",
                ExpressionAttributeNames={"#st": "status"},
                ExpressionAttributeValues={":s": {"S": ManifestStatus.SEALING.value}},
            )
        except _Conflict:
            found, _ = await self._read_manifest(base.manifest_id)
            if found is None:
                raise StateError(f"manifest {base.manifest_id} vanished while sealed") from None
            return found  # finished by another holder of the lock: the same files
        return sealed

    async def mark_published(self, manifest_id: str, location: str) -> ManifestRecord:
        """Record where the sealed manifest's JSON was written; drop its marker."""
        try:
            resp = await self._api(
                "UpdateItem",
                self.manifests_table,
                TableName=self.manifests_table,
                Key=_manifest_key(manifest_id),
                UpdateExpression="SET #loc = :l, #up = :now ADD #rev :one",
                ConditionExpression="attribute_exists(pk) AND #st <> :s",
                ExpressionAttributeNames={
                    "#loc": "location",
                    "#st": "status",
                    "#rev": "rev",
                    "#up": "updated_at",
                },
                ExpressionAttributeValues={
                    ":l": {"S": location},
                    ":now": {"N": _num(self._clock())},
                    ":s": {"S": ManifestStatus.SEALING.value},
                    ":one": {"N": "1"},
                },
                ReturnValues="ALL_NEW",
            )
        except _Conflict:
            found, _ = await self._read_manifest(manifest_id)
            if found is None:
                raise UnknownManifestError(f"no manifest {manifest_id!r}") from None
            raise StateError(f"manifest {manifest_id} is not sealed yet") from None
        rec, _ = _decode_manifest(resp["Attributes"])
        await self._delete(_marker_key(rec.dataset, manifest_id))
        return rec

    async def unfinished_manifests(self, dataset: str) -> list[ManifestRecord]:
        """Manifests still sealing, or sealed but not yet published (marker Query)."""
        markers = await self._items(
            "Query",
            self.manifests_table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": _jkey("unfinished", dataset)}},
            ConsistentRead=True,
        )
        out: list[ManifestRecord] = []
        for marker in markers:
            mid = marker["sk"]["S"]
            rec, _ = await self._read_manifest(mid)
            if rec is not None and (
                rec.status is ManifestStatus.SEALING
                or (rec.status is ManifestStatus.SEALED and rec.location is None)
            ):
                out.append(rec)
            elif rec is not None or self._clock() - float(marker["at"]["N"]) > 3600:
                # Done (or never created: a marker older than any seal can take).
                await self._delete(_marker_key(dataset, mid))
        out.sort(key=lambda m: (m.created_at, m.manifest_id))
        return out

    async def get_manifest(self, manifest_id: str) -> ManifestRecord | None:
        """One manifest."""
        return (await self._read_manifest(manifest_id))[0]

    async def list_manifests(
        self,
        *,
        dataset: str | None = None,
        status: ManifestStatus | None = None,
        limit: int = 1000,
    ) -> list[ManifestRecord]:
        """Manifests matching the filters, newest first (a filtered Scan)."""
        cond = ["#kind = :k"]
        names: dict[str, str] = {"#kind": "kind"}
        values: Item = {":k": {"S": "manifest"}}
        if dataset is not None:
            cond.append("#ds = :ds")
            names["#ds"] = "dataset"
            values[":ds"] = {"S": dataset}
        if status is not None:
            cond.append("#st = :st")
            names["#st"] = "status"
            values[":st"] = {"S": ManifestStatus(status).value}
        items = await self._items(
            "Scan",
            self.manifests_table,
            ConsistentRead=True,
            FilterExpression=" AND ".join(cond),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
        recs = [_decode_manifest(i)[0] for i in items]
        recs.sort(key=lambda m: (m.created_at, m.manifest_id), reverse=True)
        return recs[: max(0, limit)]

    async def set_manifest_status(
        self,
        manifest_id: str,
        status: ManifestStatus,
        *,
        detail: str = "",
        expect: ManifestStatus | None = None,
        quarantined: Mapping[ObjectId, str] | None = None,
    ) -> ManifestRecord:
        """Move a manifest (revision-conditioned Put), then each of its files."""
        held = dict(quarantined or {})
        for attempt in range(_MAX_CONFLICT_RETRIES):
            rec, rev = await self._read_manifest(manifest_id)
            new = plan_manifest_status(
                rec, manifest_id, status, detail=detail, expect=expect, now=self._clock()
            )
            try:
                await self._api(
                    "PutItem",
                    self.manifests_table,
                    TableName=self.manifests_table,
                    Item=_encode_manifest(new, rev + 1),
                    ConditionExpression="#rev = :rev",
                    ExpressionAttributeNames={"#rev": "rev"},
                    ExpressionAttributeValues={":rev": {"N": str(rev)}},
                )
            except _Conflict:
                if attempt >= 2:
                    await asyncio.sleep(random.uniform(0, min(0.01 * attempt, 0.2)))
                continue
            await _bounded(
                _MOVE_PARALLEL,
                [
                    self._set_file_status(new, f)
                    if f.id not in held
                    else self._set_file_status(
                        new, f, ManifestFileStatus.QUARANTINED, clip(held[f.id])
                    )
                    for f in new.files
                ],
            )
            return new
        raise StateError(
            f"state store dynamodb://{self.table_prefix}: gave up on manifest {manifest_id} "
            f"after {_MAX_CONFLICT_RETRIES} conflicting writes"
        )

    async def _set_file_status(
        self,
        m: ManifestRecord,
        f: ManifestFile,
        status: ManifestFileStatus | None = None,
        detail: str | None = None,
    ) -> None:
        # A file's status follows its manifest's (or ``status``: quarantined); a
        # crash between the two is repaired by the next status change (the
        # manifest is the truth).
        detail = m.detail if detail is None else detail
        values: Item = {
            ":st": {"S": (status or FILE_STATUS_OF[m.status]).value},
            ":now": {"N": _num(m.updated_at)},
            ":id": {"S": m.manifest_id},
        }
        update = "SET #st = :st, #up = :now"
        if detail:
            update += ", #dt = :d"
            values[":d"] = {"S": detail}
        else:
            update += " REMOVE #dt"
        try:
            await self._api(
                "UpdateItem",
                self.manifests_table,
                TableName=self.manifests_table,
                Key=_file_key(m.dataset, m.date, f.id),
                UpdateExpression=update,
                ConditionExpression="#mid = :id",
                ExpressionAttributeNames={
                    "#st": "status",
                    "#dt": "detail",
                    "#mid": "manifest_id",
                    "#up": "updated_at",
                },
                ExpressionAttributeValues=values,
            )
        except _Conflict:
            log.warning(
                "manifest %s: file s3://%s/%s is not tracked in it", m.manifest_id, f.bucket, f.key
            )


def _snake(op: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower()


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or "")
    return ""
