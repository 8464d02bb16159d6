"""The files part of the DynamoDB store: claims, fenced finishes, records, history, listings.

Every transition is one conditional write of the record (the rules, and
``claim`` / ``complete`` / ``fail`` / ``release`` / ``set_status`` themselves,
are in :mod:`s3flow.state.lifecycle`; this module stores what they decide),
then, in parallel, its history line and its change to the status counters
(:mod:`.counters`, which says why the counters are not in the record's write).

The ``listing`` index (``lst`` = [pipeline, status], ``lst_at`` = updated_at)
serves ``list_files`` (newest first, ``limit`` items per partition) and
``oldest_processing_at`` (the oldest item of the processing partition: one
item read). The index is eventually consistent: a record that just changed may
be listed under its former status for a moment.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from dataclasses import replace

from s3flow.state.dynamodb.client import MAX_CONFLICT_RETRIES, Conflict, backoff
from s3flow.state.dynamodb.codec import (
    WID,
    Item,
    decode_history,
    decode_record,
    encode_history,
    encode_record,
    listing_key,
    num,
    object_pk,
    opt_float,
    ours,
    purge_seconds,
    record_key,
    write_id,
)
from s3flow.state.dynamodb.counters import CountersMixin, count_key
from s3flow.state.dynamodb.tables import FILES_LISTING_INDEX
from s3flow.state.lifecycle import (
    Decide,
    FileFilter,
    FileLifecycleMixin,
    Finish,
    R,
    clip,
    plan_finish,
    purge_time,
)
from s3flow.state.records import Claim, FileRecord, FileStatus, HistoryEntry, ObjectId, StateError

log = logging.getLogger(__name__)
#: A record as read: the record, its revision and its stored ``purge_at`` (or None).
Read = tuple[FileRecord | None, int, float | None]
_CLAIMS_KEPT = 100_000  # claims whose pipeline an instance remembers for their finish

__all__ = ["FilesMixin", "count_key"]  # count_key: bench/state_scale.py imports it from here


def _decode(item: Item) -> Read:
    rec, rev = decode_record(item)
    return rec, rev, opt_float(item, "purge_at")


def _ours(conflict: Conflict, wid: str) -> bool:
    """Whether the item a failed condition returned was written by write ``wid``."""
    return conflict.item is not None and ours(conflict.item, wid)


class FilesMixin(CountersMixin, FileLifecycleMixin):
    """The FileStore protocol on the files and history tables (see :mod:`s3flow.state.dynamodb`)."""

    async def _read(self, oid: ObjectId) -> Read:
        item = await self._get_item(self.files_table, record_key(oid))
        return (None, 0, None) if item is None else _decode(item)

    async def _write(self, old: Read, rec: FileRecord, entry: HistoryEntry) -> None:
        """Put ``rec`` if the stored revision is still ``old``'s (absent: if absent).

        Then its history line and its counters' change, in parallel. Raises
        Conflict, carrying the current item, when another write came first.
        """
        old_rec, old_rev, old_purge = old
        rev = old_rev + 1
        purge = purge_time(rec.status, rec.updated_at, self.retention_s)
        wid = write_id()
        put: Item = {
            "TableName": self.files_table,
            "Item": {**encode_record(rec, rev, purge), WID: {"S": wid}},
        }
        if old_rec is None:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "#rev = :rev"
            put["ExpressionAttributeNames"] = {"#rev": "rev"}
            put["ExpressionAttributeValues"] = {":rev": {"N": str(old_rev)}}
        # On a failed condition the current item comes back with the error.
        put["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        try:
            await self._api("PutItem", self.files_table, **put)
        except Conflict as conflict:
            if not _ours(conflict, wid):
                raise
            # This very write, applied by an attempt whose answer was lost: the SDK's
            # retry then failed the condition the first attempt had used up.
        await asyncio.gather(
            self._put_history(rec, entry, rev),
            self._count(
                None if old_rec is None else count_key(old_rec, old_purge),
                count_key(rec, purge),
            ),
        )

    async def _put_history(self, rec: FileRecord, entry: HistoryEntry, rev: int) -> None:
        """Write a history entry; the transition already happened, so a failure only logs."""
        try:
            await self._api(
                "PutItem",
                self.history_table,
                TableName=self.history_table,
                Item=encode_history(rec, entry, rev, self._purge_at(entry.at)),
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
        decide: Decide[R],
        *,
        assume_absent: bool = False,
    ) -> R:
        """Read, decide, write conditioned on what was read; on a lost race decide again.

        ``assume_absent`` skips the first read (a new object is the common case
        of a claim): a failed create returns the existing item to decide on.
        """
        known: Read | None = (None, 0, None) if assume_absent else None
        for attempt in range(MAX_CONFLICT_RETRIES):
            read = known if known is not None else await self._read(oid)
            result, plan = decide(read[0], self._clock())
            if plan is None:
                return result
            try:
                await self._write(read, *plan)
            except Conflict as conflict:
                known = None if conflict.item is None else _decode(conflict.item)
                await backoff(attempt)
                continue
            return result
        raise self._gave_up(f"s3://{oid.bucket}/{oid.key}")

    # --- lifecycle ---------------------------------------------------------------------------

    def _claimed(self, oid: ObjectId, claim: Claim) -> None:
        """Note the pipeline of a claim this instance holds (the finish's listing key)."""
        claims = self._claims
        claims[(oid, claim.token)] = claim.record.pipeline
        while len(claims) > _CLAIMS_KEPT:
            claims.pop(next(iter(claims)))

    async def renew(self, oid: ObjectId, *, token: int, ttl_s: float) -> bool:
        """Extend a held claim; False if the token is stale."""
        renewed = await self._update_if(
            self.files_table,
            record_key(oid),
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
        return renewed is not None

    async def _finish(self, oid: ObjectId, finish: Finish) -> bool:
        """A fenced ``processing -> status``: one conditional UpdateItem, then history + counters.

        The update mirrors :func:`plan_finish`, which is applied to the old item
        (returned by the update) to build the history entry. The listing index
        key needs the record's pipeline: the one this instance claimed it for
        (remembered), else one GetItem first.
        """
        pipeline = self._claims.pop((oid, finish.token), None)
        if pipeline is None:
            rec = (await self._read(oid))[0]
            if rec is None or rec.status is not FileStatus.PROCESSING:
                return False
            pipeline = rec.pipeline
        for _ in range(2):
            done = await self._finish_as(oid, pipeline, finish)
            if not isinstance(done, str):
                return done
            pipeline = done  # the record moved to another pipeline under this claim
        return False

    async def _finish_as(self, oid: ObjectId, pipeline: str, finish: Finish) -> bool | str:
        """:meth:`_finish` for a record of ``pipeline``; its actual pipeline if it is another."""
        status, token = finish.status, finish.token
        now = self._clock()
        purge = purge_time(status, now, self.retention_s)
        sets = [
            "#st = :st",
            "timestamps.#tsk = :now",
            "updated_at = :now",
            "lst = :lst",
            "lst_at = :now",
        ]
        removes = ["claim_owner", "claim_expires_at"]
        names = {"#st": "status", "#tsk": status.value, "#rev": "rev", "#pl": "pipeline"}
        values: Item = {
            ":st": {"S": status.value},
            ":now": {"N": num(now)},
            ":p": {"S": FileStatus.PROCESSING.value},
            ":t": {"N": str(token)},
            ":one": {"N": "1"},
            ":pl": {"S": pipeline},
            ":lst": {"S": listing_key(pipeline, status.value)},
        }
        if purge is not None:
            sets.append("purge_at = :pa")
            values[":pa"] = {"N": str(purge_seconds(purge))}
        else:
            removes.append("purge_at")
        if finish.outputs is not None:
            sets.append("outputs = :out")
            values[":out"] = {"L": [{"S": o} for o in finish.outputs]}
        if finish.error_class is not None:
            sets.append("last_error_class = :ec")
            values[":ec"] = {"S": finish.error_class}
        if finish.error is not None:
            sets.append("last_error = :er")
            values[":er"] = {"S": clip(finish.error)}
        wid = write_id()
        sets.append(f"{WID} = :wid")
        values[":wid"] = {"S": wid}
        adds = "ADD #rev :one"
        if status in (FileStatus.FAILED, FileStatus.DEAD):  # as plan_finish: counted
            adds += ", failures :one"
        try:
            resp = await self._api(
                "UpdateItem",
                self.files_table,
                TableName=self.files_table,
                Key=record_key(oid),
                UpdateExpression=(f"SET {', '.join(sets)} REMOVE {', '.join(removes)} {adds}"),
                ConditionExpression="#st = :p AND fencing_token = :t AND #pl = :pl",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except Conflict as conflict:
            if conflict.item is None:
                return False
            current, current_rev, _ = _decode(conflict.item)
            if current is not None and _ours(conflict, wid):
                # Applied by an attempt whose answer (the old item) was lost: the record
                # was processing under this claim, so its history and counters follow.
                entry = HistoryEntry(
                    now, oid.version, FileStatus.PROCESSING, status, None, clip(finish.detail)
                )
                await asyncio.gather(
                    self._put_history(current, entry, current_rev),
                    self._count(
                        count_key(replace(current, status=FileStatus.PROCESSING), None),
                        count_key(current, purge),
                    ),
                )
                return True
            held = (
                current is not None
                and current.status is FileStatus.PROCESSING
                and current.fencing_token == token
            )
            return current.pipeline if held and current is not None else False
        old, rev, old_purge = _decode(resp["Attributes"])
        assert old is not None  # the condition held: the record exists
        plan = plan_finish(old, finish, now)
        if plan is not None:  # always: the condition held
            await asyncio.gather(
                self._put_history(plan[0], plan[1], rev + 1),
                self._count(count_key(old, old_purge), count_key(plan[0], purge)),
            )
        return True

    # --- reads -------------------------------------------------------------------------------

    async def get(self, oid: ObjectId) -> FileRecord | None:
        """One version's record."""
        return (await self._read(oid))[0]

    async def _of_key(self, table: str, bucket: str, key: str) -> list[Item]:
        """Every item of one key's partition of ``table`` (a consistent Query)."""
        return await self._items(
            "Query",
            table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": object_pk(bucket, key)}},
            ConsistentRead=True,
        )

    async def versions(self, bucket: str, key: str) -> list[FileRecord]:
        """The records of every version of one key, most recently updated first (a Query)."""
        items = await self._of_key(self.files_table, bucket, key)
        recs = [decode_record(i)[0] for i in items]
        return sorted(recs, key=lambda r: r.updated_at, reverse=True)

    async def history(self, bucket: str, key: str) -> list[HistoryEntry]:
        """Every transition of every version of one key, oldest first."""
        return [decode_history(i) for i in await self._of_key(self.history_table, bucket, key)]

    async def _list_files(self, query: FileFilter) -> list[FileRecord]:
        """Records matching the filters, most recently updated first (listing index).

        One Query per (pipeline, status) partition, newest first, from the cursor on,
        stopping at ``limit`` matches and the records updated at the same time as the
        last (no pipeline: every pipeline in the counters' registry), merged.
        ``key_prefix`` is a filter on those Queries.
        """
        status, limit = query.status, query.limit
        statuses = list(FileStatus) if status is None else [status]
        parts = [(p, st) for p in await self._pipelines(query.pipeline) for st in statuses]
        found = await asyncio.gather(*(self._listing_page(p, st, query) for p, st in parts))
        newest: dict[ObjectId, FileRecord] = {}
        for items in found:
            for item in items:
                rec = decode_record(item)[0]
                seen = newest.get(rec.id)
                if seen is None or rec.updated_at > seen.updated_at:
                    newest[rec.id] = rec  # the index may list a record twice for a moment
        after = query.after
        recs = [
            r
            for r in newest.values()
            if (status is None or r.status is status) and (after is None or after.passes(r))
        ]
        recs.sort(key=lambda r: (r.bucket, r.key, r.version))
        return heapq.nsmallest(limit, recs, key=lambda r: -r.updated_at)

    async def _listing_page(
        self, pipeline: str, status: FileStatus, query: FileFilter
    ) -> list[Item]:
        """One partition's part of a listing: its first ``query.limit`` items past
        ``query.after``, newest first, and then every item updated at the same time as
        the last of them.

        The index orders the items updated at one time in no particular way: with all
        of them, the merge puts them in ``(bucket, key, version)`` order, so a page
        ends at the same record whichever the index gave first, and the next page
        (past that record) repeats none and skips none. Items the cursor has passed
        (at its own time) are skipped as they are read.
        """
        values: Item = {":l": {"S": listing_key(pipeline, status.value)}}
        args: Item = {
            "IndexName": FILES_LISTING_INDEX,
            "KeyConditionExpression": "lst = :l",
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            "TableName": self.files_table,
        }
        after = query.after
        if after is not None:
            args["KeyConditionExpression"] = "lst = :l AND lst_at <= :at"
            values[":at"] = {"N": num(after.updated_at)}
        if query.key_prefix:
            args["FilterExpression"] = "begins_with(#k, :kp)"
            args["ExpressionAttributeNames"] = {"#k": "key"}
            values[":kp"] = {"S": query.key_prefix}
        items: list[Item] = []
        while True:
            # One more than still wanted: the item past the last tells whether others
            # share its time.
            want = max(query.limit - len(items), 0) + 1
            args["Limit"] = want if self._page_size is None else min(want, self._page_size)
            resp = await self._api("Query", self.files_table, **args)
            for item in resp.get("Items") or []:
                at = float(item["lst_at"]["N"])
                if len(items) >= query.limit and at != float(items[-1]["lst_at"]["N"]):
                    return items  # past the last item's time: the page is whole
                if after is None or after.passes(decode_record(item)[0]):
                    items.append(item)
            start = resp.get("LastEvaluatedKey")
            if not start:
                return items
            args["ExclusiveStartKey"] = start

    async def _listing(
        self,
        pipeline: str,
        status: FileStatus,
        limit: int,
        *,
        key_prefix: str | None = None,
        oldest_first: bool = False,
    ) -> list[Item]:
        """The first ``limit`` items of one partition of the listing index."""
        args: Item = {
            "IndexName": FILES_LISTING_INDEX,
            "KeyConditionExpression": "lst = :l",
            "ExpressionAttributeValues": {":l": {"S": listing_key(pipeline, status.value)}},
            "ScanIndexForward": oldest_first,
        }
        if key_prefix:
            args["FilterExpression"] = "begins_with(#k, :kp)"
            args["ExpressionAttributeNames"] = {"#k": "key"}
            args["ExpressionAttributeValues"][":kp"] = {"S": key_prefix}
        return await self._first_items(self.files_table, limit, **args)

    async def oldest_processing_at(self, pipeline: str | None = None) -> float | None:
        """When the oldest record still in ``processing`` entered it (one index item each)."""
        pipelines = await self._pipelines(pipeline)
        found = await asyncio.gather(
            *(self._listing(p, FileStatus.PROCESSING, 1, oldest_first=True) for p in pipelines)
        )
        times = [float(items[0]["lst_at"]["N"]) for items in found if items]
        return min(times) if times else None
