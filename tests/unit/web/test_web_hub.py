"""The event hub: one reader per job, every subscriber gets every event once, in order."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import AsyncIterator, Callable

import pytest
from web_fakes import FakeJobStore

from s3flow.state.jobs import EventType, JobEvent
from s3flow.web.hub import EventHub, EventStream, Frame
from s3flow.web.sse import HEARTBEAT

JOB = "job-1"


def parse(raw: bytes) -> list[int | str]:
    """Event ids of the frames in ``raw``; ``"hb"`` for each heartbeat."""
    out: list[int | str] = []
    for block in raw.split(b"\n\n"):
        if not block:
            continue
        if block.startswith(b":"):
            out.append("hb")
            continue
        fields = dict(line.split(": ", 1) for line in block.decode().split("\n"))
        out.append(int(fields["id"]))
    return out


class Reader:
    """Iterates one stream in a task, keeping what it got."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.raw = b""
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for chunk in self.stream.frames():
            self.raw += chunk

    @property
    def ids(self) -> list[int]:
        return [x for x in parse(self.raw) if isinstance(x, int)]

    @property
    def heartbeats(self) -> int:
        return parse(self.raw).count("hb")


async def until(cond: Callable[[], object], timeout_s: float = 5.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.fixture()
async def store() -> FakeJobStore:
    s = FakeJobStore()
    await s.new_job(JOB)
    return s


@pytest.fixture()
async def hub(store: FakeJobStore) -> AsyncIterator[EventHub]:
    async with EventHub(store, poll_s=0.02, heartbeat_s=60) as h:
        yield h


async def test_every_subscriber_gets_every_event_in_order_from_one_reader(
    store: FakeJobStore, hub: EventHub
) -> None:
    readers = [Reader(hub.stream(JOB, head=1)) for _ in range(50)]
    await until(lambda: hub.subscriber_count(JOB) == 50, what="50 subscribers")
    assert hub.channel_count() == 1
    for i in range(20):
        await store.add(JOB, EventType.STEP_PROGRESS, step=0, bytes_done=i)
        if i % 3 == 0:
            hub.notify(JOB)
        if i % 5 == 0:
            await asyncio.sleep(0.01)
    await until(lambda: all(len(r.ids) == 21 for r in readers), what="21 events each")
    assert all(r.ids == list(range(1, 22)) for r in readers)
    # Idle: one reader polls the store for the job, not one per subscriber.
    before = store.reads
    await asyncio.sleep(0.4)
    assert store.reads - before <= 0.4 / 0.02 + 5
    await store.add(JOB, EventType.JOB_COMPLETED, outputs=[])
    hub.notify(JOB)
    await asyncio.wait_for(asyncio.gather(*(r.task for r in readers)), 5)
    assert all(r.ids == list(range(1, 23)) for r in readers)
    assert hub.channel_count() == 0


async def test_a_subscriber_catches_up_from_its_last_event_id_then_goes_live(
    store: FakeJobStore, hub: EventHub
) -> None:
    for _ in range(4):
        await store.add(JOB, EventType.FILE_RECEIVED, index=0)
    reader = Reader(hub.stream(JOB, after_seq=3, head=5))
    await until(lambda: reader.ids == [4, 5], what="the catch-up")
    await store.add(JOB, EventType.JOB_QUEUED)
    hub.notify(JOB)
    await until(lambda: reader.ids == [4, 5, 6], what="the live event")


async def test_notify_reads_at_once_and_the_poll_finds_what_nobody_notified(
    store: FakeJobStore,
) -> None:
    async with EventHub(store, poll_s=30) as slow:
        reader = Reader(slow.stream(JOB, head=1))
        await until(lambda: reader.ids == [1], what="event 1")
        await store.add(JOB, EventType.JOB_QUEUED)
        await asyncio.sleep(0.3)
        assert reader.ids == [1], "delivered without a notification or a poll"
        slow.notify(JOB)
        await until(lambda: reader.ids == [1, 2], timeout_s=1, what="the notified event")
    async with EventHub(store, poll_s=0.05) as polling:
        reader = Reader(polling.stream(JOB, head=2))
        await until(lambda: reader.ids == [1, 2], what="the history")
        await store.add(JOB, EventType.STEP_STARTED, step=0)  # appended elsewhere: no notify
        await until(lambda: reader.ids == [1, 2, 3], timeout_s=2, what="the polled event")


async def test_a_terminal_event_ends_every_stream_and_later_ones_replay_and_end(
    store: FakeJobStore, hub: EventHub
) -> None:
    readers = [Reader(hub.stream(JOB, head=1)) for _ in range(3)]
    await until(lambda: hub.subscriber_count(JOB) == 3, what="subscribers")
    await store.add(JOB, EventType.JOB_EXPIRED, error="a.txt never arrived")
    hub.notify(JOB)
    await asyncio.wait_for(asyncio.gather(*(r.task for r in readers)), 5)
    assert [r.ids for r in readers] == [[1, 2]] * 3
    assert hub.channel_count() == 0
    late = Reader(hub.stream(JOB, head=2))
    await asyncio.wait_for(late.task, 5)
    assert late.ids == [1, 2]


async def test_stop_ends_the_stream_and_releases_the_channel(
    store: FakeJobStore, hub: EventHub
) -> None:
    reader = Reader(hub.stream(JOB, head=1))
    await until(lambda: reader.ids == [1], what="event 1")
    reader.stream.stop()
    await asyncio.wait_for(reader.task, 5)
    assert hub.channel_count() == 0 and hub.subscriber_count() == 0
    never = hub.stream(JOB)
    never.stop()  # stopped before it started: holds nothing, yields nothing
    assert [c async for c in never.frames()] == []
    assert hub.channel_count() == 0


async def test_close_ends_every_stream_and_refuses_new_ones(
    store: FakeJobStore, hub: EventHub
) -> None:
    readers = [Reader(hub.stream(JOB, head=1)) for _ in range(3)]
    await until(lambda: all(r.ids == [1] for r in readers), what="event 1")
    hub.close()
    await asyncio.wait_for(asyncio.gather(*(r.task for r in readers)), 5)
    late = Reader(hub.stream(JOB))
    await asyncio.wait_for(late.task, 5)
    assert late.raw == b""
    assert hub.channel_count() == 0


async def test_a_subscriber_too_far_behind_is_closed_and_the_others_carry_on(
    store: FakeJobStore,
) -> None:
    async with EventHub(store, poll_s=0.02, max_pending=5, batch=2) as hub:
        good = Reader(hub.stream(JOB, head=1))
        stuck = hub.stream(JOB, head=1)
        frames = stuck.frames()
        assert parse(await anext(frames)) == [1]  # caught up, then never reads again
        await until(lambda: good.ids == [1], what="the good reader's catch-up")
        for i in range(10):
            await store.add(JOB, EventType.STEP_PROGRESS, step=0, bytes_done=i)
        hub.notify(JOB)
        await until(lambda: len(good.ids) == 11, what="the good reader's events")
        sub = stuck.subscription
        assert sub is not None and sub.overflowed and sub.closed
        with pytest.raises(StopAsyncIteration):
            await anext(frames)  # it ends; the client reconnects with Last-Event-ID 1
        assert hub.subscriber_count(JOB) == 1


async def test_a_failing_store_is_retried(store: FakeJobStore, hub: EventHub) -> None:
    reader = Reader(hub.stream(JOB, head=1))
    await until(lambda: reader.ids == [1], what="event 1")
    store.fail_reads = 3
    await store.add(JOB, EventType.JOB_QUEUED)
    await until(lambda: reader.ids == [1, 2], what="the event after the failures")
    assert store.fail_reads == 0


async def test_a_gap_is_filled_from_the_store_and_nothing_is_sent_twice(
    store: FakeJobStore,
) -> None:
    async with EventHub(store, poll_s=30) as hub:
        reader = Reader(hub.stream(JOB, head=1))
        await until(lambda: reader.ids == [1], what="event 1")
        sub = reader.stream.subscription
        assert sub is not None
        e2 = await store.add(JOB, EventType.FILE_RECEIVED, index=0)
        await store.add(JOB, EventType.JOB_QUEUED)
        e4 = await store.add(JOB, EventType.STEP_STARTED, step=0)
        sub.push(Frame.of(e4))  # 2 and 3 never reached this subscriber live
        await until(lambda: reader.ids == [1, 2, 3, 4], what="the gap filled")
        sub.push(Frame.of(e2))  # already sent
        e5 = await store.add(JOB, EventType.STEP_COMPLETED, step=0)
        sub.push(Frame.of(e5))
        await until(lambda: reader.ids == [1, 2, 3, 4, 5], what="event 5")
        assert reader.ids == [1, 2, 3, 4, 5]


async def test_idle_streams_get_heartbeats(store: FakeJobStore) -> None:
    async with EventHub(store, poll_s=0.01, heartbeat_s=0.05) as hub:
        reader = Reader(hub.stream(JOB, head=1))
        await until(lambda: reader.heartbeats >= 3, what="three heartbeats")
        assert reader.ids == [1]
        assert HEARTBEAT in reader.raw


async def test_a_client_ahead_of_the_log_still_sees_the_stream_end(
    store: FakeJobStore, hub: EventHub
) -> None:
    reader = Reader(hub.stream(JOB, after_seq=50, head=1))  # ids this job never had
    await until(lambda: hub.subscriber_count(JOB) == 1, what="the subscriber")
    await store.add(JOB, EventType.JOB_QUEUED)
    await store.add(JOB, EventType.JOB_FAILED, error="boom")
    hub.notify(JOB)
    await asyncio.wait_for(reader.task, 5)
    assert reader.ids == []


class _EventList(list[JobEvent]):
    """A list of events a weak reference can follow."""


class RecordingStore(FakeJobStore):
    """Hands out every read as an :class:`_EventList` and keeps a weak reference to it."""

    def __init__(self) -> None:
        super().__init__()
        self.handed_out: list[weakref.ref[_EventList]] = []

    async def events(self, job_id: str, *, after_seq: int = 0, limit: int = 1000) -> list[JobEvent]:
        out = _EventList(await super().events(job_id, after_seq=after_seq, limit=limit))
        self.handed_out.append(weakref.ref(out))
        return out


async def test_a_caught_up_stream_keeps_nothing_it_replayed() -> None:
    store = RecordingStore()
    await store.new_job(JOB)
    for i in range(299):
        await store.add(JOB, EventType.STEP_PROGRESS, step=0, bytes_done=i)
    async with EventHub(store, poll_s=0.02, heartbeat_s=60, batch=100, max_pending=100) as hub:
        reader = Reader(hub.stream(JOB, head=300))
        await until(lambda: len(reader.ids) == 300, what="the replay of 300 events")
        await until(lambda: len(store.handed_out) >= 5, what="the channel's polls")
        gc.collect()
        # Waiting for live events, the stream holds none of the events it read to catch up
        # (they were ~300 KB per subscriber with a 300-event history).
        assert [ref for ref in store.handed_out if ref() is not None] == []
        await store.add(JOB, EventType.JOB_COMPLETED, outputs=[])
        hub.notify(JOB)
        await asyncio.wait_for(reader.task, 5)
    assert reader.ids == list(range(1, 302))


async def test_later_subscribers_replay_from_the_channel_and_query_nothing(
    store: FakeJobStore,
) -> None:
    for i in range(5):
        await store.add(JOB, EventType.STEP_PROGRESS, step=0, bytes_done=i)
    async with EventHub(store, poll_s=30, history=4) as hub:  # reads only when notified
        assert hub.head(JOB) is None  # no channel: the route asks the store
        first = Reader(hub.stream(JOB, head=6))
        await until(lambda: first.ids == list(range(1, 7)), what="the first replay")
        assert hub.head(JOB) == (6, False)
        reads = store.reads
        # The history holds events 3-6 (the last 4): those after them need no query...
        late = [Reader(hub.stream(JOB, after_seq=after, head=6)) for after in (2, 4, 6)]
        await until(lambda: [r.ids for r in late] == [[3, 4, 5, 6], [5, 6], []], what="replays")
        assert store.reads == reads
        # ...one from further back reads the store for what the history lacks.
        early = Reader(hub.stream(JOB, after_seq=1, head=6))
        await until(lambda: early.ids == [2, 3, 4, 5, 6], what="the store replay")
        assert store.reads > reads
        await store.add(JOB, EventType.JOB_COMPLETED, outputs=[])
        hub.notify(JOB)
        readers = [first, early, *late]
        await asyncio.wait_for(asyncio.gather(*(r.task for r in readers)), 5)
        assert [r.ids[-1] for r in readers] == [7] * 5
        assert all(r.ids == list(range(r.ids[0], 8)) for r in readers)


async def test_a_quiet_job_is_polled_less_and_less_and_a_moving_one_at_once(
    store: FakeJobStore,
) -> None:
    """A job waiting for its files was read every poll_s for as long as anyone watched it
    (on DynamoDB four consistent queries a second per viewed job): the wait doubles while
    nothing comes, up to poll_max_s, and is back to poll_s once events do."""
    async with EventHub(store, poll_s=0.01, poll_max_s=0.32, heartbeat_s=60) as hub:
        reader = Reader(hub.stream(JOB, head=1))
        await until(lambda: reader.ids == [1], what="event 1")
        start = store.reads
        await asyncio.sleep(1.5)  # quiet: every 0.01 s would be about 150 reads
        assert store.reads - start <= 12, store.reads - start
        # Still found without a notification, within poll_max_s of its arrival ...
        await store.add(JOB, EventType.JOB_QUEUED)
        await until(lambda: reader.ids == [1, 2], timeout_s=2, what="the polled event")
        # ... and polled at once again while the job moves.
        await store.add(JOB, EventType.STEP_STARTED, step=0)
        await until(lambda: reader.ids == [1, 2, 3], timeout_s=0.3, what="the next event")


async def test_streams_of_a_finished_job_end_when_its_channel_starts_at_the_end(
    store: FakeJobStore,
) -> None:
    """A channel started at the head of a finished job never read its terminal event, so
    it never ended: a stream that replayed the end from the channel's history stayed open
    after the terminal event (heartbeats for ever), as did one that had every event."""
    for i in range(60):
        await store.add(JOB, EventType.STEP_PROGRESS, step=0, bytes_done=i)
    await store.add(JOB, EventType.JOB_COMPLETED, outputs=[])  # event 62
    async with EventHub(store, poll_s=0.02, batch=20, history=20, heartbeat_s=0.05) as hub:
        # A slow first reader keeps the channel (started at the end) while others join.
        slow = hub.stream(JOB, head=62, finished=True)
        assert await slow.read()
        # This one reads 56-62 from the store, and the channel keeps them as its history...
        first = Reader(hub.stream(JOB, after_seq=55, head=62, finished=True))
        await asyncio.wait_for(first.task, 5)
        assert first.ids == list(range(56, 63))
        # ...from which these replay, the end included: and end.
        late = [Reader(hub.stream(JOB, after_seq=a, head=62, finished=True)) for a in (58, 62)]
        await asyncio.wait_for(asyncio.gather(*(r.task for r in late)), 5)
        assert [r.ids for r in late] == [[59, 60, 61, 62], []]
        assert hub.head(JOB) == (62, True)
        slow.stop()
