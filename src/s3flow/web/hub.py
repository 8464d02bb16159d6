"""Live fan-out of job events to SSE subscribers: one reader per job, not per subscriber.

A job with subscribers has one *channel*: a task that reads the job's new
events from the state store when :meth:`EventHub.notify` says there are some
(the progress consumer calls it) and every ``poll_s`` otherwise — so a web
instance that did not consume an event still sees it in the store, and any
instance serves any job's stream. Each event is encoded once and the same
frame is handed to every subscriber's small queue; a subscriber costs a
:class:`Subscription` (a cursor, a list, a future while it waits), never a
task or a query of its own.

A subscriber first catches up from the store after its own ``Last-Event-ID``
(a first connection replays from event 1), then takes live frames, skipping
what it already sent and filling any gap from the store, so it sees every
event exactly once, in order. A stream ends after a terminal event, when the
client leaves (:meth:`EventStream.stop`), when it falls ``max_pending``
frames behind (the client reconnects with its ``Last-Event-ID``), or when
the hub closes (server shutdown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import Self

from s3flow.state.jobs import JobEvent, JobStore
from s3flow.web.sse import HEARTBEAT, format_event

__all__ = ["EventHub", "EventStream", "Frame", "Subscription"]

log = logging.getLogger("s3flow.web.hub")


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


_HEARTBEAT = Frame(0, HEARTBEAT, False)


class Subscription:
    """One subscriber's place in a job's channel: what it has sent and what waits.

    Deliberately small (slots, a list, no task): a thousand of them on one
    job cost a thousand short lists and, while idle, a thousand futures.
    """

    __slots__ = ("_closed", "_pending", "_waiter", "cursor", "job_id", "max_pending", "overflowed")

    def __init__(self, job_id: str, cursor: int, max_pending: int) -> None:
        self.job_id = job_id
        self.cursor = cursor  # the seq of the last event this subscriber has sent
        self.max_pending = max_pending
        self.overflowed = False
        self._pending: list[Frame] = []
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
        if len(self._pending) >= self.max_pending:
            self.overflowed = True
            self._pending = []
            self.close()
            return
        self._pending.append(frame)
        self._wake()

    def close(self) -> None:
        """End the stream (frames already queued are still taken)."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[Frame]:
        """Every queued frame, waiting for one; ``[]`` once closed and drained."""
        while not self._pending:
            if self._closed:
                return []
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        frames, self._pending = self._pending, []
        return frames


class _Channel:
    """The one reader of one job's new events and the set of its subscribers."""

    __slots__ = ("cursor", "done", "job_id", "last_heartbeat", "subscribers", "task", "wake")

    def __init__(self, job_id: str, cursor: int, now: float) -> None:
        self.job_id = job_id
        self.cursor = cursor  # the seq of the last event handed to the subscribers
        self.subscribers: set[Subscription] = set()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.last_heartbeat = now
        self.done = False  # a terminal event was handed out: nothing can follow


class EventStream:
    """One subscriber's SSE stream: :meth:`frames` to send, :meth:`stop` when the client leaves.

    The subscription is made when :meth:`frames` starts and dropped when it
    ends, so a stream that is never iterated holds nothing.
    """

    def __init__(self, hub: EventHub, job_id: str, after_seq: int, head: int | None) -> None:
        self._hub = hub
        self.job_id = job_id
        self._after_seq = after_seq
        self._head = head
        self._sub: Subscription | None = None
        self._stopped = False

    @property
    def subscription(self) -> Subscription | None:
        """The subscription while :meth:`frames` runs."""
        return self._sub

    def stop(self) -> None:
        """Make :meth:`frames` finish (the client disconnected)."""
        self._stopped = True
        if self._sub is not None:
            self._sub.close()

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """Catch up from the store after the subscriber's cursor, then go live.

        Yields chunks of whole frames (several events at once when they
        come in a burst) and heartbeats; returns after a terminal event or
        when the subscription closes.
        """
        if self._stopped:
            return
        # Subscribe before reading anything: what the channel hands out from
        # now on is queued here, what it handed out before is in the store.
        sub = self._sub = self._hub.subscribe(
            self.job_id, after_seq=self._after_seq, head=self._head
        )
        try:
            while not sub.closed:
                events = await self._hub.read(sub.job_id, sub.cursor)
                chunk, ended = self._encode(sub, events)
                if chunk:
                    yield chunk
                if ended:
                    return
                if len(events) < self._hub.batch:
                    break
            while True:
                frames = await sub.take()
                if not frames:
                    return
                out: list[bytes] = []
                ended = False
                for frame in frames:
                    if frame is _HEARTBEAT:
                        out.append(HEARTBEAT)
                        continue
                    if frame.seq <= sub.cursor:  # sent during the catch-up
                        if frame.terminal:  # (or the client claimed ids the job never had)
                            ended = True
                            break
                        continue
                    if frame.seq > sub.cursor + 1:  # never expected; the store has the gap
                        gap = await self._hub.read(
                            sub.job_id, sub.cursor, frame.seq - sub.cursor - 1
                        )
                        chunk, ended = self._encode(sub, gap)
                        out.append(chunk)
                        if ended:
                            break
                    out.append(frame.data)
                    sub.cursor = frame.seq
                    if frame.terminal:
                        ended = True
                        break
                if out:
                    yield b"".join(out)
                if ended:
                    return
        finally:
            self._hub.unsubscribe(sub)

    @staticmethod
    def _encode(sub: Subscription, events: list[JobEvent]) -> tuple[bytes, bool]:
        """The frames of the events past the cursor (advancing it), and whether one ended."""
        out: list[bytes] = []
        for event in events:
            if event.seq <= sub.cursor:
                continue
            out.append(format_event(event))
            sub.cursor = event.seq
            if event.type.terminal:
                return b"".join(out), True
        return b"".join(out), False


class EventHub:
    """Fans each job's new events out to its SSE subscribers. Use ``async with``.

    ``poll_s``: how often a channel reads the store without a notification;
    ``heartbeat_s``: how often subscribers get a comment heartbeat;
    ``max_pending``: frames a subscriber may fall behind before its stream
    is closed (at least ``batch``: one read's frames are handed out without
    a pause); ``batch``: events read from the store at once.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        poll_s: float = 0.25,
        heartbeat_s: float = 15.0,
        max_pending: int = 10_000,
        batch: int = 500,
    ) -> None:
        if max_pending < batch:
            raise ValueError(f"max_pending ({max_pending}) must be at least batch ({batch})")
        self._store = store
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.max_pending = max_pending
        self.batch = batch
        self._channels: dict[str, _Channel] = {}
        self._closed = False

    async def __aenter__(self) -> Self:
        """Nothing to open: channels start with their first subscriber."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """End every stream and stop every channel."""
        self.close()
        tasks = [ch.task for ch in self._channels.values() if ch.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._channels.clear()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def close(self) -> None:
        """End every stream now (server shutdown); new subscriptions end at once."""
        self._closed = True
        for channel in self._channels.values():
            for sub in channel.subscribers:
                sub.close()

    def channel_count(self) -> int:
        """Jobs with at least one subscriber (one reader task each)."""
        return len(self._channels)

    def subscriber_count(self, job_id: str | None = None) -> int:
        """Subscribers of ``job_id``, or of every job."""
        if job_id is not None:
            channel = self._channels.get(job_id)
            return len(channel.subscribers) if channel else 0
        return sum(len(ch.subscribers) for ch in self._channels.values())

    def notify(self, job_id: str) -> None:
        """New events of ``job_id`` are in the store: read them now (not at the next poll)."""
        channel = self._channels.get(job_id)
        if channel is not None:
            channel.wake.set()

    def stream(self, job_id: str, *, after_seq: int = 0, head: int | None = None) -> EventStream:
        """A stream of ``job_id``'s events after ``after_seq`` (0: from event 1).

        ``head``: the job's last seq when the caller looked it up; the
        channel starts there if this is the job's first subscriber.
        """
        return EventStream(self, job_id, after_seq, head)

    def subscribe(
        self, job_id: str, *, after_seq: int = 0, head: int | None = None
    ) -> Subscription:
        """Register a subscriber of ``job_id`` whose cursor is ``after_seq``.

        Starts the job's channel (at ``head``, else ``after_seq``) if it has
        none. After :meth:`close` the subscription is closed at once. Pair
        with :meth:`unsubscribe` (:meth:`EventStream.frames` does both).
        """
        sub = Subscription(job_id, after_seq, self.max_pending)
        if self._closed:
            sub.close()
            return sub
        channel = self._channels.get(job_id)
        if channel is None:
            loop = asyncio.get_running_loop()
            start = after_seq if head is None else max(head, 0)
            channel = _Channel(job_id, start, loop.time())
            self._channels[job_id] = channel
            channel.task = loop.create_task(self._run(channel), name=f"s3flow-hub-{job_id}")
        channel.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget ``sub``; the job's channel stops with its last subscriber."""
        sub.close()
        channel = self._channels.get(sub.job_id)
        if channel is None:
            return
        channel.subscribers.discard(sub)
        if not channel.subscribers:
            del self._channels[sub.job_id]
            if channel.task is not None:
                channel.task.cancel()

    async def read(self, job_id: str, after_seq: int, limit: int | None = None) -> list[JobEvent]:
        """Events of ``job_id`` after ``after_seq`` from the store (at most ``limit``/``batch``)."""
        return await self._store.events(job_id, after_seq=after_seq, limit=limit or self.batch)

    async def _run(self, channel: _Channel) -> None:
        """The channel's loop: wait for a notification or ``poll_s``, read, hand out."""
        loop = asyncio.get_running_loop()
        failing = False
        while not channel.done:
            try:
                async with asyncio.timeout(self.poll_s):
                    await channel.wake.wait()
            except TimeoutError:
                pass
            channel.wake.clear()
            try:
                await self._pull(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store may be briefly unreachable: keep polling
                if not failing:
                    log.warning(
                        "reading the events of %s failed (retrying): %s", channel.job_id, exc
                    )
                failing = True
            else:
                if failing:
                    log.info("reading the events of %s works again", channel.job_id)
                failing = False
            now = loop.time()
            if now - channel.last_heartbeat >= self.heartbeat_s:
                channel.last_heartbeat = now
                for sub in channel.subscribers:
                    sub.push(_HEARTBEAT)

    async def _pull(self, channel: _Channel) -> None:
        """Hand every event after the channel's cursor to every subscriber, in order."""
        while True:
            events = await self.read(channel.job_id, channel.cursor)
            for event in events:
                if event.seq <= channel.cursor:
                    continue
                frame = Frame.of(event)
                for sub in channel.subscribers:
                    sub.push(frame)
                channel.cursor = event.seq
                if frame.terminal:
                    channel.done = True
                    return
            if len(events) < self.batch:
                return
