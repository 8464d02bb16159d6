"""``s3flow demo``: zero-setup end to end on the embedded local endpoint.

Starts moto server on loopback, provisions a bucket + queue + DLQ +
notification, uploads sample files (plain, gzip, multi-member gzip, zstd,
bz2, awkward keys, one corrupt file), runs the worker until the queue is
drained with a progress bar, and prints what happened to each file.
"""

from __future__ import annotations

import asyncio
import bz2
import gzip
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from s3flow.app import run_worker
from s3flow.aws import open_clients
from s3flow.errors import S3flowError
from s3flow.events import ObjectEvent
from s3flow.local import LocalEndpoint
from s3flow.metrics import WorkerMetrics
from s3flow.objects import zstd
from s3flow.processors.base import Result
from s3flow.provision import provision
from s3flow.settings import Settings, load_settings

DEMO_CONFIG: dict[str, Any] = {
    "pipelines": [
        {
            "name": "counts",
            "processor": "line-count",
            "bucket": "s3flow-demo-incoming",
            "prefix": "logs/",
            "queue": "s3flow-demo-events",
            "output": "s3://s3flow-demo-results/counts/",
            "concurrency": 16,
            "visibility_timeout_s": 30,
            "wait_time_s": 1,
            "max_receive_count": 3,
        }
    ]
}


def sample_files() -> dict[str, bytes]:
    """The demo's input objects (key -> bytes), one per interesting case."""
    text = "".join(f"{i:05d} GET /index.html 200 {i * 7 % 1000}ms\n" for i in range(5000))
    files = {
        "logs/plain.log": text.encode(),
        "logs/app.log.gz": gzip.compress(text.encode()),
        "logs/multi-member.gz": gzip.compress(b"first member\n" * 10)
        + gzip.compress(b"second member\n" * 5),
        "logs/events.ndjson.zst": zstd.compress(
            "".join(json.dumps({"n": i}) + "\n" for i in range(1000)).encode()
        ),
        "logs/archive.log.bz2": bz2.compress(text.encode() * 2),
        "logs/red flower+1 ünïcødé.txt": b"a key with a space, a plus and non-ASCII\n" * 3,
        "logs/no-trailing-newline.txt": b"line 1\nline 2",
        "logs/broken.gz": gzip.compress(text.encode())[:2000],  # truncated: dead-lettered
    }
    return files


@dataclass
class DemoObserver:
    """Feeds a Rich progress bar and remembers each object's fate."""

    progress: Progress
    task_id: Any
    outcomes: dict[str, str] = field(default_factory=dict)

    def object_started(self, pipeline: str, event: ObjectEvent) -> None:
        self.progress.update(self.task_id, description=f"processing {event.key[:40]}")

    def object_progress(self, pipeline: str, event: ObjectEvent, nbytes: int) -> None:
        return None

    def object_finished(
        self, pipeline: str, event: ObjectEvent, result: Result | None, error: S3flowError | None
    ) -> None:
        self.outcomes[event.key] = (
            "processed" if error is None else f"{error.disposition.value}: {error.error_class}"
        )
        self.progress.advance(self.task_id)

    def message_settled(self, pipeline: str, message: Any, outcome: Any) -> None:
        return None


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def _upload(settings: Settings, files: dict[str, bytes]) -> None:
    bucket = settings.pipelines[0].bucket
    async with open_clients(settings.aws) as clients:
        await asyncio.gather(
            *(clients.s3.put_object(Bucket=bucket, Key=k, Body=v) for k, v in files.items())
        )


async def _results(settings: Settings, keys: list[str]) -> dict[str, dict[str, Any]]:
    p = settings.pipelines[0]
    out_bucket, _, prefix = p.output[5:].partition("/")
    found: dict[str, dict[str, Any]] = {}
    async with open_clients(settings.aws) as clients:
        for key in keys:
            try:
                resp = await clients.s3.get_object(Bucket=out_bucket, Key=f"{prefix}{key}.json")
                async with resp["Body"] as body:
                    found[key] = json.loads(await body.read())
            except Exception:
                continue
    return found


def run_demo(console: Console | None = None, *, endpoint_url: str | None = None) -> int:
    """Run the demo; return the process exit code."""
    console = console or Console()
    files = sample_files()
    endpoint: LocalEndpoint | None = None
    if endpoint_url is None:
        console.print("[bold]1/5[/] starting the embedded AWS endpoint (moto server) ...")
        endpoint = LocalEndpoint().start()
        env = endpoint.env()
        console.print(f"      endpoint: {endpoint.url}")
    else:
        env = {"AWS_ENDPOINT_URL": endpoint_url}
    try:
        with _env(env):
            state_dir = tempfile.mkdtemp(prefix="s3flow-demo-")
            settings = load_settings(
                None, {**DEMO_CONFIG, "state": {"url": f"sqlite:{state_dir}/state.db"}}
            )
            console.print("[bold]2/5[/] provisioning bucket, queue, DLQ and notification ...")
            changes = asyncio.run(provision(settings))
            for c in changes:
                console.print(f"      {c.kind:<12} {c.name:<45} {c.action}")
            console.print(f"[bold]3/5[/] uploading {len(files)} sample files ...")
            asyncio.run(_upload(settings, files))
            console.print("[bold]4/5[/] running the worker until the queue is drained ...")
            metrics = _run_with_progress(console, settings, len(files))
            console.print("[bold]5/5[/] results")
            results = asyncio.run(_results(settings, list(files)))
            _print_table(console, files, results, metrics)
    finally:
        if endpoint is not None:
            endpoint.stop()
    return 0


def _run_with_progress(console: Console, settings: Settings, total: int) -> WorkerMetrics:
    with Progress(
        TextColumn("      {task.description:<50}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task_id = progress.add_task("waiting for notifications", total=total)
        observer = DemoObserver(progress, task_id)
        metrics = asyncio.run(run_worker(settings, burst=True, observer=observer))  # type: ignore[arg-type]
        progress.update(task_id, description="done")
    return metrics


def _print_table(
    console: Console,
    files: dict[str, bytes],
    results: dict[str, dict[str, Any]],
    metrics: WorkerMetrics,
) -> None:
    table = Table(title="s3flow demo: line-count results")
    for col in ("key", "encoding", "compressed", "uncompressed", "lines", "ms", "outcome"):
        table.add_column(col, justify="left" if col in ("key", "encoding", "outcome") else "right")
    for key in files:
        r = results.get(key)
        if r:
            table.add_row(
                key,
                r["encoding"],
                f"{r['compressed_bytes']:,}",
                f"{r['uncompressed_bytes']:,}",
                f"{r['lines']:,}",
                f"{r['processing_ms']:.1f}",
                "[green]written[/]",
            )
        else:
            table.add_row(key, "-", f"{len(files[key]):,}", "-", "-", "-", "[red]DLQ[/]")
    console.print(table)
    m = metrics.pipelines.get("counts")
    if m:
        console.print(
            f"processed {m.objects_processed}, dead-lettered {m.dead_lettered} "
            f"(corrupt input goes to the DLQ with its reason), retried {m.retried}, "
            f"test events acked {m.test_events}."
        )
