"""The manifests protocol (pending files, fenced sealing, statuses), on every backend."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from state_support import T0, B, FakeClock, backends, draft, mfile, paged_backends

from s3flow.settings import AwsSettings
from s3flow.state import (
    DynamoStateStore,
    LockLostError,
    ManifestFile,
    ManifestFileStatus,
    ManifestRecord,
    ManifestStatus,
    ObjectId,
    StateError,
    StateStore,
    TransitionError,
)

pytestmark = pytest.mark.integration


@paged_backends
async def test_add_pending_and_summaries(store: StateStore, clock: FakeClock) -> None:
    assert await store.pending_dates("ds") == []
    empty = await store.pending("ds", "2025-12-23")
    assert (empty.count, empty.bytes, empty.oldest_at) == (0, 0, None)
    assert await store.add_pending("ds", "2025-12-23", mfile("2025-12-23/a.json", 10))
    clock.advance(1)
    assert await store.add_pending("ds", "2025-12-23", mfile("2025-12-23/b.json", 20, "e2", "v9"))
    clock.advance(1)
    assert await store.add_pending("ds", "2025-12-24", mfile("2025-12-24/c.json", 5))
    assert await store.add_pending("other", "2025-12-23", mfile("2025-12-23/a.json", 10))
    # Idempotent: the same version again is not added; another version is another file.
    assert not await store.add_pending("ds", "2025-12-23", mfile("2025-12-23/a.json", 10))
    clock.advance(1)
    assert await store.add_pending("ds", "2025-12-23", mfile("2025-12-23/a.json", 11, "e9"))
    files = await store.pending_files("ds", "2025-12-23")
    assert [(t.file.key, t.file.etag, t.added_at - T0) for t in files] == [
        ("2025-12-23/a.json", "e1", 0),
        ("2025-12-23/b.json", "e2", 1),
        ("2025-12-23/a.json", "e9", 3),
    ]
    assert files[1].file == mfile("2025-12-23/b.json", 20, "e2", "v9")
    assert all(t.status is ManifestFileStatus.PENDING and t.manifest_id is None for t in files)
    assert len(await store.pending_files("ds", "2025-12-23", limit=2)) == 2
    s = await store.pending("ds", "2025-12-23")
    assert (s.count, s.bytes, s.oldest_at) == (3, 41, T0)
    assert [(d.date, d.count, d.bytes, d.oldest_at) for d in await store.pending_dates("ds")] == [
        ("2025-12-23", 3, 41, T0),
        ("2025-12-24", 1, 5, T0 + 2),
    ]
    t = await store.get_tracked("ds", "2025-12-23", ObjectId(B, "2025-12-23/b.json", "v9"))
    assert t is not None and t.file.version_id == "v9" and t.dataset == "ds"
    assert await store.get_tracked("ds", "2025-12-24", ObjectId(B, "x", "e1")) is None


@backends
async def test_seal_manifest_is_fenced_and_moves_each_file_once(
    store: StateStore, clock: FakeClock
) -> None:
    fs = [mfile(f"2025-12-23/{i}.json", 10 + i) for i in range(5)]
    for f in fs:
        await store.add_pending("ds", "2025-12-23", f)
    token = await store.acquire_lock("seal:ds", owner="w1", ttl_s=30)
    assert token is not None
    with pytest.raises(LockLostError):
        await store.seal_manifest(draft("m1", fs[:3], token), lock="seal:ds", owner="w1", token=9)
    with pytest.raises(LockLostError):
        await store.seal_manifest(
            draft("m1", fs[:3], token), lock="seal:ds", owner="w2", token=token
        )
    assert await store.get_manifest("m1") is None
    clock.advance(1)
    m1 = await store.seal_manifest(
        draft("m1", fs[:3], token), lock="seal:ds", owner="w1", token=token
    )
    assert m1 is not None and m1.status is ManifestStatus.SEALED
    assert (m1.files, m1.total_files, m1.total_bytes) == (fs[:3], 3, 33)
    assert m1.created_at == T0 + 1 and m1.location is None and m1.fencing_token == token
    assert await store.get_manifest("m1") == m1
    # Sealing the same manifest again returns it unchanged.
    assert (
        await store.seal_manifest(draft("m1", fs, token), lock="seal:ds", owner="w1", token=token)
        == m1
    )
    # A second manifest listing files already sealed gets only the free ones.
    m2 = await store.seal_manifest(
        draft("m2", fs[2:], token), lock="seal:ds", owner="w1", token=token
    )
    assert m2 is not None and m2.files == fs[3:]
    # Nothing left: no manifest is recorded.
    assert (
        await store.seal_manifest(draft("m3", fs, token), lock="seal:ds", owner="w1", token=token)
        is None
    )
    assert await store.get_manifest("m3") is None
    assert (await store.pending("ds", "2025-12-23")).count == 0
    t = await store.get_tracked("ds", "2025-12-23", fs[4].id)
    assert t is not None and (t.status, t.manifest_id) == (ManifestFileStatus.MANIFESTED, "m2")
    # Published manifests are no longer unfinished.
    assert [m.manifest_id for m in await store.unfinished_manifests("ds")] == ["m1", "m2"]
    pub = await store.mark_published("m1", "s3://b/manifests/ds/date=2025-12-23/m1.json")
    assert pub.location == "s3://b/manifests/ds/date=2025-12-23/m1.json"
    assert [m.manifest_id for m in await store.unfinished_manifests("ds")] == ["m2"]
    assert await store.unfinished_manifests("other") == []
    with pytest.raises(StateError, match="no manifest"):
        await store.mark_published("nope", "s3://x")
    # An expired lock fences its holder.
    clock.advance(31)
    await store.add_pending("ds", "2025-12-23", mfile("late.json"))
    with pytest.raises(LockLostError):
        await store.seal_manifest(
            draft("m4", [mfile("late.json")], token), lock="seal:ds", owner="w1", token=token
        )
    assert (await store.pending("ds", "2025-12-23")).count == 1


@paged_backends
async def test_manifest_status_lifecycle(store: StateStore, clock: FakeClock) -> None:
    fs = [mfile(f"2025-12-23/{i}.json") for i in range(3)]
    for f in fs:
        await store.add_pending("ds", "2025-12-23", f)
    await store.add_pending("ds", "2025-12-24", mfile("2025-12-24/x.json"))
    token = await store.acquire_lock("seal:ds", owner="w1", ttl_s=30)
    assert token is not None
    m1 = await store.seal_manifest(draft("m1", fs, token), lock="seal:ds", owner="w1", token=token)
    clock.advance(1)
    m2 = await store.seal_manifest(
        draft("m2", [mfile("2025-12-24/x.json")], token, date="2025-12-24"),
        lock="seal:ds",
        owner="w1",
        token=token,
    )
    assert m1 is not None and m2 is not None

    async def file_states(mid: str) -> set[tuple[ManifestFileStatus, str]]:
        out = set()
        for f in fs:
            t = await store.get_tracked("ds", "2025-12-23", f.id)
            assert t is not None and t.manifest_id == mid
            out.add((t.status, t.detail))
        return out

    S = ManifestStatus
    with pytest.raises(TransitionError):
        await store.set_manifest_status("m1", S.COMPLETED)
    with pytest.raises(StateError, match="no manifest"):
        await store.set_manifest_status("nope", S.PROCESSING)
    p = await store.set_manifest_status("m1", S.PROCESSING, expect=S.SEALED)
    assert p.status is S.PROCESSING and p.attempts == 1 and p.files == fs
    assert await file_states("m1") == {(ManifestFileStatus.PROCESSING, "")}
    with pytest.raises(TransitionError, match="not sealed"):  # compare-and-set lost
        await store.set_manifest_status("m1", S.PROCESSING, expect=S.SEALED)
    f = await store.set_manifest_status("m1", S.FAILED, detail="ArrowInvalid: bad row 7")
    assert f.status is S.FAILED and f.detail == "ArrowInvalid: bad row 7"
    assert await file_states("m1") == {(ManifestFileStatus.FAILED, "ArrowInvalid: bad row 7")}
    again = await store.set_manifest_status("m1", S.PROCESSING, expect=S.FAILED)
    assert again.attempts == 2
    again = await store.set_manifest_status("m1", S.PROCESSING)  # re-entry after a crash
    assert again.attempts == 3
    done = await store.set_manifest_status("m1", S.COMPLETED)
    assert done.status is S.COMPLETED and done.detail == ""
    assert await file_states("m1") == {(ManifestFileStatus.COMPLETED, "")}
    for bad in S:
        with pytest.raises(TransitionError):
            await store.set_manifest_status("m1", bad)
    assert await store.get_manifest("m1") == done
    ids = [m.manifest_id for m in await store.list_manifests()]
    assert ids == ["m2", "m1"]
    assert [m.manifest_id for m in await store.list_manifests(status=S.SEALED)] == ["m2"]
    assert [m.manifest_id for m in await store.list_manifests(dataset="ds", limit=1)] == ["m2"]
    assert await store.list_manifests(dataset="other") == []
    # failed -> sealed: the operator re-publishes a failed manifest.
    await store.set_manifest_status("m2", S.PROCESSING)
    await store.set_manifest_status("m2", S.FAILED, detail="x")
    resealed = await store.set_manifest_status("m2", S.SEALED, expect=S.FAILED)
    assert resealed.status is S.SEALED and resealed.attempts == 1


@backends
async def test_completed_manifest_records_its_quarantined_files(
    store: StateStore, clock: FakeClock
) -> None:
    fs = [mfile(f"2025-12-23/{i}.json", 10, "e1", "v1" if i == 2 else None) for i in range(3)]
    for f in fs:
        await store.add_pending("ds", "2025-12-23", f)
    token = await store.acquire_lock("seal:ds", owner="w1", ttl_s=30)
    assert token is not None
    m = await store.seal_manifest(draft("m1", fs, token), lock="seal:ds", owner="w1", token=token)
    assert m is not None
    await store.set_manifest_status("m1", ManifestStatus.PROCESSING)
    clock.advance(1)
    done = await store.set_manifest_status(
        "m1",
        ManifestStatus.COMPLETED,
        detail="1 parts, 10 rows, 2 files quarantined",
        quarantined={
            fs[0].id: "malformed line 3: not JSON",
            fs[2].id: "gzip: truncated",
            ObjectId(B, "not/in/the/manifest.json", "e1"): "ignored",
        },
    )
    assert done.status is ManifestStatus.COMPLETED
    got = []
    for f in fs:
        t = await store.get_tracked("ds", "2025-12-23", f.id)
        assert t is not None and t.manifest_id == "m1" and t.updated_at == T0 + 1
        got.append((t.status, t.detail))
    assert got == [
        (ManifestFileStatus.QUARANTINED, "malformed line 3: not JSON"),
        (ManifestFileStatus.COMPLETED, "1 parts, 10 rows, 2 files quarantined"),
        (ManifestFileStatus.QUARANTINED, "gzip: truncated"),
    ]
    assert (
        await store.get_tracked("ds", "2025-12-23", ObjectId(B, "not/in/the/manifest.json", "e1"))
        is None
    )


@pytest.mark.parametrize("make_store", ["dynamodb-paged"], indirect=True)
async def test_dynamodb_listings_read_every_page(store: StateStore, clock: FakeClock) -> None:
    """Read 2 items a request, each listing of manifests / pending files takes 3+ pages.

    Manifests are listed from the listing index (no Scan): the 7 sealed manifests
    of "ds" are 4 pages of one partition; with ``limit=3``, 2 pages.
    """
    assert isinstance(store, DynamoStateStore)
    token = await store.acquire_lock("seal:ds", owner="w1", ttl_s=30)
    assert token is not None
    for i in range(7):
        f = mfile(f"2025-12-23/{i}.json")
        await store.add_pending("ds", "2025-12-23", f)
        d = draft(f"m{i}", [f], token)
        await store.seal_manifest(d, lock="seal:ds", owner="w1", token=token)
        clock.advance(1)
    for i in range(5):
        await store.add_pending("ds", f"2025-12-{24 + i}", mfile(f"2025-12-{24 + i}/p.json"))
    requests: list[str] = []
    real_api = store._api

    async def counting_api(op: str, table: str, **kwargs: object) -> dict[str, object]:
        requests.append(op)
        return await real_api(op, table, **kwargs)

    def pages(op: str) -> int:
        n = requests.count(op)
        requests.clear()
        return n

    store._api = counting_api  # type: ignore[method-assign,assignment]
    ids = [f"m{i}" for i in reversed(range(7))]
    # The manifests table: 7 manifests, 7 markers, 12 tracked files; one dataset.
    assert [m.manifest_id for m in await store.list_manifests()] == ids
    assert requests.count("Scan") == 0
    assert pages("Query") == 1 + 4 + 4  # the datasets, "sealed" in 4 pages, 4 empty statuses
    assert [m.manifest_id for m in await store.list_manifests(dataset="ds", limit=3)] == ids[:3]
    assert requests.count("Scan") == 0
    assert pages("Query") == 2 + 4
    assert [m.manifest_id for m in await store.unfinished_manifests("ds")] == ids[::-1]
    assert pages("Query") >= 4  # 7 markers
    dates = [p.date for p in await store.pending_dates("ds")]
    assert dates == [f"2025-12-{24 + i}" for i in range(5)]
    assert pages("Query") >= 3  # 5 pending files (index)


@pytest.mark.parametrize("make_store", ["sqlite", "dynamodb-atomic"], indirect=True)
async def test_racing_seals_never_share_a_file(
    make_store: Callable[[], StateStore], store: StateStore
) -> None:
    """4 store instances seal overlapping drafts at once (as holders of a stolen lock would)."""
    extra = [make_store() for _ in range(3)]
    opened = [store] + [await s.__aenter__() for s in extra]
    try:
        fs = [mfile(f"2025-12-23/{i}.json", 1) for i in range(40)]
        await asyncio.gather(*(store.add_pending("ds", "2025-12-23", f) for f in fs))
        token = await store.acquire_lock("seal:ds", owner="w", ttl_s=600)
        assert token is not None
        drafts = [draft(f"m{i}", fs[i * 5 : i * 5 + 20], token) for i in range(4)]
        sealed = await asyncio.gather(
            *(
                opened[i].seal_manifest(d, lock="seal:ds", owner="w", token=token)
                for i, d in enumerate(drafts)
            )
        )
        keys = [f.key for m in sealed if m is not None for f in m.files]
        assert len(keys) == len(set(keys)) == 35  # drafts cover fs[0:35]
        for m in sealed:
            if m is None:  # every file it listed went to the others: no record kept
                continue
            assert await store.get_manifest(m.manifest_id) == m
            for f in m.files:
                t = await store.get_tracked("ds", "2025-12-23", f.id)
                assert t is not None and t.manifest_id == m.manifest_id
        assert (await store.pending("ds", "2025-12-23")).count == 5
        got = {m.manifest_id for m in await store.list_manifests()}
        assert got == {m.manifest_id for m in sealed if m is not None}
    finally:
        for s in extra:
            await s.__aexit__(None, None, None)


async def test_dynamodb_unfinished_seal_is_finished_by_the_next_holder(
    endpoint: object, clock: FakeClock
) -> None:
    """A builder dies after moving some files: the next lock holder finishes that manifest."""
    aws = AwsSettings(endpoint_url=endpoint.url, region="us-east-1")  # type: ignore[attr-defined]
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    await DynamoStateStore(prefix, aws, clock=clock).ensure_tables()

    class Crash(Exception):
        pass

    fs = [mfile(f"2025-12-23/{i}.json", 1) for i in range(8)]
    async with DynamoStateStore(prefix, aws, clock=clock) as first:
        for f in fs:
            await first.add_pending("ds", "2025-12-23", f)
        t1 = await first.acquire_lock("seal:ds", owner="w1", ttl_s=30)
        assert t1 is not None
        moved = 0
        real_move = first._move_file
        serial = asyncio.Lock()  # one move at a time: exactly 3 are done when it "dies"

        async def dying_move(m: ManifestRecord, f: ManifestFile, now: float) -> bool:
            nonlocal moved
            async with serial:
                if moved >= 3:
                    raise Crash()
                ok = await real_move(m, f, now)
                moved += 1
                return ok

        first._move_file = dying_move  # type: ignore[method-assign,assignment]
        with pytest.raises(Crash):
            await first.seal_manifest(draft("m1", fs[:6], t1), lock="seal:ds", owner="w1", token=t1)
    clock.advance(31)
    async with DynamoStateStore(prefix, aws, clock=clock) as second:
        assert (await second.pending("ds", "2025-12-23")).count == 5
        t2 = await second.acquire_lock("seal:ds", owner="w2", ttl_s=30)
        assert t2 is not None and t2 > t1
        (unfinished,) = await second.unfinished_manifests("ds")
        assert unfinished.status is ManifestStatus.SEALING and unfinished.files == fs[:6]
        m = await second.seal_manifest(unfinished, lock="seal:ds", owner="w2", token=t2)
        assert m is not None and m.status is ManifestStatus.SEALED and m.files == fs[:6]
        assert (await second.pending("ds", "2025-12-23")).count == 2
        assert [u.manifest_id for u in await second.unfinished_manifests("ds")] == ["m1"]
        await second.mark_published("m1", "s3://b/m1.json")
        assert await second.unfinished_manifests("ds") == []
