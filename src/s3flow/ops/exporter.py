"""Prometheus metrics and health for a running worker: ``/metrics``, ``/healthz``, ``/readyz``.

Served on ``[worker] metrics_port`` (off by default) by a small asyncio HTTP
server owned by the worker (``async with``). The counters are the worker's own
(:class:`~s3flow.metrics.WorkerMetrics`), read at scrape time, so the hot path
does no extra work; queue depths and the oldest in-flight record are sampled
in the background every ``sample_interval_s`` (SQS' own "age of oldest
message" is a CloudWatch metric, alarmed on by the CloudFormation export).

``/readyz`` answers 200 only while every queue and the state store answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import socket
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from s3flow.aws import queue_depths
from s3flow.closing import cancel_and_wait
from s3flow.errors import ConfigError
from s3flow.local.endpoint import connect_host, host_url
from s3flow.metrics import PROCESSING_BUCKETS_S, WorkerMetrics
from s3flow.state.base import StateStore

__all__ = ["MetricsServer", "QueueRef", "WorkerCollector"]

log = logging.getLogger("s3flow.metrics")

#: counter attribute of PipelineMetrics -> Prometheus name (without _total) and help.
COUNTERS: dict[str, tuple[str, str]] = {
    "messages_received": ("s3flow_messages_received", "Messages received from the queue."),
    "objects_processed": ("s3flow_processed", "Objects processed and acknowledged."),
    "duplicates": ("s3flow_duplicates", "Duplicate deliveries acknowledged without work."),
    "retried": ("s3flow_retried", "Messages returned to the queue for a retry."),
    "dead_lettered": ("s3flow_dead_lettered", "Messages sent to the dead-letter queue."),
    "quarantined": ("s3flow_quarantined", "Objects quarantined (bad input)."),
    "released": ("s3flow_released", "Messages released unprocessed (shutdown)."),
    "objects_skipped": ("s3flow_skipped", "Events skipped (filtered, removed, missing)."),
    "ack_failures": ("s3flow_ack_failures", "Deletes or visibility changes that failed."),
    "bytes_in": ("s3flow_bytes_in", "Bytes read from objects."),
}


@dataclass(frozen=True)
class QueueRef:
    """A queue whose depth the exporter samples."""

    pipeline: str
    url: str
    dlq_url: str = ""  # its dead-letter queue ("": none sampled)


@dataclass
class _Samples:
    """The latest background samples."""

    queues: dict[str, tuple[int, int]] = field(default_factory=dict)  # visible, in flight
    #: On the dead-letter queue: (visible, all: visible, held by a reader, delayed).
    dlqs: dict[str, tuple[int, int]] = field(default_factory=dict)
    oldest_s: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    at: float = 0.0


class WorkerCollector(Collector):
    """Turns a worker's counters and the latest samples into Prometheus metrics."""

    def __init__(self, metrics: WorkerMetrics, samples: _Samples) -> None:
        self._metrics = metrics
        self._samples = samples

    def collect(self) -> Iterator[Metric]:
        pipelines = sorted(self._metrics.pipelines.items())
        for attr, (name, doc) in COUNTERS.items():
            fam = CounterMetricFamily(name, doc, labels=["pipeline"])
            for pipeline, m in pipelines:
                fam.add_metric([pipeline], float(getattr(m, attr)))
            yield fam
        in_flight = GaugeMetricFamily(
            "s3flow_in_flight", "Messages received and not yet settled.", labels=["pipeline"]
        )
        hist = HistogramMetricFamily(
            "s3flow_processing_seconds",
            "Receive-to-settle time per message.",
            labels=["pipeline"],
        )
        for pipeline, m in pipelines:
            in_flight.add_metric([pipeline], float(m.in_flight))
            running = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip(
                (*PROCESSING_BUCKETS_S, float("inf")), m.processing_counts, strict=True
            ):
                running += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
            hist.add_metric([pipeline], buckets, m.processing_seconds_sum)
        yield in_flight
        yield hist
        visible = GaugeMetricFamily(
            "s3flow_queue_visible_messages",
            "Messages waiting in the queue (sampled).",
            labels=["pipeline"],
        )
        invisible = GaugeMetricFamily(
            "s3flow_queue_in_flight_messages",
            "Messages received by any consumer (sampled).",
            labels=["pipeline"],
        )
        for pipeline, (vis, inv) in sorted(self._samples.queues.items()):
            visible.add_metric([pipeline], float(vis))
            invisible.add_metric([pipeline], float(inv))
        yield visible
        yield invisible
        dead = GaugeMetricFamily(
            "s3flow_dlq_visible_messages",
            "Messages visible on the pipeline's dead-letter queue (sampled).",
            labels=["pipeline"],
        )
        dead_all = GaugeMetricFamily(
            "s3flow_dlq_messages",
            "Messages on the pipeline's dead-letter queue, also those a reader holds "
            "(dlq list, an interrupted redrive) and delayed ones (sampled): alert above 0.",
            labels=["pipeline"],
        )
        for pipeline, (vis, total) in sorted(self._samples.dlqs.items()):
            dead.add_metric([pipeline], float(vis))
            dead_all.add_metric([pipeline], float(total))
        yield dead
        yield dead_all
        failures = GaugeMetricFamily(
            "s3flow_sample_errors",
            "Reads of the last sample that failed (a queue, a dead-letter queue, the state "
            "store): their gauges are left out until they answer again; /readyz says why.",
        )
        failures.add_metric([], float(len(self._samples.errors)))
        yield failures
        oldest = GaugeMetricFamily(
            "s3flow_oldest_in_flight_age_seconds",
            "Age of the oldest record being processed, from the state store (sampled).",
            labels=["pipeline"],
        )
        for pipeline, age in sorted(self._samples.oldest_s.items()):
            oldest.add_metric([pipeline], age)
        yield oldest


#: Queue-depth requests one sample has on the wire at a time.
SAMPLE_CONCURRENCY = 8
#: How long ``/readyz`` waits for its checks: under the usual probe timeouts (5 s), so
#: an endpoint that does not answer gives a 503, not a probe timeout.
READY_TIMEOUT_S = 4.0
#: Header lines a request may have (a scrape sends a handful).
_MAX_HEADER_LINES = 100
_TOO_LARGE = (
    "431 Request Header Fields Too Large",
    "text/plain",
    b"request line or headers too large\n",
)


class MetricsServer:
    """``/metrics``, ``/healthz``, ``/readyz`` on ``host:port`` for one worker (``async with``)."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        *,
        sqs: Any,
        queues: Sequence[QueueRef],
        store: StateStore | None,
        host: str = "127.0.0.1",
        port: int = 9464,
        sample_interval_s: float = 15.0,
    ) -> None:
        self._sqs = sqs
        self._queues = list(queues)
        self._store = store
        self.host = host
        self.port = port
        self._interval = sample_interval_s
        self._samples = _Samples()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(WorkerCollector(metrics, self._samples))
        self._server: asyncio.Server | None = None
        self._sampler: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MetricsServer:
        """Listen on ``host:port`` (ConfigError if impossible), then start sampling."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise ConfigError(self._cannot_serve(exc)) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        await self.sample()
        self._sampler = asyncio.create_task(self._sample_loop(), name="s3flow-metrics-sampler")
        url = host_url(connect_host(self.host), self.port)
        log.info("metrics on %s/metrics (/healthz, /readyz)", url)
        return self

    def _cannot_serve(self, exc: OSError) -> str:
        """Why the metrics port cannot be served, and which setting to change."""
        where = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        reason = exc.strerror or str(exc)
        if isinstance(exc, socket.gaierror):
            return (
                f"cannot serve metrics on {where}: {reason}; set [worker] metrics_host to an "
                "address of this host (127.0.0.1, or 0.0.0.0 in a container)"
            )
        if exc.errno == errno.EADDRINUSE:
            return (
                f"cannot serve metrics on {where}: {reason}; set [worker] metrics_port "
                "(another worker on this host?)"
            )
        return (
            f"cannot serve metrics on {where}: {reason}; set [worker] metrics_host and "
            "metrics_port to an address and port this process may listen on"
        )

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._sampler)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.sample()

    async def sample(self) -> list[str]:
        """Read queue depths and the oldest in-flight record now; returns the errors.

        The queues and the state store are read concurrently, at most
        :data:`SAMPLE_CONCURRENCY` requests at a time (a worker of many pipelines would
        otherwise take a round trip per queue, dead-letter queue and oldest record); the
        errors keep the pipelines' order, a queue's before its dead-letter queue's, then
        the state store's first; one failing read does not stop the others.
        """
        limit = asyncio.Semaphore(SAMPLE_CONCURRENCY)
        reads: list[Awaitable[str | None]] = []
        for q in self._queues:  # gather keeps this order: a queue, then its DLQ
            reads.append(self._sample_queue(q, limit))
            if q.dlq_url:
                reads.append(self._sample_dlq(q, limit))
        oldest: list[Awaitable[str | None]] = []
        if self._store is not None:
            now = time.time()
            oldest = [self._sample_oldest(self._store, q, limit, now) for q in self._queues]
        results = await asyncio.gather(*reads, *oldest)
        errors = [err for err in results[: len(reads)] if err is not None]
        # One state store behind every pipeline: its first error says it all.
        errors += [err for err in results[len(reads) :] if err is not None][:1]
        self._samples.errors = errors
        self._samples.at = time.monotonic()
        return errors

    async def _sample_oldest(
        self, store: StateStore, q: QueueRef, limit: asyncio.Semaphore, now: float
    ) -> str | None:
        """Sample the age of one pipeline's oldest in-flight record; the error, if any."""
        try:
            async with limit:
                oldest = await store.oldest_processing_at(q.pipeline)
        except Exception as exc:
            self._samples.oldest_s.pop(q.pipeline, None)  # no stale age
            return f"state store: {exc}"
        self._samples.oldest_s[q.pipeline] = max(0.0, now - oldest) if oldest else 0.0
        return None

    async def _sample_queue(self, q: QueueRef, limit: asyncio.Semaphore) -> str | None:
        """Sample one queue's depth; the error, if any."""
        try:
            async with limit:
                depths = await queue_depths(self._sqs, q.url)
            self._samples.queues[q.pipeline] = (depths.visible, depths.in_flight)
        except Exception as exc:  # any failure makes the worker unready, with the reason
            self._samples.queues.pop(q.pipeline, None)  # no stale depth
            return f"queue of {q.pipeline}: {exc}"
        return None

    async def _sample_dlq(self, q: QueueRef, limit: asyncio.Semaphore) -> str | None:
        """Sample one dead-letter queue's depth; the error, if any."""
        try:  # a DLQ gone: every dead-letter of the pipeline would fail (and retry)
            async with limit:
                depths = await queue_depths(self._sqs, q.dlq_url)
            self._samples.dlqs[q.pipeline] = (depths.visible, depths.total)
        except Exception as exc:
            self._samples.dlqs.pop(q.pipeline, None)  # no stale depth (a 0 would look fine)
            return f"dead-letter queue of {q.pipeline}: {exc}"
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request = await asyncio.wait_for(reader.readline(), timeout=10)
                for _ in range(_MAX_HEADER_LINES + 1):
                    line = await asyncio.wait_for(reader.readline(), timeout=10)
                    if line in (b"\r\n", b"\n", b""):
                        break
                else:
                    raise ValueError("too many header lines")
            except ValueError:  # a line over the reader's limit (64 KiB), or too many
                status, ctype, body = _TOO_LARGE
                method = ""
            else:
                parts = request.decode("latin-1").split()
                method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
                status, ctype, body = await self._route(method, path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            return "200 OK", "application/json", b'{"status":"alive"}\n'
        if path == "/readyz":
            try:
                errors = await asyncio.wait_for(self.sample(), READY_TIMEOUT_S)
            except TimeoutError:
                errors = [
                    f"the queues and the state store did not all answer within "
                    f"{READY_TIMEOUT_S:g}s (is the endpoint reachable?)"
                ]
            doc = {"status": "ready" if not errors else "not ready", "errors": errors}
            status = "200 OK" if not errors else "503 Service Unavailable"
            return status, "application/json", (json.dumps(doc) + "\n").encode()
        return "404 Not Found", "text/plain", b"try /metrics, /healthz or /readyz\n"
