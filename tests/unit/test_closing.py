"""cancel_and_wait: a background task stopped on the way out."""

from __future__ import annotations

import asyncio

import pytest

from s3flow.closing import cancel_and_wait


async def test_cancel_and_wait_ends_the_task_and_swallows_its_cancellation() -> None:
    task = asyncio.create_task(asyncio.sleep(60))
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_cancel_and_wait_without_a_task_does_nothing() -> None:
    await cancel_and_wait(None)


async def test_cancel_and_wait_raises_what_the_task_ended_with() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="boom"):
        await cancel_and_wait(task)
