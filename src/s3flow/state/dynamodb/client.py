"""The DynamoDB client every part of the store shares: lifecycle, calls, errors, paging."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any, Self

from s3flow.aws import async_client
from s3flow.errors import ConfigError, translate_aws_error
from s3flow.settings import AwsSettings
from s3flow.state.dynamodb.codec import Item
from s3flow.state.lifecycle import DEFAULT_RETENTION_DAYS, retention_seconds
from s3flow.state.records import ObjectId, StateError

MAX_CONFLICT_RETRIES = 100
CONFLICT_CODES = frozenset({"ConditionalCheckFailedException", "TransactionConflictException"})
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,240}$")


class Conflict(Exception):
    """A condition failed: decide again (on ``item``, the current item, when known)."""

    def __init__(self, code: str, item: Item | None = None) -> None:
        super().__init__(code)
        self.item = item


class TransactionCanceled(Conflict):
    """A TransactWriteItems was cancelled; ``reasons`` has one entry per action, in order.

    Each reason is DynamoDB's ``CancellationReason``: ``Code`` ("None" for an
    action that was not the cause), ``Item`` (the current item, for a failed
    condition asked with ``ReturnValuesOnConditionCheckFailure = ALL_OLD``).
    """

    def __init__(self, code: str, reasons: list[Item]) -> None:
        super().__init__(code)
        self.reasons = reasons

    def code(self, index: int) -> str:
        """The cancellation code of action ``index`` ("None" when it was not a cause)."""
        if 0 <= index < len(self.reasons):
            return str(self.reasons[index].get("Code") or "None")
        return "None"

    def failed(self, index: int) -> bool:
        """True when action ``index``'s condition did not hold."""
        return self.code(index) == "ConditionalCheckFailed"

    def current(self, index: int) -> Item | None:
        """The item action ``index``'s failed condition saw (ALL_OLD; None when absent)."""
        if not self.failed(index):
            return None
        item = self.reasons[index].get("Item")
        return item if isinstance(item, dict) and item else None


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError ("" for any other exception)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or "")
    return ""


async def backoff(attempt: int) -> None:
    """Sleep a little (random, growing) before the third and later retries of a lost race."""
    if attempt >= 2:
        await asyncio.sleep(random.uniform(0, min(0.01 * attempt, 0.2)))


def _snake(op: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower()


class DynamoClient:
    """The tables' names and the open client, with the calls the store's parts share.

    Use ``async with``. The files, meta and manifests parts of the store
    inherit it; see :class:`s3flow.state.dynamodb.DynamoStateStore` for the
    constructor's arguments.
    """

    def __init__(
        self,
        table_prefix: str,
        aws: AwsSettings,
        *,
        clock: Callable[[], float] = time.time,
        pool: int = 10,
        page_size: int | None = None,
        retention_s: float | None = retention_seconds(DEFAULT_RETENTION_DAYS),
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
        self.jobs_table = f"{table_prefix}-jobs"
        self.job_events_table = f"{table_prefix}-job-events"
        self._aws = aws
        self._clock = clock
        self._pool = pool
        self._page_size = page_size
        self.retention_s = retention_s
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        # What this instance has written to the files counters' registry (see .files).
        self._registered_pipelines: set[str] = set()
        self._registered_horizon = -1
        # (object, token) -> pipeline of the claims this instance took, until finished.
        self._claims: dict[tuple[ObjectId, int], str] = {}

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open the DynamoDB client (tables are not checked: see ensure_tables)."""
        if self._stack is not None:
            raise StateError(f"state store dynamodb://{self.table_prefix} is already open")
        stack = AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                async_client(self._aws, "dynamodb", pool=self._pool)
            )
        except ConfigError:  # the SDK's configuration (a profile that does not exist)
            await stack.aclose()
            raise
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

    # --- calls -----------------------------------------------------------------------------

    def _error(self, exc: BaseException, op: str, table: str) -> Exception:
        code = error_code(exc)
        if code == "TransactionCanceledException":
            reasons = (getattr(exc, "response", None) or {}).get("CancellationReasons")
            return TransactionCanceled(code, reasons if isinstance(reasons, list) else [])
        if code in CONFLICT_CODES:
            item = (getattr(exc, "response", None) or {}).get("Item")
            return Conflict(code, item if isinstance(item, dict) else None)
        if code == "ResourceNotFoundException":
            return StateError(
                f"state store dynamodb://{self.table_prefix}: table {table} does not exist "
                "(run `s3flow provision`)"
            )
        err = translate_aws_error(exc, f"DynamoDB {op} on {table}")
        return StateError(f"state store dynamodb://{self.table_prefix}: {err}")

    def _gave_up(self, what: str) -> StateError:
        """The error to raise after :data:`MAX_CONFLICT_RETRIES` lost races on ``what``."""
        return StateError(
            f"state store dynamodb://{self.table_prefix}: gave up on {what} after "
            f"{MAX_CONFLICT_RETRIES} conflicting writes"
        )

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

    async def _put_if(
        self,
        table: str,
        item: Item,
        condition: str,
        names: dict[str, str] | None = None,
        values: Item | None = None,
    ) -> bool:
        """PutItem ``item`` if ``condition`` holds; False (nothing written) if it does not.

        ``names`` / ``values`` are the condition's ExpressionAttributeNames /
        ExpressionAttributeValues (left out of the request when None).
        """
        cond: Item = {"ConditionExpression": condition}
        if names is not None:
            cond["ExpressionAttributeNames"] = names
        if values is not None:
            cond["ExpressionAttributeValues"] = values
        try:
            await self._api("PutItem", table, TableName=table, Item=item, **cond)
        except Conflict:
            return False
        return True

    async def _update_if(self, table: str, key: Item, **kwargs: Any) -> Item | None:
        """UpdateItem ``key`` with ``kwargs``: the response, or None if its condition failed."""
        try:
            return await self._api("UpdateItem", table, TableName=table, Key=key, **kwargs)
        except Conflict:
            return None

    def _purge_at(self, since: float) -> float | None:
        """When an item that starts its retention at ``since`` expires (None: retention off)."""
        return None if self.retention_s is None else since + self.retention_s

    async def _batch_get(self, table: str, keys: list[Item]) -> list[Item]:
        """The items of ``keys`` that exist (BatchGetItem, strongly consistent, any order)."""
        out: list[Item] = []
        for start in range(0, len(keys), 100):
            pending: Item = {table: {"Keys": keys[start : start + 100], "ConsistentRead": True}}
            attempt = 0
            while pending:
                resp = await self._api("BatchGetItem", table, RequestItems=pending)
                out += resp.get("Responses", {}).get(table, [])
                pending = resp.get("UnprocessedKeys") or {}
                attempt += 1
                if pending:
                    await asyncio.sleep(random.uniform(0, min(0.05 * attempt, 1.0)))
        return out

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

    async def _pages(self, op: str, table: str, **kwargs: Any) -> AsyncIterator[list[Item]]:
        """The pages of a Query or Scan, one list of items at a time (what ``_items`` joins)."""
        args = dict(kwargs, TableName=table)
        if self._page_size is not None:
            args["Limit"] = self._page_size
        while True:
            resp = await self._api(op, table, **args)
            yield resp.get("Items") or []
            start = resp.get("LastEvaluatedKey")
            if not start:
                return
            args["ExclusiveStartKey"] = start

    async def _first_items(self, table: str, n: int, **kwargs: Any) -> list[Item]:
        """The first ``n`` items of a Query on ``table``, page after page, then stop.

        Unlike :meth:`_items` it never reads past the ``n``-th item: each
        request asks for at most the items still wanted (and at most
        ``page_size``), so a listing of a large partition costs what it returns.
        """
        args = dict(kwargs, TableName=table)
        items: list[Item] = []
        while len(items) < n:
            want = n - len(items)
            args["Limit"] = want if self._page_size is None else min(want, self._page_size)
            resp = await self._api("Query", table, **args)
            items += resp.get("Items") or []
            start = resp.get("LastEvaluatedKey")
            if not start:
                break
            args["ExclusiveStartKey"] = start
        return items[:n]
