"""The event-stream wire format and Last-Event-ID."""

from __future__ import annotations

import json

import pytest

from s3flow.state.jobs import EventType, JobEvent
from s3flow.web.sse import HEARTBEAT, LastEventIdError, format_event, parse_last_event_id


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
