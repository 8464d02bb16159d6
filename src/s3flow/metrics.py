"""Counters a worker keeps per pipeline (printed by the CLI, used by tests and benches)."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import asdict, dataclass, field

#: Upper bounds of the processing-time histogram's buckets (seconds).
PROCESSING_BUCKETS_S: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
)


@dataclass
class PipelineMetrics:
    """Monotonic counters for one pipeline."""

    messages_received: int = 0
    objects_processed: int = 0
    objects_skipped: int = 0  # filtered, removed-events, missing objects, parked
    duplicates: int = 0  # already completed: acked without work
    quarantined: int = 0
    test_events: int = 0
    acked: int = 0
    retried: int = 0
    dead_lettered: int = 0
    released: int = 0
    ack_failures: int = 0
    visibility_extensions: int = 0
    receive_errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    max_in_flight: int = 0
    in_flight: int = 0  # a gauge: messages received and not yet settled
    #: Receive-to-settle seconds per message: counts per bucket of PROCESSING_BUCKETS_S
    #: (the last is +Inf), their sum.
    processing_counts: list[int] = field(
        default_factory=lambda: [0] * (len(PROCESSING_BUCKETS_S) + 1)
    )
    processing_seconds_sum: float = 0.0

    def observe_processing(self, seconds: float) -> None:
        """Count one settled message's receive-to-settle time."""
        self.processing_seconds_sum += seconds
        self.processing_counts[bisect_left(PROCESSING_BUCKETS_S, seconds)] += 1

    def as_dict(self) -> dict[str, int]:
        """Plain dict of the counters, for JSON output."""
        out = asdict(self)
        out.pop("processing_counts")
        out.pop("processing_seconds_sum")
        return out


@dataclass
class WorkerMetrics:
    """Counters of every pipeline of one worker."""

    pipelines: dict[str, PipelineMetrics] = field(default_factory=dict)

    def for_pipeline(self, name: str) -> PipelineMetrics:
        """The counters of pipeline ``name`` (created on first use)."""
        return self.pipelines.setdefault(name, PipelineMetrics())

    def total(self, counter: str) -> int:
        """Sum of one counter over all pipelines."""
        return sum(int(getattr(m, counter)) for m in self.pipelines.values())


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    Reads ``VmHWM`` from /proc (the high-water mark of this process's own
    memory). ``ru_maxrss`` is only the fallback: on Linux it also carries the
    parent's RSS at fork time across exec, which inflates small processes.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
