"""The checkpoint mirror: every offered checkpoint is in the store when the run is over."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

from s3flow.pipelines.csv_kafka.checkpoint import Checkpoint
from s3flow.pipelines.csv_kafka.runner import CheckpointMirror
from s3flow.state.base import StateStore


class SlowStore:
    """A state store whose checkpoint writes take a while (as under load)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.writing = asyncio.Event()

    async def put_checkpoint(self, name: str, value: str) -> None:
        self.writing.set()
        await asyncio.sleep(0.05)
        self.values[name] = value


def test_the_final_checkpoint_is_written_before_the_mirror_closes() -> None:
    async def main() -> dict[str, str]:
        store = SlowStore()
        async with CheckpointMirror(cast(StateStore, store), "ck") as mirror:
            # Offered from another thread, as the produce thread does after each commit.
            final = Checkpoint("o", row=2, done=True)
            thread = threading.Thread(target=mirror.offer, args=(final,))
            thread.start()
            thread.join()
            await store.writing.wait()  # its write is under way when the run ends
        return store.values

    values = asyncio.run(main())
    assert Checkpoint.decode(values["ck"]).done


def test_without_a_store_checkpoints_are_only_forwarded() -> None:
    seen: list[Any] = []

    async def main() -> None:
        async with CheckpointMirror(None, "ck", forward=seen.append) as mirror:
            mirror.offer(Checkpoint("o", row=1))

    asyncio.run(main())
    assert [c.row for c in seen] == [1]
