"""Batched acks checked entry by entry, receive-error backoff, several pipelines at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from itest_support import Harness, wait_for

from s3flow.app import build_runtimes
from s3flow.aws import open_clients
from s3flow.errors import ReceiveFailedError
from s3flow.local.endpoint import LocalEndpoint
from s3flow.metrics import PipelineMetrics
from s3flow.provisioning import provision
from s3flow.settings import Settings, load_settings
from s3flow.worker.acks import AckBatcher
from s3flow.worker.engine import BURST_RECEIVE_ATTEMPTS, Worker

pytestmark = pytest.mark.integration


def test_delete_batch_checks_every_entry(harness: Harness) -> None:
    settings = harness.configure()
    for i in range(12):
        harness.sqs.send_message(QueueUrl=harness.queue_url, MessageBody=f"m{i}")
    handles: list[str] = []
    while len(handles) < 12:
        resp = harness.sqs.receive_message(QueueUrl=harness.queue_url, MaxNumberOfMessages=10)
        handles += [m["ReceiptHandle"] for m in resp.get("Messages", [])]

    async def go() -> tuple[list[bool], PipelineMetrics]:
        metrics = PipelineMetrics()
        async with (
            open_clients(settings.aws) as clients,
            AckBatcher(clients.sqs, harness.queue_url, window_s=0.05, metrics=metrics) as acks,
        ):
            results = await asyncio.gather(
                *(acks.delete(h) for h in handles), acks.delete("not-a-real-receipt-handle")
            )
        return list(results), metrics

    results, metrics = asyncio.run(go())
    assert results[:12] == [True] * 12
    assert results[12] is False  # the Failed entry is reported, not assumed deleted
    assert metrics.ack_failures == 1
    assert harness.depth() == (0, 0)


def _provisioned(ep: LocalEndpoint, tmp_path: Path, name: str) -> Settings:
    """One pipeline on ``ep`` (queue ``NAME-q``), provisioned; AWS calls tried once."""
    settings = load_settings(
        None,
        {
            "aws": {"endpoint_url": ep.url, "max_attempts": 1, "connect_timeout_s": 1},
            # One poller: the back-off and the give-up count are each poller's own.
            "worker": {"pollers_per_pipeline": 1},
            "pipelines": [
                {
                    "name": "p",
                    "bucket": f"{name}-bucket",
                    "queue": f"{name}-q",
                    "output": str(tmp_path),
                    "wait_time_s": 1,
                }
            ],
        },
    )
    asyncio.run(provision(settings))
    return settings


def test_receive_errors_back_off_instead_of_spinning(tmp_path) -> None:
    """The endpoint dies under a running worker: polling backs off, then shuts down cleanly."""
    ep = LocalEndpoint().start()
    try:
        settings = _provisioned(ep, tmp_path, "dying")

        async def go() -> tuple[int, float]:
            async with open_clients(settings.aws) as clients:
                runtimes = await build_runtimes(settings, clients)
                worker = Worker(clients, runtimes, settings.worker)
                task = asyncio.create_task(worker.run())
                await asyncio.sleep(0)  # let the worker start polling
                ep.stop()  # the endpoint goes away: connection refused from now on
                t0 = time.monotonic()
                while worker.metrics.for_pipeline("p").receive_errors < 3:
                    await asyncio.sleep(0.05)
                    assert time.monotonic() - t0 < 30, "no receive errors seen"
                elapsed = time.monotonic() - t0
                errors = worker.metrics.for_pipeline("p").receive_errors
                worker.stop()
                await asyncio.wait_for(task, 10)
                return errors, elapsed

        errors, elapsed = asyncio.run(go())
        # Backoff doubles from 0.5 s with equal jitter: 3 errors need >= 0.5 + 1.0 s.
        assert elapsed >= 1.4, elapsed
        assert errors < 10
    finally:
        ep.stop()


def test_burst_mode_gives_up_on_a_queue_it_cannot_read(tmp_path) -> None:
    """The endpoint dies under a burst worker: a clear error after a few tries, not forever."""
    ep = LocalEndpoint().start()
    try:
        settings = _provisioned(ep, tmp_path, "gone")

        async def go() -> tuple[BaseException | None, int]:
            async with open_clients(settings.aws) as clients:
                runtimes = await build_runtimes(settings, clients)
                worker = Worker(clients, runtimes, settings.worker, burst=True)
                task = asyncio.create_task(worker.run())
                await asyncio.sleep(0)  # let the worker start polling
                ep.stop()
                done, _ = await asyncio.wait({task}, timeout=60)
                assert done, "the burst worker did not give up"
                return task.exception(), worker.metrics.for_pipeline("p").receive_errors

        err, errors = asyncio.run(go())
        assert isinstance(err, ReceiveFailedError), err
        assert "gone-q" in str(err) and "4 attempts in a row" in str(err)
        assert errors >= BURST_RECEIVE_ATTEMPTS  # each poller counts its own
    finally:
        ep.stop()


def test_several_pipelines_in_one_worker(harness: Harness, tmp_path) -> None:
    first = harness.configure()
    other = Harness(harness.endpoint, harness.s3, harness.sqs, tmp_path)
    second = other.configure(prefix="in/")
    settings = load_settings(
        None,
        {
            "pipelines": [
                first.pipelines[0].model_dump(),
                {**second.pipelines[0].model_dump(), "name": "second"},
            ]
        },
    )
    harness.put("a.txt", b"1\n")
    other.put("in/b.txt", b"1\n2\n")
    harness.settings = settings
    m = harness.run()
    assert m.pipelines["p"].objects_processed == 1
    assert m.pipelines["second"].objects_processed == 1
    assert harness.result("a.txt") is not None
    r = other.result("in/b.txt")
    assert r is not None and r["lines"] == 2
    wait_for(lambda: harness.depth() == (0, 0) and other.depth() == (0, 0), 5, "both drained")
