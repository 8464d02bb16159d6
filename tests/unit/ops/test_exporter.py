"""The metrics server: oversized requests over a real socket get an answer, not a traceback;
sampling (with fakes of SQS and the state store) reads concurrently."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from prometheus_client import generate_latest

from s3flow.metrics import WorkerMetrics
from s3flow.ops.exporter import SAMPLE_CONCURRENCY, MetricsServer, QueueRef


async def _ask(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /healthz HTTP/1.1\r\nX-A: " + b"a" * 70_000 + b"\r\n\r\n",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n" + b"X-A: 1\r\n" * 500 + b"\r\n",
    ],
    ids=["long header", "long path", "many headers"],
)
async def test_an_oversized_request_is_answered_431_and_the_server_goes_on(
    raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with MetricsServer(WorkerMetrics(), sqs=None, queues=[], store=None, port=0) as srv:
        answer = await _ask(srv.port, raw)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        ok = await _ask(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and b'"alive"' in ok
    assert not [r for r in caplog.records if r.exc_info]  # no traceback logged


class _Sqs:
    async def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        return {"Attributes": {"ApproximateNumberOfMessages": "1"}}


class _SlowStore:
    """oldest_processing_at takes ``delay_s``; pipelines in ``failing`` raise."""

    def __init__(self, delay_s: float, failing: set[str]) -> None:
        self.delay_s, self.failing = delay_s, failing
        self.at_once = self.most_at_once = 0
        self.oldest_at = time.time() - 30  # one record, 30 s old when the store is made

    async def oldest_processing_at(self, pipeline: str | None = None) -> float | None:
        self.at_once += 1
        self.most_at_once = max(self.most_at_once, self.at_once)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.at_once -= 1
        if pipeline in self.failing:
            raise RuntimeError(f"store down for {pipeline}")
        return self.oldest_at


async def test_the_oldest_records_are_sampled_concurrently_and_one_store_error_is_kept() -> None:
    store = _SlowStore(0.2, failing={"p03", "p05"})
    queues = [QueueRef(f"p{i:02d}", f"http://q/{i}") for i in range(12)]
    server = MetricsServer(WorkerMetrics(), sqs=_Sqs(), queues=queues, store=store)  # type: ignore[arg-type]
    errors = await server.sample()
    assert store.most_at_once == SAMPLE_CONCURRENCY  # 12 reads, at most 8 at a time
    assert errors == ["state store: store down for p03"]
    ages = server._samples.oldest_s
    assert sorted(ages) == [f"p{i:02d}" for i in range(12) if i not in (3, 5)]
    # The sample starts after the store was made: each age is at least 30 s, whatever
    # the reads took (a loaded machine slows them, not the record's age).
    assert all(30 <= age < 60 for age in ages.values())


class _Depths:
    """Queue attributes by URL; URLs in ``failing`` raise."""

    def __init__(self, attrs: dict[str, dict[str, str]]) -> None:
        self.attrs, self.failing = attrs, set[str]()

    async def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        if kwargs["QueueUrl"] in self.failing:
            raise RuntimeError("NonExistentQueue")
        return {"Attributes": self.attrs[kwargs["QueueUrl"]]}


def _gauges(server: MetricsServer) -> dict[str, float]:
    text = generate_latest(server.registry).decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("s3flow_dlq", "s3flow_queue", "s3flow_sample"))
    }


async def test_a_dlq_whose_messages_a_reader_holds_is_not_reported_empty() -> None:
    """``dlq list`` (30 s) or an interrupted redrive (its lease) hides the DLQ's
    messages: the visible count is then 0, so an alert on it cleared while 28 waited."""
    sqs = _Depths(
        {
            "q": {"ApproximateNumberOfMessages": "2"},
            "d": {
                "ApproximateNumberOfMessages": "0",
                "ApproximateNumberOfMessagesNotVisible": "28",
            },
        }
    )
    server = MetricsServer(WorkerMetrics(), sqs=sqs, queues=[QueueRef("p", "q", "d")], store=None)  # type: ignore[arg-type]
    assert await server.sample() == []
    g = _gauges(server)
    assert g['s3flow_dlq_visible_messages{pipeline="p"}'] == 0
    assert g['s3flow_dlq_messages{pipeline="p"}'] == 28
    assert g['s3flow_queue_visible_messages{pipeline="p"}'] == 2
    assert g["s3flow_sample_errors"] == 0


async def test_a_failed_read_leaves_its_gauge_out_instead_of_the_last_value() -> None:
    sqs = _Depths({"q": {"ApproximateNumberOfMessages": "5"}, "d": {}})
    server = MetricsServer(WorkerMetrics(), sqs=sqs, queues=[QueueRef("p", "q", "d")], store=None)  # type: ignore[arg-type]
    await server.sample()
    assert _gauges(server)['s3flow_queue_visible_messages{pipeline="p"}'] == 5
    sqs.failing = {"q", "d"}  # both deleted while the worker runs
    assert len(await server.sample()) == 2
    g = _gauges(server)
    assert g == {"s3flow_sample_errors": 2}, g
