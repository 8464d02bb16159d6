"""S3's longest keys, on every backend: a key of 1,024 bytes whose characters grow when
escaped (quotes, backslashes, control characters, non-ASCII) is tracked like any other.

DynamoDB limits a partition key to 2,048 bytes and a sort key (of the table or an index)
to 1,024; the stores' keys hold the object key escaped, so such a key once made every
write of its record or manifest entry fail with a ValidationException."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from state_support import B, FakeClock, backends, draft, mfile

from s3flow.aws import open_clients
from s3flow.pipelines.ndjson_parquet.manifests import Sealer, Triggers
from s3flow.settings import AwsSettings
from s3flow.state import FileStatus, ManifestFileStatus, ManifestStatus, ObjectId, StateStore
from s3flow.state.records import ClaimOutcome

pytestmark = pytest.mark.integration

#: 1,024 bytes each (S3's limit); 1.5x, 6x and 2x that once JSON-escaped.
QUOTED = "2025-12-23/" + 'é"\\' * 252 + ".json"
CONTROL = "2025-12-23/" + "\x01" * 1008 + ".json"
WIDE = "2025-12-23/" + "名" * 336 + ".json"
KEYS = [QUOTED, CONTROL, WIDE]
VERSION = "v" * 100


def test_the_keys_are_s3s_longest() -> None:
    assert [len(k.encode()) for k in KEYS] == [1024, 1024, 1024]


@backends
async def test_a_file_record_of_the_longest_key_goes_through_its_lifecycle(
    store: StateStore, clock: FakeClock
) -> None:
    for key in KEYS:
        oid = ObjectId(B, key, VERSION)
        claim = await store.claim(oid, pipeline="p", owner="w1", ttl_s=30, size=5)
        assert claim.outcome is ClaimOutcome.ACQUIRED
        assert await store.renew(oid, token=claim.token, ttl_s=30)
        assert await store.complete(oid, token=claim.token, outputs=["s3://o/x"])
        rec = await store.get(oid)
        assert rec is not None and rec.key == key and rec.status is FileStatus.COMPLETED
        assert [r.key for r in await store.versions(B, key)] == [key]
        assert [h.new for h in await store.history(B, key)][-1] is FileStatus.COMPLETED
        listed = await store.list_files(status=FileStatus.COMPLETED)
        assert key in {r.key for r in listed}


@backends
async def test_a_manifest_of_the_longest_keys_is_tracked_sealed_and_published(
    store: StateStore, clock: FakeClock
) -> None:
    files = [mfile(key, 10 + i, "e1", VERSION) for i, key in enumerate(KEYS)]
    for f in files:
        assert await store.add_pending("ds", "2025-12-23", f)
        assert not await store.add_pending("ds", "2025-12-23", f)  # once
        clock.advance(1)
    pending = await store.pending_files("ds", "2025-12-23")
    assert [t.file for t in pending] == files
    for f in files:
        tracked = await store.get_tracked("ds", "2025-12-23", f.id)
        assert tracked is not None and tracked.file == f
    token = await store.acquire_lock("seal:ds", owner="w1", ttl_s=30)
    assert token is not None
    sealed = await store.seal_manifest(
        draft("m1", files, token), lock="seal:ds", owner="w1", token=token
    )
    assert sealed.files == files
    assert await store.pending_files("ds", "2025-12-23") == []
    published = await store.mark_published("m1", "s3://out/m1.json")
    assert published.status is ManifestStatus.SEALED and published.files == files
    processing = await store.set_manifest_status("m1", ManifestStatus.PROCESSING)
    assert processing.status is ManifestStatus.PROCESSING
    await store.set_manifest_status("m1", ManifestStatus.COMPLETED)
    for f in files:
        tracked = await store.get_tracked("ds", "2025-12-23", f.id)
        assert tracked is not None and tracked.manifest_id == "m1"
        assert tracked.status is ManifestFileStatus.COMPLETED
    got = await store.get_manifest("m1")
    assert got is not None and got.files == files


@backends
async def test_a_manifest_whose_file_list_is_past_an_items_400_kb_seals(
    store: StateStore, clock: FakeClock
) -> None:
    """400 files of 1,000-byte keys: ~460 KB of file list, past what one DynamoDB item
    holds (400 KB): its seal failed with a ValidationException on every pass."""
    files = [
        mfile(f"2025-12-23/{i:04d}-" + "k" * 979 + ".json", 1000 + i, "e1", VERSION)
        for i in range(400)
    ]
    assert {len(f.key.encode()) for f in files} == {1000}
    for f in files:
        assert await store.add_pending("ds", "2025-12-23", f)
    token = await store.acquire_lock("seal:ds", owner="w1", ttl_s=60)
    assert token is not None
    sealed = await store.seal_manifest(
        draft("big", files, token), lock="seal:ds", owner="w1", token=token
    )
    assert sealed is not None and sealed.files == files
    assert (await store.pending("ds", "2025-12-23")).count == 0
    published = await store.mark_published("big", "s3://out/big.json")
    assert published.files == files
    got = await store.get_manifest("big")
    assert got is not None and got.files == files and got.location == "s3://out/big.json"


@pytest.mark.parametrize("make_store", ["dynamodb"], indirect=True)
async def test_the_sealer_halves_a_manifest_the_store_cannot_hold(
    store: StateStore, clock: FakeClock, s3: Any
) -> None:
    """900 files of 1,000 random hex digits: ~505 KB of file list even compressed. The
    refusal escaped the sealer: every file of the date failed when it was added (the
    count trigger seals in the file's own processing), and no manifest was ever made."""
    bucket = f"manifests-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    files = [
        mfile(f"2025-12-23/{os.urandom(494).hex()}.ndjson", 100 + i, "e1", VERSION)
        for i in range(900)
    ]
    for f in files:
        await store.add_pending("ds", "2025-12-23", f)
    async with open_clients(AwsSettings()) as clients:
        sealer = Sealer(
            store,
            clients.s3,
            dataset="ds",
            owner="w1",
            triggers=Triggers(max_files=900),
            bucket=bucket,
            prefix="manifests/",
            clock=clock,
        )
        sealed = await sealer.seal_due(force=True)
    assert [m.total_files for m in sealed] == [450, 450]
    assert sorted(f.key for m in sealed for f in m.files) == sorted(f.key for f in files)
    assert (await store.pending("ds", "2025-12-23")).count == 0
    for m in sealed:
        got = await store.get_manifest(m.manifest_id)
        assert got is not None and got.location is not None and got.files == m.files
