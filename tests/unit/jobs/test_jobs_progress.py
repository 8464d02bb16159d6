"""Progress events: message round trip, throttling of step.progress."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from s3flow.errors import S3flowError
from s3flow.jobs.progress import ProgressMessage, ProgressPublisher, StepProgress
from s3flow.state.jobs import EventType


class FakeSqs:
    """Records send_message calls (unit test: the FIFO semantics are tested on the emulator)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_message(self, **kwargs: Any) -> dict[str, Any]:
        self.sent.append(kwargs)
        return {"MessageId": str(len(self.sent))}


def test_message_round_trip_and_bad_bodies() -> None:
    msg = ProgressMessage(job_id="j", event_id="j:e", type=EventType.STEP_STARTED, data={"step": 0})
    assert ProgressMessage.from_body(msg.to_body()) == msg
    for bad in ("", "{}", '{"job_id": "j", "event_id": "e", "type": "nope"}', "[1]"):
        with pytest.raises(S3flowError, match="not a progress event"):
            ProgressMessage.from_body(bad)


def test_publisher_groups_by_job_and_dedups_by_event_id() -> None:
    sqs = FakeSqs()
    pub = ProgressPublisher(sqs, "q", "job-1")
    asyncio.run(pub.publish("job-1:x", EventType.JOB_QUEUED, {}))
    asyncio.run(pub.publish("job-1:x", EventType.JOB_QUEUED, {}))
    a, b = sqs.sent
    assert a["MessageGroupId"] == "job-1"
    assert a["MessageDeduplicationId"] == b["MessageDeduplicationId"]
    assert len(a["MessageDeduplicationId"]) <= 128


def test_step_progress_is_throttled_and_the_last_is_forced() -> None:
    now = [0.0]
    sqs = FakeSqs()
    sp = StepProgress(
        ProgressPublisher(sqs, "q", "j"),
        step=1,
        attempt=2,
        interval_s=0.5,
        bytes_total=100,
        clock=lambda: now[0],
    )

    async def go() -> list[bool]:
        out = []
        sp.add(10)
        out.append(await sp.maybe_publish())  # too soon
        now[0] = 0.6
        out.append(await sp.maybe_publish())  # due
        now[0] = 2.0
        out.append(await sp.maybe_publish())  # nothing new
        sp.add(5)
        sp.file_done()
        out.append(await sp.maybe_publish(force=True))
        return out

    assert asyncio.run(go()) == [False, True, False, True]
    bodies = [ProgressMessage.from_body(m["MessageBody"]) for m in sqs.sent]
    assert [b.data["bytes_done"] for b in bodies] == [10, 15]
    assert bodies[-1].data == {
        "step": 1,
        "attempt": 2,
        "bytes_done": 15,
        "bytes_total": 100,
        "files_done": 1,
    }
    assert len({b.event_id for b in bodies}) == 2


def test_a_file_counts_its_stored_bytes_however_many_it_reports() -> None:
    """A gzip upload's processor reports decompressed bytes: 340,000 of a 877-byte file
    showed 38,000 % (bytes_done far above bytes_total)."""
    sp = StepProgress(
        ProgressPublisher(FakeSqs(), "q", "j"),
        step=0,
        attempt=1,
        interval_s=0.5,
        bytes_total=877 + 1000,
    )
    sp.start_file(877)
    for _ in range(20):
        sp.add(17_000)
        assert sp.bytes_done <= 877
    sp.file_done()
    assert sp.bytes_done == 877
    sp.start_file(1000)  # a plain file reporting part of itself, then done
    sp.add(400)
    assert sp.bytes_done == 877 + 400
    sp.file_done()
    assert (sp.bytes_done, sp.files_done) == (1877, 2)
    assert sp.data()["bytes_done"] <= sp.data()["bytes_total"]
