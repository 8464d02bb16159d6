"""NDJSON -> Parquet benchmark: s3flow compaction vs DuckDB vs naive pandas, one run.

All three convert the same generated NDJSON (about 1 GB: 3 dates, files of
about 3.5 MB) from **local files** into Parquet partitioned by date, snappy,
each in its own child process, one after the other, so the benchmark compares
the conversion itself (S3 transfer is not measured; s3flow reads the files
through its ``Storage(kind="local")`` path, the same code that reads S3
objects in the service, minus the GetObject).

- **s3flow**: one manifest per date, the three compacted concurrently on one
  ``local`` executor (a process pool, one process per core) with
  :func:`s3flow.pipelines.ndjson_parquet.compaction.job.compact_manifest` - what a worker with
  ``concurrency >= 3`` does with three sealed manifests.
- **duckdb**: per date ``COPY (SELECT * FROM read_json_auto('date=D/*.ndjson')) TO
  'part.parquet' (FORMAT parquet)`` (DuckDB's default threads = cores, snappy).
- **pandas**: per date ``pd.read_json(f, lines=True)`` for each file,
  ``pd.concat``, ``to_parquet`` (pyarrow engine, snappy) - the naive script.

    .venv/bin/python bench/ndjson_parquet.py            # full run (~1 GB)
    .venv/bin/python bench/ndjson_parquet.py --quick    # smoke run (~60 MB)

Peak RSS is the peak of the **sum** of RSS over the child's whole process tree
(s3flow's pool workers included), sampled every 50 ms with psutil, and the
child's own VmHWM. Writes ``bench/results/ndjson_parquet.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    MIB,
    RESULTS_DIR,
    BenchError,
    machine_info,
    machine_load,
    proc_stat,
    python,
    run_child,
    self_peak_rss_mb,
    write_json,
)

SYSTEMS = ("s3flow", "duckdb", "pandas")
DATES = ("2026-11-21", "2026-11-22", "2026-11-23")
FILE_BYTES = int(3.5 * MIB)

# ============================================================================
# Data
# ============================================================================


def _rows_text(seed: int, date: str, target: int, first_id: int) -> tuple[bytes, int]:
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    i = first_id
    methods = ["GET", "GET", "GET", "POST", "PUT", "DELETE"]
    agents = ["Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0", "curl/8.5.0", "python-requests/2.32"]
    while size < target:
        row = {
            "ts": f"{date}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:"
            f"{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z",
            "event_id": i,
            "user_id": rng.randrange(10**7),
            "session": f"s-{rng.getrandbits(48):012x}",
            "method": rng.choice(methods),
            "path": f"/api/v1/items/{rng.randrange(10**5)}",
            "status": rng.choice((200, 200, 200, 201, 204, 304, 404, 500)),
            "latency_ms": round(rng.expovariate(1 / 40), 3),
            "bytes": rng.randrange(100, 100_000),
            "user_agent": rng.choice(agents),
            "geo": {
                "country": rng.choice(["DE", "US", "FR", "JP", "BR"]),
                "city_id": rng.randrange(5000),
            },
            "tags": rng.sample(["a", "b", "c", "d"], rng.randrange(3)),
            "ok": rng.random() > 0.1,
        }
        line = json.dumps(row, separators=(",", ":"))
        out.append(line)
        size += len(line) + 1
        i += 1
    return ("\n".join(out) + "\n").encode(), i - first_id


def _gen_file(args: tuple[str, str, int, int, int]) -> tuple[str, int, int]:
    path, date, seed, target, first_id = args
    data, rows = _rows_text(seed, date, target, first_id)
    Path(path).write_bytes(data)
    return path, rows, len(data)


def generate(root: Path, total_bytes: int) -> dict[str, Any]:
    """Files of ~3.5 MB under root/ndjson/date=D/; reused when the spec matches."""
    spec = {
        "total_bytes": total_bytes,
        "file_bytes": FILE_BYTES,
        "dates": list(DATES),
        "version": 1,
    }
    marker = root / "spec.json"
    if marker.exists():
        old = json.loads(marker.read_text())
        if old.get("spec") == spec:
            return dict(old)
    shutil.rmtree(root, ignore_errors=True)
    n_files = max(3, round(total_bytes / FILE_BYTES))
    jobs = []
    rows_per_file = FILE_BYTES // 330 + 1000  # id space per file (rows are ~330 bytes)
    for i in range(n_files):
        date = DATES[i % len(DATES)]
        d = root / "ndjson" / f"date={date}"
        d.mkdir(parents=True, exist_ok=True)
        jobs.append((str(d / f"f{i:05d}.ndjson"), date, i, FILE_BYTES, i * rows_per_file))
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        made = list(pool.map(_gen_file, jobs))
    files: dict[str, list[str]] = {d: [] for d in DATES}
    for (path, _, _), job in zip(made, jobs, strict=True):
        files[job[1]].append(os.path.relpath(path, root / "ndjson"))
    doc = {
        "spec": spec,
        "files": files,
        "n_files": n_files,
        "rows": sum(r for _, r, _ in made),
        "bytes": sum(b for _, _, b in made),
    }
    marker.write_text(json.dumps(doc))
    return doc


# ============================================================================
# Children (each imports only what it uses)
# ============================================================================


def child_s3flow(cfg: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    from s3flow.pipelines.ndjson_parquet.compaction.executors import LocalExecutor
    from s3flow.pipelines.ndjson_parquet.compaction.job import compact_manifest
    from s3flow.pipelines.ndjson_parquet.compaction.manifest import parse_manifest
    from s3flow.pipelines.ndjson_parquet.compaction.options import parse_options
    from s3flow.pipelines.ndjson_parquet.compaction.tasks import Storage, Target

    data = Path(cfg["data"])
    opts = parse_options(cfg.get("options") or {})
    manifests = []
    for n, date in enumerate(DATES):
        files = [
            {"bucket": "ndjson", "key": k, "size": os.path.getsize(data / "ndjson" / k)}
            for k in cfg["files"][date]
        ]
        doc = {"version": 1, "manifest_id": f"bench{n}", "dataset": "events", "date": date}
        manifests.append(parse_manifest(json.dumps({**doc, "files": files}).encode()))
    storage = Storage(kind="local", root=str(data))
    target = Target(kind="local", directory=cfg["out"])

    async def main() -> list[Any]:
        ex = LocalExecutor(opts.worker_processes)
        t = time.perf_counter()
        await ex.warm()  # a worker starts its pool once, not per manifest
        timings["pool_start_s"] = round(time.perf_counter() - t, 3)
        timings["t0"] = time.perf_counter()
        try:
            return await asyncio.gather(
                *(
                    compact_manifest(m, opts, storage=storage, target=target, executor=ex)
                    for m in manifests
                )
            )
        finally:
            await ex.close()

    timings: dict[str, float] = {}
    reports = asyncio.run(main())
    wall = time.perf_counter() - timings.pop("t0")
    return {
        "wall_s": wall,
        **timings,
        "rows": sum(r.rows for r in reports),
        "parts": sum(len(r.parts) for r in reports),
        "processes": opts.worker_processes,
    }


def child_duckdb(cfg: dict[str, Any]) -> dict[str, Any]:
    import duckdb

    data = Path(cfg["data"]) / "ndjson"
    con = duckdb.connect()
    t0 = time.perf_counter()
    for date in DATES:
        pattern = str(data / f"date={date}" / "*.ndjson")  # all of the date's files
        out = Path(cfg["out"], "events", f"date={date}")
        out.mkdir(parents=True, exist_ok=True)
        con.execute(
            "COPY (SELECT * FROM read_json_auto(?)) TO '"
            + str(out / "part.parquet")
            + "' (FORMAT parquet, COMPRESSION snappy)",
            [pattern],
        )
    return {
        "wall_s": time.perf_counter() - t0,
        "threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
    }  # type: ignore[index]


def child_pandas(cfg: dict[str, Any]) -> dict[str, Any]:
    import pandas as pd

    data = Path(cfg["data"]) / "ndjson"
    t0 = time.perf_counter()
    for date in DATES:
        frames = [pd.read_json(data / k, lines=True) for k in cfg["files"][date]]
        df = pd.concat(frames, ignore_index=True)
        del frames
        out = Path(cfg["out"], "events", f"date={date}")
        out.mkdir(parents=True, exist_ok=True)
        df.to_parquet(out / "part.parquet", engine="pyarrow", compression="snappy", index=False)
        del df
    return {"wall_s": time.perf_counter() - t0}


CHILDREN = {"s3flow": child_s3flow, "duckdb": child_duckdb, "pandas": child_pandas}


def child_main(system: str, cfg_path: str) -> None:
    cfg = json.loads(Path(cfg_path).read_text())
    result = CHILDREN[system](cfg)
    result["own_peak_rss_mb"] = round(self_peak_rss_mb(), 1)
    Path(cfg["result"]).write_text(json.dumps(result))


# ============================================================================
# Parent
# ============================================================================


class TreeRss:
    """Peak of the summed RSS of a process and its descendants (psutil, every 50 ms)."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.peak_mb = 0.0
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self._interval):
            total = 0
            try:
                for p in me.children(recursive=True):
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                continue
            self.peak_mb = max(self.peak_mb, total / MIB)


def parquet_stats(out: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    files = sorted(out.rglob("*.parquet"))
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    size = sum(f.stat().st_size for f in files)
    return {"files": len(files), "rows": rows, "bytes": size}


def run_system(
    system: str, data: dict[str, Any], root: Path, scratch: Path, opts: dict[str, Any]
) -> dict[str, Any]:
    out = scratch / f"out-{system}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    result_path = scratch / f"result-{system}.json"
    cfg = {
        "data": str(root),
        "files": data["files"],
        "out": str(out),
        "result": str(result_path),
        "options": opts,
    }
    cfg_path = scratch / f"cfg-{system}.json"
    cfg_path.write_text(json.dumps(cfg))
    load0 = os.getloadavg()
    stat0 = proc_stat()
    with TreeRss() as tree:
        run = run_child(
            [python(), __file__, "--child", system, str(cfg_path)],
            scratch / f"log-{system}.txt",
            timeout_s=3600,
        )
    if run.returncode != 0:
        raise BenchError(f"{system} failed (exit {run.returncode}):\n{run.log_tail()}")
    res = json.loads(result_path.read_text())
    stats = parquet_stats(out)
    if stats["rows"] != data["rows"]:
        raise BenchError(f"{system} wrote {stats['rows']} rows, expected {data['rows']}")
    wall = res["wall_s"]
    doc = {
        "wall_s": round(wall, 3),
        "process_wall_s": round(run.wall_s, 3),
        "input_mb_per_s": round(data["bytes"] / MIB / wall, 1),
        "rows_per_s": round(data["rows"] / wall),
        "peak_rss_tree_mb": round(tree.peak_mb, 1),
        "own_peak_rss_mb": res.get("own_peak_rss_mb"),
        "cpu_s": round(run.cpu_s, 2),
        "cores_used": round(run.cpu_s / run.wall_s, 2),
        "output_bytes": stats["bytes"],
        "output_mb": round(stats["bytes"] / MIB, 1),
        "output_files": stats["files"],
        "output_rows": stats["rows"],
        "loadavg_before": [round(x, 2) for x in load0],
        **machine_load(stat0, run.wall_s),
    }
    doc.update({k: v for k, v in res.items() if k not in ("wall_s", "own_peak_rss_mb", "rows")})
    shutil.rmtree(out, ignore_errors=True)
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="~60 MB instead of ~1 GB")
    ap.add_argument("--mb", type=float, default=None, help="input size in MiB (default 1000)")
    ap.add_argument("--data-dir", default=None, help="where to generate (reused if present)")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument(
        "--repeat", type=int, default=0, help="rounds, order rotating (default 3; --quick 1)"
    )
    ap.add_argument("--s3flow-option", action="append", default=[], help="key=value (JSON value)")
    ap.add_argument("--output", default=str(RESULTS_DIR / "ndjson_parquet.json"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(*args.child)
        return
    mb = args.mb or (60 if args.quick else 1000)
    root = Path(args.data_dir or Path(tempfile.gettempdir(), f"s3flow-bench-ndjson-{int(mb)}"))
    info = machine_info()
    t = time.perf_counter()
    data = generate(root, int(mb * MIB))
    print(
        f"data: {data['n_files']} files, {data['bytes'] / MIB:.0f} MiB, {data['rows']} rows "
        f"({time.perf_counter() - t:.1f} s)",
        flush=True,
    )
    opts: dict[str, Any] = {}
    for item in args.s3flow_option:
        k, _, v = item.partition("=")
        opts[k] = json.loads(v)
    systems = args.systems.split(",")
    repeat = args.repeat or (1 if args.quick else 3)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory(prefix="s3flow-bench-np-") as tmp:
        for rnd in range(repeat):
            order = systems[rnd % len(systems) :] + systems[: rnd % len(systems)]
            for system in order:
                print(f"round {rnd + 1}/{repeat}: {system} ...", flush=True)
                r = run_system(system, data, root, Path(tmp), opts)
                r["round"] = rnd + 1
                runs[system].append(r)
                print(
                    f"  {system}: {r['input_mb_per_s']} MB/s, {r['rows_per_s']} rows/s, "
                    f"peak RSS {r['peak_rss_tree_mb']} MB, out {r['output_mb']} MB, "
                    f"machine busy {r.get('machine_cores_busy')} cores",
                    flush=True,
                )
    results: dict[str, Any] = {}
    for system, rs in runs.items():
        by_rate = sorted(rs, key=lambda r: r["input_mb_per_s"])
        median = dict(by_rate[len(by_rate) // 2])
        median["input_mb_per_s_all_runs"] = [r["input_mb_per_s"] for r in rs]
        median["peak_rss_tree_mb_all_runs"] = [r["peak_rss_tree_mb"] for r in rs]
        median["peak_rss_tree_mb_max"] = max(r["peak_rss_tree_mb"] for r in rs)
        results[system] = median
    ratios: dict[str, Any] = {}
    if "s3flow" in results:
        s = results["s3flow"]
        for other in ("duckdb", "pandas"):
            if other in results:
                ratios[f"s3flow_vs_{other}_throughput"] = round(
                    s["input_mb_per_s"] / results[other]["input_mb_per_s"], 2
                )
                ratios[f"s3flow_vs_{other}_peak_rss"] = round(
                    s["peak_rss_tree_mb"] / max(1.0, results[other]["peak_rss_tree_mb"]), 2
                )
    goals = {}
    if "s3flow" in results:
        goals = {
            "throughput_at_least_duckdb": ratios.get("s3flow_vs_duckdb_throughput", 0) >= 1.0,
            "at_least_5x_pandas": ratios.get("s3flow_vs_pandas_throughput", 0) >= 5.0,
            "peak_rss_under_1gb": results["s3flow"]["peak_rss_tree_mb_max"] < 1024,
        }
    doc = {
        "benchmark": "ndjson_parquet",
        "description": "NDJSON -> Parquet (snappy, partitioned by date) from local files: "
        "s3flow compaction (3 manifests at once, local process-pool executor) vs DuckDB "
        "read_json_auto + COPY vs naive pandas read_json(lines=True) + to_parquet; "
        "one child process each, run one after the other",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            **info,
            "duckdb": _ver("duckdb"),
            "pandas": _ver("pandas"),
            "pyarrow": _ver("pyarrow"),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "input": {
            "files": data["n_files"],
            "bytes": data["bytes"],
            "mib": round(data["bytes"] / MIB, 1),
            "rows": data["rows"],
            "dates": list(DATES),
            "where": "local files (page cache warm after generation)",
        },
        "s3flow_options": opts,
        "repeat": repeat,
        "reported": "per system the median round by input_mb_per_s; all rounds listed",
        "results": results,
        "ratios": ratios,
        "goals": goals,
        "notes": [
            "input_mb_per_s = uncompressed NDJSON MiB / wall_s (inside the child, after imports)",
            "peak_rss_tree_mb = peak of the summed RSS of the child and all its descendants",
            "the machine is shared: compare ratios, and look at loadavg / machine_cores_busy",
        ],
    }
    write_json(Path(args.output), doc)
    print(json.dumps({"ratios": ratios, "goals": goals}, indent=2))


def _ver(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
