"""Burst mode's drain check, as pure logic (a fake depth reader)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from s3flow.worker.drain import queue_drained


def _readings(*values: int | None) -> tuple[Callable[[], Awaitable[int | None]], list[int]]:
    left = list(values)
    calls: list[int] = []

    async def read() -> int | None:
        calls.append(1)
        return left.pop(0)

    return read, calls


async def test_two_empty_readings_drain() -> None:
    read, calls = _readings(0, 0)
    assert await queue_drained(read, lambda: False, asyncio.Event(), confirm_after_s=0)
    assert len(calls) == 2


async def test_a_message_seen_only_by_the_second_reading_keeps_the_worker_polling() -> None:
    # A delayed message turning visible between two of the counts is in none of
    # them: the first reading says 0, the second sees it.
    read, _ = _readings(0, 1)
    assert not await queue_drained(read, lambda: False, asyncio.Event(), confirm_after_s=0)


async def test_messages_left_or_an_unreadable_queue_do_not_drain() -> None:
    for first in (3, None):
        read, calls = _readings(first, 0)
        assert not await queue_drained(read, lambda: False, asyncio.Event(), confirm_after_s=0)
        assert len(calls) == 1


async def test_a_message_received_between_the_readings_does_not_drain() -> None:
    received = [False]

    async def read() -> int | None:
        received[0] = True  # a poller got one while this reading was on the wire
        return 0

    assert not await queue_drained(read, lambda: received[0], asyncio.Event(), confirm_after_s=0)


async def test_a_stop_during_the_pause_ends_the_check_without_a_second_reading() -> None:
    stop = asyncio.Event()
    calls: list[int] = []

    async def read() -> int | None:
        calls.append(1)
        stop.set()  # the worker is stopped while the first reading is on the wire
        return 0

    assert not await asyncio.wait_for(
        queue_drained(read, lambda: False, stop, confirm_after_s=30), 5
    )
    assert len(calls) == 1
