"""Prometheus /metrics, /healthz and /readyz of a running worker, scraped over HTTP."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from itest_support import Harness, spawn_worker, wait_for
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from s3flow.aws import open_clients
from s3flow.local.endpoint import LocalEndpoint, free_port
from s3flow.local.latency import LatencyProxy
from s3flow.metrics import WorkerMetrics
from s3flow.ops.exporter import SAMPLE_CONCURRENCY, MetricsServer, QueueRef
from s3flow.settings.base import AwsSettings

pytestmark = pytest.mark.integration


def _scrape(port: int) -> dict[tuple[str, str], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, s.labels.get("pipeline", "") + s.labels.get("le", ""))] = s.value
    return out


def test_counters_match_the_work_done_and_readiness_follows_the_queue(
    harness: Harness, tmp_path: Path
) -> None:
    harness.configure()
    cfg = harness.write_config()
    port = free_port()
    text = cfg.read_text().replace(
        "[worker]\n", f"[worker]\nmetrics_port = {port}\nmetrics_sample_s = 0.5\n", 1
    )
    cfg.write_text(text)
    for i in range(5):
        harness.put(f"m/{i}.txt", b"a\nb\n")
    harness.put("m/5.txt", b"c\n")
    proc: Any = spawn_worker(cfg, tmp_path / "worker.log")
    try:
        wait_for(lambda: all(harness.result(f"m/{i}.txt") for i in range(6)), 60, "results")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200

        def settled() -> dict[tuple[str, str], float] | None:
            m = _scrape(port)
            return m if m.get(("s3flow_processed_total", "p"), 0) == 6 else None

        m = wait_for(settled, 60, "the counters to reach the work done")
        assert m[("s3flow_messages_received_total", "p")] == 6
        assert m[("s3flow_processing_seconds_count", "p")] == 6
        assert m[("s3flow_processing_seconds_bucket", "p+Inf")] == 6
        assert m[("s3flow_processing_seconds_sum", "p")] > 0
        assert m[("s3flow_in_flight", "p")] == 0
        assert m[("s3flow_duplicates_total", "p")] == 0
        assert m[("s3flow_dead_lettered_total", "p")] == 0
        wait_for(
            lambda: _scrape(port).get(("s3flow_queue_visible_messages", "p")) == 0, 30, "sample"
        )
        assert m[("s3flow_dlq_visible_messages", "p")] == 0
        assert m[("s3flow_dlq_messages", "p")] == 0
        assert m[("s3flow_sample_errors", "")] == 0
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        harness.sqs.delete_queue(QueueUrl=harness.dlq_url)
        not_ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert not_ready.status_code == 503
        assert not_ready.json()["errors"][0].startswith("dead-letter queue of p:"), not_ready.text
        # The DLQ's gauges are left out (its last 0 would look healthy), and the failure
        # is a metric of its own.
        m = _scrape(port)
        assert ("s3flow_dlq_messages", "p") not in m and (
            "s3flow_dlq_visible_messages",
            "p",
        ) not in m
        assert m[("s3flow_sample_errors", "")] == 1
        harness.sqs.delete_queue(QueueUrl=harness.queue_url)
        not_ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert not_ready.status_code == 503
        assert not_ready.json()["errors"][0].startswith("queue of p:"), not_ready.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


async def test_queue_depths_are_sampled_concurrently_in_order(
    endpoint: LocalEndpoint, sqs: Any
) -> None:
    """Every request of a sample waits ``delay`` at a latency proxy: one after another
    a sample of 12 queues and their DLQs would take 24 delays, at most
    SAMPLE_CONCURRENCY at a time it takes 3. The errors keep the pipelines' order."""
    run = uuid.uuid4().hex[:6]
    refs: list[QueueRef] = []
    for i in range(12):
        url = sqs.create_queue(QueueName=f"conc-{run}-{i:02d}")["QueueUrl"]
        dlq = sqs.create_queue(QueueName=f"conc-{run}-{i:02d}-dlq")["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="x" * (i + 1))
        refs.append(QueueRef(f"p{i:02d}", url, dlq))
    gone = sqs.create_queue(QueueName=f"conc-{run}-gone")["QueueUrl"]
    sqs.delete_queue(QueueUrl=gone)
    # the 4th pipeline's queue and the 8th's DLQ fail; the others are still sampled
    refs[3] = QueueRef("p03", gone, refs[3].dlq_url)
    refs[7] = QueueRef("p07", refs[7].url, gone)
    delay = 0.5
    async with (
        LatencyProxy(endpoint.port, delay_s=delay) as proxy,
        open_clients(AwsSettings(endpoint_url=proxy.url)) as clients,
    ):
        server = MetricsServer(WorkerMetrics(), sqs=clients.sqs, queues=refs, store=None)
        await server.sample()  # warm up the connections
        proxy.reset()
        start = time.monotonic()
        errors = await server.sample()
        took = time.monotonic() - start
    assert proxy.requests == 24
    rounds = -(-24 // SAMPLE_CONCURRENCY)
    assert took >= rounds * delay * 0.95, f"{took:.2f}s: more than the bound at a time"
    # One after another takes at least 24 delays; the bound is half that, so a loaded
    # machine (the proxy's delay, not the work, sets the time) does not fail it.
    assert took < 12 * delay, f"{took:.2f}s: the queues were not sampled concurrently"
    assert [e.split(":")[0] for e in errors] == ["queue of p03", "dead-letter queue of p07"]
    visible: dict[str, float] = {}
    dead: dict[str, float] = {}
    for fam in text_string_to_metric_families(generate_latest(server.registry).decode()):
        for sample in fam.samples:
            if sample.name == "s3flow_queue_visible_messages":
                visible[sample.labels["pipeline"]] = sample.value
            elif sample.name == "s3flow_dlq_visible_messages":
                dead[sample.labels["pipeline"]] = sample.value
    assert sorted(visible) == [f"p{i:02d}" for i in range(12) if i != 3]
    assert set(visible.values()) == {1.0}
    assert sorted(dead) == [f"p{i:02d}" for i in range(12) if i != 7]
