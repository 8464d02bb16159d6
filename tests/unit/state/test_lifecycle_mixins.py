"""The shared transitions (``FileLifecycleMixin``, ``ManifestStatusMixin``) on a dict backend.

The backends only store what these decide; the contract suites run them on
SQLite and DynamoDB. Here the same methods run on the smallest ``_mutate`` /
``_move_manifest`` there is, to pin what they ask of a backend.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

import pytest

from s3flow.state.lifecycle import Decide, FileFilter, FileLifecycleMixin, Finish, plan_finish
from s3flow.state.manifest_lifecycle import DecideManifest, ManifestFilter, ManifestStatusMixin
from s3flow.state.records import (
    Claim,
    ClaimOutcome,
    FileRecord,
    FileStatus,
    HistoryEntry,
    ManifestFile,
    ManifestRecord,
    ManifestStatus,
    ObjectId,
    TransitionError,
)

R = TypeVar("R")
T0 = 1_700_000_000.0
OID = ObjectId("b", "k", "v1")


class DictFiles(FileLifecycleMixin):
    """Records in a dict; ``_mutate`` as every backend does it, minus the storage."""

    def __init__(self) -> None:
        self.records: dict[ObjectId, FileRecord] = {}
        self.history: list[HistoryEntry] = []
        self.claimed: list[Claim] = []
        self.queries: list[FileFilter] = []
        self.now = T0

    async def _mutate(self, oid: ObjectId, decide: Decide[R], *, assume_absent: bool = False) -> R:
        result, plan = decide(self.records.get(oid), self.now)
        if plan is not None:
            self.records[oid], entry = plan
            self.history.append(entry)
        return result

    def _claimed(self, oid: ObjectId, claim: Claim) -> None:
        self.claimed.append(claim)

    async def _list_files(self, query: FileFilter) -> list[FileRecord]:
        self.queries.append(query)
        return list(self.records.values())[: query.limit]


def test_claim_then_complete_writes_records_and_history() -> None:
    store = DictFiles()

    async def go() -> None:
        claim = await store.claim(OID, pipeline="p", owner="w1", ttl_s=30)
        assert claim.outcome is ClaimOutcome.ACQUIRED and claim.token == 1
        assert store.claimed == [claim]
        again = await store.claim(OID, pipeline="p", owner="w2", ttl_s=30)
        assert again.outcome is ClaimOutcome.BUSY and len(store.claimed) == 1
        assert not await store.complete(OID, token=2, outputs=["o"])  # stale token
        assert await store.complete(OID, token=1, outputs=["o"], detail="done")

    asyncio.run(go())
    rec = store.records[OID]
    assert (rec.status, rec.outputs, rec.claim_owner) == (FileStatus.COMPLETED, ["o"], None)
    assert [(e.old, e.new, e.detail) for e in store.history] == [
        (None, FileStatus.PROCESSING, "claimed"),
        (FileStatus.PROCESSING, FileStatus.COMPLETED, "done"),
    ]


def test_fail_and_release_go_through_the_same_finish() -> None:
    store = DictFiles()

    async def go() -> None:
        await store.claim(OID, pipeline="p", owner="w1", ttl_s=30)
        with pytest.raises(TransitionError):
            await store.fail(OID, token=1, status=FileStatus.COMPLETED, error_class="E", error="x")
        assert await store.fail(OID, token=1, status=FileStatus.FAILED, error_class="E", error="x")
        await store.claim(OID, pipeline="p", owner="w1", ttl_s=30)
        assert await store.release(OID, token=2)

    asyncio.run(go())
    rec = store.records[OID]
    assert (rec.status, rec.failures, rec.last_error_class) == (FileStatus.RECEIVED, 1, "E")
    assert store.history[1].detail == "E: x"
    assert store.history[-1].detail == "released"


def test_plan_finish_keeps_what_the_finish_leaves_none() -> None:
    rec = FileRecord(
        "b",
        "k",
        "v1",
        "p",
        FileStatus.PROCESSING,
        outputs=["a"],
        last_error_class="Old",
        fencing_token=4,
        claim_owner="w1",
    )
    assert plan_finish(rec, Finish(3, FileStatus.COMPLETED), T0) is None
    plan = plan_finish(rec, Finish(4, FileStatus.RECEIVED, detail="released"), T0)
    assert plan is not None
    new, entry = plan
    assert (new.outputs, new.last_error_class, new.timestamps) == (["a"], "Old", {"received": T0})
    assert (entry.worker_id, entry.detail) == ("w1", "released")


class DictManifests(ManifestStatusMixin):
    def __init__(self, m: ManifestRecord) -> None:
        self.manifests = {m.manifest_id: m}
        self.held: dict[ObjectId, str] = {}
        self.queries: list[ManifestFilter] = []

    async def _move_manifest(
        self, manifest_id: str, decide: DecideManifest, held: dict[ObjectId, str]
    ) -> ManifestRecord:
        new = decide(self.manifests.get(manifest_id), T0 + 5)
        self.manifests[manifest_id] = new
        self.held = held
        return new

    async def _list_manifests(self, query: ManifestFilter) -> list[ManifestRecord]:
        self.queries.append(query)
        return list(self.manifests.values())[: query.limit]


def test_set_manifest_status_plans_and_clips_the_reasons() -> None:
    f = ManifestFile("b", "k", 10, "etag")
    m = ManifestRecord("m1", "ds", "2024-01-01", ManifestStatus.SEALED, [f], "count", 1, "w", T0)
    store = DictManifests(m)
    new = asyncio.run(
        store.set_manifest_status(
            "m1", ManifestStatus.PROCESSING, detail="go", quarantined={f.id: "x" * 5000}
        )
    )
    assert (new.status, new.attempts, new.detail, new.updated_at) == (
        ManifestStatus.PROCESSING,
        1,
        "go",
        T0 + 5,
    )
    assert len(store.held[f.id]) == 2000
    with pytest.raises(TransitionError):
        asyncio.run(
            store.set_manifest_status("m1", ManifestStatus.SEALED, expect=ManifestStatus.FAILED)
        )


def test_listings_check_the_filters_once_for_every_backend() -> None:
    files = DictFiles()
    asyncio.run(files.claim(OID, pipeline="p", owner="w1", ttl_s=30))
    assert asyncio.run(files.list_files(limit=0)) == []
    assert files.queries == []  # no rows asked for: the backend is not asked
    got = asyncio.run(files.list_files(status="processing", key_prefix="k"))  # type: ignore[arg-type]
    assert [r.id for r in got] == [OID]
    assert files.queries == [FileFilter(FileStatus.PROCESSING, None, "k", 1000)]
    assert files.queries[0].status is FileStatus.PROCESSING

    m = ManifestRecord("m1", "ds", "2024-01-01", ManifestStatus.SEALED, [], "count", 1, "w", T0)
    manifests = DictManifests(m)
    assert asyncio.run(manifests.list_manifests(dataset="ds", limit=-1)) == []
    assert manifests.queries == []
    assert asyncio.run(manifests.list_manifests(status="sealed", limit=5)) == [m]  # type: ignore[arg-type]
    assert manifests.queries == [ManifestFilter(None, ManifestStatus.SEALED, 5)]
