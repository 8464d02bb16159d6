"""Counters a worker keeps per pipeline (printed by the CLI, used by tests and benches)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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

    def as_dict(self) -> dict[str, int]:
        """Plain dict, for JSON output."""
        return asdict(self)


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
