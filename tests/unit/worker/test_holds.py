"""Key locks and claims a message holds: taken, renewed with its heartbeat, let go."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from s3flow.events import ObjectEvent
from s3flow.settings import PipelineSettings
from s3flow.state.records import ObjectId
from s3flow.worker.holds import Holds, KeyLock
from s3flow.worker.outcomes import Release
from s3flow.worker.source import ReceivedMessage


class _Store:
    """The lock and renew calls of a state store, recorded; ``busy`` refuses every lock."""

    def __init__(self, *, busy: bool = False) -> None:
        self.busy = busy
        self.calls: list[tuple[Any, ...]] = []

    async def acquire_lock(self, name: str, *, owner: str, ttl_s: float) -> int | None:
        self.calls.append(("acquire", name, owner, ttl_s))
        return None if self.busy else 7

    async def renew_lock(self, name: str, *, owner: str, token: int, ttl_s: float) -> bool:
        self.calls.append(("renew_lock", name, owner, token, ttl_s))
        return True

    async def release_lock(self, name: str, *, owner: str, token: int) -> bool:
        self.calls.append(("release_lock", name, owner, token))
        return True

    async def renew(self, oid: ObjectId, *, token: int, ttl_s: float) -> bool:
        self.calls.append(("renew", oid, token, ttl_s))
        return True


def _holds(store: _Store, stop: asyncio.Event | None = None) -> Holds:
    p = PipelineSettings(name="p", bucket="b", queue="q", output="s3://o/")
    return Holds(store, p, worker_id="w1", stop=stop or asyncio.Event(), claim_ttl_s=30)  # type: ignore[arg-type]


MSG = ReceivedMessage("m1", "h", "{}", 1, 0.0)
EVENT = ObjectEvent(bucket="b", key="k.txt")


async def test_a_key_lock_is_renewed_while_held_and_released_after() -> None:
    store = _Store()
    holds = _holds(store)
    lock = await holds.lock_key(MSG, EVENT)
    assert lock == KeyLock("key:p:b/k.txt", "w1:m1", 7)
    await holds.renew([MSG.delivery])
    assert store.calls[-1] == ("renew_lock", "key:p:b/k.txt", "w1:m1", 7, 30)
    await holds.unlock(MSG.delivery, lock)
    assert store.calls[-1] == ("release_lock", "key:p:b/k.txt", "w1:m1", 7)
    n = len(store.calls)
    await holds.renew([MSG.delivery])
    assert len(store.calls) == n  # nothing held any more


async def test_two_deliveries_of_one_message_hold_apart() -> None:
    """SQS may hand one message out twice at once (one id, two receipt handles): what
    each copy holds is kept by its delivery, so one copy letting go of its lock does
    not stop the other's renewal."""
    store = _Store()
    holds = _holds(store)
    first, second = MSG, ReceivedMessage("m1", "h2", "{}", 2, 0.0)
    assert first.delivery != second.delivery
    lock = await holds.lock_key(first, EVENT)
    assert isinstance(lock, KeyLock)
    other = await holds.lock_key(second, ObjectEvent(bucket="b", key="other.txt"))
    assert isinstance(other, KeyLock)
    await holds.unlock(second.delivery, other)
    await holds.renew([first.delivery, second.delivery])
    assert store.calls[-1] == ("renew_lock", "key:p:b/k.txt", "w1:m1", 7, 30)
    assert [c[1] for c in store.calls if c[0] == "renew_lock"] == ["key:p:b/k.txt"]


async def test_a_busy_key_is_waited_for_until_shutdown() -> None:
    stop = asyncio.Event()
    holds = _holds(_Store(busy=True), stop)
    msg = ReceivedMessage("m1", "h", "{}", 1, time.monotonic())  # within job_timeout_s
    waiting = asyncio.create_task(holds.lock_key(msg, EVENT))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    stop.set()
    assert isinstance(await waiting, Release)
    # The wake event of a key another worker holds (never set here) was kept for good.
    assert (holds._freed, holds._waiting) == ({}, {})


async def test_only_tracked_claims_are_renewed() -> None:
    store = _Store()
    holds = _holds(store)
    oid = ObjectId("b", "k.txt", "v1")
    holds.track_claim("m1", oid, 3)
    await holds.renew(["m1", "m2"])
    assert store.calls == [("renew", oid, 3, 30)]
    holds.forget_claim("m1", oid)
    await holds.renew(["m1"])
    assert store.calls == [("renew", oid, 3, 30)]


class _SlowLockStore(_Store):
    """``acquire_lock`` answers (granting 7) only once ``answer`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()

    async def acquire_lock(self, name: str, *, owner: str, ttl_s: float) -> int | None:
        self.asked.set()
        await self.answer.wait()
        return await super().acquire_lock(name, owner=owner, ttl_s=ttl_s)


async def test_a_key_lock_granted_as_the_message_is_cancelled_is_released() -> None:
    """Shutdown cancels a message waiting on the store: the lock it was being granted
    is released, not left to block the key's next upload until its TTL."""
    store = _SlowLockStore()
    holds = _holds(store)
    locking = asyncio.ensure_future(holds.lock_key(MSG, EVENT))
    await store.asked.wait()
    locking.cancel()
    await asyncio.sleep(0)
    store.answer.set()
    with pytest.raises(asyncio.CancelledError):
        await locking
    assert store.calls == [
        ("acquire", "key:p:b/k.txt", "w1:m1", 30),
        ("release_lock", "key:p:b/k.txt", "w1:m1", 7),
    ]


class _OneHolderStore(_Store):
    """A key lock one owner holds at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.holder: str | None = None

    async def acquire_lock(self, name: str, *, owner: str, ttl_s: float) -> int | None:
        if self.holder is not None:
            return None
        self.holder = owner
        return 7

    async def release_lock(self, name: str, *, owner: str, token: int) -> bool:
        self.holder = None
        return True


async def test_a_waiter_takes_the_key_as_soon_as_this_process_lets_it_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each waiter looked again on its own backoff (up to 5 s): duplicates of one object
    were acknowledged one by one, 5 s apart. Here the first look back is 60 s away."""
    monkeypatch.setattr("s3flow.worker.waiting._WAIT_FIRST_S", 60.0)
    holds = _holds(_OneHolderStore())
    first = await holds.lock_key(MSG, EVENT)
    assert isinstance(first, KeyLock)
    second = ReceivedMessage("m2", "h2", "{}", 1, time.monotonic())
    waiting = asyncio.create_task(holds.lock_key(second, EVENT))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await holds.unlock(MSG.delivery, first)
    lock = await asyncio.wait_for(waiting, timeout=5)
    assert lock == KeyLock("key:p:b/k.txt", "w1:m2", 7)
    assert (holds._freed, holds._waiting) == ({}, {})


class _LosingStore(_Store):
    """Every renewal is refused: the lock and claim were taken over elsewhere."""

    async def renew_lock(self, name: str, *, owner: str, token: int, ttl_s: float) -> bool:
        self.calls.append(("renew_lock", name, owner, token, ttl_s))
        return False

    async def renew(self, oid: ObjectId, *, token: int, ttl_s: float) -> bool:
        self.calls.append(("renew", oid, token, ttl_s))
        return False

    async def get(self, oid: ObjectId) -> Any:
        return None  # taken over and gone, as far as this worker can tell


async def test_a_lost_lock_sets_its_delivery_lost_and_fails_the_fence() -> None:
    """Loss found by the heartbeat: the run is told (``lost``) and no write passes."""
    holds = _holds(_LosingStore())
    lock = await holds.lock_key(MSG, EVENT)
    assert isinstance(lock, KeyLock)
    assert await holds.fence(MSG.delivery)  # confirmed just now: no round trip
    lost = holds.lost(MSG.delivery)
    assert not lost.is_set()
    await holds.renew([MSG.delivery])
    assert lost.is_set()
    assert not await holds.fence(MSG.delivery)
    await holds.unlock(MSG.delivery, lock)
    assert not holds.lost(MSG.delivery).is_set()  # forgotten with what it held


async def test_the_fence_checks_a_stale_confirmation_before_a_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker frozen past half the TTL renews before it writes: a claim taken over
    meanwhile fails the fence though no heartbeat ran since."""
    store = _LosingStore()
    holds = _holds(store)
    oid = ObjectId("b", "k.txt", "v1")
    holds.track_claim(MSG.delivery, oid, 5)
    woke = time.monotonic() + 16  # past half of the 30 s TTL
    monkeypatch.setattr(time, "monotonic", lambda: woke)
    assert not await holds.fence(MSG.delivery)
    assert ("renew", oid, 5, 30) in store.calls


async def test_the_fence_passes_a_stale_confirmation_renewed_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _Store()
    holds = _holds(store)
    holds.track_claim(MSG.delivery, ObjectId("b", "k.txt", "v1"), 5)
    woke = time.monotonic() + 16
    monkeypatch.setattr(time, "monotonic", lambda: woke)
    assert await holds.fence(MSG.delivery)
    n = len(store.calls)
    assert await holds.fence(MSG.delivery)  # confirmed again: no second round trip
    assert len(store.calls) == n


async def test_a_claim_finished_by_its_own_run_is_not_lost() -> None:
    """A renewal that ran between the run's complete() and its forgetting the claim was
    refused, and the run was said to be stopped: a false "lost" warning."""
    from s3flow.state.records import FileRecord, FileStatus

    class _Finished(_LosingStore):
        async def get(self, oid: ObjectId) -> Any:
            return FileRecord(
                bucket=oid.bucket,
                key=oid.key,
                version=oid.version,
                pipeline="p",
                status=FileStatus.COMPLETED,
                fencing_token=5,
            )

    holds = _holds(_Finished())
    oid = ObjectId("b", "k.txt", "v1")
    holds.track_claim(MSG.delivery, oid, 5)
    await holds.renew([MSG.delivery])
    assert not holds.lost(MSG.delivery).is_set()
