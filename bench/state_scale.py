"""State store at scale: claim + complete cost, `status` reads, and size under retention.

One run, side by side:

- **sqlite** pre-populated with 0 and 100,000 records (``--full``: and 1,000,000):
  CPU (``time.process_time``: this process, the store's SQLite thread included)
  and latency of claim + complete per new object; ``s3flow status``'s store
  reads (``counts`` + ``oldest_processing_at`` + the duplicates counter): wall
  time, SQLite VM steps and query plans; for comparison the full count it used
  to run (``GROUP BY`` over ``files``); the file's size.
- **dynamodb** on the embedded moto server (:class:`s3flow.local.LocalEndpoint`)
  pre-populated with 0 and 5,000 records (``--full``: 50,000): the same, plus
  requests and **items read** per ``status`` (``ScannedCount`` of a Query /
  Scan, items returned by GetItem / BatchGetItem; moto's ``ConsumedCapacity``
  is a fixed placeholder per call, reported as such), and the Scan ``status``
  used to do. moto answers every Query by iterating the whole table, so its
  wall time grows with the table even when the items read do not: an
  emulator artefact, reported next to the items read.
- **steady state** (SQLite, simulated clock): retention 2 simulated days,
  10,000 objects a simulated day for 6 days (``--full``: 20,000), the prune
  every simulated hour (the worker's background task, at most 50,000 rows a
  pass); the file's size at the end of each day.

Pre-populated records are written directly (SQLite: bulk INSERTs of the rows
the store writes, with their two history lines and the counters; DynamoDB:
BatchWriteItem of the record items, without history, plus the counters), all
finished within the retention, 95% completed.

    .venv/bin/python bench/state_scale.py            # about 3 minutes on 2 cores
    .venv/bin/python bench/state_scale.py --full     # + SQLite 1M, DynamoDB 50K (~15 min)
    .venv/bin/python bench/state_scale.py --quick    # smoke run

Writes ``bench/results/state_scale.json`` with ``goals``: claim + complete at the
largest SQLite size costs at most 1.2x the cost at 0; ``status`` reads at most
100 items at every DynamoDB size (and SQLite's status statements search indexes
only); the SQLite file stops growing once retention applies (the last day's
size within 5% of the size at the end of the first day past the retention).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, BenchError, ProcessCpu, machine_info, write_json
from s3flow.local.endpoint import LocalEndpoint
from s3flow.settings import AwsSettings
from s3flow.state import (
    ClaimOutcome,
    DynamoStateStore,
    FileRecord,
    FileStatus,
    ObjectId,
    SqliteStateStore,
    StateStore,
)
from s3flow.state.dynamodb.codec import encode_record
from s3flow.state.dynamodb.files import count_key
from s3flow.state.lifecycle import purge_time
from s3flow.state.sqlite.codec import FILE_COLS, file_row

DAY = 86_400.0
RETENTION_S = 30 * DAY
PIPELINE = "bench"
BUCKET = "bench-bucket"
WARMUP = 50
GOAL_CPU_RATIO = 1.2
GOAL_STATUS_ITEMS = 100
GOAL_SIZE_GROWTH = 1.05
_MIX = (
    (0.95, FileStatus.COMPLETED),
    (0.97, FileStatus.FAILED),
    (0.985, FileStatus.DEAD),
    (1.0, FileStatus.QUARANTINED),
)


# --- records -------------------------------------------------------------------------------


def _records(n: int, now: float, seed: int) -> list[FileRecord]:
    """``n`` finished records updated over the 29 days before ``now``, oldest first."""
    rnd = random.Random(seed)
    out: list[FileRecord] = []
    span = RETENTION_S - DAY
    for i in range(n):
        at = now - span + span * i / max(1, n)
        r = rnd.random()
        status = next(s for edge, s in _MIX if r < edge)
        day = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")
        key = f"in/{day}/{rnd.getrandbits(64):016x}.json"
        failed = status is not FileStatus.COMPLETED
        out.append(
            FileRecord(
                bucket=BUCKET,
                key=key,
                version=f"{rnd.getrandbits(64):016x}@t{int(at)}",
                pipeline=PIPELINE,
                status=status,
                size=rnd.randint(200, 2_000_000),
                attempts=1,
                last_error_class="ValidationFailed" if failed else None,
                last_error="line 12: not JSON" if failed else None,
                outputs=[] if failed else [f"s3://bench-out/{key}.result.json"],
                worker_id="host-1234",
                fencing_token=1,
                timestamps={"processing": at - 1.5, status.value: at},
                created_at=at - 1.5,
                updated_at=at,
            )
        )
    return out


def _new_oid(tag: str, i: int) -> ObjectId:
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    return ObjectId(BUCKET, f"in/{day}/{tag}-{i:07d}-{uuid.uuid4().hex[:8]}.json", "e@t1")


# --- SQLite --------------------------------------------------------------------------------


def populate_sqlite(path: Path, n: int, now: float) -> float:
    """Bulk-insert ``n`` records, their history and counters; seconds taken."""
    started = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        counts: dict[str, int] = {}
        chunk = 50_000
        for start in range(0, n, chunk):
            recs = _records(min(chunk, n - start), now - (n - start) * 1e-6, seed=start)
            conn.execute("BEGIN")
            conn.executemany(
                f"INSERT INTO files ({FILE_COLS}) VALUES ({', '.join('?' * 19)})",
                [file_row(r) for r in recs],
            )
            conn.executemany(
                "INSERT INTO history (bucket, key, version, at, old, new, worker_id, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    row
                    for r in recs
                    for row in (
                        (
                            r.bucket,
                            r.key,
                            r.version,
                            r.created_at,
                            None,
                            "processing",
                            "w",
                            "claimed",
                        ),
                        (
                            r.bucket,
                            r.key,
                            r.version,
                            r.updated_at,
                            "processing",
                            r.status.value,
                            "w",
                            "",
                        ),
                    )
                ],
            )
            conn.execute("COMMIT")
            for r in recs:
                counts[r.status.value] = counts.get(r.status.value, 0) + 1
        conn.executemany(
            "INSERT INTO file_counts (pipeline, status, n) VALUES (?, ?, ?) "
            "ON CONFLICT (pipeline, status) DO UPDATE SET n = n + excluded.n",
            [(PIPELINE, s, c) for s, c in counts.items()],
        )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - started


async def _claim_complete(store: StateStore, oid: ObjectId) -> None:
    claim = await store.claim(oid, pipeline=PIPELINE, owner="w1", ttl_s=90, size=1024)
    if claim.outcome is not ClaimOutcome.ACQUIRED:
        raise BenchError(f"claim of {oid} gave {claim.outcome}")
    if not await store.complete(oid, token=claim.token, outputs=[f"s3://out/{oid.key}"]):
        raise BenchError(f"complete of {oid} was refused")


async def measure_objects(
    store: StateStore, n: int, tag: str, server: ProcessCpu | None = None
) -> dict[str, Any]:
    """claim + complete of ``n`` new objects, one after the other: CPU and latency."""
    for i in range(WARMUP):
        await _claim_complete(store, _new_oid(f"warm-{tag}", i))
    lat: list[float] = []
    server0 = server.read() if server else 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        await _claim_complete(store, _new_oid(tag, i))
        lat.append(time.perf_counter() - t0)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    lat.sort()
    out = {
        "objects": n,
        "cpu_ms_per_object": round(cpu * 1000 / n, 4),
        "wall_ms_per_object": round(wall * 1000 / n, 4),
        "latency_ms_p50": round(lat[len(lat) // 2] * 1000, 3),
        "latency_ms_p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 3),
    }
    if server is not None:
        out["server_cpu_ms_per_object"] = round((server.read() - server0) * 1000 / n, 3)
    return out


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: float(r["cpu_ms_per_object"]))
    best = dict(ordered[len(ordered) // 2])
    best["runs_cpu_ms_per_object"] = [r["cpu_ms_per_object"] for r in runs]
    return best


async def status_reads(store: StateStore) -> None:
    """What ``s3flow status`` asks the store for one pipeline."""
    await store.counts(PIPELINE)
    await store.oldest_processing_at(PIPELINE)
    await store.counter(f"duplicates:{PIPELINE}")


async def _timed(fn: Callable[[], Awaitable[Any]], times: int) -> float:
    """Median wall milliseconds of ``times`` calls."""
    walls = []
    for _ in range(times):
        t0 = time.perf_counter()
        await fn()
        walls.append(time.perf_counter() - t0)
    return round(statistics.median(walls) * 1000, 3)


async def sqlite_status(store: SqliteStateStore) -> dict[str, Any]:
    """Wall time, VM steps and plans of the status reads; the old full count for comparison."""
    steps = [0]

    def tick() -> int:
        steps[0] += 10
        return 0

    statements: list[str] = []
    await store._run(lambda c: c.set_progress_handler(tick, 10))
    await store._run(lambda c: c.set_trace_callback(statements.append))
    await status_reads(store)
    await store._run(lambda c: c.set_trace_callback(None))
    vm_steps = steps[0]
    await store._run(lambda c: c.set_progress_handler(None, 10))
    wall = await _timed(lambda: status_reads(store), 50)

    def plans(conn: sqlite3.Connection) -> list[str]:
        return [
            " | ".join(str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql))
            for sql in statements
        ]

    plan = await store._run(plans)

    def old(conn: sqlite3.Connection) -> None:  # what status did before counters
        conn.execute(
            "SELECT status, count(*) FROM files WHERE pipeline = ? GROUP BY status", (PIPELINE,)
        ).fetchall()
        conn.execute(
            "SELECT min(json_extract(timestamps, '$.processing')) FROM files "
            "WHERE status = 'processing' AND pipeline = ?",
            (PIPELINE,),
        ).fetchall()

    old_wall = await _timed(lambda: store._run(old), 3)
    steps[0] = 0
    await store._run(lambda c: c.set_progress_handler(tick, 10))
    await store._run(old)
    await store._run(lambda c: c.set_progress_handler(None, 10))
    return {
        "wall_ms": wall,
        "vm_steps": vm_steps,  # SQLite VM instructions (counted by tens): the work done
        "full_count_vm_steps": steps[0],
        "plans": plan,
        "index_only": all("SCAN files" not in p.replace("SCAN files USING", "") for p in plan),
        "full_count_wall_ms": old_wall,
    }


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


async def bench_sqlite(sizes: list[int], n: int, repeats: int, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    now = time.time()
    for size in sizes:
        path = tmp / f"scale-{size}.db"
        async with SqliteStateStore(path, retention_s=RETENTION_S):
            pass  # the schema
        populate_s = populate_sqlite(path, size, now) if size else 0.0
        async with SqliteStateStore(path, retention_s=RETENTION_S) as store:
            runs = [await measure_objects(store, n, f"r{r}") for r in range(repeats)]
            result = _median_run(runs)
            result["status"] = await sqlite_status(store)
            counts = await store.counts(PIPELINE)
        result.update(
            records_before=size,
            records_after=sum(counts.values()),
            populate_s=round(populate_s, 1),
            file_bytes=_file_size(path),
            bytes_per_record=round(_file_size(path) / max(1, sum(counts.values())), 1),
        )
        out[str(size)] = result
        print(
            f"sqlite {size:>9,}: claim+complete {result['cpu_ms_per_object']:.3f} ms CPU, "
            f"p50 {result['latency_ms_p50']:.3f} ms; status {result['status']['wall_ms']:.3f} ms "
            f"(full count {result['status']['full_count_wall_ms']:.1f} ms); "
            f"{result['file_bytes'] / 1e6:.1f} MB",
            flush=True,
        )
        path.unlink(missing_ok=True)
    return out


# --- steady state under retention ----------------------------------------------------------


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def bench_steady(per_day: int, days: int, retention_days: int, tmp: Path) -> dict[str, Any]:
    """Simulated days of traffic with the hourly prune; the file's size at each day's end."""
    path = tmp / "steady.db"
    clock = _Clock(1_700_000_000.0)
    per_hour = max(1, per_day // 24)
    step = 3600.0 / per_hour
    rows: list[dict[str, Any]] = []
    pruned = 0
    cpu0 = time.process_time()
    async with SqliteStateStore(path, clock=clock, retention_s=retention_days * DAY) as store:
        for day in range(days):
            for hour in range(24):
                for i in range(per_hour):
                    oid = ObjectId(BUCKET, f"in/d{day}/h{hour}/{i}-{uuid.uuid4().hex[:8]}", "e")
                    await _claim_complete(store, oid)
                    clock.now += step
                pruned += (await store.prune(max_rows=50_000)).removed

            def pages(conn: sqlite3.Connection) -> tuple[int, int]:
                return (
                    int(conn.execute("PRAGMA page_count").fetchone()[0]),
                    int(conn.execute("PRAGMA freelist_count").fetchone()[0]),
                )

            page_count, free = await store._run(pages)
            counts = await store.counts(PIPELINE)
            rows.append(
                {
                    "day": day + 1,
                    "records": sum(counts.values()),
                    "file_bytes": _file_size(path),
                    "wal_bytes": _file_size(path.with_name(path.name + "-wal")),
                    "pages": page_count,
                    "free_pages": free,
                }
            )
            print(
                f"steady day {day + 1}: {rows[-1]['records']:,} records, "
                f"{rows[-1]['file_bytes'] / 1e6:.1f} MB",
                flush=True,
            )
        recount = await store.recount()
    base = rows[min(retention_days, len(rows) - 1)]["file_bytes"]  # first day past retention
    last = rows[-1]["file_bytes"]
    return {
        "objects_per_day": per_hour * 24,
        "days": days,
        "retention_days": retention_days,
        "prune": "every simulated hour, at most 50,000 rows (the background task's bound)",
        "rows_pruned": pruned,
        "cpu_ms_per_object_incl_prune": round(
            (time.process_time() - cpu0) * 1000 / (per_hour * 24 * days), 4
        ),
        "counters_consistent": recount.consistent,
        "by_day": rows,
        "size_growth_after_retention": round(last / max(1, base), 4),
    }


# --- DynamoDB ------------------------------------------------------------------------------


class ApiCounter:
    """Wraps a DynamoStateStore's ``_api``: requests, items read, reported capacity."""

    _READS = frozenset({"GetItem", "BatchGetItem", "Query", "Scan"})

    def __init__(self, store: DynamoStateStore) -> None:
        self.calls: list[tuple[str, int, float]] = []
        self._real = store._api
        store._api = self  # type: ignore[method-assign]

    async def __call__(self, op: str, table: str, **kwargs: Any) -> dict[str, Any]:
        if op in self._READS:
            kwargs.setdefault("ReturnConsumedCapacity", "TOTAL")
        resp = await self._real(op, table, **kwargs)
        if op in ("Query", "Scan"):
            items = int(resp.get("ScannedCount", len(resp.get("Items") or [])))
        elif op == "GetItem":
            items = 1 if resp.get("Item") else 0
        elif op == "BatchGetItem":
            items = sum(len(v) for v in resp.get("Responses", {}).values())
        else:
            items = 0
        cap = resp.get("ConsumedCapacity") or []
        units = sum(
            float(c.get("CapacityUnits", 0)) for c in (cap if isinstance(cap, list) else [cap])
        )
        self.calls.append((op, items, units))
        return resp

    def take(self) -> dict[str, Any]:
        calls, self.calls = self.calls, []
        return {
            "requests": len(calls),
            "by_operation": {
                op: sum(1 for o, _, _ in calls if o == op) for op in sorted({c[0] for c in calls})
            },
            "items_read": sum(n for _, n, _ in calls),
            "consumed_capacity_reported_by_moto": round(sum(u for _, _, u in calls), 2),
        }


async def populate_dynamodb(store: DynamoStateStore, n: int, now: float) -> float:
    """BatchWriteItem ``n`` record items (no history) and add them to the counters."""
    started = time.perf_counter()
    delta: dict[Any, int] = {}
    for start in range(0, n, 5000):
        recs = _records(min(5000, n - start), now - (n - start) * 1e-6, seed=start)
        items = []
        for r in recs:
            purge = purge_time(r.status, r.updated_at, store.retention_s)
            items.append({"PutRequest": {"Item": encode_record(r, 1, purge)}})
            key = count_key(r, purge)
            delta[key] = delta.get(key, 0) + 1
        for i in range(0, len(items), 25):
            pending: dict[str, Any] = {store.files_table: items[i : i + 25]}
            while pending:
                resp = await store._api("BatchWriteItem", store.files_table, RequestItems=pending)
                pending = resp.get("UnprocessedItems") or {}
    await store._add_counts(delta, quiet=False)
    return time.perf_counter() - started


async def bench_dynamodb(sizes: list[int], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    now = time.time()
    with LocalEndpoint() as ep:
        os.environ.update(ep.env())
        aws = AwsSettings(endpoint_url=ep.url, region="us-east-1")
        server = ProcessCpu(ep.pid)
        for size in sizes:
            store = DynamoStateStore(
                f"scale-{size}-{uuid.uuid4().hex[:6]}", aws, retention_s=RETENTION_S
            )
            await store.ensure_tables()
            async with store:
                populate_s = await populate_dynamodb(store, size, now) if size else 0.0
                result = await measure_objects(store, n, "d", server)
                counter = ApiCounter(store)
                await status_reads(store)
                reads = counter.take()
                wall = await _timed(partial(status_reads, store), 5)
                counter.take()
                t0 = time.perf_counter()
                scanned = 0
                async for page in store._pages(  # what status read before counters
                    "Scan",
                    store.files_table,
                    ConsistentRead=True,
                    ProjectionExpression="#st",
                    FilterExpression="#pl = :p",
                    ExpressionAttributeNames={"#st": "status", "#pl": "pipeline"},
                    ExpressionAttributeValues={":p": {"S": PIPELINE}},
                ):
                    scanned += len(page)
                scan = counter.take()
                scan_wall = time.perf_counter() - t0
                counts = await store.counts(PIPELINE)
            result.update(
                records_before=size,
                records_after=sum(counts.values()),
                populate_s=round(populate_s, 1),
                status={**reads, "wall_ms": wall},
                scan_status={
                    **scan,
                    "wall_ms": round(scan_wall * 1000, 1),
                    "items_returned": scanned,
                },
            )
            out[str(size)] = result
            print(
                f"dynamodb {size:>7,}: claim+complete {result['cpu_ms_per_object']:.2f} ms "
                f"client CPU, p50 {result['latency_ms_p50']:.1f} ms; status "
                f"{reads['items_read']} items in {reads['requests']} requests, {wall:.1f} ms "
                f"(Scan: {scan['items_read']} items)",
                flush=True,
            )
    return out


# --- main ----------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a summary, write bench/results/state_scale.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--full", action="store_true", help="SQLite 0/100K/1M, DynamoDB 0/50K")
    ap.add_argument("--quick", action="store_true", help="smoke run (small sizes)")
    ap.add_argument("--sqlite-sizes", type=_sizes, default=None, help="e.g. 0,100000,1000000")
    ap.add_argument("--dynamodb-sizes", type=_sizes, default=None, help="e.g. 0,50000")
    ap.add_argument("-n", type=int, default=None, help="objects measured per SQLite run (2000)")
    ap.add_argument("--dynamodb-n", type=int, default=None, help="objects measured (200)")
    ap.add_argument("--repeats", type=int, default=3, help="SQLite runs per size (median)")
    ap.add_argument("--steady-per-day", type=int, default=None, help="objects a day (10000)")
    ap.add_argument("--steady-days", type=int, default=6, help="simulated days")
    ap.add_argument("--no-dynamodb", action="store_true", help="skip the DynamoDB part")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "state_scale.json")
    args = ap.parse_args(argv)
    sqlite_sizes = args.sqlite_sizes or (
        [0, 100_000, 1_000_000] if args.full else [0, 5_000] if args.quick else [0, 100_000]
    )
    dynamo_sizes = args.dynamodb_sizes or (
        [0, 50_000] if args.full else [0, 1_000] if args.quick else [0, 5_000]
    )
    n = args.n or (300 if args.quick else 2000)
    dn = args.dynamodb_n or (50 if args.quick else 200)
    per_day = args.steady_per_day or (20_000 if args.full else 2_400 if args.quick else 10_000)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_info()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="s3flow-bench-scale-") as tmp:
        sqlite = asyncio.run(bench_sqlite(sqlite_sizes, n, max(1, args.repeats), Path(tmp)))
        steady = asyncio.run(bench_steady(per_day, args.steady_days, 2, Path(tmp)))
    dynamo = {} if args.no_dynamodb else asyncio.run(bench_dynamodb(dynamo_sizes, dn))
    zero = float(sqlite[str(min(sqlite_sizes))]["cpu_ms_per_object"])
    top = max(sqlite_sizes)
    ratio = float(sqlite[str(top)]["cpu_ms_per_object"]) / zero
    status_items = {k: v["status"]["items_read"] for k, v in dynamo.items()}
    goals = {
        "sqlite_claim_complete_cpu_at_largest_le_1_2x_at_0": ratio <= GOAL_CPU_RATIO,
        "status_reads_le_100_items": all(v <= GOAL_STATUS_ITEMS for v in status_items.values())
        and all(r["status"]["index_only"] for r in sqlite.values()),
        "sqlite_size_stops_growing_under_retention": steady["size_growth_after_retention"]
        <= GOAL_SIZE_GROWTH,
    }
    doc = {
        "benchmark": "state_scale",
        "description": __doc__.split("\n\n")[0] if __doc__ else "",
        "started_at": started,
        "duration_s": round(time.perf_counter() - t0, 1),
        "machine": machine,
        "config": {
            "sqlite_sizes": sqlite_sizes,
            "dynamodb_sizes": dynamo_sizes,
            "objects_measured_sqlite": n,
            "objects_measured_dynamodb": dn,
            "repeats_sqlite": args.repeats,
            "warmup_objects": WARMUP,
            "retention_days": RETENTION_S / DAY,
            "populated_mix": "95% completed, 2% failed, 1.5% dead, 1.5% quarantined, "
            "updated over the last 29 days",
            "dynamodb_endpoint": "moto server (s3flow.local.LocalEndpoint), loopback",
            "full_run": args.full,
        },
        "sqlite": sqlite,
        "dynamodb": dynamo,
        "steady_state": steady,
        "summary": {
            "sqlite_largest_size": top,
            "sqlite_cpu_ratio_largest_vs_0": round(ratio, 3),
            "dynamodb_status_items_read": status_items,
            "sqlite_size_growth_after_retention": steady["size_growth_after_retention"],
        },
        "goals": goals,
    }
    write_json(args.out, doc)
    for name, ok in goals.items():
        print(f"goal {name}: {'met' if ok else 'NOT met'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
