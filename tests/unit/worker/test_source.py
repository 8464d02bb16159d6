"""QueueSource: failed receives back off, and give up only when told to."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from botocore.exceptions import ClientError

from s3flow.errors import ReceiveFailedError
from s3flow.metrics import PipelineMetrics
from s3flow.worker.source import QueueSource, Slots


class _FailingSqs:
    """ReceiveMessage always fails with AccessDenied; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        raise ClientError(
            {"Error": {"Code": "AccessDenied", "Message": "not yours"}}, "ReceiveMessage"
        )


def _source(sqs: _FailingSqs, metrics: PipelineMetrics) -> QueueSource:
    return QueueSource(
        sqs,
        "http://sqs/q-1",
        Slots(4),
        lambda msg: None,
        wait_time_s=1,
        metrics=metrics,
        backoff_base_s=0.001,
        backoff_max_s=0.01,
    )


async def _nothing() -> None:
    return None


async def test_gives_up_after_the_given_failures_with_a_clear_error() -> None:
    sqs, metrics = _FailingSqs(), PipelineMetrics()
    with pytest.raises(ReceiveFailedError) as caught:
        await _source(sqs, metrics).run(asyncio.Event(), _nothing, give_up_after=3)
    assert sqs.calls == 3 and metrics.receive_errors == 3
    text = str(caught.value)
    assert "http://sqs/q-1" in text and "3 attempts in a row" in text and "AccessDenied" in text


async def test_without_a_limit_it_keeps_trying_until_stopped() -> None:
    sqs, metrics = _FailingSqs(), PipelineMetrics()
    stop = asyncio.Event()
    task = asyncio.create_task(_source(sqs, metrics).run(stop, _nothing))
    for _ in range(2000):
        if sqs.calls >= 10:
            break
        await asyncio.sleep(0.005)
    stop.set()
    await asyncio.wait_for(task, 5)  # returns normally: no error raised
    assert sqs.calls >= 10


class _FlakySqs(_FailingSqs):
    """Answers the first receive (empty), then fails every time."""

    async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        if self.calls == 0:
            self.calls += 1
            return {}
        return await super().receive_message(**kwargs)


async def test_after_a_good_receive_it_tries_three_times_as_long() -> None:
    sqs, metrics = _FlakySqs(), PipelineMetrics()
    with pytest.raises(ReceiveFailedError, match="9 attempts in a row"):
        await _source(sqs, metrics).run(asyncio.Event(), _nothing, give_up_after=3)
    assert metrics.receive_errors == 9
