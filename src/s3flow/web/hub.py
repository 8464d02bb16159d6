"""Live fan-out of job events to SSE subscribers: one reader per job, not per subscriber.

A job with subscribers has one *channel*: a task that reads the job's new
events from the state store when :meth:`EventHub.notify` says there are some
(the progress consumer calls it) and by polling otherwise — so a web
instance that did not consume an event still sees it in the store, and any
instance serves any job's stream. A channel polls every ``poll_s`` while its job
moves, and less and less often (down to every ``poll_max_s``) while it is quiet: a
job waiting for its files costs a query every few seconds, not four a second.
Each event is encoded once and the same frame is handed to every subscriber's
small queue; a subscriber costs its
:class:`EventStream` (a cursor and, while it waits, one future; frames only
until it takes them), never a task or a query of its own.

A subscriber first catches up after its own ``Last-Event-ID`` (a first
connection replays from event 1): from the channel's memory of the job's
latest frames (its *history*, kept from what it handed out and what its
first subscribers read) when that reaches back far enough, else from the
store; so the thousandth viewer of a job costs no query and shares the
frames already encoded. Then it takes live frames, skipping what it already
sent and filling any gap from the store, so it sees every event exactly
once, in order. A stream ends after a terminal event, when the
client leaves (:meth:`EventStream.stop`), when it falls ``max_pending``
frames behind (the client reconnects with its ``Last-Event-ID``), or when
the hub closes (server shutdown).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import KW_ONLY, dataclass, field

from s3flow.closing import AsyncExit
from s3flow.state.jobs import JobEvent, JobStore
from s3flow.web.subscription import HEARTBEAT_FRAME, Frame, Subscription

__all__ = ["EventHub", "EventStream", "Frame", "Subscription"]

log = logging.getLogger("s3flow.web.hub")


class _Channel:
    """The one reader of one job's new events, the set of its subscribers, its last frames."""

    __slots__ = (
        "cursor",
        "done",
        "history",
        "job_id",
        "last_heartbeat",
        "subscribers",
        "task",
        "wake",
    )

    def __init__(self, job_id: str, cursor: int, now: float, history: int) -> None:
        self.job_id = job_id
        self.cursor = cursor  # the seq of the last event handed to the subscribers
        # The frames of the events up to the cursor, without gaps, as far back as known
        # (at most ``history``): empty, or ending with the frame of event ``cursor``.
        self.history: deque[Frame] = deque(maxlen=history)
        self.subscribers: set[Subscription] = set()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.last_heartbeat = now
        self.done = False  # a terminal event was handed out: nothing can follow


# The phases of an EventStream.
_NEW, _CATCHING_UP, _LIVE, _ENDED = range(4)


class EventStream(Subscription):
    """One subscriber's SSE stream; it is its own :class:`Subscription`.

    The server calls :meth:`read` for the next chunk to send and, when it
    says nothing is ready (``b""``), awaits :meth:`wait`; :meth:`stop` when
    the client leaves. The subscription is made by the first :meth:`read`,
    so a stream that is never read holds nothing. Between chunks the stream
    keeps nothing of what it read or sent (no replayed events, no frames):
    an idle subscriber costs this object and, while waiting, one future.
    :meth:`frames` is the same as an async iterator.
    """

    __slots__ = ("_finished", "_head", "_hub", "_phase")

    def __init__(
        self, hub: EventHub, job_id: str, after_seq: int, head: int | None, finished: bool
    ) -> None:
        super().__init__(job_id, after_seq, hub.max_pending)
        self._hub = hub
        self._head = head
        self._finished = finished
        self._phase = _NEW

    @property
    def subscription(self) -> Subscription | None:
        """The subscription (this stream) once :meth:`read` has started it."""
        return None if self._phase == _NEW else self

    def stop(self) -> None:
        """End the stream and leave the job's channel (the client disconnected)."""
        self.close()
        if self._phase == _NEW:
            self._phase = _ENDED  # stopped before it started: it never subscribes
        else:
            self._hub.unsubscribe(self)

    async def read(self) -> bytes | None:
        """The next chunk of whole frames to send; ``b""`` when none is ready, None at the end.

        The first call subscribes, then the stream catches up from the store
        after its cursor (a batch per call), then takes the live frames,
        skipping what it already sent and filling a gap from the store. It
        ends after a terminal event or once closed (queued frames are still
        sent). After ``b""`` await :meth:`wait` before reading again.
        """
        if self._phase == _NEW:
            if self._closed:
                self._phase = _ENDED
                return None
            # Subscribe before reading anything: what the channel hands out from now on is
            # queued here, what it handed out before is in the store.
            self._hub.attach(self, self._head, finished=self._finished)
            self._phase = _CATCHING_UP
        while self._phase == _CATCHING_UP:
            if self._closed:
                self._phase = _LIVE
                break
            replayed = self._hub.replay(self)
            if replayed is not None:  # from the channel's memory: no query
                chunk, ended = replayed
                self._phase = _ENDED if ended else _LIVE
            else:
                events = await self._hub.read(self.job_id, self.cursor)
                chunk, ended = self._encode(events)
                if ended:
                    self._phase = _ENDED
                elif len(events) < self._hub.batch:
                    self._phase = _LIVE
            if chunk:
                return chunk
        if self._phase == _ENDED:
            return None
        frames = self.take_nowait()
        if not frames:
            return None if self._closed else b""
        out: list[bytes] = []
        for frame in frames:
            if frame is HEARTBEAT_FRAME:
                out.append(frame.data)
                continue
            if frame.seq <= self.cursor:  # sent during the catch-up
                if frame.terminal:  # (or the client claimed ids the job never had)
                    self._phase = _ENDED
                    break
                continue
            if frame.seq > self.cursor + 1:  # never expected; the store has the gap
                gap = await self._hub.read(self.job_id, self.cursor, frame.seq - self.cursor - 1)
                chunk, ended = self._encode(gap)
                out.append(chunk)
                if ended:
                    self._phase = _ENDED
                    break
            out.append(frame.data)
            self.cursor = frame.seq
            if frame.terminal:
                self._phase = _ENDED
                break
        if not out and self._phase == _ENDED:
            return None
        return b"".join(out)

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """Every chunk of :meth:`read`, waiting between them; leaves the channel when done."""
        try:
            while (chunk := await self.read()) is not None:
                if chunk:
                    yield chunk
                elif (waiter := self.wait()) is not None:
                    await waiter
        finally:
            self.stop()

    def _encode(self, events: list[JobEvent]) -> tuple[bytes, bool]:
        """The frames of the events past the cursor (advancing it), and whether one ended.

        The frames are offered to the channel's history, so the subscribers
        after this one replay them from memory.
        """
        frames: list[Frame] = []
        for event in events:
            if event.seq <= self.cursor:
                continue
            frame = Frame.of(event)
            frames.append(frame)
            self.cursor = event.seq
            if frame.terminal:
                break
        self._hub.remember(self.job_id, frames)
        return b"".join(f.data for f in frames), bool(frames) and frames[-1].terminal


@dataclass(eq=False)
class EventHub(AsyncExit):
    """Fans each job's new events out to its SSE subscribers. Use ``async with``.

    Nothing to open on entry: channels start with their first subscriber.

    ``poll_s``: how often a channel reads the store without a notification while
    its job moves; ``poll_max_s``: how seldom while it is quiet (the wait doubles
    after each read that finds nothing; default ``8 × poll_s``);
    ``heartbeat_s``: how often subscribers get a comment heartbeat;
    ``max_pending``: frames a subscriber may fall behind before its stream
    is closed (at least ``batch``: one read's frames are handed out without
    a pause); ``batch``: events read from the store at once; ``history``:
    frames a channel keeps of its job's latest events, so that a new
    subscriber whose cursor is among them replays from memory (and its
    request needs no query at all, see :meth:`head`) — a few hundred bytes
    a frame, per job with subscribers, not per subscriber.
    """

    store: JobStore
    _: KW_ONLY
    poll_s: float = 0.25
    poll_max_s: float | None = None
    heartbeat_s: float = 15.0
    max_pending: int = 10_000
    batch: int = 500
    history: int = 500
    _channels: dict[str, _Channel] = field(init=False, default_factory=dict)
    _closed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if self.max_pending < self.batch:
            raise ValueError(
                f"max_pending ({self.max_pending}) must be at least batch ({self.batch})"
            )
        if self.history < 1:
            raise ValueError(f"history ({self.history}) must be at least 1")

    async def aclose(self) -> None:
        """End every stream and stop every channel (the end of ``async with``)."""
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

    def stream(
        self, job_id: str, *, after_seq: int = 0, head: int | None = None, finished: bool = False
    ) -> EventStream:
        """A stream of ``job_id``'s events after ``after_seq`` (0: from event 1).

        ``head``: the job's last seq when the caller looked it up; the
        channel starts there if this is the job's first subscriber.
        ``finished``: the job had ended then (event ``head`` is its terminal one).
        """
        return EventStream(self, job_id, after_seq, head, finished)

    def subscribe(
        self, job_id: str, *, after_seq: int = 0, head: int | None = None
    ) -> Subscription:
        """Register a subscriber of ``job_id`` whose cursor is ``after_seq``.

        Starts the job's channel (at ``head``, else ``after_seq``) if it has
        none. After :meth:`close` the subscription is closed at once. Pair
        with :meth:`unsubscribe` (:class:`EventStream` does both).
        """
        sub = Subscription(job_id, after_seq, self.max_pending)
        self.attach(sub, head)
        return sub

    def attach(self, sub: Subscription, head: int | None = None, *, finished: bool = False) -> None:
        """Add ``sub`` to its job's channel, starting the channel (at ``head``) if needed.

        A channel started at the head of a ``finished`` job is done: its terminal
        event is the head, which its reader will never read. After :meth:`close`,
        ``sub`` is closed instead.
        """
        if self._closed:
            sub.close()
            return
        channel = self._channels.get(sub.job_id)
        if channel is None:
            loop = asyncio.get_running_loop()
            start = sub.cursor if head is None else max(head, 0)
            channel = _Channel(sub.job_id, start, loop.time(), self.history)
            channel.done = finished and head is not None
            self._channels[sub.job_id] = channel
            channel.task = loop.create_task(self._run(channel), name=f"s3flow-hub-{sub.job_id}")
        sub.job_id = channel.job_id  # one string per job, however many subscribers
        channel.subscribers.add(sub)

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

    def head(self, job_id: str) -> tuple[int, bool] | None:
        """``(seq, terminal)`` of the last event handed out for ``job_id`` if it has a channel here.

        None without a channel: ask the store. A job with a channel exists,
        and its channel knows where it is, so a subscriber joining a job
        that is already streamed needs no lookup of its own.
        """
        channel = self._channels.get(job_id)
        return None if channel is None else (channel.cursor, channel.done)

    def replay(self, sub: Subscription) -> tuple[bytes, bool] | None:
        """The frames after ``sub``'s cursor from its channel's history, and whether they end.

        Advances the cursor to the channel's. None when the history does not
        reach back to the cursor (the store has those events).
        """
        channel = self._channels.get(sub.job_id)
        if channel is None:
            return None
        if sub.cursor >= channel.cursor:
            # nothing handed out that this subscriber has not sent (and nothing follows)
            return b"", channel.done
        history = channel.history
        if not history or history[0].seq > sub.cursor + 1:
            return None
        frames = itertools.islice(history, sub.cursor + 1 - history[0].seq, None)
        sub.cursor = channel.cursor
        return b"".join(f.data for f in frames), channel.done

    def remember(self, job_id: str, frames: list[Frame]) -> None:
        """Add ``frames`` (read from the store, consecutive) to the front of the job's history.

        Only the ones just before what the channel holds, and only while it
        has room: the history stays one run of consecutive events.
        """
        channel = self._channels.get(job_id)
        if channel is None or not frames:
            return
        history = channel.history
        start = history[0].seq if history else channel.cursor + 1
        older = [f for f in frames if f.seq < start]
        room = self.history - len(history)
        if not older or room <= 0 or older[-1].seq != start - 1:
            return
        older = older[-room:]
        if older[-1].seq - older[0].seq != len(older) - 1:
            return  # not consecutive: keep the history as it is
        history.extendleft(reversed(older))

    async def read(self, job_id: str, after_seq: int, limit: int | None = None) -> list[JobEvent]:
        """Events of ``job_id`` after ``after_seq`` from the store (at most ``limit``/``batch``)."""
        return await self.store.events(job_id, after_seq=after_seq, limit=limit or self.batch)

    async def _run(self, channel: _Channel) -> None:
        """The channel's loop: wait for a notification or the poll, read, hand out."""
        loop = asyncio.get_running_loop()
        failing = False
        poll_max_s = self.poll_max_s if self.poll_max_s is not None else 8 * self.poll_s
        wait_s = self.poll_s
        while not channel.done:
            heartbeat_in = channel.last_heartbeat + self.heartbeat_s - loop.time()
            notified = False
            try:
                async with asyncio.timeout(max(0.0, min(wait_s, heartbeat_in))):
                    await channel.wake.wait()
                    notified = True
            except TimeoutError:
                pass
            channel.wake.clear()
            found = 0
            try:
                found = await self._pull(channel)
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
            # A job that moves is read every poll_s; a quiet one less and less often.
            wait_s = self.poll_s if found or notified else min(2 * wait_s, poll_max_s)
            now = loop.time()
            if now - channel.last_heartbeat >= self.heartbeat_s:
                channel.last_heartbeat = now
                for sub in channel.subscribers:
                    sub.push(HEARTBEAT_FRAME)

    async def _pull(self, channel: _Channel) -> int:
        """Hand every event after the channel's cursor to every subscriber, in order;
        how many there were."""
        found = 0
        while True:
            events = await self.read(channel.job_id, channel.cursor)
            for event in events:
                if event.seq <= channel.cursor:
                    continue
                found += 1
                frame = Frame.of(event)
                for sub in channel.subscribers:
                    sub.push(frame)
                if event.seq != channel.cursor + 1:  # never expected: keep no run with a hole
                    channel.history.clear()
                channel.cursor = event.seq
                channel.history.append(frame)
                if frame.terminal:
                    channel.done = True
                    return found
            if len(events) < self.batch:
                return found
