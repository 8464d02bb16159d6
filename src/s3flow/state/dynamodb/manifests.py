"""The manifests part of the DynamoDB store: pending files, sealing, manifest statuses.

Everything lives in the manifests table (layout in :mod:`s3flow.state.dynamodb`);
the ``pending`` index holds exactly the pending files. Every move out of
pending is a conditional write (``status = pending``), so reading the index,
which may lag, is safe.

``list_manifests`` reads the sparse, KEYS_ONLY ``listing`` index (``mls`` =
[dataset, status], ``mls_at`` = <created micros>#<id>; one Query per dataset and
status, newest first, ``limit`` keys each) and then the records (BatchGetItem):
no Scan. The datasets are listed under ``pk = ["datasets"]`` (one item each,
written when a manifest is sealed).

Retention (TTL ``purge_at``): a manifest that completes, and every file tracked
for it, expire ``retention_s`` after the completion. Unfinished manifests
(sealing, sealed, processing, failed) and pending files never expire.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import replace
from typing import Any

from s3flow.state.dynamodb.client import MAX_CONFLICT_RETRIES, Conflict, DynamoClient, backoff
from s3flow.state.dynamodb.codec import (
    WID,
    Item,
    dataset_key,
    decode_manifest,
    decode_tracked,
    encode_manifest,
    encode_pending,
    json_key,
    manifest_key,
    marker_key,
    num,
    ours,
    purge_seconds,
    tracked_key,
    write_id,
)
from s3flow.state.dynamodb.tables import MANIFESTS_LISTING_INDEX, PENDING_INDEX
from s3flow.state.manifest_lifecycle import (
    DecideManifest,
    ManifestFilter,
    ManifestStatusMixin,
    lock_lost,
    not_publishable,
)
from s3flow.state.records import (
    FILE_STATUS_OF,
    ManifestFile,
    ManifestFileStatus,
    ManifestRecord,
    ManifestStatus,
    ObjectId,
    PendingSummary,
    StateError,
    TrackedFile,
)

log = logging.getLogger(__name__)
_MOVE_PARALLEL = 16  # concurrent conditional file moves while sealing
#: The attribute each ``#name`` of this module's expressions stands for.
_ATTRIBUTES = {
    "#dt": "detail",
    "#ex": "expires_at",
    "#fa": "fenced_at",
    "#loc": "location",
    "#mid": "manifest_id",
    "#o": "owner",
    "#pds": "pending_ds",
    "#psk": "pending_sk",
    "#rev": "rev",
    "#st": "status",
    "#t": "token",
    "#up": "updated_at",
}


def _names(*expressions: str) -> dict[str, str]:
    """The ExpressionAttributeNames of ``expressions``: each ``#name`` they use, no other."""
    return {n: _ATTRIBUTES[n] for e in expressions for n in re.findall(r"#\w+", e)}


async def _bounded(n: int, coros: list[Any]) -> list[Any]:
    """Await ``coros`` with at most ``n`` running at once; results in order."""
    sem = asyncio.Semaphore(n)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return list(await asyncio.gather(*(one(c) for c in coros)))


class ManifestsMixin(ManifestStatusMixin, DynamoClient):
    """The ManifestStore protocol on the manifests table (fenced by a lock in the meta table)."""

    # --- pending files ---------------------------------------------------------------------

    async def add_pending(self, dataset: str, date: str, file: ManifestFile) -> bool:
        """Track ``file`` as pending (one conditional PutItem)."""
        item = encode_pending(dataset, date, file, self._clock())
        return await self._put_if(self.manifests_table, item, "attribute_not_exists(pk)")

    async def get_tracked(self, dataset: str, date: str, oid: ObjectId) -> TrackedFile | None:
        """One tracked file."""
        item = await self._get_item(self.manifests_table, tracked_key(dataset, date, oid))
        return None if item is None else decode_tracked(item)

    async def _pending_items(self, dataset: str, date: str | None) -> list[TrackedFile]:
        values: Item = {":ds": {"S": dataset}}
        cond = "#pds = :ds"
        if date is not None:
            cond += " AND begins_with(#psk, :d)"
            values[":d"] = {"S": date + "#"}
        items = await self._items(
            "Query",
            self.manifests_table,
            IndexName=PENDING_INDEX,
            KeyConditionExpression=cond,
            ExpressionAttributeNames=_names(cond),
            ExpressionAttributeValues=values,
        )
        # The index may lag the table: keep what is (still) pending.
        out = [decode_tracked(i) for i in items]
        return [t for t in out if t.status is ManifestFileStatus.PENDING]

    async def pending_files(
        self, dataset: str, date: str, *, limit: int | None = None
    ) -> list[TrackedFile]:
        """The pending files of one (dataset, date), oldest first (index Query)."""
        files = await self._pending_items(dataset, date)
        files.sort(key=lambda t: (t.added_at, t.file.bucket, t.file.key, t.file.version))
        return files if limit is None else files[: max(0, limit)]

    async def pending(self, dataset: str, date: str) -> PendingSummary:
        """Count, bytes and oldest add time of one (dataset, date)'s pending files."""
        files = await self._pending_items(dataset, date)
        return PendingSummary(
            dataset,
            date,
            len(files),
            sum(t.file.size for t in files),
            min((t.added_at for t in files), default=None),
        )

    async def pending_dates(self, dataset: str) -> list[PendingSummary]:
        """One summary per date that has pending files, by date."""
        by_date: dict[str, list[TrackedFile]] = {}
        for t in await self._pending_items(dataset, None):
            by_date.setdefault(t.date, []).append(t)
        return [
            PendingSummary(
                dataset,
                d,
                len(fs),
                sum(t.file.size for t in fs),
                min(t.added_at for t in fs),
            )
            for d, fs in sorted(by_date.items())
        ]

    # --- sealing ---------------------------------------------------------------------------

    async def _read_manifest(self, manifest_id: str) -> tuple[ManifestRecord | None, int]:
        item = await self._get_item(self.manifests_table, manifest_key(manifest_id))
        return (None, 0) if item is None else decode_manifest(item)

    async def _fence(self, lock: str, owner: str, token: int) -> None:
        fenced = await self._update_where(
            self.meta_table,
            {"pk": {"S": f"lock#{lock}"}},
            "SET #fa = :now",
            "#o = :o AND #t = :t AND #ex > :now",
            {":o": {"S": owner}, ":t": {"N": str(token)}, ":now": {"N": num(self._clock())}},
        )
        if fenced is None:
            raise lock_lost(lock, owner, token)

    async def _move_file(self, m: ManifestRecord, f: ManifestFile, now: float) -> bool:
        moved = await self._update_where(
            self.manifests_table,
            tracked_key(m.dataset, m.date, f.id),
            "SET #st = :m, #mid = :id, #up = :now REMOVE #pds, #psk",
            "#st = :p OR (#st = :m AND #mid = :id)",
            {
                ":m": {"S": ManifestFileStatus.MANIFESTED.value},
                ":p": {"S": ManifestFileStatus.PENDING.value},
                ":id": {"S": m.manifest_id},
                ":now": {"N": num(now)},
            },
        )
        return moved is not None

    async def _update_where(
        self, table: str, key: Item, update: str, condition: str, values: Item, **kwargs: Any
    ) -> Item | None:
        """``update`` of ``key`` if ``condition`` holds (see ``_update_if``), with their names."""
        return await self._update_if(
            table,
            key,
            UpdateExpression=update,
            ConditionExpression=condition,
            ExpressionAttributeNames=_names(update, condition),
            ExpressionAttributeValues=values,
            **kwargs,
        )

    async def _delete(self, key: Item, **cond: Any) -> bool:
        try:
            await self._api(
                "DeleteItem",
                self.manifests_table,
                TableName=self.manifests_table,
                Key=key,
                **cond,
            )
        except Conflict:
            return False
        return True

    async def seal_manifest(
        self, draft: ManifestRecord, *, lock: str, owner: str, token: int
    ) -> ManifestRecord | None:
        """Seal ``draft``: record + marker, conditional moves, then sealed.

        See :mod:`s3flow.state.dynamodb` for why this is not one transaction.
        """
        await self._fence(lock, owner, token)
        base, rev = await self._read_manifest(draft.manifest_id)
        if base is not None and base.status is not ManifestStatus.SEALING:
            return base
        if base is None:
            now = self._clock()
            base = replace(
                draft,
                status=ManifestStatus.SEALING,
                files=list(draft.files),
                created_at=draft.created_at or now,
                updated_at=now,
            )
            item = encode_manifest(base, 1)  # too many files: refused before any write
            await self._api(
                "PutItem",
                self.manifests_table,
                TableName=self.manifests_table,
                Item={**marker_key(base.dataset, base.manifest_id), "at": {"N": num(now)}},
            )
            await self._api(
                "PutItem",
                self.manifests_table,
                TableName=self.manifests_table,
                Item={**dataset_key(base.dataset), "kind": {"S": "dataset"}},
            )
            if await self._put_if(self.manifests_table, item, "attribute_not_exists(pk)"):
                rev = 1
            else:
                found, rev = await self._read_manifest(draft.manifest_id)
                if found is None:
                    raise StateError(f"manifest {draft.manifest_id} vanished while being sealed")
                if found.status is not ManifestStatus.SEALING:
                    return found
                base = found
        now = self._clock()
        moved_flags = await _bounded(
            _MOVE_PARALLEL, [self._move_file(base, f, now) for f in base.files]
        )
        moved = [f for f, ok in zip(base.files, moved_flags, strict=True) if ok]
        if not moved:
            await self._delete(
                manifest_key(base.manifest_id),
                ConditionExpression="#st = :s",
                ExpressionAttributeNames=_names("#st"),
                ExpressionAttributeValues={":s": {"S": ManifestStatus.SEALING.value}},
            )
            await self._delete(marker_key(base.dataset, base.manifest_id))
            return None
        sealed = replace(base, status=ManifestStatus.SEALED, files=moved, updated_at=now)
        if not await self._put_if(
            self.manifests_table,
            encode_manifest(sealed, rev + 1),
            "#st = :s",
            _names("#st"),
            {":s": {"S": ManifestStatus.SEALING.value}},
        ):
            found, _ = await self._read_manifest(base.manifest_id)
            if found is None:
                raise StateError(f"manifest {base.manifest_id} vanished while sealed")
            return found  # finished by another holder of the lock: the same files
        return sealed

    async def mark_published(self, manifest_id: str, location: str) -> ManifestRecord:
        """Record where the sealed manifest's JSON was written; drop its marker."""
        resp = await self._update_where(
            self.manifests_table,
            manifest_key(manifest_id),
            "SET #loc = :l, #up = :now ADD #rev :one",
            "attribute_exists(pk) AND #st <> :s",
            {
                ":l": {"S": location},
                ":now": {"N": num(self._clock())},
                ":s": {"S": ManifestStatus.SEALING.value},
                ":one": {"N": "1"},
            },
            ReturnValues="ALL_NEW",
        )
        if resp is None:
            # Not there, or still sealing (the condition failed).
            found, _ = await self._read_manifest(manifest_id)
            raise not_publishable(found, manifest_id)
        rec, _ = decode_manifest(resp["Attributes"])
        await self._delete(marker_key(rec.dataset, manifest_id))
        return rec

    # --- reads and statuses ----------------------------------------------------------------

    async def unfinished_manifests(self, dataset: str) -> list[ManifestRecord]:
        """Manifests still sealing, or sealed but not yet published (marker Query)."""
        markers = await self._items(
            "Query",
            self.manifests_table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": json_key("unfinished", dataset)}},
            ConsistentRead=True,
        )
        out: list[ManifestRecord] = []
        for marker in markers:
            mid = marker["sk"]["S"]
            rec, _ = await self._read_manifest(mid)
            if rec is not None and (
                rec.status is ManifestStatus.SEALING
                or (rec.status is ManifestStatus.SEALED and rec.location is None)
            ):
                out.append(rec)
            elif rec is not None or self._clock() - float(marker["at"]["N"]) > 3600:
                # Done (or never created: a marker older than any seal can take).
                await self._delete(marker_key(dataset, mid))
        out.sort(key=lambda m: (m.created_at, m.manifest_id))
        return out

    async def get_manifest(self, manifest_id: str) -> ManifestRecord | None:
        """One manifest."""
        return (await self._read_manifest(manifest_id))[0]

    async def _list_manifests(self, query: ManifestFilter) -> list[ManifestRecord]:
        """Manifests matching the filters, newest first (listing index, then the records)."""
        dataset, status, limit = query.dataset, query.status, query.limit
        datasets = [dataset] if dataset is not None else await self._datasets()
        statuses = list(ManifestStatus) if status is None else [status]
        found = await asyncio.gather(
            *(
                self._first_items(
                    self.manifests_table,
                    limit,
                    IndexName=MANIFESTS_LISTING_INDEX,
                    KeyConditionExpression="mls = :l",
                    ExpressionAttributeValues={":l": {"S": json_key(d, s.value)}},
                    ScanIndexForward=False,
                )
                for d in datasets
                for s in statuses
            )
        )
        newest = sorted({(i["mls_at"]["S"], i["pk"]["S"]) for f in found for i in f}, reverse=True)
        pks = list(dict.fromkeys(k for _, k in newest))[:limit]
        keys = [{"pk": {"S": pk}, "sk": {"S": "m"}} for pk in pks]
        recs = [decode_manifest(i)[0] for i in await self._batch_get(self.manifests_table, keys)]
        if status is not None:  # the index may lag a status change; the record does not
            recs = [m for m in recs if m.status is status]
        recs.sort(key=lambda m: (m.created_at, m.manifest_id), reverse=True)
        return recs[:limit]

    async def _datasets(self) -> list[str]:
        """Every dataset a manifest was sealed for (one consistent Query)."""
        items = await self._items(
            "Query",
            self.manifests_table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": json_key("datasets")}},
            ConsistentRead=True,
        )
        return [i["sk"]["S"] for i in items]

    def _manifest_purge(self, m: ManifestRecord) -> float | None:
        """When ``m`` and its files expire: one retention after it completed, else never."""
        return self._purge_at(m.updated_at) if m.status is ManifestStatus.COMPLETED else None

    async def _move_manifest(
        self,
        manifest_id: str,
        decide: DecideManifest,
        held: dict[ObjectId, str],
    ) -> ManifestRecord:
        """The manifest (revision-conditioned Put), then each of its files."""
        for attempt in range(MAX_CONFLICT_RETRIES):
            rec, rev = await self._read_manifest(manifest_id)
            new = decide(rec, self._clock())
            wid = write_id()
            try:
                await self._api(
                    "PutItem",
                    self.manifests_table,
                    TableName=self.manifests_table,
                    Item={
                        **encode_manifest(new, rev + 1, self._manifest_purge(new)),
                        WID: {"S": wid},
                    },
                    ConditionExpression="#rev = :rev",
                    ExpressionAttributeNames=_names("#rev"),
                    ExpressionAttributeValues={":rev": {"N": str(rev)}},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except Conflict as conflict:
                if conflict.item is None or not ours(conflict.item, wid):
                    await backoff(attempt)
                    continue
                # This very write, applied by an attempt whose answer was lost (the SDK
                # retried it and the retry failed the revision the first one used up).
            await _bounded(
                _MOVE_PARALLEL,
                [
                    self._set_file_status(new, f)
                    if f.id not in held
                    else self._set_file_status(new, f, ManifestFileStatus.QUARANTINED, held[f.id])
                    for f in new.files
                ],
            )
            return new
        raise self._gave_up(f"manifest {manifest_id}")

    async def _set_file_status(
        self,
        m: ManifestRecord,
        f: ManifestFile,
        status: ManifestFileStatus | None = None,
        detail: str | None = None,
    ) -> None:
        # A file's status follows its manifest's (or ``status``: quarantined); a
        # crash between the two is repaired by the next status change (the
        # manifest is the truth).
        detail = m.detail if detail is None else detail
        values: Item = {
            ":st": {"S": (status or FILE_STATUS_OF[m.status]).value},
            ":now": {"N": num(m.updated_at)},
            ":id": {"S": m.manifest_id},
        }
        update = "SET #st = :st, #up = :now"
        purge = self._manifest_purge(m)
        if purge is not None:
            update += ", purge_at = :pa"
            values[":pa"] = {"N": str(purge_seconds(purge))}
        if detail:
            update += ", #dt = :d"
            values[":d"] = {"S": detail}
        else:
            update += " REMOVE #dt"
        updated = await self._update_where(
            self.manifests_table, tracked_key(m.dataset, m.date, f.id), update, "#mid = :id", values
        )
        if updated is None:
            log.warning(
                "manifest %s: file s3://%s/%s is not tracked in it", m.manifest_id, f.bucket, f.key
            )
