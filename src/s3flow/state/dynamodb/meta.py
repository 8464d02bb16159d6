"""The meta part of the DynamoDB store: counters, checkpoints and locks (the meta table)."""

from __future__ import annotations

from s3flow.state.dynamodb.client import Conflict, DynamoClient
from s3flow.state.dynamodb.codec import Item, num, opt_str


class MetaMixin(DynamoClient):
    """The MetaStore protocol on the meta table: one item per counter, checkpoint, lock."""

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
        await self._api(
            "PutItem",
            self.meta_table,
            TableName=self.meta_table,
            Item={
                "pk": {"S": f"checkpoint#{name}"},
                "val": {"S": value},
                "updated_at": {"N": num(self._clock())},
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
                    ":e": {"N": num(now + ttl_s)},
                    ":now": {"N": num(now)},
                    ":one": {"N": "1"},
                },
                ReturnValues="UPDATED_NEW",
            )
        except Conflict:
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
                    ":e": {"N": num(e)},
                },
            )
        except Conflict:
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
