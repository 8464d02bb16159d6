"""The meta part of the DynamoDB store: counters, checkpoints and locks (the meta table).

Retention (TTL ``purge_at``): a checkpoint expires ``retention_s`` after its
last write, a lock ``retention_s`` after it was released or its lease ran out
(each acquire, renew and release moves ``purge_at``). The files' status
counters live here too (:mod:`.files`).
"""

from __future__ import annotations

from s3flow.state.dynamodb.client import Conflict, DynamoClient
from s3flow.state.dynamodb.codec import (
    WID,
    Item,
    num,
    opt_str,
    ours,
    purge_seconds,
    with_purge,
    write_id,
)


class MetaMixin(DynamoClient):
    """The MetaStore protocol on the meta table: one item per counter, checkpoint, lock."""

    async def _meta_get(self, pk: str) -> Item | None:
        return await self._get_item(self.meta_table, {"pk": {"S": pk}})

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

    # --- checkpoints ---------------------------------------------------------------------------

    async def get_checkpoint(self, name: str) -> str | None:
        """The stored position for ``name``."""
        item = await self._meta_get(f"checkpoint#{name}")
        return None if item is None else opt_str(item, "val")

    async def put_checkpoint(self, name: str, value: str) -> None:
        """Store a position for ``name`` (last write wins)."""
        now = self._clock()
        await self._api(
            "PutItem",
            self.meta_table,
            TableName=self.meta_table,
            Item=with_purge(
                {
                    "pk": {"S": f"checkpoint#{name}"},
                    "val": {"S": value},
                    "updated_at": {"N": num(now)},
                },
                self._purge_at(now),
            ),
        )

    # --- leases / locks -------------------------------------------------------------------------

    async def acquire_lock(self, name: str, *, owner: str, ttl_s: float) -> int | None:
        """Take the lock if free or expired: return a fencing token (strictly increasing).

        The item is kept on release (owner removed), so tokens keep increasing,
        until it has been free for the retention: TTL removes it then and tokens
        start again at 1 (no holder of an older token is alive).
        """
        now = self._clock()
        wid = write_id()
        update, names, values = self._lock_purge(
            "SET #o = :o, expires_at = :e, #w = :w",
            now + ttl_s,
            {"#o": "owner", "#t": "token", "#w": WID},
        )
        try:
            resp = await self._api(
                "UpdateItem",
                self.meta_table,
                TableName=self.meta_table,
                Key={"pk": {"S": f"lock#{name}"}},
                UpdateExpression=update + " ADD #t :one",
                ConditionExpression="attribute_not_exists(#o) OR expires_at <= :now",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={
                    ":o": {"S": owner},
                    ":e": {"N": num(now + ttl_s)},
                    ":now": {"N": num(now)},
                    ":one": {"N": "1"},
                    ":w": {"S": wid},
                    **values,
                },
                ReturnValues="UPDATED_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except Conflict as conflict:
            if conflict.item is None or not ours(conflict.item, wid):
                return None
            # This very acquire, applied by an attempt whose answer was lost (the SDK
            # retried it and the retry found the lock held): it is ours.
            return int(conflict.item["token"]["N"])
        return int(resp["Attributes"]["token"]["N"])

    def _lock_purge(
        self, update: str, free_at: float, names: dict[str, str]
    ) -> tuple[str, dict[str, str], Item]:
        """``update`` also moving the lock's ``purge_at`` to one retention after ``free_at``."""
        purge = self._purge_at(free_at)
        if purge is None:
            return update, names, {}
        return (
            update + ", #pa = :pa",
            {**names, "#pa": "purge_at"},
            {":pa": {"N": str(purge_seconds(purge))}},
        )

    async def _lock_update(
        self, name: str, owner: str, token: int, update: str, e: float, tail: str = ""
    ) -> bool:
        wid = write_id()
        update, names, values = self._lock_purge(
            update + ", #w = :w", e, {"#o": "owner", "#t": "token", "#w": WID}
        )
        try:
            await self._api(
                "UpdateItem",
                self.meta_table,
                TableName=self.meta_table,
                Key={"pk": {"S": f"lock#{name}"}},
                UpdateExpression=update + tail,
                ConditionExpression="#o = :o AND #t = :t",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={
                    ":o": {"S": owner},
                    ":t": {"N": str(token)},
                    ":e": {"N": num(e)},
                    ":w": {"S": wid},
                    **values,
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except Conflict as conflict:
            # A release whose answer was lost was retried, and the retry found the
            # owner it had removed gone: done all the same.
            return conflict.item is not None and ours(conflict.item, wid)
        return True

    async def renew_lock(self, name: str, *, owner: str, token: int, ttl_s: float) -> bool:
        """Extend a held lock; False if it was lost (token stale)."""
        return await self._lock_update(
            name, owner, token, "SET expires_at = :e", self._clock() + ttl_s
        )

    async def release_lock(self, name: str, *, owner: str, token: int) -> bool:
        """Release a held lock; False if it was not ours any more (``expires_at``: now)."""
        return await self._lock_update(
            name, owner, token, "SET expires_at = :e", self._clock(), " REMOVE #o"
        )
