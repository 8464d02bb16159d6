"""DynamoDB state store: the multi-node backend (conditional writes, fencing tokens).

Three tables, PAY_PER_REQUEST, created by :meth:`DynamoStateStore.ensure_tables`
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
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from aiobotocore.session import get_session

from s3flow.aws import client_config, endpoint_for
from s3flow.errors import ConfigError, translate_aws_error
from s3flow.settings import AwsSettings
from s3flow.state.base import (
    Claim,
    FileRecord,
    FileStatus,
    HistoryEntry,
    ObjectId,
    StateError,
)
from s3flow.state.lifecycle import (
    FencedFinishMixin,
    clip,
    plan_claim,
    plan_finish,
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


# --- the store ------------------------------------------------------------------------


class DynamoStateStore(FencedFinishMixin):
    """The StateStore protocol on three DynamoDB tables. Use ``async with``.

    The tables must exist (``s3flow provision`` calls :meth:`ensure_tables`).
    ``clock`` returns unix seconds; tests pass a fake one to expire claims.
    ``pool`` is the client's HTTP connection pool size.
    """

    def __init__(
        self,
        table_prefix: str,
        aws: AwsSettings,
        *,
        clock: Callable[[], float] = time.time,
        pool: int = 10,
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
        self._aws = aws
        self._clock = clock
        self._pool = pool
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    def __repr__(self) -> str:
        return f"DynamoStateStore({self.table_prefix!r})"

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> DynamoStateStore:
        """Open the DynamoDB client (tables are not checked: see ensure_tables)."""
        if self._stack is not None:
            raise StateError(f"state store dynamodb://{self.table_prefix} is already open")
        session = get_session()
        if self._aws.profile:
            session.set_config_variable("profile", self._aws.profile)
        stack = AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                session.create_client(
                    "dynamodb",
                    region_name=self._aws.region,
                    endpoint_url=endpoint_for("dynamodb", self._aws),
                    config=client_config(self._aws, "dynamodb", self._pool),
                )
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
        for table, (keys, attrs) in (
            (self.files_table, _PK_SK),
            (self.history_table, _PK_SK),
            (self.meta_table, _PK_ONLY),
        ):
            try:
                await self._client.create_table(
                    TableName=table,
                    KeySchema=keys,
                    AttributeDefinitions=attrs,
                    BillingMode="PAY_PER_REQUEST",
                )
                out.append((table, "created"))
            except Exception as exc:
                if _error_code(exc) != "ResourceInUseException":
                    raise self._error(exc, "CreateTable", table) from exc
                out.append((table, "unchanged"))
        for (table, _), (keys, _attrs) in zip(out, (_PK_SK, _PK_SK, _PK_ONLY), strict=True):
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

    async def _read(self, oid: ObjectId) -> tuple[FileRecord | None, int]:
        resp = await self._api(
            "GetItem",
            self.files_table,
            TableName=self.files_table,
            Key=_key(oid),
            ConsistentRead=True,
        )
        item = resp.get("Item")
        if item is None:
            return None, 0
        return _decode(item)

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

    async def _scan(self, **kwargs: Any) -> list[Item]:
        items: list[Item] = []
        start: Item | None = None
        while True:
            args = dict(kwargs, TableName=self.files_table, ConsistentRead=True)
            if start:
                args["ExclusiveStartKey"] = start
            resp = await self._api("Scan", self.files_table, **args)
            items += resp.get("Items") or []
            start = resp.get("LastEvaluatedKey")
            if not start:
                return items

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
        try:
            resp = await self._api(
                "UpdateItem",
                self.files_table,
                TableName=self.files_table,
                Key=_key(oid),
                UpdateExpression=(
                    f"SET {', '.join(sets)} REMOVE claim_owner, claim_expires_at ADD #rev :one"
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

    async def history(self, bucket: str, key: str) -> list[HistoryEntry]:
        """Every transition of every version of one key, oldest first."""
        out: list[HistoryEntry] = []
        start: Item | None = None
        while True:
            args: Item = {
                "TableName": self.history_table,
                "KeyConditionExpression": "pk = :pk",
                "ExpressionAttributeValues": {":pk": {"S": _pk(bucket, key)}},
                "ConsistentRead": True,
            }
            if start:
                args["ExclusiveStartKey"] = start
            resp = await self._api("Query", self.history_table, **args)
            out += [_history_entry(i) for i in resp.get("Items") or []]
            start = resp.get("LastEvaluatedKey")
            if not start:
                return out

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
        recs = [_decode(i)[0] for i in await self._scan(**args)]
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
        for item in await self._scan(**args):
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
            for item in await self._scan(**args)
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


def _snake(op: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower()


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or "")
    return ""
