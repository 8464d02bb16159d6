"""Shared by the compaction tests that run a whole compaction in this process."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class InlineExecutor:
    """Runs tasks one after the other in this process (the local executor's semantics)."""

    shares_disk = True

    async def map(
        self, fn: Callable[[T], R], tasks: Sequence[T], *, priority: float = 0.0
    ) -> list[R]:
        return [fn(t) for t in tasks]

    async def close(self) -> None:
        return None
