"""Burst mode's question: is the queue drained?"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

__all__ = ["CONFIRM_AFTER_S", "queue_drained"]

#: Burst mode: the second reading of an empty queue comes this long after the first.
CONFIRM_AFTER_S = 0.2


async def queue_drained(
    read_depth: Callable[[], Awaitable[int | None]],
    busy: Callable[[], bool],
    stop: asyncio.Event,
    *,
    confirm_after_s: float = CONFIRM_AFTER_S,
) -> bool:
    """True when the queue reads empty twice, ``confirm_after_s`` apart, and idle.

    ``read_depth`` returns the messages left (visible + in flight + delayed), or
    None when the queue cannot be read; ``busy`` is True while this worker holds
    or has just received a message. One reading is not enough: the three counts
    are not one snapshot (moto computes each at its own moment, AWS's are
    approximate), so a delayed message that turns visible between two of them is
    in none. A second reading after the turn sees it.
    """
    for reading in range(2):
        if reading:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=confirm_after_s)
        if busy() or stop.is_set():
            return False
        left = await read_depth()
        if left != 0 or busy():
            return False
    return True
