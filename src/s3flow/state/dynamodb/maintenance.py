"""Retention and counter maintenance on DynamoDB: what ``s3flow state prune | recount`` run.

Nothing here runs on a routine path. DynamoDB deletes expired items itself
(TTL on ``purge_at``, switched on by ``s3flow provision``; AWS deletes an item
within a few days of its expiry, and until then reads still return it), so
:meth:`MaintenanceMixin.prune` deletes nothing: it reports whether TTL is on.

:meth:`MaintenanceMixin.recount` **scans the whole files table** (and, with
``repair``, the manifests table) and compares the status counters with what the
records say, by the same rule :meth:`~.counters.CountersMixin.counts` reads them (a
terminal record counts until the end of its expiry day). ``repair`` adds the
difference to each counter item, and gives items written by an s3flow without
retention what they lack: the listing index attributes and, for terminal
records, ``purge_at`` (manifests: their listing attributes, and their datasets
in the list of datasets). Transitions that happen while it scans can be counted
on one side and not the other: repair when the pipelines are quiet, or run it
twice.
"""

from __future__ import annotations

from s3flow.state.dynamodb.codec import (
    Item,
    counts_pk,
    dataset_key,
    decode_manifest,
    expiry_day,
    json_key,
    listing_key,
    manifest_listed,
    opt_float,
    purge_seconds,
)
from s3flow.state.dynamodb.counters import CountKey
from s3flow.state.dynamodb.files import FilesMixin
from s3flow.state.dynamodb.tables import TTL_ATTRIBUTE, table_definitions
from s3flow.state.lifecycle import DAY_S, purge_time
from s3flow.state.records import (
    TERMINAL_FILE_STATUSES,
    FileStatus,
    ManifestStatus,
    PruneReport,
    RecountReport,
)

_FILE_FIELDS = "pk, sk, #pl, #st, purge_at, lst, #rev, updated_at"


class MaintenanceMixin(FilesMixin):
    """The MaintenanceStore protocol on DynamoDB (see the module)."""

    async def prune(self, *, max_rows: int | None = None) -> PruneReport:
        """Nothing to delete: TTL expires items. The report says which tables lack TTL."""
        report = PruneReport()
        if self.retention_s is None:
            report.note = "retention is off (retention_days = 0): nothing expires"
            return report
        off = []
        for definition in table_definitions(self.table_prefix):
            table = str(definition["TableName"])
            resp = await self._api("DescribeTimeToLive", table, TableName=table)
            desc = resp.get("TimeToLiveDescription") or {}
            if desc.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING") or (
                desc.get("AttributeName") != TTL_ATTRIBUTE
            ):
                off.append(table)
        report.note = (
            f"DynamoDB deletes expired items itself (TTL on {TTL_ATTRIBUTE!r}, usually within "
            "a few days of the expiry); nothing to prune"
        )
        if off:
            report.note += f". TTL is OFF on {', '.join(off)}: run `s3flow provision`"
        return report

    async def recount(self, *, repair: bool = False) -> RecountReport:
        """Scan the files table, compare the counters with the records (see the module)."""
        today = int(self._clock() // DAY_S)
        truth: dict[CountKey, int] = {}
        read = 0
        async for page in self._pages(
            "Scan",
            self.files_table,
            ConsistentRead=True,
            ProjectionExpression=_FILE_FIELDS,
            ExpressionAttributeNames={"#pl": "pipeline", "#st": "status", "#rev": "rev"},
        ):
            for item in page:
                read += 1
                pipeline = item["pipeline"]["S"]
                status = FileStatus(item["status"]["S"])
                purge = opt_float(item, "purge_at")
                if repair and "lst" not in item:
                    purge = await self._stamp_record(item, pipeline, status, purge)
                day = expiry_day(purge)
                if day is not None and day < today:
                    continue  # expired, not yet deleted by TTL: counts() skips it too
                key = (pipeline, day, status)
                truth[key] = truth.get(key, 0) + 1
        registered, horizon = await self._registry()
        pipelines = sorted(set(registered) | {p for p, _, _ in truth})
        last = max([horizon, today, *(d for _, d, _ in truth if d is not None)])
        days: list[int | None] = [None, *range(today, last + 1)]
        keys = [{"pk": {"S": counts_pk(p, d)}} for p in pipelines for d in days]
        current: dict[CountKey, int] = {}
        by_pk = {counts_pk(p, d): (p, d) for p in pipelines for d in days}
        for item in await self._batch_get(self.meta_table, keys):
            pipeline, day = by_pk[item["pk"]["S"]]
            for status in FileStatus:
                if status.value in item:
                    current[(pipeline, day, status)] = int(item[status.value]["N"])
        if repair:
            diff = {
                k: truth.get(k, 0) - current.get(k, 0)
                for k in set(truth) | set(current)
                if truth.get(k, 0) != current.get(k, 0)
            }
            if diff:
                await self._add_counts(diff, quiet=False)
            await self._stamp_manifests()
        return RecountReport(_flat(truth), _flat(current), read, repaired=repair)

    async def _stamp(self, table: str, item: Item, sets: str, values: Item) -> bool:
        """UpdateItem ``sets`` on ``item`` if its revision is still ``values[":rev"]``.

        False when it is not (the item was written meanwhile).
        """
        stamped = await self._update_if(
            table,
            {"pk": item["pk"], "sk": item["sk"]},
            UpdateExpression=sets,
            ConditionExpression="#rev = :rev",
            ExpressionAttributeNames={"#rev": "rev"},
            ExpressionAttributeValues=values,
        )
        return stamped is not None

    async def _stamp_record(
        self, item: Item, pipeline: str, status: FileStatus, purge: float | None
    ) -> float | None:
        """Give a record written before retention its listing attributes (and ``purge_at``).

        Conditioned on its revision: a record written meanwhile has them already.
        Returns the ``purge_at`` the record has now.
        """
        updated = float(item["updated_at"]["N"])
        sets = "SET lst = :l, lst_at = :u"
        values: Item = {
            ":l": {"S": listing_key(pipeline, status.value)},
            ":u": item["updated_at"],
            ":rev": item["rev"],
        }
        new_purge = purge
        if purge is None and status in TERMINAL_FILE_STATUSES:
            new_purge = purge_time(status, updated, self.retention_s)
            if new_purge is not None:
                sets += ", purge_at = :pa"
                values[":pa"] = {"N": str(purge_seconds(new_purge))}
        if not await self._stamp(self.files_table, item, sets, values):
            return purge  # rewritten meanwhile, by a writer that sets them
        return new_purge

    async def _stamp_manifests(self) -> None:
        """Give manifests written before retention their listing attributes (a Scan)."""
        async for page in self._pages(
            "Scan",
            self.manifests_table,
            ConsistentRead=True,
            FilterExpression="#kind = :m AND attribute_not_exists(mls)",
            ExpressionAttributeNames={"#kind": "kind"},
            ExpressionAttributeValues={":m": {"S": "manifest"}},
        ):
            for item in page:
                m, rev = decode_manifest(item)
                values: Item = {
                    ":l": {"S": json_key(m.dataset, m.status.value)},
                    ":at": {"S": manifest_listed(m)},
                    ":rev": {"N": str(rev)},
                }
                sets = "SET mls = :l, mls_at = :at"
                purge = self._purge_at(m.updated_at)
                if m.status is ManifestStatus.COMPLETED and purge is not None:
                    sets += ", purge_at = :pa"
                    values[":pa"] = {"N": str(purge_seconds(purge))}
                await self._api(
                    "PutItem",
                    self.manifests_table,
                    TableName=self.manifests_table,
                    Item={**dataset_key(m.dataset), "kind": {"S": "dataset"}},
                )
                # False: rewritten meanwhile, with its listing attributes.
                await self._stamp(self.manifests_table, item, sets, values)


def _flat(counts: dict[CountKey, int]) -> dict[str, dict[str, int]]:
    """Per pipeline and status, every day bucket added up; zeros left out."""
    out: dict[str, dict[str, int]] = {}
    for (pipeline, _day, status), n in counts.items():
        per = out.setdefault(pipeline, {})
        per[status.value] = per.get(status.value, 0) + n
    return {p: {s: n for s, n in per.items() if n} for p, per in out.items() if any(per.values())}
