"""What one subscriber of a job's events holds: :class:`Frame` (an encoded event shared by
every subscriber) and :class:`Subscription` (its cursor and its short queue of frames).

:mod:`s3flow.web.hub` hands frames to subscriptions; :class:`~s3flow.web.hub.EventStream`
is the subscription an SSE response reads.
"""

from __future__ import annotations

import asyncio

from s3flow.state.jobs import JobEvent
from s3flow.web.sse import HEARTBEAT, format_event

__all__ = ["HEARTBEAT_FRAME", "Frame", "Subscription"]


class Frame:
    """One encoded event, shared by every subscriber of its job."""

    __slots__ = ("data", "seq", "terminal")

    def __init__(self, seq: int, data: bytes, terminal: bool) -> None:
        self.seq = seq
        self.data = data
        self.terminal = terminal

    @classmethod
    def of(cls, event: JobEvent) -> Frame:
        """The frame of ``event``."""
        return cls(event.seq, format_event(event), event.type.terminal)


#: The comment frame that keeps an idle connection open.
HEARTBEAT_FRAME = Frame(0, HEARTBEAT, False)


class Subscription:
    """One subscriber's place in a job's channel: what it has sent and what waits.

    Deliberately small (slots, no task): while idle a subscriber holds its
    cursor and, while its stream waits, one future; frames handed to it
    live in a short list only until it takes them.
    """

    __slots__ = ("_closed", "_pending", "_waiter", "cursor", "job_id", "max_pending", "overflowed")

    def __init__(self, job_id: str, cursor: int, max_pending: int) -> None:
        self.job_id = job_id
        self.cursor = cursor  # the seq of the last event this subscriber has sent
        self.max_pending = max_pending
        self.overflowed = False
        self._pending: list[Frame] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once the stream must end."""
        return self._closed

    def push(self, frame: Frame) -> None:
        """Queue ``frame``; a subscriber ``max_pending`` frames behind is closed instead."""
        if self._closed:
            return
        pending = self._pending
        if pending is None:
            self._pending = [frame]
        elif len(pending) >= self.max_pending:
            self.overflowed = True
            self._pending = None
            self.close()
            return
        else:
            pending.append(frame)
        self._wake()

    def close(self) -> None:
        """End the stream (frames already queued are still taken)."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wait(self) -> asyncio.Future[None] | None:
        """A future done when there is something to take or the stream closed; None if now."""
        if self._pending or self._closed:
            return None
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        return waiter

    def take_nowait(self) -> list[Frame]:
        """Every queued frame (``[]`` if none)."""
        frames, self._pending = self._pending, None
        return frames or []

    async def take(self) -> list[Frame]:
        """Every queued frame, waiting for one; ``[]`` once closed and drained."""
        while (waiter := self.wait()) is not None:
            await waiter
        return self.take_nowait()
