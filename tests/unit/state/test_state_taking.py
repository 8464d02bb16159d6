"""state.taking: a lock or claim granted to a cancelled caller is given back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from s3flow.state.records import Claim, ClaimOutcome, FileRecord, FileStatus, ObjectId
from s3flow.state.taking import give_back_claim, give_back_lock, take_claim, take_lock

OID = ObjectId("b", "k.txt", "v1")


class SlowStore:
    """acquire_lock / claim answer only once ``answer`` is set (a call on the wire)."""

    def __init__(self, *, token: int | None = 5, outcome: ClaimOutcome = ClaimOutcome.ACQUIRED):
        self.answer = asyncio.Event()
        self.asked = asyncio.Event()
        self.token = token
        self.outcome = outcome
        self.fail: Exception | None = None
        self.calls: list[tuple[Any, ...]] = []

    async def _wait(self) -> None:
        self.asked.set()
        await self.answer.wait()
        if self.fail is not None:
            raise self.fail

    async def acquire_lock(self, name: str, *, owner: str, ttl_s: float) -> int | None:
        await self._wait()
        self.calls.append(("acquire_lock", name, owner))
        return self.token

    async def release_lock(self, name: str, *, owner: str, token: int) -> bool:
        self.calls.append(("release_lock", name, owner, token))
        return True

    async def claim(self, oid: ObjectId, **kw: Any) -> Claim:
        await self._wait()
        self.calls.append(("claim", oid))
        return Claim(
            self.outcome, 9, FileRecord(oid.bucket, oid.key, oid.version, "p", FileStatus.RECEIVED)
        )

    async def release(self, oid: ObjectId, *, token: int) -> bool:
        self.calls.append(("release", oid, token))
        return True


async def _cancel_while_asking(store: SlowStore, call: Any) -> None:
    task = asyncio.ensure_future(call)
    await store.asked.wait()
    task.cancel()
    await asyncio.sleep(0)  # the cancellation reaches the caller first ...
    store.answer.set()  # ... then the store answers all the same
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_answered_lock_is_returned_and_kept() -> None:
    store = SlowStore()
    store.answer.set()
    assert await take_lock(store, "l", owner="w", ttl_s=30) == 5  # type: ignore[arg-type]
    assert store.calls == [("acquire_lock", "l", "w")]


async def test_a_lock_granted_to_a_cancelled_caller_is_released() -> None:
    store = SlowStore()
    await _cancel_while_asking(store, take_lock(store, "l", owner="w", ttl_s=30))  # type: ignore[arg-type]
    assert store.calls == [("acquire_lock", "l", "w"), ("release_lock", "l", "w", 5)]


async def test_a_lock_refused_to_a_cancelled_caller_needs_no_release() -> None:
    store = SlowStore(token=None)
    await _cancel_while_asking(store, take_lock(store, "l", owner="w", ttl_s=30))  # type: ignore[arg-type]
    assert store.calls == [("acquire_lock", "l", "w")]


async def test_a_failing_call_of_a_cancelled_caller_still_ends_in_the_cancellation() -> None:
    store = SlowStore()
    store.fail = RuntimeError("the store is down")
    await _cancel_while_asking(store, take_lock(store, "l", owner="w", ttl_s=30))  # type: ignore[arg-type]
    assert store.calls == []


async def test_a_claim_granted_to_a_cancelled_caller_is_released() -> None:
    store = SlowStore()
    call = take_claim(store, OID, pipeline="p", owner="w", ttl_s=30)  # type: ignore[arg-type]
    await _cancel_while_asking(store, call)
    assert store.calls == [("claim", OID), ("release", OID, 9)]


@pytest.mark.parametrize("outcome", [ClaimOutcome.BUSY, ClaimOutcome.DONE, ClaimOutcome.PARKED])
async def test_a_claim_not_granted_needs_no_release(outcome: ClaimOutcome) -> None:
    store = SlowStore(outcome=outcome)
    call = take_claim(store, OID, pipeline="p", owner="w", ttl_s=30)  # type: ignore[arg-type]
    await _cancel_while_asking(store, call)
    assert store.calls == [("claim", OID)]


async def test_an_answered_claim_is_returned_and_kept() -> None:
    store = SlowStore()
    store.answer.set()
    got = await take_claim(store, OID, pipeline="p", owner="w", ttl_s=30)  # type: ignore[arg-type]
    assert got.outcome is ClaimOutcome.ACQUIRED and got.token == 9
    assert store.calls == [("claim", OID)]
    assert got.record.status is FileStatus.RECEIVED


class SlowRelease(SlowStore):
    """release_lock and release finish only once ``answer`` is set."""

    async def release_lock(self, name: str, *, owner: str, token: int) -> bool:
        await self._wait()
        return await super().release_lock(name, owner=owner, token=token)

    async def release(self, oid: ObjectId, *, token: int) -> bool:
        await self._wait()
        return await super().release(oid, token=token)


async def test_a_release_is_finished_before_the_cancellation_goes_on() -> None:
    store = SlowRelease()
    await _cancel_while_asking(store, give_back_lock(store, "l", owner="w", token=5))  # type: ignore[arg-type]
    assert store.calls == [("release_lock", "l", "w", 5)]


async def test_a_claim_given_back_is_released_before_the_cancellation_goes_on() -> None:
    store = SlowRelease()
    await _cancel_while_asking(store, give_back_claim(store, OID, token=9))  # type: ignore[arg-type]
    assert store.calls == [("release", OID, 9)]


async def test_a_release_not_cancelled_answers_as_the_store_does() -> None:
    store = SlowRelease()
    store.answer.set()
    assert await give_back_lock(store, "l", owner="w", token=5) is True  # type: ignore[arg-type]


async def _cancel_twice_while_asking(store: SlowStore, call: Any) -> None:
    """Cancelled while the store call is on the wire, and again while it is finished."""
    task = asyncio.ensure_future(call)
    await store.asked.wait()
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # a second signal, a shutdown cutting every wait short
    await asyncio.sleep(0)
    store.answer.set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_second_cancellation_does_not_skip_the_release_of_a_granted_lock() -> None:
    store = SlowStore()
    await _cancel_twice_while_asking(store, take_lock(store, "l", owner="w", ttl_s=30))  # type: ignore[arg-type]
    assert store.calls == [("acquire_lock", "l", "w"), ("release_lock", "l", "w", 5)]


async def test_a_second_cancellation_does_not_cut_a_release_short() -> None:
    store = SlowRelease()
    await _cancel_twice_while_asking(store, give_back_claim(store, OID, token=9))  # type: ignore[arg-type]
    assert store.calls == [("release", OID, 9)]


async def test_a_cancellation_during_the_undo_does_not_cut_it_short() -> None:
    class SlowUndo(SlowStore):
        def __init__(self) -> None:
            super().__init__()
            self.undo_asked = asyncio.Event()
            self.undo_answer = asyncio.Event()

        async def release_lock(self, name: str, *, owner: str, token: int) -> bool:
            self.undo_asked.set()
            await self.undo_answer.wait()
            return await super().release_lock(name, owner=owner, token=token)

    store = SlowUndo()
    task = asyncio.ensure_future(take_lock(store, "l", owner="w", ttl_s=30))  # type: ignore[arg-type]
    await store.asked.wait()
    task.cancel()
    await asyncio.sleep(0)
    store.answer.set()
    await store.undo_asked.wait()
    task.cancel()  # again, while the lock is being given back
    await asyncio.sleep(0)
    store.undo_answer.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.calls == [("acquire_lock", "l", "w"), ("release_lock", "l", "w", 5)]
