"""``s3flow demo``: zero-setup end to end on the embedded local endpoint.

Starts moto server on loopback, provisions buckets + queues + DLQs +
notifications, and runs three pipelines, each with a progress bar and a
results table:

1. ``line-count`` on sample files (plain, gzip, multi-member gzip, zstd, bz2,
   awkward keys, one corrupt file that is dead-lettered with its reason);
2. ``ndjson-to-parquet``: NDJSON files over two dates (one invalid, so
   quarantined) -> manifests -> Parquet parts, read back and counted;
3. ``csv-to-kafka`` (when Java 17+ is present: a private Kafka broker on
   127.0.0.1): a gzip CSV streamed into a topic exactly once, read back with
   ``read_committed``;
4. ``text-to-pdf`` with routing (:mod:`.pdf`): two files, one run in the process
   pool and one by ``s3flow run`` in its own process, by their metadata;
5. an upload job (:mod:`.jobs`): three files through `s3flow web`'s API and a
   template, its live event stream printed.
"""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from s3flow.app import run_worker
from s3flow.aws import open_clients
from s3flow.errors import S3flowError
from s3flow.events import ObjectEvent
from s3flow.local.demo.jobs import jobs_stage
from s3flow.local.demo.pdf import pdf_stage
from s3flow.local.endpoint import LOCAL_CREDENTIALS, LocalEndpoint, interrupt_on_signals
from s3flow.metrics import WorkerMetrics
from s3flow.objects import zstd
from s3flow.processors.base import Result
from s3flow.provisioning import provision
from s3flow.settings import Settings, load_settings
from s3flow.state.records import FileStatus

IN_BUCKET = "s3flow-demo-incoming"
OUT_BUCKET = "s3flow-demo-results"
_COMMON: dict[str, Any] = {"visibility_timeout_s": 30, "wait_time_s": 1, "max_receive_count": 3}
DEMO_CONFIG: dict[str, Any] = {
    "pipelines": [
        {
            **_COMMON,
            "name": "counts",
            "processor": "line-count",
            "bucket": IN_BUCKET,
            "prefix": "logs/",
            "queue": "s3flow-demo-events",
            "output": f"s3://{OUT_BUCKET}/counts/",
            "concurrency": 16,
        },
        {
            **_COMMON,
            "name": "events",
            "processor": "ndjson-manifest",
            "bucket": IN_BUCKET,
            "prefix": "events/",
            "queue": "s3flow-demo-ndjson",
            "output": f"s3://{OUT_BUCKET}/unused/",
            "concurrency": 16,
            "options": {
                "min_bytes": 100,
                "manifest_max_files": 10,
                "manifest_bucket": OUT_BUCKET,
                "manifest_prefix": "manifests/",
                "seal_on_stop": True,
            },
        },
        {
            **_COMMON,
            "name": "compact",
            "processor": "parquet-compact",
            "bucket": OUT_BUCKET,
            "prefix": "manifests/",
            "suffix": ".json",
            "queue": "s3flow-demo-compact",
            "output": f"s3://{OUT_BUCKET}/lake/",
            "concurrency": 2,
            "options": {"processes": 2},
        },
    ]
}
KAFKA_PIPELINE: dict[str, Any] = {
    **_COMMON,
    "name": "orders",
    "processor": "csv-to-kafka",
    "bucket": IN_BUCKET,
    "prefix": "orders/",
    "queue": "s3flow-demo-csv",
    "output": f"s3://{OUT_BUCKET}/unused/",
    "concurrency": 2,
    "options": {"topic": "s3flow-demo-orders", "key_column": "order_id"},
}
NDJSON_DATES = ("2026-11-22", "2026-11-23")
CSV_ROWS = 20_000
#: The sample file that is dead-lettered (truncated gzip); every other one is written.
BROKEN_KEY = "logs/broken.gz"
#: Rows stage 2 must write to Parquet: 24 valid files of 100 lines.
NDJSON_ROWS = 2400


class DemoCheckError(S3flowError):
    """The demo's results are not what it expects (wrong endpoint, lost outputs)."""


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


def ndjson_files() -> dict[str, bytes]:
    """Stage 2's input: 24 NDJSON files over two dates (some gzip) and one invalid file."""
    files: dict[str, bytes] = {}
    for n in range(24):
        day = NDJSON_DATES[n % 2]
        rows = "".join(
            json.dumps({"id": n * 100 + r, "date": day, "user": f"u{r % 7}", "ms": r * 1.5}) + "\n"
            for r in range(100)
        ).encode()
        files[f"events/{day}/part-{n:03d}.ndjson"] = gzip.compress(rows) if n % 3 == 0 else rows
    files[f"events/{NDJSON_DATES[0]}/broken.ndjson"] = b'[1, 2, 3]\n{"id": 1}\n' * 10
    return files


def csv_object() -> bytes:
    """Stage 3's input: a gzip CSV with a header row and CSV_ROWS orders."""
    lines = ["order_id,sku,qty,note"]
    lines += [f'{i},SKU-{i % 97:03d},{i % 5 + 1},"gift, wrapped"' for i in range(CSV_ROWS)]
    return gzip.compress(("\n".join(lines) + "\n").encode())


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
    """``values`` in the environment; every ``AWS_ENDPOINT_URL_<SERVICE>`` cleared (they
    would win over ``AWS_ENDPOINT_URL`` and send the demo to other servers)."""
    cleared = [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL_") and k not in values]
    old = {k: os.environ.get(k) for k in [*values, *cleared]}
    for k in cleared:
        del os.environ[k]
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
    bucket = IN_BUCKET
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
            except ClientError as exc:
                if _error_code(exc) not in ("NoSuchKey", "404"):
                    raise
                continue  # no output: the caller checks against what it expects
            async with resp["Body"] as body:
                found[key] = json.loads(await body.read())
    return found


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _external_env(endpoint_url: str) -> dict[str, str]:
    """The environment for ``--endpoint-url``: the local credentials and region when none
    are configured (an emulator accepts any)."""
    env = {"AWS_ENDPOINT_URL": endpoint_url}
    shared = Path(
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials"
    )
    if not (
        os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE") or shared.is_file()
    ):
        env.update(LOCAL_CREDENTIALS)
    if not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        env["AWS_REGION"] = "us-east-1"
    return env


def run_demo(console: Console | None = None, *, endpoint_url: str | None = None) -> int:
    """Run the demo; return the process exit code.

    SIGTERM is handled like Ctrl-C (SIGINT): the demo stops, its local servers (the
    embedded endpoint, the Kafka broker) are stopped and waited for, and 128 + the
    signal's number is returned (130 for Ctrl-C), so ``scripts/demo && ...`` stops.
    Results that are not what the demo expects: a message and 1.
    """
    console = console or Console()
    with interrupt_on_signals():
        try:
            _run_demo(console, endpoint_url)
        except KeyboardInterrupt as exc:
            console.print("interrupted: the demo's local servers are stopped")
            return 128 + _signum(exc)
        except DemoCheckError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            return 1
    return 0


def _signum(exc: KeyboardInterrupt) -> int:
    """The signal behind ``exc`` (:func:`interrupt_on_signals` names it), else SIGINT."""
    name = str(exc.args[0]) if exc.args else ""
    try:
        return int(signal.Signals[name])
    except KeyError:
        return int(signal.SIGINT)


def _run_demo(console: Console, endpoint_url: str | None) -> None:
    files = sample_files()
    endpoint: LocalEndpoint | None = None
    if endpoint_url is None:
        console.print("[bold]1/5[/] starting the embedded AWS endpoint (moto server) ...")
        endpoint = LocalEndpoint().start()
        env = endpoint.env()
        console.print(f"      endpoint: {endpoint.url}")
    else:
        env = _external_env(endpoint_url)
    state_dir = tempfile.mkdtemp(prefix="s3flow-demo-")
    try:
        with _env(env), _kafka_broker(console) as bootstrap:
            config = dict(DEMO_CONFIG)
            if bootstrap:
                pipeline = {**KAFKA_PIPELINE}
                pipeline["options"] = {**pipeline["options"], "bootstrap_servers": bootstrap}
                config["pipelines"] = [*config["pipelines"], pipeline]
            settings = load_settings(
                None, {**config, "state": {"url": f"sqlite:{state_dir}/state.db"}}
            )
            console.print("[bold]2/5[/] provisioning buckets, queues, DLQs and notifications ...")
            changes = asyncio.run(provision(settings))
            for c in changes:
                console.print(f"      {c.kind:<12} {c.name:<45} {c.action}")
            console.print(f"[bold]3/5[/] uploading {len(files)} sample files ...")
            asyncio.run(_upload(settings, files))
            console.print("[bold]4/5[/] running the worker until the queue is drained ...")
            metrics = _run_with_progress(console, settings, len(files), ["counts"])
            console.print("[bold]5/5[/] results")
            results = asyncio.run(_results(settings, list(files)))
            _print_table(console, files, results, metrics)
            _check_counts(files, results, metrics)
            _ndjson_stage(console, settings)
            if bootstrap:
                _kafka_stage(console, settings, bootstrap)
            console.print(
                "\n[bold]text-to-pdf[/]: two text files routed by their metadata "
                "(processor-type: pool -> process pool, else `s3flow run` in its own process)"
            )
            pdf_stage(console, f"sqlite:{state_dir}/pdf-state.db")
            console.print(
                "\n[bold]upload job[/]: three files through the HTTP API as one job "
                "(template count-and-zip), its events live"
            )
            jobs_stage(console, Path(state_dir))
    finally:
        if endpoint is not None:
            endpoint.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def _check_counts(
    files: dict[str, bytes], results: dict[str, dict[str, Any]], metrics: WorkerMetrics
) -> None:
    """:class:`DemoCheckError` unless every sample but :data:`BROKEN_KEY` has its output
    and exactly that one was dead-lettered."""
    missing = sorted(k for k in files if k != BROKEN_KEY and k not in results)
    m = metrics.pipelines.get("counts")
    dead = m.dead_lettered if m else 0
    if missing or dead != 1:
        raise DemoCheckError(
            f"line-count results are not what the demo expects: {len(missing)} output(s) "
            f"missing ({', '.join(missing) or 'none'}), {dead} file(s) dead-lettered "
            f"(expected 1, {BROKEN_KEY}); is AWS_ENDPOINT_URL the endpoint the worker used?"
        )


@contextmanager
def _kafka_broker(console: Console) -> Iterator[str | None]:
    """A private Kafka broker for stage 3 when Java 17+ is here, else None (stage skipped)."""
    from s3flow.local.kafka_broker import KafkaBroker, ServiceError, java_available

    if not java_available():
        console.print("      (no Java 17+: the csv-to-kafka stage is skipped)")
        yield None
        return
    console.print("      starting a private Kafka broker on 127.0.0.1 (Java) ...")
    broker = KafkaBroker()
    try:
        broker.start(timeout_s=180)
    except ServiceError as exc:
        console.print(f"      [yellow]Kafka broker unavailable, stage skipped:[/] {exc}")
        broker.close()
        yield None
        return
    except BaseException:  # interrupted while starting
        broker.close()
        raise
    console.print(f"      Kafka: {broker.bootstrap}")
    try:
        yield broker.bootstrap
    finally:
        broker.close()


def _ndjson_stage(console: Console, settings: Settings) -> None:
    """NDJSON files -> manifests (per date) -> Parquet parts, read back."""
    import pyarrow.parquet as pq

    from s3flow.state import open_state_store

    files = ndjson_files()
    console.print(
        f"\n[bold]ndjson-to-parquet[/]: uploading {len(files)} NDJSON files over "
        f"{len(NDJSON_DATES)} dates (one invalid) ..."
    )
    # An earlier run against the same endpoint: its parts would be counted (or overwritten).
    asyncio.run(_delete_prefix(settings, OUT_BUCKET, "lake/"))
    asyncio.run(_upload(settings, files))
    _run_with_progress(console, settings, len(files), ["events"])
    manifests = asyncio.run(_manifests(settings))
    console.print(f"      {len(manifests)} manifests sealed; compacting them to Parquet ...")
    _run_with_progress(console, settings, len(manifests), ["compact"])

    async def quarantined() -> list[Any]:
        async with open_state_store(settings.state.url) as store:
            return await store.list_files(status=FileStatus.QUARANTINED, pipeline="events")

    table = Table(title="ndjson-to-parquet: Parquet parts written")
    for col in ("part", "rows", "columns", "bytes"):
        table.add_column(col, justify="left" if col in ("part", "columns") else "right")
    total = 0
    for key, body in asyncio.run(_objects(settings, OUT_BUCKET, "lake/")):
        parquet = pq.read_table(io.BytesIO(body))
        total += parquet.num_rows
        table.add_row(
            key, f"{parquet.num_rows:,}", ", ".join(parquet.column_names), f"{len(body):,}"
        )
    console.print(table)
    for rec in asyncio.run(quarantined()):
        console.print(f"      quarantined [red]{rec.key}[/]: {rec.last_error}", highlight=False)
    console.print(f"      {total:,} rows in Parquet, one per valid NDJSON line.")
    if total != NDJSON_ROWS:
        raise DemoCheckError(f"ndjson-to-parquet wrote {total:,} rows, expected {NDJSON_ROWS:,}")


def _kafka_stage(console: Console, settings: Settings, bootstrap: str) -> None:
    """A gzip CSV -> Kafka rows, exactly once; read back with read_committed."""
    data = csv_object()
    key = "orders/2026-11-23/orders.csv.gz"
    console.print(
        f"\n[bold]csv-to-kafka[/]: uploading {key} "
        f"({CSV_ROWS:,} rows, {len(data):,} bytes gzip) ..."
    )
    asyncio.run(_upload(settings, {key: data}))
    _run_with_progress(console, settings, 1, ["orders"])
    topic = str(KAFKA_PIPELINE["options"]["topic"])
    count, first = _read_topic(bootstrap, topic)
    console.print(
        f"      topic {topic!r} (read_committed): {count:,} messages; the first: {first}",
        highlight=False,
    )
    if count != CSV_ROWS:
        raise DemoCheckError(
            f"csv-to-kafka: {count:,} messages in {topic!r}, expected {CSV_ROWS:,}"
        )


def _read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> tuple[int, str]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "s3flow-demo-reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    count, first = 0, ""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                err = msg.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    return count, first
                if err is None:
                    if not first:
                        first = (msg.value() or b"").decode()
                    count += 1
    finally:
        consumer.close()
    return count, first


async def _manifests(settings: Settings) -> list[Any]:
    from s3flow.state import open_state_store

    async with open_state_store(settings.state.url) as store:
        return await store.list_manifests()


async def _objects(
    settings: Settings, bucket: str, prefix: str, *, read: bool = True
) -> list[tuple[str, bytes]]:
    """The objects under ``prefix`` (``read=False``: keys only, empty bodies)."""
    out: list[tuple[str, bytes]] = []
    async with open_clients(settings.aws) as clients:
        items: list[dict[str, Any]] = []
        more: dict[str, str] = {}
        while True:
            resp = await clients.s3.list_objects_v2(Bucket=bucket, Prefix=prefix, **more)
            items += resp.get("Contents", [])
            if not resp.get("IsTruncated"):
                break
            more = {"ContinuationToken": resp["NextContinuationToken"]}
        for item in items:
            if not read:
                out.append((item["Key"], b""))
                continue
            obj = await clients.s3.get_object(Bucket=bucket, Key=item["Key"])
            async with obj["Body"] as body:
                out.append((item["Key"], await body.read()))
    return out


async def _delete_prefix(settings: Settings, bucket: str, prefix: str) -> None:
    keys = [k for k, _ in await _objects(settings, bucket, prefix, read=False)]
    async with open_clients(settings.aws) as clients:
        for key in keys:
            await clients.s3.delete_object(Bucket=bucket, Key=key)


def _run_with_progress(
    console: Console, settings: Settings, total: int, pipelines: list[str]
) -> WorkerMetrics:
    with Progress(
        TextColumn("      {task.description:<50}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task_id = progress.add_task("waiting for notifications", total=total)
        observer = DemoObserver(progress, task_id)
        metrics = asyncio.run(
            run_worker(settings, burst=True, pipelines=pipelines, observer=observer)  # type: ignore[arg-type]
        )
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
        else:  # the expected dead letter; anything else fails in _check_counts
            outcome = "[red]DLQ[/]" if key == BROKEN_KEY else "[red]missing[/]"
            table.add_row(key, "-", f"{len(files[key]):,}", "-", "-", "-", outcome)
    console.print(table)
    m = metrics.pipelines.get("counts")
    if m:
        console.print(
            f"processed {m.objects_processed}, dead-lettered {m.dead_lettered} "
            f"(corrupt input goes to the DLQ with its reason), retried {m.retried}, "
            f"test events acked {m.test_events}."
        )
