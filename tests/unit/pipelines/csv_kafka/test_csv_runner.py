"""The runner opens the object while the producer starts; an unused opening is closed."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from s3flow.objects import ObjectReader
from s3flow.pipelines.csv_kafka.runner import _discard


class Reader:
    closed = False

    def close(self) -> None:
        self.closed = True


async def test_an_object_opened_for_nothing_is_closed_or_its_open_cancelled() -> None:
    reader = Reader()

    async def opened() -> Any:
        return reader

    done = asyncio.ensure_future(opened())
    await asyncio.sleep(0)
    _discard(cast("asyncio.Task[ObjectReader]", done))
    await asyncio.sleep(0)
    assert reader.closed

    started = asyncio.Event()

    async def slow() -> Any:
        started.set()
        await asyncio.sleep(10)
        return Reader()

    pending = asyncio.ensure_future(slow())
    await started.wait()
    _discard(cast("asyncio.Task[ObjectReader]", pending))
    await asyncio.sleep(0)
    assert pending.cancelled()

    async def failing() -> Any:
        raise OSError("no such bucket")

    failed = asyncio.ensure_future(failing())
    await asyncio.sleep(0)
    _discard(cast("asyncio.Task[ObjectReader]", failed))  # its error is retrieved, not logged
    await asyncio.sleep(0)
    assert isinstance(failed.exception(), OSError)
