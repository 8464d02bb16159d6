"""The file-lifecycle protocol (claims, fenced finishes, listings), on every backend."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from state_support import T0, B, FakeClock, backends, oid, paged_backends

from s3flow.state import (
    ClaimOutcome,
    FileCursor,
    FileRecord,
    FileStatus,
    ObjectId,
    SqliteStateStore,
    StateError,
    StateStore,
    TransitionError,
)
from s3flow.state.base import file_page

pytestmark = pytest.mark.integration


# --- claims ---------------------------------------------------------------------------


@backends
async def test_claim_new_record(store: StateStore) -> None:
    c = await store.claim(oid(), pipeline="p", owner="w1", ttl_s=60, size=12, sequencer="0A")
    assert (c.outcome, c.token) == (ClaimOutcome.ACQUIRED, 1)
    rec = await store.get(oid())
    assert rec is not None and rec == c.record
    assert rec.status is FileStatus.PROCESSING and rec.attempts == 1 and rec.fencing_token == 1
    assert (rec.pipeline, rec.size, rec.sequencer) == ("p", 12, "0A")
    assert (rec.claim_owner, rec.worker_id, rec.claim_expires_at) == ("w1", "w1", T0 + 60)
    assert rec.timestamps == {"processing": T0} and rec.created_at == rec.updated_at == T0
    assert await store.get(oid(version="other")) is None


@backends
async def test_busy_while_held_then_taken_over_after_expiry(
    store: StateStore, clock: FakeClock
) -> None:
    first = await store.claim(oid(), pipeline="p", owner="w1", ttl_s=60)
    clock.advance(59)
    for owner in ("w2", "w1"):  # the owner itself is busy too while the claim lives
        busy = await store.claim(oid(), pipeline="p", owner=owner, ttl_s=60)
        assert busy.outcome is ClaimOutcome.BUSY and busy.record.claim_owner == "w1"
    clock.advance(2)
    second = await store.claim(oid(), pipeline="p", owner="w2", ttl_s=60)
    assert (second.outcome, second.token) == (ClaimOutcome.ACQUIRED, 2)
    assert second.record.attempts == 2 and second.record.claim_owner == "w2"
    # The first holder's token is stale now: every fenced call is refused.
    assert not await store.renew(oid(), token=first.token, ttl_s=60)
    assert not await store.complete(oid(), token=first.token, outputs=["x"])
    assert not await store.fail(
        oid(), token=first.token, status=FileStatus.FAILED, error_class="E", error="e"
    )
    assert not await store.release(oid(), token=first.token)
    assert await store.get(oid()) == second.record
    clock.advance(61)  # the same owner takes over its own expired claim
    third = await store.claim(oid(), pipeline="p", owner="w2", ttl_s=60)
    assert (third.outcome, third.token, third.record.attempts) == (ClaimOutcome.ACQUIRED, 3, 3)


@backends
async def test_renew(store: StateStore, clock: FakeClock) -> None:
    c = await store.claim(oid(), pipeline="p", owner="w1", ttl_s=10)
    clock.advance(8)
    assert await store.renew(oid(), token=c.token, ttl_s=10)
    rec = await store.get(oid())
    assert rec is not None and rec.claim_expires_at == T0 + 18
    clock.advance(5)
    assert (await store.claim(oid(), pipeline="p", owner="w2", ttl_s=10)).outcome is (
        ClaimOutcome.BUSY
    )
    assert not await store.renew(oid(), token=c.token + 1, ttl_s=10)
    assert not await store.renew(oid("missing"), token=1, ttl_s=10)


@backends
async def test_complete(store: StateStore, clock: FakeClock) -> None:
    c = await store.claim(oid(), pipeline="p", owner="w1", ttl_s=60)
    before = await store.get(oid())
    assert not await store.complete(oid(), token=c.token + 1, outputs=["s3://o/x"])
    assert await store.get(oid()) == before
    clock.advance(3)
    assert await store.complete(oid(), token=c.token, outputs=["s3://o/x", "s3://o/y"])
    rec = await store.get(oid())
    assert rec is not None and rec.status is FileStatus.COMPLETED
    assert rec.outputs == ["s3://o/x", "s3://o/y"] and rec.claim_owner is None
    assert rec.claim_expires_at is None and rec.worker_id == "w1"
    assert rec.timestamps == {"processing": T0, "completed": T0 + 3} and rec.updated_at == T0 + 3
    assert not await store.complete(oid(), token=c.token, outputs=[])  # only once
    done = await store.claim(oid(), pipeline="p", owner="w2", ttl_s=60)
    assert (done.outcome, done.token, done.record) == (ClaimOutcome.DONE, 0, rec)
    assert not await store.complete(oid("missing"), token=1, outputs=[])


@backends
async def test_fail_retryable_then_claim_again(store: StateStore) -> None:
    c = await store.claim(oid(), pipeline="p", owner="w1", ttl_s=60)
    assert await store.fail(
        oid(), token=c.token, status=FileStatus.FAILED, error_class="AwsError", error="slow"
    )
    rec = await store.get(oid())
    assert rec is not None and rec.status is FileStatus.FAILED and rec.claim_owner is None
    assert (rec.last_error_class, rec.last_error) == ("AwsError", "slow")
    again = await store.claim(oid(), pipeline="p", owner="w2", ttl_s=60)
    assert (again.outcome, again.token, again.record.attempts) == (ClaimOutcome.ACQUIRED, 2, 2)
    assert again.record.last_error == "slow"  # kept for the operator until it succeeds
    with pytest.raises(TransitionError):
        await store.fail(oid(), token=2, status=FileStatus.COMPLETED, error_class="E", error="")


@backends
@pytest.mark.parametrize("parked", [FileStatus.DEAD, FileStatus.QUARANTINED])
async def test_dead_and_quarantined_are_parked_until_released(
    store: StateStore, parked: FileStatus
) -> None:
    c = await store.claim(oid(), pipeline="p", owner="w1", ttl_s=60)
    long_error = "x" * 10_000
    assert await store.fail(
        oid(), token=c.token, status=parked, error_class="Corrupt", error=long_error
    )
    rec = await store.get(oid())
    assert rec is not None and rec.status is parked
    assert rec.last_error is not None and 100 < len(rec.last_error) < 5000  # truncated
    p = await store.claim(oid(), pipeline="p", owner="w2", ttl_s=60)
    assert (p.outcome, p.token, p.record.status) == (ClaimOutcome.PARKED, 0, parked)
    rec = await store.set_status(oid(), FileStatus.RECEIVED, detail="released")
    assert rec.status is FileStatus.RECEIVED
    again = await store.claim(oid(), pipeline="p", owner="w2", ttl_s=60)
    assert (again.outcome, again.token) == (ClaimOutcome.ACQUIRED, 2)


@backends
async def test_set_status(store: StateStore, clock: FakeClock) -> None:
    with pytest.raises(StateError, match="no record"):
        await store.set_status(oid(), FileStatus.QUARANTINED)
    rec = await store.set_status(
        oid(), FileStatus.QUARANTINED, detail="ValidationFailed: too big", pipeline="p"
    )
    assert rec.status is FileStatus.QUARANTINED and rec.pipeline == "p"
    assert rec.last_error == "ValidationFailed: too big" and rec.attempts == 0
    assert await store.get(oid()) == rec
    for bad in (FileStatus.QUARANTINED, FileStatus.PROCESSING, FileStatus.COMPLETED):
        with pytest.raises(TransitionError):
            await store.set_status(oid(), bad)
    clock.advance(1)
    rec = await store.set_status(oid(), FileStatus.RECEIVED, detail="released from quarantine")
    assert rec.status is FileStatus.RECEIVED and rec.timestamps["received"] == T0 + 1
    c = await store.claim(oid(), pipeline="p", owner="w1", ttl_s=60)
    assert c.outcome is ClaimOutcome.ACQUIRED and c.record.attempts == 1
    assert await store.complete(oid(), token=c.token, outputs=[])
    with pytest.raises(TransitionError, match="only a claim moves a record to processing"):
        await store.set_status(oid(), FileStatus.PROCESSING)
    # Reprocessing on purpose: an operator may send a completed version back.
    again = await store.set_status(oid(), FileStatus.RECEIVED, detail="reprocess")
    assert again.status is FileStatus.RECEIVED and again.outputs == []
    backfill = await store.set_status(
        oid(version="v0"), FileStatus.COMPLETED, detail="backfill", pipeline="p"
    )
    assert backfill.status is FileStatus.COMPLETED


@backends
async def test_set_status_never_enters_processing_so_a_stale_token_stays_stale(
    store: StateStore,
) -> None:
    """Only a claim enters processing: an operator's set_status into it made the failed
    holder's token good again (its complete succeeded) and left a record processing with
    no claim."""
    c = await store.claim(oid(), pipeline="p", owner="w1", ttl_s=60)
    assert await store.fail(
        oid(), token=c.token, status=FileStatus.FAILED, error_class="E", error="boom"
    )
    with pytest.raises(TransitionError, match="only a claim moves a record to processing"):
        await store.set_status(oid(), FileStatus.PROCESSING)
    assert not await store.complete(oid(), token=c.token, outputs=[])
    with pytest.raises(TransitionError, match="only a claim"):
        await store.set_status(oid(version="new"), FileStatus.PROCESSING, pipeline="p")
    rec = await store.get(oid())
    assert rec is not None and rec.status is FileStatus.FAILED and rec.claim_owner is None
    assert await store.get(oid(version="new")) is None


@backends
async def test_set_status_only_from_leaves_a_record_someone_moved_on(store: StateStore) -> None:
    """The worker marks a dead-lettered upload dead only from failed: an operator's redrive
    may have set it to received meanwhile, and its copy on the queue must be processed."""
    c = await store.claim(oid(), pipeline="p", owner="w1", ttl_s=60)
    assert await store.fail(
        oid(), token=c.token, status=FileStatus.FAILED, error_class="E", error="boom"
    )
    await store.set_status(oid(), FileStatus.RECEIVED, detail="redriven")
    with pytest.raises(TransitionError, match="is received, not failed: left as it is"):
        await store.set_status(oid(), FileStatus.DEAD, only_from={FileStatus.FAILED})
    rec = await store.get(oid())
    assert rec is not None and rec.status is FileStatus.RECEIVED
    with pytest.raises(TransitionError, match="not recorded"):
        await store.set_status(
            oid(version="none"), FileStatus.DEAD, pipeline="p", only_from={FileStatus.FAILED}
        )
    assert await store.get(oid(version="none")) is None
    c = await store.claim(oid(), pipeline="p", owner="w1", ttl_s=60)
    assert await store.fail(
        oid(), token=c.token, status=FileStatus.FAILED, error_class="E", error="boom"
    )
    dead = await store.set_status(oid(), FileStatus.DEAD, only_from={FileStatus.FAILED})
    assert dead.status is FileStatus.DEAD


@backends
async def test_set_status_out_of_processing_fences_the_holder(store: StateStore) -> None:
    c = await store.claim(oid(), pipeline="p", owner="w1", ttl_s=60)
    rec = await store.set_status(oid(), FileStatus.DEAD, detail="operator")
    assert rec.claim_owner is None and rec.fencing_token > c.token
    assert not await store.complete(oid(), token=c.token, outputs=[])
    await store.set_status(oid(), FileStatus.RECEIVED)
    assert not await store.renew(oid(), token=c.token, ttl_s=60)
    again = await store.claim(oid(), pipeline="p", owner="w2", ttl_s=60)
    assert again.outcome is ClaimOutcome.ACQUIRED and again.token > rec.fencing_token - 1
    assert again.token > c.token


@backends
async def test_release(store: StateStore) -> None:
    c = await store.claim(oid(), pipeline="p", owner="w1", ttl_s=60)
    assert not await store.release(oid(), token=c.token + 5)
    assert await store.release(oid(), token=c.token)
    rec = await store.get(oid())
    assert rec is not None and rec.status is FileStatus.RECEIVED
    assert rec.claim_owner is None and rec.claim_expires_at is None
    assert not await store.release(oid(), token=c.token)
    again = await store.claim(oid(), pipeline="p", owner="w2", ttl_s=60)
    assert (again.outcome, again.token) == (ClaimOutcome.ACQUIRED, 2)


@backends
async def test_failures_count_retryable_failures_only(store: StateStore, clock: FakeClock) -> None:
    c = await store.claim(oid(), pipeline="p", owner="w1", ttl_s=60)
    assert c.record.failures == 0
    await store.fail(oid(), token=c.token, status=FileStatus.FAILED, error_class="E", error="x")
    c = await store.claim(oid(), pipeline="p", owner="w1", ttl_s=60)
    assert c.record.failures == 1
    clock.advance(61)  # the holder died: a takeover is not a failure
    c = await store.claim(oid(), pipeline="p", owner="w2", ttl_s=60)
    assert (c.outcome, c.record.failures, c.record.attempts) == (ClaimOutcome.ACQUIRED, 1, 3)
    assert await store.release(oid(), token=c.token)  # a shutdown release is not one either
    c = await store.claim(oid(), pipeline="p", owner="w2", ttl_s=60)
    await store.fail(oid(), token=c.token, status=FileStatus.FAILED, error_class="E", error="y")
    rec = await store.get(oid())
    assert rec is not None and rec.failures == 2
    await store.set_status(oid(), FileStatus.DEAD, detail="gave up")
    released = await store.set_status(oid(), FileStatus.RECEIVED, detail="redriven")
    assert released.failures == 0  # an operator's release gives a fresh budget


@backends
async def test_a_dead_finish_counts_its_failure(store: StateStore, clock: FakeClock) -> None:
    """The worker ends a dead-lettered upload's claim dead once the DLQ has it: that last
    failure counts, as a retried one does; a quarantine does not."""
    c = await store.claim(oid(), pipeline="p", owner="w1", ttl_s=60)
    await store.fail(oid(), token=c.token, status=FileStatus.DEAD, error_class="E", error="x")
    rec = await store.get(oid())
    assert rec is not None and rec.status is FileStatus.DEAD and rec.failures == 1, rec
    other = oid(version="other")
    c = await store.claim(other, pipeline="p", owner="w1", ttl_s=60)
    await store.fail(
        other, token=c.token, status=FileStatus.QUARANTINED, error_class="E", error="x"
    )
    rec = await store.get(other)
    assert rec is not None and rec.failures == 0, rec


@paged_backends
async def test_versions_lists_every_upload_of_a_key(store: StateStore, clock: FakeClock) -> None:
    assert await store.versions(B, "k") == []
    for v in ("e1@t1", "e2@t2", "e1@t3"):
        c = await store.claim(oid("k", v), pipeline="p", owner="w", ttl_s=60)
        await store.complete(oid("k", v), token=c.token, outputs=[f"out-{v}"])
        clock.advance(1)
    await store.claim(oid("k2", "e9@t9"), pipeline="p", owner="w", ttl_s=60)
    got = await store.versions(B, "k")
    assert [r.version for r in got] == ["e1@t3", "e2@t2", "e1@t1"]
    assert all(r.status is FileStatus.COMPLETED for r in got)


@paged_backends
async def test_history_lists_every_transition_in_order(store: StateStore, clock: FakeClock) -> None:
    o = oid()
    c = await store.claim(o, pipeline="p", owner="w1", ttl_s=60)
    clock.advance(1)
    await store.fail(o, token=c.token, status=FileStatus.FAILED, error_class="E", error="boom")
    clock.advance(1)
    c = await store.claim(o, pipeline="p", owner="w2", ttl_s=60)
    # Same instant: the order still follows the writes.
    await store.release(o, token=c.token)
    clock.advance(1)
    await store.set_status(oid(version="v2"), FileStatus.QUARANTINED, pipeline="p", detail="bad")
    clock.advance(1)
    c = await store.claim(o, pipeline="p", owner="w3", ttl_s=60)
    clock.advance(1)
    await store.complete(o, token=c.token, outputs=["out"])
    await store.claim(oid(key="dir/other"), pipeline="p", owner="w9", ttl_s=60)
    hist = await store.history(B, o.key)
    S = FileStatus
    assert [(h.at - T0, h.version, h.old, h.new, h.worker_id) for h in hist] == [
        (0, "v1", None, S.PROCESSING, "w1"),
        (1, "v1", S.PROCESSING, S.FAILED, "w1"),
        (2, "v1", S.FAILED, S.PROCESSING, "w2"),
        (2, "v1", S.PROCESSING, S.RECEIVED, "w2"),
        (3, "v2", None, S.QUARANTINED, None),
        (4, "v1", S.RECEIVED, S.PROCESSING, "w3"),
        (5, "v1", S.PROCESSING, S.COMPLETED, "w3"),
    ]
    assert hist[1].detail == "E: boom" and hist[4].detail == "bad"
    assert await store.history(B, "dir/nothing") == []
    assert await store.history("other-bucket", o.key) == []


@paged_backends
async def test_list_files_counts_and_oldest(store: StateStore, clock: FakeClock) -> None:
    async def make(key: str, pipeline: str, status: FileStatus) -> None:
        c = await store.claim(oid(key), pipeline=pipeline, owner="w", ttl_s=600)
        if status is FileStatus.COMPLETED:
            assert await store.complete(oid(key), token=c.token, outputs=[])
        elif status is FileStatus.FAILED:
            assert await store.fail(
                oid(key), token=c.token, status=status, error_class="E", error="e"
            )
        clock.advance(1)

    assert await store.list_files() == []
    assert await store.counts() == {s.value: 0 for s in FileStatus}
    assert await store.oldest_processing_at() is None
    await make("in/a", "p1", FileStatus.PROCESSING)  # T0
    await make("in/b", "p1", FileStatus.COMPLETED)  # T0+1
    await make("in/c", "p2", FileStatus.PROCESSING)  # T0+2
    await make("out/d", "p2", FileStatus.FAILED)  # T0+3
    await make("in/e", "p1", FileStatus.COMPLETED)  # T0+4

    def keys(recs: list[object]) -> list[str]:
        return [r.key for r in recs]  # type: ignore[attr-defined]

    assert keys(await store.list_files()) == ["in/e", "out/d", "in/c", "in/b", "in/a"]
    assert keys(await store.list_files(limit=2)) == ["in/e", "out/d"]
    assert keys(await store.list_files(status=FileStatus.COMPLETED)) == ["in/e", "in/b"]
    assert keys(await store.list_files(pipeline="p2")) == ["out/d", "in/c"]
    assert keys(await store.list_files(key_prefix="in/")) == ["in/e", "in/c", "in/b", "in/a"]
    assert keys(
        await store.list_files(status=FileStatus.PROCESSING, pipeline="p1", key_prefix="in/")
    ) == ["in/a"]
    assert await store.list_files(pipeline="nope") == []
    counts = await store.counts()
    assert counts == {
        "received": 0,
        "processing": 2,
        "completed": 2,
        "failed": 1,
        "dead": 0,
        "quarantined": 0,
    }
    assert (await store.counts("p1"))["completed"] == 2
    assert sum((await store.counts("p2")).values()) == 2
    assert sum((await store.counts("none")).values()) == 0
    assert set(await store.counts("none")) == {s.value for s in FileStatus}
    assert await store.oldest_processing_at() == T0
    assert await store.oldest_processing_at("p2") == T0 + 2
    assert await store.oldest_processing_at("none") is None


@paged_backends
async def test_list_files_pages_through_every_record_once_in_order(
    store: StateStore, clock: FakeClock
) -> None:
    """A cursor (the last record of a page) leads to the next page: every record comes
    once, in the listing's order, whatever the page size, the filters, and however many
    records were updated at one time (the index keeps those in no particular order)."""
    for i in range(25):
        c = await store.claim(oid(f"k/{i:02d}"), pipeline=f"p{i % 2}", owner="w", ttl_s=600)
        if i % 3 == 0:
            assert await store.complete(oid(f"k/{i:02d}"), token=c.token, outputs=[])
        if i % 4 == 3:
            clock.advance(1)  # runs of four records updated at one time
    every = await store.list_files()
    assert len(every) == 25
    assert [r.key for r in every] == [
        r.key for r in sorted(every, key=lambda r: (-r.updated_at, r.bucket, r.key, r.version))
    ]
    filters: list[dict[str, Any]] = [
        {},
        {"pipeline": "p1"},
        {"status": FileStatus.PROCESSING},
        {"key_prefix": "k/1"},
    ]
    for where in filters:
        whole = await store.list_files(**where)
        assert whole, where
        for size in (1, 3, 10):
            seen: list[FileRecord] = []
            after: FileCursor | None = None
            while True:
                page, after = await file_page(store, limit=size, after=after, **where)
                assert page and len(page) <= size
                seen += page
                if after is None:
                    break
                assert FileCursor.from_token(after.token()) == after
            assert [r.id for r in seen] == [r.id for r in whole], (where, size)


@backends
async def test_awkward_identities(store: StateStore) -> None:
    """Keys with separators, unicode and an unknown (empty) version stay distinct."""
    ids = [
        ObjectId("b", "a/b", ""),
        ObjectId("b/a", "b", ""),
        ObjectId("b", 'x", "y', "v"),
        ObjectId("b", "sp ace+plus/ü€😀", ""),
    ]
    for n, i in enumerate(ids):
        c = await store.claim(i, pipeline="p", owner=f"w{n}", ttl_s=60)
        assert c.outcome is ClaimOutcome.ACQUIRED
    for n, i in enumerate(ids):
        rec = await store.get(i)
        assert rec is not None and rec.id == i and rec.worker_id == f"w{n}"
        assert [h.version for h in await store.history(i.bucket, i.key)] == [i.version]


# --- concurrency ---------------------------------------------------------------------------


@pytest.mark.parametrize("make_store", ["sqlite", "dynamodb-atomic"], indirect=True)
async def test_concurrent_claims_one_winner_per_round(
    make_store: Callable[[], StateStore], store: StateStore
) -> None:
    """8 tasks on 4 store instances (4 connections / 4 clients) race for each object."""
    extra = [make_store() for _ in range(3)]
    opened = [store] + [await s.__aenter__() for s in extra]
    try:
        for rnd in range(6):
            o = oid(f"race/{rnd}")
            claims = await asyncio.gather(
                *(opened[i % 4].claim(o, pipeline="p", owner=f"t{i}", ttl_s=600) for i in range(8))
            )
            won = [c for c in claims if c.outcome is ClaimOutcome.ACQUIRED]
            assert len(won) == 1, claims
            assert {c.outcome for c in claims} <= {ClaimOutcome.ACQUIRED, ClaimOutcome.BUSY}
            # Completion and a second race: every racer sees DONE.
            assert await store.complete(o, token=won[0].token, outputs=[])
            again = await asyncio.gather(
                *(opened[i % 4].claim(o, pipeline="p", owner="x", ttl_s=1) for i in range(8))
            )
            assert {c.outcome for c in again} == {ClaimOutcome.DONE}
            rec = await store.get(o)
            assert rec is not None and rec.attempts == 1 and rec.fencing_token == 1
        counts = await asyncio.gather(*(opened[i % 4].incr("race") for i in range(24)))
        assert sorted(counts) == list(range(1, 25))
        tokens = await asyncio.gather(
            *(opened[i % 4].acquire_lock("l", owner=f"t{i}", ttl_s=60) for i in range(8))
        )
        assert len([t for t in tokens if t is not None]) == 1
    finally:
        for s in extra:
            await s.__aexit__(None, None, None)


_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from s3flow.state import ClaimOutcome, ObjectId, SqliteStateStore

    async def main(path, owner, rounds):
        async with SqliteStateStore(path) as store:
            print("ready", flush=True)
            sys.stdin.readline()
            won = []
            for r in range(rounds):
                oid = ObjectId("b", f"race/{r}", "v")
                c = await store.claim(oid, pipeline="p", owner=owner, ttl_s=600)
                if c.outcome is ClaimOutcome.ACQUIRED:
                    won.append(r)
                    assert await store.complete(oid, token=c.token, outputs=[owner])
                else:
                    assert c.outcome in (ClaimOutcome.BUSY, ClaimOutcome.DONE), c
        print(json.dumps(won), flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


def test_sqlite_processes_and_tasks_race_one_winner_per_round(tmp_path: Path) -> None:
    """4 processes plus 8 tasks (2 connections) in this one claim the same objects."""
    path = tmp_path / "shared.db"
    rounds = 40

    async def create_schema() -> None:  # first: the children then race only on claims
        async with SqliteStateStore(path):
            pass

    asyncio.run(create_schema())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), f"proc{i}", str(rounds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]

    async def race() -> list[list[int]]:
        async with SqliteStateStore(path) as s1, SqliteStateStore(path) as s2:
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()

            async def task(i: int) -> list[int]:
                st = (s1, s2)[i % 2]
                won = []
                for r in range(rounds):
                    o = ObjectId("b", f"race/{r}", "v")
                    c = await st.claim(o, pipeline="p", owner=f"task{i}", ttl_s=600)
                    if c.outcome is ClaimOutcome.ACQUIRED:
                        won.append(r)
                        assert await st.complete(o, token=c.token, outputs=[f"task{i}"])
                return won

            return await asyncio.gather(*(task(i) for i in range(8)))

    async def check() -> None:
        async with SqliteStateStore(path) as s:
            recs = await s.list_files(limit=1000)
            assert len(recs) == rounds
            assert all(r.status is FileStatus.COMPLETED and r.attempts == 1 for r in recs)
            for r in range(rounds):
                assert len(await s.history("b", f"race/{r}")) == 2

    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        task_wins = asyncio.run(race())
        outs = [p.communicate(timeout=60)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, outs
        proc_wins = [json.loads(o.strip().splitlines()[-1]) for o in outs]
        wins = sorted(r for w in [*task_wins, *proc_wins] for r in w)
        assert wins == list(range(rounds)), wins
        asyncio.run(check())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
