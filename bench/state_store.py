"""State store benchmark: CPU per object of claim + complete, SQLite vs DynamoDB vs none.

One run, side by side, in this process (CPU = ``time.process_time()``, all
threads, so the SQLite store's executor thread is counted):

- **none**: the baseline, the same loop with no store (an ObjectId built and
  two no-op awaits where the store calls would be).
- **sqlite**: :class:`SqliteStateStore` on a fresh file (WAL, synchronous=NORMAL),
  one ``claim`` + ``complete`` per object, sequentially.
- **sqlite-16**: the same with 16 concurrent tasks (as the engine calls it).
- **dynamodb**: :class:`DynamoStateStore` against the embedded moto server
  (:class:`s3flow.local.LocalEndpoint`); client-side CPU, plus the server's CPU
  for information.

    .venv/bin/python bench/state_store.py            # N=2000 (sqlite/none), 300 (dynamodb)
    .venv/bin/python bench/state_store.py --quick    # N=300 / 50

Writes ``bench/results/state_store.json``. Goal: SQLite adds < 1 ms CPU per object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, BenchError, ProcessCpu, machine_info, write_json
from s3flow.local.endpoint import LocalEndpoint
from s3flow.settings import AwsSettings
from s3flow.state import ClaimOutcome, DynamoStateStore, ObjectId, SqliteStateStore, StateStore

GOAL_SQLITE_ADDED_CPU_MS = 1.0
WARMUP = 50


async def _noop() -> None:
    return None


async def loop_none(n: int, tag: str) -> None:
    """The baseline: the per-object work without a store."""
    for i in range(n):
        ObjectId("bench-bucket", f"{tag}/{i:07d}.txt", "etag")
        await _noop()
        await _noop()


async def _one(store: StateStore, oid: ObjectId) -> None:
    claim = await store.claim(oid, pipeline="bench", owner="w1", ttl_s=90, size=1024)
    if claim.outcome is not ClaimOutcome.ACQUIRED:
        raise BenchError(f"claim of {oid} gave {claim.outcome}")
    if not await store.complete(oid, token=claim.token, outputs=[f"s3://out/{oid.key}.json"]):
        raise BenchError(f"complete of {oid} was refused")


def loop_store(store: StateStore, tasks: int = 1) -> Callable[[int, str], Awaitable[None]]:
    """claim + complete of ``n`` distinct objects, by ``tasks`` concurrent tasks."""

    async def run(n: int, tag: str) -> None:
        async def worker(w: int) -> None:
            for i in range(w, n, tasks):
                await _one(store, ObjectId("bench-bucket", f"{tag}/{i:07d}.txt", "etag"))

        await asyncio.gather(*(worker(w) for w in range(tasks)))

    return run


async def measure(
    fn: Callable[[int, str], Awaitable[None]], n: int, server: ProcessCpu | None = None
) -> dict[str, Any]:
    """Run ``fn`` for ``n`` objects after a warm-up; CPU and wall per object."""
    await fn(WARMUP, f"warm-{uuid.uuid4().hex[:6]}")
    tag = f"run-{uuid.uuid4().hex[:6]}"
    server_cpu0 = server.read() if server else 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await fn(n, tag)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    out = {
        "objects": n,
        "cpu_s": round(cpu, 4),
        "wall_s": round(wall, 4),
        "cpu_ms_per_object": round(cpu * 1000 / n, 4),
        "wall_ms_per_object": round(wall * 1000 / n, 4),
        "objects_per_s": round(n / wall, 1),
    }
    if server is not None:
        out["server_cpu_ms_per_object"] = round((server.read() - server_cpu0) * 1000 / n, 3)
    return out


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median CPU per object, plus every run's figure."""
    ordered = sorted(runs, key=lambda r: float(r["cpu_ms_per_object"]))
    best = dict(ordered[len(ordered) // 2])
    best["runs_cpu_ms_per_object"] = [r["cpu_ms_per_object"] for r in runs]
    return best


async def bench(n_local: int, n_dynamo: int, repeats: int, tmp: Path) -> dict[str, Any]:
    """Every system, interleaved: none, sqlite, sqlite-16 ``repeats`` times, then dynamodb."""
    runs: dict[str, list[dict[str, Any]]] = {"none": [], "sqlite": [], "sqlite-16": []}
    for r in range(repeats):
        runs["none"].append(await measure(loop_none, n_local))
        async with SqliteStateStore(tmp / f"seq-{r}.db") as store:
            runs["sqlite"].append(await measure(loop_store(store), n_local))
        async with SqliteStateStore(tmp / f"c16-{r}.db") as store:
            runs["sqlite-16"].append(await measure(loop_store(store, 16), n_local))
    results = {name: _median(rs) for name, rs in runs.items()}
    with LocalEndpoint() as ep:
        os.environ.update(ep.env())
        aws = AwsSettings(endpoint_url=ep.url)
        store_d = DynamoStateStore(f"bench-{uuid.uuid4().hex[:6]}", aws)
        await store_d.ensure_tables()
        async with store_d:
            results["dynamodb"] = await measure(loop_store(store_d), n_dynamo, ProcessCpu(ep.pid))
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table, write bench/results/state_store.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="small run (N=300 / 50)")
    ap.add_argument("-n", type=int, default=None, help="objects for none/sqlite (2000)")
    ap.add_argument("--dynamodb-n", type=int, default=None, help="objects for dynamodb (300)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of none/sqlite (median)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "state_store.json")
    args = ap.parse_args(argv)
    n_local = args.n or (300 if args.quick else 2000)
    n_dynamo = args.dynamodb_n or (50 if args.quick else 300)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="s3flow-bench-state-") as tmp:
        results = asyncio.run(bench(n_local, n_dynamo, max(1, args.repeats), Path(tmp)))
    base = float(results["none"]["cpu_ms_per_object"])
    for r in results.values():
        r["added_cpu_ms_per_object"] = round(float(r["cpu_ms_per_object"]) - base, 4)
    added = float(results["sqlite"]["added_cpu_ms_per_object"])
    doc = {
        "benchmark": "state_store",
        "description": (
            "CPU (time.process_time, whole process) and wall time per object of "
            "claim + complete: SQLite file vs DynamoDB on the embedded moto server vs no store"
        ),
        "started_at": started,
        "machine": machine,
        "config": {
            "objects_local": n_local,
            "objects_dynamodb": n_dynamo,
            "warmup_objects": WARMUP,
            "repeats_local": args.repeats,
            "sqlite": "WAL, synchronous=NORMAL, one connection on a dedicated thread",
            "dynamodb_endpoint": "moto server (s3flow.local.LocalEndpoint), loopback",
        },
        "results": results,
        "goal": {
            "sqlite_added_cpu_ms_per_object_max": GOAL_SQLITE_ADDED_CPU_MS,
            "sqlite_added_cpu_ms_per_object": added,
            "met": added < GOAL_SQLITE_ADDED_CPU_MS,
        },
        "goals": {"sqlite_adds_under_1ms_cpu_per_object": added < GOAL_SQLITE_ADDED_CPU_MS},
    }
    write_json(args.out, doc)
    print(f"claim + complete per object ({machine['cpu_count']} CPUs, Python {machine['python']})")
    header = f"{'store':<10} {'objects':>8} {'cpu ms/obj':>11} {'added cpu':>10} "
    header += f"{'wall ms/obj':>12} {'obj/s':>9} {'server cpu':>11}"
    print(header)
    for name, r in results.items():
        server = r.get("server_cpu_ms_per_object")
        print(
            f"{name:<10} {r['objects']:>8} {r['cpu_ms_per_object']:>11.3f} "
            f"{r['added_cpu_ms_per_object']:>10.3f} {r['wall_ms_per_object']:>12.3f} "
            f"{r['objects_per_s']:>9.0f} {'' if server is None else f'{server:.2f}':>11}"
        )
    verdict = "met" if doc["goal"]["met"] else "NOT met"  # type: ignore[index]
    print(f"goal: SQLite adds < {GOAL_SQLITE_ADDED_CPU_MS} ms CPU per object: {verdict}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
