"""``/metrics`` of the web app: Prometheus text built from the running parts at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from s3flow.web.runtime import WebRuntime

__all__ = ["PROMETHEUS_TYPE", "web_metrics"]

PROMETHEUS_TYPE = CONTENT_TYPE_LATEST


class _WebCollector(Collector):
    def __init__(self, runtime: WebRuntime | None) -> None:
        self._rt = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self._rt
        subs = GaugeMetricFamily("s3flow_web_sse_subscribers", "Open event streams (all jobs).")
        subs.add_metric([], float(rt.hub.subscriber_count() if rt else 0))
        yield subs
        jobs = GaugeMetricFamily(
            "s3flow_web_streamed_jobs", "Jobs with at least one open stream (one reader each)."
        )
        jobs.add_metric([], float(rt.hub.channel_count() if rt else 0))
        yield jobs
        consumed = CounterMetricFamily(
            "s3flow_web_progress_events",
            "Progress events this process moved from the progress queue into the store.",
        )
        consumed.add_metric([], float(rt.consumer.consumed if rt and rt.consumer else 0))
        yield consumed


def web_metrics(runtime: WebRuntime | None) -> bytes:
    """The Prometheus text for one scrape (``runtime`` None: before start-up)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WebCollector(runtime))
    return generate_latest(registry)
