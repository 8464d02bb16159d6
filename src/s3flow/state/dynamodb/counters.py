"""The files' status counters on DynamoDB (meta table): what ``counts`` reads, in O(pipelines).

A transition's record is one conditional write (:mod:`.files`); its change to the
counters follows it, in parallel with its history line, as one ``ADD``
UpdateItem per counter item touched. Counters are not in the record's request:
a conditional PutItem cannot update a second item, and a TransactWriteItems with
the pipeline's counter item in it would make every transition of a pipeline
conflict with every other one in flight (DynamoDB cancels a transaction when
another write touches one of its items meanwhile) and double the write cost.
The price is a crash window: if the process dies after the record's write was
sent and before its ``ADD`` was (about one round trip), that transition is
missing from the counters. ``s3flow state recount`` finds such drift with a
full count (a scan) and ``--repair`` corrects it; a failed ``ADD`` is logged as
such.

Counter items (see :func:`count_key`):

- ``fcount#["<pipeline>"]``: the records of a pipeline that do not expire
  (received, processing, failed; terminal ones too when retention is off), one
  number attribute per status;
- ``fcount#["<pipeline>","<day>"]``: the terminal records whose ``purge_at``
  falls on that UTC day; :meth:`CountersMixin.counts` adds the buckets from today
  on, so a record stops counting at the end of the day it expires, whether or
  not DynamoDB's TTL has deleted it yet (the bucket itself expires two days later);
- ``fcounts``: the pipelines that have counters (``pipelines``, a string set)
  and the last bucket day written (``horizon``), each written once per process
  and pipeline / day.

``counts`` reads the registry, then the live item and the buckets up to the
horizon in one BatchGetItem: 2 + retention_days items per pipeline, whatever
the number of records.
"""

from __future__ import annotations

import asyncio
import logging

from s3flow.state.dynamodb.client import DynamoClient
from s3flow.state.dynamodb.codec import COUNTS_REGISTRY_PK, Item, counts_pk, expiry_day
from s3flow.state.lifecycle import DAY_S, count_delta, zero_counts
from s3flow.state.records import FileRecord, FileStatus, StateError

log = logging.getLogger(__name__)
#: The counter a record is counted in: (pipeline, expiry day or None, status).
CountKey = tuple[str, int | None, FileStatus]


def count_key(rec: FileRecord, purge_at: float | None) -> CountKey:
    """Where ``rec`` (stored with ``purge_at``) is counted: see the module."""
    return (rec.pipeline, expiry_day(purge_at), rec.status)


class CountersMixin(DynamoClient):
    """The files' status counters: applying a transition's change, reading them."""

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
            # None: another writer went further already.
            await self._update_if(
                self.meta_table,
                key,
                UpdateExpression="SET #h = :h",
                ConditionExpression="attribute_not_exists(#h) OR #h < :h",
                ExpressionAttributeNames={"#h": "horizon"},
                ExpressionAttributeValues={":h": {"N": str(horizon)}},
            )
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
