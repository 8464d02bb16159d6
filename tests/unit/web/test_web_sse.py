"""The event-stream wire format and Last-Event-ID."""

from __future__ import annotations

import asyncio
import json

import pytest

from s3flow.state.jobs import EventType, JobEvent
from s3flow.web.sse import (
    HEARTBEAT,
    DisconnectPoller,
    LastEventIdError,
    client_gone,
    format_event,
    parse_last_event_id,
)


def event(seq: int, type_: EventType, data: dict[str, object]) -> JobEvent:
    return JobEvent("job-1", seq, f"e{seq}", type_, data, 1700000000.0)


def test_a_frame_has_the_id_the_type_and_one_line_of_json() -> None:
    frame = format_event(event(3, EventType.STEP_PROGRESS, {"step": 0, "bytes_done": 10}))
    assert frame == (b'id: 3\nevent: step.progress\ndata: {"step":0,"bytes_done":10}\n\n')


def test_newlines_and_non_ascii_in_data_cannot_break_the_frame() -> None:
    data = {"error": "line one\nline two\r\n: not a comment\n\nid: 99", "name": "résumé\u2028.txt"}
    frame = format_event(event(7, EventType.JOB_FAILED, data))
    assert frame.endswith(b"\n\n") and frame.count(b"\n") == 4  # id, event, data, blank
    assert frame.isascii()
    lines = frame.decode().split("\n")
    assert lines[0] == "id: 7" and lines[1] == "event: job.failed"
    assert json.loads(lines[2].removeprefix("data: ")) == data


def test_the_heartbeat_is_a_comment() -> None:
    assert HEARTBEAT.startswith(b":") and HEARTBEAT.endswith(b"\n\n")


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, 0), ("", 0), ("  ", 0), ("0", 0), ("7", 7), (" 12 ", 12)]
)
def test_last_event_id(raw: str | None, expected: int) -> None:
    assert parse_last_event_id(raw) == expected


@pytest.mark.parametrize("raw", ["-1", "abc", "1.5", "²", "1e3", "9" * 19])
def test_a_last_event_id_that_is_not_a_seq_is_refused_with_the_reason(raw: str) -> None:
    with pytest.raises(LastEventIdError, match=r"Last-Event-ID .* is not an event id"):
        parse_last_event_id(raw)


class FakeConnection:
    """``receive`` of one request (a GET: one empty body message), then waits for a disconnect."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self.body_read = False
        self.pending = 0  # receive() calls started and not finished

    async def receive(self) -> dict[str, object]:
        if not self.body_read:
            self.body_read = True
            return {"type": "http.request", "body": b"", "more_body": False}
        self.pending += 1
        try:
            await self.gone.wait()
        finally:
            self.pending -= 1
        return {"type": "http.disconnect"}


async def test_client_gone_looks_without_waiting_and_leaves_nothing_pending() -> None:
    conn = FakeConnection()
    assert not client_gone(conn.receive)  # reads past the request body
    assert conn.body_read and conn.pending == 0
    assert not client_gone(conn.receive)
    conn.gone.set()
    assert client_gone(conn.receive)


async def test_the_poller_ends_streams_whose_client_left_from_one_task() -> None:
    poller = DisconnectPoller(every_s=0.01)
    conns = [FakeConnection() for _ in range(3)]
    ended: list[int] = []

    class Stream:
        def __init__(self, i: int) -> None:
            self.i = i

        def stop(self) -> None:
            ended.append(self.i)

    streams = [Stream(i) for i in range(3)]
    for stream, conn in zip(streams, conns, strict=True):
        poller.watch(stream, conn.receive)
    conns[1].gone.set()
    conns[2].gone.set()
    poller.unwatch(streams[2])  # it ended on its own first
    deadline = asyncio.get_running_loop().time() + 5
    while not ended:
        assert asyncio.get_running_loop().time() < deadline, "the disconnect went unnoticed"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert ended == [1] and len(poller) == 1
    assert all(c.pending == 0 for c in conns)
    poller.unwatch(streams[0])
    await asyncio.sleep(0.05)  # nothing watched: the task ends
    assert not poller.running
