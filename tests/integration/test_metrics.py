"""Prometheus /metrics, /healthz and /readyz of a running worker, scraped over HTTP."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from itest_support import Harness, spawn_worker, wait_for
from prometheus_client.parser import text_string_to_metric_families

from s3flow.local.endpoint import free_port

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
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        harness.sqs.delete_queue(QueueUrl=harness.dlq_url)
        not_ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert not_ready.status_code == 503
        assert not_ready.json()["errors"][0].startswith("dead-letter queue of p:"), not_ready.text
        harness.sqs.delete_queue(QueueUrl=harness.queue_url)
        not_ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert not_ready.status_code == 503
        assert not_ready.json()["errors"][0].startswith("queue of p:"), not_ready.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
