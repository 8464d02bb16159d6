"""A bounded hand-over of byte chunks from the event loop to one worker thread."""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class ChannelClosed(Exception):
    """The other side gave up (the consumer thread failed, or the feeder was cancelled)."""


class ChunkChannel:
    """At most ``max_bytes`` in flight: ``await put()`` on the loop, ``get()`` in a thread.

    One chunk is always accepted into an empty channel, whatever its size.

    ``close()`` (feeder: no more chunks) makes ``get()`` return ``None`` once drained;
    ``abort()`` (either side) makes both sides stop: ``put``/``get`` raise ChannelClosed.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_bytes: int = 8 << 20) -> None:
        self._loop = loop
        self._max = max_bytes
        self._bytes = 0
        self._items: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._space = asyncio.Event()
        self._closed = False
        self._aborted = False
        self._feeder_waiting = False  # only then does get() wake the loop (a syscall)

    async def put(self, item: bytes) -> None:
        """Hand a chunk over, waiting while the channel is full."""
        while True:
            with self._cond:
                if self._aborted:
                    raise ChannelClosed("the consumer stopped")
                if not self._items or self._bytes + len(item) <= self._max:
                    self._items.append(item)
                    self._bytes += len(item)
                    self._cond.notify()
                    return
                self._space.clear()
                self._feeder_waiting = True
            await self._space.wait()

    def close(self) -> None:
        """No more chunks (the consumer gets ``None`` after the last one)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        """Stop both sides (thread-safe)."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()
        self._wake_feeder()

    def get(self) -> bytes | None:
        """The next chunk (blocking), or ``None`` after ``close()`` and the last chunk."""
        with self._cond:
            while not self._items and not self._closed and not self._aborted:
                self._cond.wait()
            if self._aborted:
                raise ChannelClosed("the feeder stopped")
            if not self._items:
                return None
            item = self._items.popleft()
            self._bytes -= len(item)
            wake, self._feeder_waiting = self._feeder_waiting, False
        if wake:
            self._wake_feeder()
        return item

    def _wake_feeder(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._space.set)
        except RuntimeError:  # the loop is closed: nobody is waiting
            pass
