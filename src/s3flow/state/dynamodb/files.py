"""The files part of the DynamoDB store: claims, fenced finishes, records, history, counters.

Every transition is one conditional write of the record (as before), then, in
parallel, its history line and its change to the status counters (meta table,
one ``ADD`` UpdateItem per counter item touched). Counters are not in the
record's request: a conditional PutItem cannot update a second item, and a
TransactWriteItems with the pipeline's counter item in it would make every
transition of a pipeline conflict with every other one in flight (DynamoDB
cancels a transaction when another write touches one of its items meanwhile) and
double the write cost. The price is a crash window: if the process dies after
the record's write was sent and before its ``ADD`` was (about one round trip),
that transition is missing from the counters. ``s3flow state recount`` finds such
drift with a full count (a scan) and ``--repair`` corrects it; a failed ``ADD``
is logged as such.

Counter items (meta table; see :func:`count_key`):

- ``fcount#["<pipeline>"]``: the records of a pipeline that do not expire
  (received, processing, failed; terminal ones too when retention is off), one
  number attribute per status;
- ``fcount#["<pipeline>","<day>"]``: the terminal records whose ``purge_at``
  falls on that UTC day; :meth:`FilesMixin.counts` adds the buckets from today
  on, so a record stops counting at the end of the day it expires, whether or
  not DynamoDB's TTL has deleted it yet (the bucket itself expires two days later);
- ``fcounts``: the pipelines that have counters (``pipelines``, a string set)
  and the last bucket day written (``horizon``), each written once per process
  and pipeline / day.

``counts`` reads the registry, then the live item and the buckets up to the
horizon in one BatchGetItem: 2 + retention_days items per pipeline, whatever
the number of records. The ``listing`` index (``lst`` = [pipeline, status],
``lst_at`` = updated_at) serves ``list_files`` (newest first, ``limit`` items
per partition) and ``oldest_processing_at`` (the oldest item of the processing
partition: one item read). The index is eventually consistent: a record that
just changed may be listed under its former status for a moment.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
from collections.abc import Callable
from typing import TypeVar

from s3flow.state.dynamodb.client import MAX_CONFLICT_RETRIES, Conflict, DynamoClient
from s3flow.state.dynamodb.codec import (
    COUNTS_REGISTRY_PK,
    Item,
    counts_pk,
    decode_history,
    decode_record,
    encode_history,
    encode_record,
    expiry_day,
    listing_key,
    num,
    object_pk,
    opt_float,
    purge_seconds,
    record_key,
)
from s3flow.state.dynamodb.tables import FILES_LISTING_INDEX
from s3flow.state.lifecycle import (
    DAY_S,
    FencedFinishMixin,
    clip,
    count_delta,
    plan_claim,
    plan_finish,
    plan_set_status,
    purge_time,
    zero_counts,
)
from s3flow.state.records import (
    Claim,
    ClaimOutcome,
    FileRecord,
    FileStatus,
    HistoryEntry,
    ObjectId,
    StateError,
)

log = logging.getLogger(__name__)
R = TypeVar("R")
Plan = tuple[FileRecord, HistoryEntry] | None
#: The counter a record is counted in: (pipeline, expiry day or None, status).
CountKey = tuple[str, int | None, FileStatus]
#: A record as read: the record, its revision and its stored ``purge_at`` (or None).
Read = tuple[FileRecord | None, int, float | None]
_CLAIMS_KEPT = 100_000  # claims whose pipeline an instance remembers for their finish


def count_key(rec: FileRecord, purge_at: float | None) -> CountKey:
    """Where ``rec`` (stored with ``purge_at``) is counted: see the module."""
    return (rec.pipeline, expiry_day(purge_at), rec.status)


def _decode(item: Item) -> Read:
    rec, rev = decode_record(item)
    return rec, rev, opt_float(item, "purge_at")


class FilesMixin(DynamoClient, FencedFinishMixin):
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
        put: Item = {"TableName": self.files_table, "Item": encode_record(rec, rev, purge)}
        if old_rec is None:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "#rev = :rev"
            put["ExpressionAttributeNames"] = {"#rev": "rev"}
            put["ExpressionAttributeValues"] = {":rev": {"N": str(old_rev)}}
        # On a failed condition the current item comes back with the error.
        put["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        await self._api("PutItem", self.files_table, **put)
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

    # --- counters -----------------------------------------------------------------------

    async def _count(self, old: CountKey | None, new: CountKey) -> None:
        """Apply a transition to the counters (one ADD per counter item; see the module).

        The record's write already happened: a failure only logs (the counters
        drift by this transition until ``s3flow state recount --repair``).
        """
        delta = count_delta(old, new)
        if not delta:
            return
        await self._add_counts(delta)

    async def _add_counts(self, delta: dict[CountKey, int], *, quiet: bool = True) -> None:
        """ADD ``delta`` to the counter items (and note new pipelines / days in the registry).

        ``quiet``: a failure is logged (a transition's record is written already),
        else raised.
        """
        by_item: dict[tuple[str, int | None], dict[str, int]] = {}
        for (pipeline, day, status), n in delta.items():
            if n:
                changes = by_item.setdefault((pipeline, day), {})
                changes[status.value] = changes.get(status.value, 0) + n
        calls = [self._add_to(p, day, changes) for (p, day), changes in by_item.items()]
        pipelines = {p for p, _ in by_item} - self._registered_pipelines
        days = [day for _, day in by_item if day is not None]
        horizon = max(days, default=-1)
        if pipelines or horizon > self._registered_horizon:
            calls.append(self._register(pipelines, horizon))
        try:
            await asyncio.gather(*calls)
        except StateError as exc:
            if not quiet:
                raise
            log.warning(
                "status counters of %s not updated (%s): run `s3flow state recount` to check",
                ", ".join(sorted(p for p, _ in by_item)),
                exc,
            )

    async def _add_to(self, pipeline: str, day: int | None, changes: dict[str, int]) -> None:
        names: dict[str, str] = {}
        values: Item = {}
        adds: list[str] = []
        for i, (status, n) in enumerate(sorted(changes.items())):
            names[f"#a{i}"] = status
            values[f":v{i}"] = {"N": str(n)}
            adds.append(f"#a{i} :v{i}")
        update = "ADD " + ", ".join(adds)
        if day is not None:  # a bucket outlives its day by a day, then TTL removes it
            update = "SET #pa = :pa " + update
            names["#pa"] = "purge_at"
            values[":pa"] = {"N": str(int((day + 2) * DAY_S))}
        await self._api(
            "UpdateItem",
            self.meta_table,
            TableName=self.meta_table,
            Key={"pk": {"S": counts_pk(pipeline, day)}},
            UpdateExpression=update,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    async def _register(self, pipelines: set[str], horizon: int) -> None:
        """Add ``pipelines`` to the registry and raise its ``horizon`` (never lowers it)."""
        key = {"pk": {"S": COUNTS_REGISTRY_PK}}
        if pipelines:
            await self._api(
                "UpdateItem",
                self.meta_table,
                TableName=self.meta_table,
                Key=key,
                UpdateExpression="ADD #p :p",
                ExpressionAttributeNames={"#p": "pipelines"},
                ExpressionAttributeValues={":p": {"SS": sorted(pipelines)}},
            )
            self._registered_pipelines |= pipelines
        if horizon > self._registered_horizon:
            try:
                await self._api(
                    "UpdateItem",
                    self.meta_table,
                    TableName=self.meta_table,
                    Key=key,
                    UpdateExpression="SET #h = :h",
                    ConditionExpression="attribute_not_exists(#h) OR #h < :h",
                    ExpressionAttributeNames={"#h": "horizon"},
                    ExpressionAttributeValues={":h": {"N": str(horizon)}},
                )
            except Conflict:
                pass  # another writer went further already
            self._registered_horizon = horizon

    async def _registry(self) -> tuple[list[str], int]:
        """The pipelines with counters and the last bucket day written (-1: none)."""
        item = await self._get_item(self.meta_table, {"pk": {"S": COUNTS_REGISTRY_PK}})
        if item is None:
            return [], -1
        pipelines = sorted(item.get("pipelines", {}).get("SS", []))
        horizon = int(item["horizon"]["N"]) if "horizon" in item else -1
        return pipelines, horizon

    async def _pipelines(self, pipeline: str | None) -> list[str]:
        return [pipeline] if pipeline is not None else (await self._registry())[0]

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
                if attempt >= 2:
                    await asyncio.sleep(random.uniform(0, min(0.01 * attempt, 0.2)))
                continue
            return result
        raise StateError(
            f"state store dynamodb://{self.table_prefix}: gave up on "
            f"s3://{oid.bucket}/{oid.key} after {MAX_CONFLICT_RETRIES} conflicting writes"
        )

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

        claim = await self._mutate(oid, decide, assume_absent=True)
        if claim.outcome is ClaimOutcome.ACQUIRED:
            self._remember_claim(oid, claim.token, claim.record.pipeline)
        return claim

    def _remember_claim(self, oid: ObjectId, token: int, pipeline: str) -> None:
        """Note the pipeline of a claim this instance holds (the finish's listing key)."""
        claims = self._claims
        claims[(oid, token)] = pipeline
        while len(claims) > _CLAIMS_KEPT:
            claims.pop(next(iter(claims)))

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
        """A fenced ``processing -> status``: one conditional UpdateItem, then history + counters.

        The update mirrors :func:`plan_finish`, which is applied to the old item
        (returned by the update) to build the history entry. The listing index
        key needs the record's pipeline: the one this instance claimed it for
        (remembered), else one GetItem first.
        """
        pipeline = self._claims.pop((oid, token), None)
        if pipeline is None:
            rec = (await self._read(oid))[0]
            if rec is None or rec.status is not FileStatus.PROCESSING:
                return False
            pipeline = rec.pipeline
        for _ in range(2):
            done = await self._finish_as(
                oid,
                pipeline,
                token=token,
                status=status,
                outputs=outputs,
                error_class=error_class,
                error=error,
                detail=detail,
            )
            if not isinstance(done, str):
                return done
            pipeline = done  # the record moved to another pipeline under this claim
        return False

    async def _finish_as(
        self,
        oid: ObjectId,
        pipeline: str,
        *,
        token: int,
        status: FileStatus,
        outputs: list[str] | None,
        error_class: str | None,
        error: str | None,
        detail: str,
    ) -> bool | str:
        """:meth:`_finish` for a record of ``pipeline``; its actual pipeline if it is another."""
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
            current, _, _ = _decode(conflict.item)
            held = (
                current is not None
                and current.status is FileStatus.PROCESSING
                and current.fencing_token == token
            )
            return current.pipeline if held and current is not None else False
        old, rev, old_purge = _decode(resp["Attributes"])
        assert old is not None  # the condition held: the record exists
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
            await asyncio.gather(
                self._put_history(plan[0], plan[1], rev + 1),
                self._count(count_key(old, old_purge), count_key(plan[0], purge)),
            )
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
        """Records matching the filters, most recently updated first (listing index).

        One Query per (pipeline, status) partition, newest first, stopping at
        ``limit`` matches (no pipeline: every pipeline in the counters'
        registry), merged. ``key_prefix`` is a filter on those Queries.
        """
        if limit <= 0:
            return []
        statuses = list(FileStatus) if status is None else [FileStatus(status)]
        parts = [(p, st) for p in await self._pipelines(pipeline) for st in statuses]
        found = await asyncio.gather(
            *(self._listing(p, st, limit, key_prefix=key_prefix) for p, st in parts)
        )
        newest: dict[ObjectId, FileRecord] = {}
        for items in found:
            for item in items:
                rec = decode_record(item)[0]
                seen = newest.get(rec.id)
                if seen is None or rec.updated_at > seen.updated_at:
                    newest[rec.id] = rec  # the index may list a record twice for a moment
        recs = [r for r in newest.values() if status is None or r.status is status]
        recs.sort(key=lambda r: (r.bucket, r.key, r.version))
        return heapq.nsmallest(limit, recs, key=lambda r: -r.updated_at)

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

    async def counts(self, pipeline: str | None = None) -> dict[str, int]:
        """Number of records per status (every status present, zeros included): the counters.

        One GetItem (the registry) and one BatchGetItem per pipeline: the live
        item and the expiry buckets from today to the horizon (see the module).
        """
        pipelines, horizon = await self._registry()
        if pipeline is not None:
            pipelines = [pipeline]
        today = int(self._clock() // DAY_S)
        keys = [
            {"pk": {"S": counts_pk(p, day)}}
            for p in pipelines
            for day in [None, *range(today, max(today, horizon) + 1)]
        ]
        out = zero_counts()
        for item in await self._batch_get(self.meta_table, keys):
            for status in out:
                if status in item:
                    out[status] += int(item[status]["N"])
        return out

    async def oldest_processing_at(self, pipeline: str | None = None) -> float | None:
        """When the oldest record still in ``processing`` entered it (one index item each)."""
        pipelines = await self._pipelines(pipeline)
        found = await asyncio.gather(
            *(self._listing(p, FileStatus.PROCESSING, 1, oldest_first=True) for p in pipelines)
        )
        times = [float(items[0]["lst_at"]["N"]) for items in found if items]
        return min(times) if times else None
