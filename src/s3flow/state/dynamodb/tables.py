"""The store's tables: key schemas, the secondary indexes, creation (``s3flow provision``)."""

from __future__ import annotations

import asyncio
import copy
import time

from s3flow.settings import AwsSettings
from s3flow.state.base import StateError
from s3flow.state.dynamodb.client import DynamoClient, error_code
from s3flow.state.dynamodb.codec import Item

PENDING_INDEX = "pending"
_PK_SK = (
    [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    [{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
)
_PK_ONLY = (
    [{"AttributeName": "pk", "KeyType": "HASH"}],
    [{"AttributeName": "pk", "AttributeType": "S"}],
)
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
        "IndexName": PENDING_INDEX,
        "KeySchema": [
            {"AttributeName": "pending_ds", "KeyType": "HASH"},
            {"AttributeName": "pending_sk", "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "ALL"},
    }
]

JOBS_STATUS_INDEX = "status"
_JOBS_SCHEMA = (
    _PK_ONLY[0],
    [
        *_PK_ONLY[1],
        {"AttributeName": "status", "AttributeType": "S"},
        {"AttributeName": "listed", "AttributeType": "S"},
    ],
)
# Sparse (only job items have a status) and KEYS_ONLY: the index is written when a job is
# created and when its status changes, not by every event; listings read the records
# themselves (BatchGetItem, strongly consistent).
_JOBS_GSI = [
    {
        "IndexName": JOBS_STATUS_INDEX,
        "KeySchema": [
            {"AttributeName": "status", "KeyType": "HASH"},
            {"AttributeName": "listed", "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "KEYS_ONLY"},
    }
]
_JOB_EVENTS_SCHEMA = (
    [
        {"AttributeName": "job_id", "KeyType": "HASH"},
        {"AttributeName": "seq", "KeyType": "RANGE"},
    ],
    [
        {"AttributeName": "job_id", "AttributeType": "S"},
        {"AttributeName": "seq", "AttributeType": "N"},
    ],
)


_Spec = tuple[str, tuple[list[dict[str, str]], list[dict[str, str]]], list[Item] | None]


def _specs(names: DynamoClient) -> list[_Spec]:
    """(table, (key schema, attribute definitions), global secondary indexes or None)."""
    return [
        (names.files_table, _PK_SK, None),
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
        """Create missing tables (idempotent), wait until ACTIVE.

        Returns ``(table, "created" | "unchanged")`` pairs. An existing table
        with another key schema is an error. Works on an open or closed store.
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
