"""The files part of the DynamoDB store: claims, fenced finishes, records, history."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any, TypeVar

from s3flow.state.base import Claim, FileRecord, FileStatus, HistoryEntry, ObjectId, StateError
from s3flow.state.dynamodb.client import MAX_CONFLICT_RETRIES, Conflict, DynamoClient
from s3flow.state.dynamodb.codec import (
    Item,
    decode_history,
    decode_record,
    encode_history,
    encode_record,
    num,
    object_pk,
    record_key,
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
Plan = tuple[FileRecord, HistoryEntry] | None


class FilesMixin(DynamoClient, FencedFinishMixin):
    """The FileStore protocol on the files and history tables (see :mod:`s3flow.state.dynamodb`)."""

    async def _read(self, oid: ObjectId) -> tuple[FileRecord | None, int]:
        item = await self._get_item(self.files_table, record_key(oid))
        return (None, 0) if item is None else decode_record(item)

    async def _write(self, old_rev: int | None, rec: FileRecord, entry: HistoryEntry) -> None:
        """Put ``rec`` if its revision is still ``old_rev`` (None: if absent), then its history.

        Raises Conflict, carrying the current item, when another write came
        first. The history Put follows the record's (not one transaction: see
        :mod:`s3flow.state.dynamodb`).
        """
        rev = (old_rev or 0) + 1
        put: Item = {"TableName": self.files_table, "Item": encode_record(rec, rev)}
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
                Item=encode_history(rec, entry, rev),
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
        for attempt in range(MAX_CONFLICT_RETRIES):
            rec, rev = known if known is not None else await self._read(oid)
            result, plan = decide(rec, self._clock())
            if plan is None:
                return result
            try:
                await self._write(None if rec is None else rev, *plan)
            except Conflict as conflict:
                known = None if conflict.item is None else decode_record(conflict.item)
                if attempt >= 2:
                    await asyncio.sleep(random.uniform(0, min(0.01 * attempt, 0.2)))
                continue
            return result
        raise StateError(
            f"state store dynamodb://{self.table_prefix}: gave up on "
            f"s3://{oid.bucket}/{oid.key} after {MAX_CONFLICT_RETRIES} conflicting writes"
        )

    async def _scan_files(self, **kwargs: Any) -> list[Item]:
        return await self._items("Scan", self.files_table, ConsistentRead=True, **kwargs)

    # --- lifecycle ---------------------------------------------------------------------------

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
                Key=record_key(oid),
                UpdateExpression="SET claim_expires_at = :e ADD #rev :one",
                ConditionExpression="#st = :p AND fencing_token = :t",
                ExpressionAttributeNames={"#rev": "rev", "#st": "status"},
                ExpressionAttributeValues={
                    ":e": {"N": num(self._clock() + ttl_s)},
                    ":one": {"N": "1"},
                    ":p": {"S": FileStatus.PROCESSING.value},
                    ":t": {"N": str(token)},
                },
            )
        except Conflict:
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
            ":now": {"N": num(now)},
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
                Key=record_key(oid),
                UpdateExpression=(
                    f"SET {', '.join(sets)} REMOVE claim_owner, claim_expires_at {adds}"
                ),
                ConditionExpression="#st = :p AND fencing_token = :t",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_OLD",
            )
        except Conflict:
            return False
        old, rev = decode_record(resp["Attributes"])
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

    # --- reads -------------------------------------------------------------------------------

    async def get(self, oid: ObjectId) -> FileRecord | None:
        """One version's record."""
        return (await self._read(oid))[0]

    async def versions(self, bucket: str, key: str) -> list[FileRecord]:
        """The records of every version of one key, most recently updated first (a Query)."""
        items = await self._items(
            "Query",
            self.files_table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": object_pk(bucket, key)}},
            ConsistentRead=True,
        )
        recs = [decode_record(i)[0] for i in items]
        return sorted(recs, key=lambda r: r.updated_at, reverse=True)

    async def history(self, bucket: str, key: str) -> list[HistoryEntry]:
        """Every transition of every version of one key, oldest first."""
        items = await self._items(
            "Query",
            self.history_table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": object_pk(bucket, key)}},
            ConsistentRead=True,
        )
        return [decode_history(i) for i in items]

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
        recs = [decode_record(i)[0] for i in await self._scan_files(**args)]
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
