"""Slots and a message's permits: the engine's two budgets, as pure logic."""

from __future__ import annotations

import asyncio

from s3flow.worker.engine import MessagePermits
from s3flow.worker.source import Slots


async def test_acquire_up_to_takes_what_is_free_and_waits_for_one() -> None:
    slots = Slots(3)
    assert await slots.acquire_up_to(10) == 3 and slots.in_use == 3
    waiter = asyncio.create_task(slots.acquire_up_to(5))
    await asyncio.sleep(0)
    assert not waiter.done()
    slots.release(2)
    assert await asyncio.wait_for(waiter, 1) == 2
    assert slots.in_use == 3


async def test_try_acquire_never_waits_and_release_caps_at_capacity() -> None:
    slots = Slots(1)
    assert slots.try_acquire() and not slots.try_acquire()
    slots.release(5)
    assert slots.in_use == 0
    slots.release(0)
    assert slots.try_acquire()


async def test_a_cancelled_waiter_takes_nothing() -> None:
    slots = Slots(1)
    assert slots.try_acquire()
    waiter = asyncio.create_task(slots.acquire_up_to(1))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    slots.release(1)
    assert slots.in_use == 0


async def test_waiters_are_served_first_come_first_served() -> None:
    slots = Slots(1)
    assert slots.try_acquire()
    first = asyncio.create_task(slots.acquire_up_to(1))
    await asyncio.sleep(0)
    second = asyncio.create_task(slots.acquire_up_to(1))
    await asyncio.sleep(0)
    slots.release(1)
    # A newcomer does not overtake the waiters, even before they run again.
    assert not slots.try_acquire()
    assert await asyncio.wait_for(first, 1) == 1
    await asyncio.sleep(0)
    assert not second.done()  # one release serves one waiter
    slots.release(1)
    assert await asyncio.wait_for(second, 1) == 1
    assert slots.in_use == 1


async def test_a_waiter_for_several_is_not_overtaken_by_a_smaller_one() -> None:
    slots = Slots(4)
    assert await slots.acquire_up_to(4) == 4
    batch = asyncio.create_task(slots.acquire_up_to(10, at_least=3))
    await asyncio.sleep(0)
    one = asyncio.create_task(slots.acquire_up_to(1))
    await asyncio.sleep(0)
    slots.release(2)
    await asyncio.sleep(0)
    assert not batch.done() and not one.done()  # 2 free: the batch needs 3, first
    slots.release(2)
    assert await asyncio.wait_for(batch, 1) == 4
    slots.release(1)
    assert await asyncio.wait_for(one, 1) == 1


async def test_a_waiter_cancelled_after_its_grant_hands_the_permit_on() -> None:
    slots = Slots(1)
    assert slots.try_acquire()
    first = asyncio.create_task(slots.acquire_up_to(1))
    await asyncio.sleep(0)
    second = asyncio.create_task(slots.acquire_up_to(1))
    await asyncio.sleep(0)
    slots.release(1)  # granted to the first, which is cancelled before it runs
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled()
    assert await asyncio.wait_for(second, 1) == 1
    assert slots.in_use == 1


async def test_a_cancelled_head_waiter_lets_the_next_one_take_what_is_free() -> None:
    slots = Slots(3)
    assert await slots.acquire_up_to(3) == 3
    big = asyncio.create_task(slots.acquire_up_to(3, at_least=3))
    await asyncio.sleep(0)
    small = asyncio.create_task(slots.acquire_up_to(1))
    await asyncio.sleep(0)
    slots.release(1)
    await asyncio.sleep(0)
    assert not small.done()  # behind the head, which needs 3
    big.cancel()
    await asyncio.gather(big, return_exceptions=True)
    assert await asyncio.wait_for(small, 1) == 1


def _permits(slots: Slots, settling: Slots) -> tuple[MessagePermits, Slots]:
    received = Slots(slots.capacity + 1)
    assert received.try_acquire()  # what the poller reserved for this message
    return MessagePermits(received, slots, settling), received


async def test_a_message_starts_with_a_free_slot_or_waits_for_one() -> None:
    slots, settling = Slots(1), Slots(1)
    first, _ = _permits(slots, settling)
    second, _ = _permits(slots, settling)
    stop = asyncio.Event()
    assert await first.start(stop) and first.slot and slots.in_use == 1
    waiting = asyncio.create_task(second.start(stop))
    await asyncio.sleep(0)
    assert not waiting.done()
    first.hand_over()  # the first has read its input: the second starts at once
    assert await asyncio.wait_for(waiting, 1) and second.slot


async def test_a_message_waiting_for_a_slot_gives_up_when_the_worker_stops() -> None:
    slots, settling = Slots(1), Slots(1)
    assert slots.try_acquire()
    permits, received = _permits(slots, settling)
    stop = asyncio.Event()
    waiting = asyncio.create_task(permits.start(stop))
    await asyncio.sleep(0)
    stop.set()
    assert await asyncio.wait_for(waiting, 1) is False
    assert not permits.slot and slots.in_use == 1
    permits.release()  # then released like any message
    assert received.in_use == 0 and settling.in_use == 0
    assert await permits.start(stop) is False  # stopped before it began


async def test_hand_over_trades_the_slot_for_a_settling_permit() -> None:
    slots, settling = Slots(1), Slots(1)
    permits, received = _permits(slots, settling)
    assert await permits.start(asyncio.Event())
    permits.hand_over()
    assert (permits.slot, permits.settle, permits.receive) == (False, True, False)
    assert slots.in_use == 0 and settling.in_use == 1 and received.in_use == 0
    permits.hand_over()  # again: nothing changes
    assert slots.in_use == 0 and settling.in_use == 1
    permits.release()
    permits.release()
    assert slots.in_use == 0 and settling.in_use == 0


async def test_with_no_settling_permit_free_the_message_keeps_its_slot() -> None:
    slots, settling = Slots(1), Slots(1)
    assert settling.try_acquire()  # another message writes its outputs
    permits, received = _permits(slots, settling)
    assert await permits.start(asyncio.Event())
    permits.hand_over()
    assert (permits.slot, permits.settle) == (True, False) and slots.in_use == 1
    assert received.in_use == 1  # nothing traded: the message keeps all it held
    permits.release()  # its work is over: all of it goes back, no wait for a permit
    assert (permits.slot, permits.settle, permits.receive) == (False, False, False)
    assert slots.in_use == 0 and received.in_use == 0
    assert settling.in_use == 1  # only the other message's permit


async def test_a_hand_over_after_the_work_is_a_no_op() -> None:
    slots, settling = Slots(1), Slots(1)
    permits, _ = _permits(slots, settling)
    assert await permits.start(asyncio.Event())
    permits.release()  # the work ended before the reader was closed
    permits.hand_over()  # a late reading_done takes nothing
    assert settling.in_use == 0 and slots.in_use == 0 and not permits.settle


async def test_a_drain_releases_a_message_still_waiting_for_a_slot() -> None:
    slots, settling = Slots(1), Slots(1)
    assert slots.try_acquire()
    permits, _ = _permits(slots, settling)
    stop, draining = asyncio.Event(), asyncio.Event()
    waiting = asyncio.create_task(permits.start(stop, draining))
    await asyncio.sleep(0)
    draining.set()  # burst mode gave up: no stop, but nothing new may start
    assert await asyncio.wait_for(waiting, 1) is False
    slots.release(1)
    assert await permits.start(stop, draining) is False and slots.in_use == 0


async def test_a_slot_taken_as_the_task_is_cancelled_is_given_back() -> None:
    slots, settling = Slots(1), Slots(1)
    assert slots.try_acquire()
    permits, _ = _permits(slots, settling)
    waiting = asyncio.create_task(permits.start(asyncio.Event()))
    await asyncio.sleep(0)
    slots.release(1)
    await asyncio.sleep(0)  # the acquire completes; the outer task is not resumed yet
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    permits.release()
    assert slots.in_use == 0


async def test_a_settled_message_holds_no_permit() -> None:
    slots, settling = Slots(1), Slots(1)
    permits, received = _permits(slots, settling)
    assert await permits.start(asyncio.Event())
    permits.hand_over()  # input read: the slot goes to the next object
    assert slots.in_use == 0 and settling.in_use == 1
    permits.release()  # outputs written and recorded: the ack holds nothing
    assert slots.in_use == 0 and settling.in_use == 0 and received.in_use == 0
