"""ChunkChannel: the bounded hand-over from the event loop (feeder) to the produce thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from s3flow.pipelines.csv_kafka.channel import ChannelClosed, ChunkChannel


class CountingLoop:
    """Wraps the running loop to count cross-thread wake-ups."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.wakeups = 0

    def call_soon_threadsafe(self, *args: object) -> object:
        self.wakeups += 1
        return self.loop.call_soon_threadsafe(*args)  # type: ignore[arg-type]


def _drain(channel: ChunkChannel, out: list[bytes]) -> threading.Thread:
    def run() -> None:
        for chunk in iter(channel.get, None):
            out.append(chunk)

    t = threading.Thread(target=run)
    t.start()
    return t


async def test_chunks_arrive_in_order_and_memory_stays_bounded() -> None:
    loop = CountingLoop(asyncio.get_running_loop())
    channel = ChunkChannel(loop, max_bytes=100)  # type: ignore[arg-type]
    out: list[bytes] = []
    consumer = _drain(channel, out)
    peak = 0
    for i in range(200):
        await channel.put(bytes([i % 256]) * 30)
        peak = max(peak, channel._bytes)
    channel.close()
    await asyncio.to_thread(consumer.join, 10)
    assert out == [bytes([i % 256]) * 30 for i in range(200)]
    assert peak <= 100


async def test_the_loop_is_woken_only_when_the_feeder_waits() -> None:
    loop = CountingLoop(asyncio.get_running_loop())
    channel = ChunkChannel(loop, max_bytes=1 << 20)  # type: ignore[arg-type]
    for _ in range(50):
        await channel.put(b"x" * 100)  # never full: the feeder never waits
    channel.close()
    out: list[bytes] = []
    await asyncio.to_thread(_drain(channel, out).join, 10)
    assert len(out) == 50
    assert loop.wakeups == 0


async def test_a_chunk_larger_than_the_bound_still_passes_alone() -> None:
    channel = ChunkChannel(asyncio.get_running_loop(), max_bytes=10)
    await channel.put(b"y" * 1000)
    channel.close()
    assert channel.get() == b"y" * 1000
    assert channel.get() is None


async def test_abort_stops_a_waiting_feeder() -> None:
    channel = ChunkChannel(asyncio.get_running_loop(), max_bytes=10)
    await channel.put(b"z" * 10)
    blocked = asyncio.ensure_future(channel.put(b"z" * 10))
    await asyncio.sleep(0)  # let it find the channel full and wait
    assert not blocked.done()
    await asyncio.to_thread(channel.abort)
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(blocked, 5)
    with pytest.raises(ChannelClosed):
        channel.get()
