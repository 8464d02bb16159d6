"""The StateStore contract, run against every backend (SQLite file, DynamoDB on moto)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from s3flow.errors import ConfigError
from s3flow.settings import AwsSettings
from s3flow.state import (
    ClaimOutcome,
    DynamoStateStore,
    FileStatus,
    LockLostError,
    ManifestFile,
    ManifestFileStatus,
    ManifestRecord,
    ManifestStatus,
    ObjectId,
    SqliteStateStore,
    StateError,
    StateStore,
    TransitionError,
    open_state_store,
)

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
B = "bucket-a"


class FakeClock:
    """A clock the test advances by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Callable[[], StateStore]:
    """A factory of stores on one shared backend instance (same file / same tables).

    ``dynamodb-paged`` reads 2 items per Query/Scan request, so every listing
    of more than 2 items follows LastEvaluatedKey across pages.

    ``dynamodb-atomic`` (the race tests) needs conditional writes that are atomic, as
    real DynamoDB's per-item writes are: moto's threaded server checks a condition and
    then writes without a lock, so two racing writes can both win now and then (~1 in
    600 contended rounds). The shared endpoint's moto runs s3flow's patch that
    serialises DynamoDB writes (``s3flow.local.moto_server.patch_moto_dynamodb``); moto as
    shipped (``S3FLOW_MOTO_UNPATCHED=1``) cannot run these races.
    """
    backend = request.param if hasattr(request, "param") else "sqlite"
    if backend == "sqlite":
        path = tmp_path / "sub" / "state.db"
        return lambda: SqliteStateStore(path, clock=clock)
    if backend == "dynamodb-atomic" and os.environ.get("S3FLOW_MOTO_UNPATCHED") == "1":
        pytest.skip("moto as shipped does not make DynamoDB conditional writes atomic")
    url = request.getfixturevalue("endpoint").url
    aws = AwsSettings(endpoint_url=url, region="us-east-1")
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    page_size = 2 if backend == "dynamodb-paged" else None
    return lambda: DynamoStateStore(prefix, aws, clock=clock, page_size=page_size)


@pytest.fixture()
async def store(make_store: Callable[[], StateStore]) -> AsyncIterator[StateStore]:
    s = make_store()
    if isinstance(s, DynamoStateStore):
        await s.ensure_tables()
    async with s as opened:
        yield opened


backends = pytest.mark.parametrize("make_store", ["sqlite", "dynamodb"], indirect=True)
# The tests of listings run on a DynamoDB store that reads small pages too.
paged_backends = pytest.mark.parametrize(
    "make_store", ["sqlite", "dynamodb", "dynamodb-paged"], indirect=True
)


def oid(key: str = "dir/a.txt", version: str = "v1") -> ObjectId:
    return ObjectId(B, key, version)


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
    with pytest.raises(TransitionError, match="completed -> processing"):
        await store.set_status(oid(), FileStatus.PROCESSING)
    # Reprocessing on purpose: an operator may send a completed version back.
    again = await store.set_status(oid(), FileStatus.RECEIVED, detail="reprocess")
    assert again.status is FileStatus.RECEIVED and again.outputs == []
    backfill = await store.set_status(
        oid(version="v0"), FileStatus.COMPLETED, detail="backfill", pipeline="p"
    )
    assert backfill.status is FileStatus.COMPLETED


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


# --- counters, checkpoints, locks -------------------------------------------------------


@backends
async def test_counters(store: StateStore) -> None:
    assert await store.counter("duplicates:p") == 0
    assert await store.incr("duplicates:p") == 1
    assert await store.incr("duplicates:p", 5) == 6
    assert await store.incr("other") == 1
    assert await store.counter("duplicates:p") == 6
    assert await store.incr("duplicates:p", -6) == 0


@backends
async def test_checkpoints(store: StateStore) -> None:
    assert await store.get_checkpoint("csv:k") is None
    await store.put_checkpoint("csv:k", "row=10")
    await store.put_checkpoint("csv:other", "")
    assert await store.get_checkpoint("csv:k") == "row=10"
    await store.put_checkpoint("csv:k", json.dumps({"row": 20}))
    assert await store.get_checkpoint("csv:k") == '{"row": 20}'
    assert await store.get_checkpoint("csv:other") == ""


@backends
async def test_locks(store: StateStore, clock: FakeClock) -> None:
    t1 = await store.acquire_lock("compact", owner="a", ttl_s=30)
    assert t1 is not None
    assert await store.acquire_lock("compact", owner="b", ttl_s=30) is None
    assert await store.acquire_lock("compact", owner="a", ttl_s=30) is None  # not reentrant
    other = await store.acquire_lock("other", owner="b", ttl_s=30)
    assert other is not None
    clock.advance(20)
    assert await store.renew_lock("compact", owner="a", token=t1, ttl_s=30)
    clock.advance(20)  # renewed: still held
    assert await store.acquire_lock("compact", owner="b", ttl_s=30) is None
    clock.advance(11)  # expired
    t2 = await store.acquire_lock("compact", owner="b", ttl_s=30)
    assert t2 is not None and t2 > t1
    assert not await store.renew_lock("compact", owner="a", token=t1, ttl_s=30)
    assert not await store.release_lock("compact", owner="a", token=t1)
    assert not await store.release_lock("compact", owner="a", token=t2)  # wrong owner
    assert await store.renew_lock("compact", owner="b", token=t2, ttl_s=30)
    assert await store.release_lock("compact", owner="b", token=t2)
    assert not await store.release_lock("compact", owner="b", token=t2)
    assert not await store.renew_lock("compact", owner="b", token=t2, ttl_s=30)
    t3 = await store.acquire_lock("compact", owner="a", ttl_s=30)
    assert t3 is not None and t3 > t2
    assert not await store.renew_lock("nolock", owner="a", token=1, ttl_s=30)


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


# --- the factory and the SQLite file ---------------------------------------------------------


async def test_open_state_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = open_state_store(f"sqlite://{tmp_path}/abs/s.db")
    assert isinstance(absolute, SqliteStateStore) and absolute.path == f"{tmp_path}/abs/s.db"
    rel = open_state_store("sqlite:.s3flow/state.db")
    assert isinstance(rel, SqliteStateStore) and rel.path == ".s3flow/state.db"
    single = open_state_store(f"sqlite:{tmp_path}/x.db")
    assert isinstance(single, SqliteStateStore) and single.path == f"{tmp_path}/x.db"
    plain = open_state_store("data/files.sqlite")
    assert isinstance(plain, SqliteStateStore) and plain.path == "data/files.sqlite"
    dyn = open_state_store("dynamodb://my-app.prod", AwsSettings(region="eu-west-1"))
    assert isinstance(dyn, DynamoStateStore)
    assert (dyn.files_table, dyn.history_table, dyn.meta_table) == (
        "my-app.prod-files",
        "my-app.prod-history",
        "my-app.prod-meta",
    )
    for bad in ("redis://x", "dynamodb://", "dynamodb://bad name", "sqlite:", "sqlite://host/x.db"):
        with pytest.raises(ConfigError):
            open_state_store(bad)
    async with rel as s:  # relative to the working directory; directory created
        await s.incr("n")
    assert (tmp_path / ".s3flow" / "state.db").exists()


async def test_sqlite_persists_and_reports_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    async with SqliteStateStore(path) as s:
        await s.claim(oid(), pipeline="p", owner="w", ttl_s=60)
        await s.put_checkpoint("c", "1")
    async with SqliteStateStore(path) as s:
        rec = await s.get(oid())
        assert rec is not None and rec.status is FileStatus.PROCESSING
        assert await s.get_checkpoint("c") == "1"
    closed = SqliteStateStore(path)
    with pytest.raises(StateError, match="not open"):
        await closed.get(oid())
    (tmp_path / "garbage.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match=r"garbage\.db"):
        async with SqliteStateStore(tmp_path / "garbage.db"):
            pass
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match="file"):
        async with SqliteStateStore(tmp_path / "file" / "sub" / "s.db"):
            pass


async def test_dynamodb_tables(endpoint: object) -> None:
    aws = AwsSettings(endpoint_url=endpoint.url)  # type: ignore[attr-defined]
    prefix = f"tables-{uuid.uuid4().hex[:8]}"
    async with DynamoStateStore(prefix, aws) as s:
        with pytest.raises(StateError, match=r"-files does not exist.*provision"):
            await s.get(oid())
        assert await s.ensure_tables() == [
            (f"{prefix}-files", "created"),
            (f"{prefix}-history", "created"),
            (f"{prefix}-meta", "created"),
            (f"{prefix}-manifests", "created"),
        ]
        assert await s.get(oid()) is None
    # Idempotent, and usable on a store that is not open.
    again = await DynamoStateStore(prefix, aws).ensure_tables()
    assert [c for _, c in again] == ["unchanged"] * 4
    wrong = DynamoStateStore(f"{prefix}-x", aws)
    async with wrong:
        await wrong._client.create_table(  # a table of that name with another key schema
            TableName=wrong.meta_table,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        with pytest.raises(StateError, match=r"-x-meta exists with key schema"):
            await wrong.ensure_tables()


# --- manifests ---------------------------------------------------------------------------------


def mfile(
    key: str, size: int = 100, etag: str = "e1", version_id: str | None = None
) -> ManifestFile:
    return ManifestFile(B, key, size, etag, version_id)


def draft(
    mid: str, files: list[ManifestFile], token: int, date: str = "2025-12-23"
) -> ManifestRecord:
    return ManifestRecord(
        manifest_id=mid,
        dataset="ds",
        date=date,
        status=ManifestStatus.SEALING,
        files=files,
        trigger="count",
        fencing_token=token,
        sealed_by="w1",
        created_at=0.0,
    )


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
    """Read 2 items a request, each listing of manifests / pending files takes 3+ pages."""
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
    # The manifests table: 7 manifests, 7 markers, 12 tracked files.
    assert [m.manifest_id for m in await store.list_manifests()] == ids
    assert pages("Scan") >= 13
    assert [m.manifest_id for m in await store.list_manifests(dataset="ds", limit=3)] == ids[:3]
    assert pages("Scan") >= 13
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
