"""The store's tables: key schemas, the secondary indexes, creation (``s3flow provision``).

Every table expires items through DynamoDB's TTL on :data:`TTL_ATTRIBUTE`
(``purge_at``, unix seconds), which :meth:`TablesMixin.ensure_ttl` switches on
(``s3flow provision``; the CloudFormation export declares it with
``TimeToLiveSpecification``). Items without the attribute never expire.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Collection

from s3flow.errors import ConfigError, translate_aws_error
from s3flow.settings import AwsSettings
from s3flow.state.dynamodb.client import DynamoClient, error_code
from s3flow.state.dynamodb.codec import Item
from s3flow.state.records import StateError

log = logging.getLogger(__name__)

#: Error codes of a DescribeTable the credentials may not make.
_DENIED = frozenset({"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"})

PENDING_INDEX = "pending"
#: The items' TTL attribute (unix seconds) on every table of the store.
TTL_ATTRIBUTE = "purge_at"
#: The files table's index of every record by (pipeline, status), newest last.
FILES_LISTING_INDEX = "listing"
#: The manifests table's index of the manifests by (dataset, status), newest last.
MANIFESTS_LISTING_INDEX = "listing"


def _keys(hash_key: str, range_key: str | None = None) -> list[dict[str, str]]:
    """A ``KeySchema``: ``hash_key``, then ``range_key`` when there is one."""
    schema = [{"AttributeName": hash_key, "KeyType": "HASH"}]
    if range_key is not None:
        schema.append({"AttributeName": range_key, "KeyType": "RANGE"})
    return schema


def _attributes(**types: str) -> list[dict[str, str]]:
    """``AttributeDefinitions``: each key attribute's name and type ("S", "N")."""
    return [{"AttributeName": name, "AttributeType": t} for name, t in types.items()]


def _index(name: str, hash_key: str, range_key: str, projection: str) -> Item:
    """A global secondary index: its keys and ``ProjectionType``."""
    return {
        "IndexName": name,
        "KeySchema": _keys(hash_key, range_key),
        "Projection": {"ProjectionType": projection},
    }


_PK_SK = (_keys("pk", "sk"), _attributes(pk="S", sk="S"))
_PK_ONLY = (_keys("pk"), _attributes(pk="S"))
_FILES_SCHEMA = (_keys("pk", "sk"), _attributes(pk="S", sk="S", lst="S", lst_at="N"))
# Every record, by ``lst`` = [pipeline, status] (JSON) and ``lst_at`` = updated_at: `files
# --status/--pipeline` read partitions newest first, `status` the oldest processing record
# (a processing record's updated_at is when it entered processing). ALL: a listing is one
# Query (records are small); it is written with each transition anyway (lst_at changes).
_FILES_GSI = [_index(FILES_LISTING_INDEX, "lst", "lst_at", "ALL")]
_MANIFESTS_SCHEMA = (
    _keys("pk", "sk"),
    _attributes(pk="S", sk="S", pending_ds="S", pending_sk="S", mls="S", mls_at="S"),
)
_MANIFESTS_GSI = [
    _index(PENDING_INDEX, "pending_ds", "pending_sk", "ALL"),
    # Sparse (manifest items only): ``mls`` = [dataset, status] (JSON), ``mls_at`` =
    # <created micros>#<id>. KEYS_ONLY: a manifest's file list is large; `manifests list`
    # reads the records it lists (BatchGetItem).
    _index(MANIFESTS_LISTING_INDEX, "mls", "mls_at", "KEYS_ONLY"),
]

JOBS_STATUS_INDEX = "status"
_JOBS_SCHEMA = (_keys("pk"), _attributes(pk="S", status="S", listed="S"))
# Sparse (only job items have a status) and KEYS_ONLY: the index is written when a job is
# created and when its status changes, not by every event; listings read the records
# themselves (BatchGetItem, strongly consistent).
_JOBS_GSI = [_index(JOBS_STATUS_INDEX, "status", "listed", "KEYS_ONLY")]
_JOB_EVENTS_SCHEMA = (_keys("job_id", "seq"), _attributes(job_id="S", seq="N"))


_Spec = tuple[str, tuple[list[dict[str, str]], list[dict[str, str]]], list[Item] | None]


def _specs(names: DynamoClient) -> list[_Spec]:
    """(table, (key schema, attribute definitions), global secondary indexes or None)."""
    return [
        (names.files_table, _FILES_SCHEMA, _FILES_GSI),
        (names.history_table, _PK_SK, None),
        (names.meta_table, _PK_ONLY, None),
        (names.manifests_table, _MANIFESTS_SCHEMA, _MANIFESTS_GSI),
        (names.jobs_table, _JOBS_SCHEMA, _JOBS_GSI),
        (names.job_events_table, _JOB_EVENTS_SCHEMA, None),
    ]


def _create_table_args(spec: _Spec) -> Item:
    table, (keys, attrs), gsi = spec
    extra: Item = {} if gsi is None else {"GlobalSecondaryIndexes": copy.deepcopy(gsi)}
    return {
        "TableName": table,
        "KeySchema": copy.deepcopy(keys),
        "AttributeDefinitions": copy.deepcopy(attrs),
        "BillingMode": "PAY_PER_REQUEST",
        **extra,
    }


def table_definitions(table_prefix: str) -> list[Item]:
    """The CreateTable arguments of every table of ``dynamodb://TABLE_PREFIX``.

    The same definitions :meth:`TablesMixin.ensure_tables` creates (``TableName``,
    ``KeySchema``, ``AttributeDefinitions``, ``BillingMode`` and, where the table has
    them, ``GlobalSecondaryIndexes``); ``s3flow provision --export cloudformation``
    writes them into its template. Fresh copies: callers may change them. Raises
    :class:`~s3flow.errors.ConfigError` for an invalid prefix.
    """
    names = DynamoClient(table_prefix, AwsSettings(region="us-east-1"))
    return [_create_table_args(spec) for spec in _specs(names)]


class TablesMixin(DynamoClient):
    """Creates the store's tables and waits until they are ACTIVE."""

    async def ensure_tables(self) -> list[tuple[str, str]]:
        """Create missing tables and indexes (idempotent), wait until ACTIVE.

        Returns ``(table, "created" | "unchanged" | "added index NAME")`` pairs:
        a table created by an older s3flow gains the indexes it lacks (one at a
        time, as DynamoDB requires; on AWS an index over a large table takes
        minutes to build). An existing table with another key schema is an
        error. Works on an open or closed store. TTL: :meth:`ensure_ttl`.
        """
        if self._client is None:
            async with self:
                return await self.ensure_tables()
        out: list[tuple[str, str]] = []
        specs = _specs(self)
        for spec in specs:
            table = spec[0]
            try:
                await self._client.create_table(**_create_table_args(spec))
                out.append((table, "created"))
            except Exception as exc:
                if error_code(exc) != "ResourceInUseException":
                    raise self._error(exc, "CreateTable", table) from exc
                added = await self._add_missing_indexes(spec)
                out.append((table, f"added index {', '.join(added)}" if added else "unchanged"))
        for table, (keys, _attrs), _gsi in specs:
            await self._wait_active(table, keys)
        return out

    async def check_tables(self, only: Collection[str] | None = None) -> None:
        """Start-up check: every table (or those named in ``only``) exists, with its key
        schema and indexes.

        One DescribeTable per table. Raises :class:`~s3flow.errors.ConfigError` naming
        the missing tables (or indexes) and ``s3flow provision``, a table of another key
        schema, or the error that stopped the check. Credentials without
        ``dynamodb:DescribeTable`` skip it (logged): the store's own calls then say what
        is missing. Works on an open or closed store.
        """
        if self._client is None:
            async with self:
                return await self.check_tables(only)
        where = f"state store dynamodb://{self.table_prefix} ([state] url)"
        missing: list[str] = []
        lacking: list[str] = []
        specs = [spec for spec in _specs(self) if only is None or spec[0] in only]
        # Start-up: one DescribeTable per table, all at once.
        answers = await asyncio.gather(
            *(self._client.describe_table(TableName=table) for table, _, _ in specs),
            return_exceptions=True,
        )
        for (table, (keys, _attrs), gsi), answer in zip(specs, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, Exception):
                    raise answer  # a cancellation
                exc = answer
                code = error_code(exc)
                if code == "ResourceNotFoundException":
                    missing.append(table)
                    continue
                if code in _DENIED:
                    log.warning(
                        "%s: cannot check that its tables exist (%s on DescribeTable %s); "
                        "grant dynamodb:DescribeTable to check them at start",
                        where,
                        code,
                        table,
                    )
                    return
                err = translate_aws_error(exc, f"DynamoDB DescribeTable {table}")
                raise ConfigError(f"{where}: cannot check table {table}: {err}") from exc
            desc = answer["Table"]
            found = sorted((k["AttributeName"], k["KeyType"]) for k in desc["KeySchema"])
            wanted = sorted((k["AttributeName"], k["KeyType"]) for k in keys)
            if found != wanted:
                raise ConfigError(
                    f"{where}: table {table} exists with key schema {found}, not s3flow's "
                    f"{wanted}: another application's table? Choose another table prefix "
                    "in [state] url, then run `s3flow provision`"
                )
            have = {g["IndexName"] for g in desc.get("GlobalSecondaryIndexes") or []}
            lacking += [
                f"{g['IndexName']!r} of table {table}"
                for g in gsi or []
                if g["IndexName"] not in have
            ]
        if missing:
            tables = "table " if len(missing) == 1 else "tables "
            raise ConfigError(
                f"{where}: {tables}{', '.join(missing)} "
                f"{'does' if len(missing) == 1 else 'do'} not exist; run `s3flow provision` "
                "with this config to create them (or correct [state] url)"
            )
        if lacking:
            raise ConfigError(
                f"{where}: missing index {', '.join(lacking)} (tables of an older "
                "s3flow); run `s3flow provision` with this config to add it"
            )

    async def _add_missing_indexes(self, spec: _Spec) -> list[str]:
        """Create the global secondary indexes an existing table lacks; their names."""
        table, (keys, attrs), gsi = spec
        if not gsi:
            return []
        desc = (await self._api("DescribeTable", table, TableName=table))["Table"]
        have = {g["IndexName"] for g in desc.get("GlobalSecondaryIndexes") or []}
        # DynamoDB refuses attribute definitions no key uses yet: only the table's, the
        # existing indexes' and the new index's.
        used = {k["AttributeName"] for k in keys}
        used |= {k["AttributeName"] for g in gsi if g["IndexName"] in have for k in g["KeySchema"]}
        added: list[str] = []
        for index in gsi:
            if index["IndexName"] in have:
                continue
            used |= {k["AttributeName"] for k in index["KeySchema"]}
            await self._wait_active(table, keys)  # one index change at a time
            defined = [copy.deepcopy(a) for a in attrs if a["AttributeName"] in used]
            await self._api(
                "UpdateTable",
                table,
                TableName=table,
                AttributeDefinitions=defined,
                GlobalSecondaryIndexUpdates=[{"Create": copy.deepcopy(index)}],
            )
            added.append(str(index["IndexName"]))
            await self._wait_active(table, keys, timeout_s=3600)
        return added

    async def ensure_ttl(self) -> list[tuple[str, str]]:
        """Switch on TTL (:data:`TTL_ATTRIBUTE`) on every table (idempotent).

        Returns ``(table, "enabled" | "unchanged")`` pairs. A table whose TTL
        is on another attribute is an error (DynamoDB allows one). Works on an
        open or closed store.
        """
        if self._client is None:
            async with self:
                return await self.ensure_ttl()
        out: list[tuple[str, str]] = []
        for table, _schema, _gsi in _specs(self):
            desc = (await self._api("DescribeTimeToLive", table, TableName=table)).get(
                "TimeToLiveDescription"
            ) or {}
            status = desc.get("TimeToLiveStatus", "DISABLED")
            if status in ("ENABLED", "ENABLING"):
                if desc.get("AttributeName") != TTL_ATTRIBUTE:
                    raise StateError(
                        f"DynamoDB table {table} has TTL on {desc.get('AttributeName')!r}; "
                        f"s3flow expires items by {TTL_ATTRIBUTE!r}"
                    )
                out.append((table, "unchanged"))
                continue
            await self._api(
                "UpdateTimeToLive",
                table,
                TableName=table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
            )
            out.append((table, "enabled"))
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
            indexes = desc.get("GlobalSecondaryIndexes") or []
            if desc.get("TableStatus") == "ACTIVE" and all(
                g.get("IndexStatus", "ACTIVE") == "ACTIVE" for g in indexes
            ):
                return
            if time.monotonic() > deadline:
                raise StateError(f"DynamoDB table {table} did not become ACTIVE in {timeout_s}s")
            await asyncio.sleep(1.0)
