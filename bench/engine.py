"""Engine benchmark: s3flow ``line-count`` vs a naive sequential boto3 consumer.

Both run in one invocation on the same embedded endpoint (moto server started
by :class:`s3flow.local.LocalEndpoint`), each on its own bucket + queue, each in
its own child process so CPU time and peak RSS are the consumer's alone.

    .venv/bin/python bench/engine.py            # full run (~5-8 min on 2 cores)
    .venv/bin/python bench/engine.py --quick    # smoke run (~1 min)

Writes ``bench/results/engine.json`` and prints a table. See bench/README.md.

The two hidden sub-modes ``--naive-consumer CFG`` and ``--s3flow-consumer CFG``
are the child processes; they import only what they use (peak RSS is measured).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from _common import (
    MIB,
    RESULTS_DIR,
    ApiCalls,
    BenchError,
    Blob,
    ChildRun,
    CpuSampler,
    ProcessCpu,
    boto3_clients,
    count_lines,
    get_json,
    gzip_log_blob,
    list_keys,
    machine_info,
    machine_load,
    parallel,
    proc_stat,
    python,
    queue_depth,
    region,
    run_and_write,
    run_child,
    self_cpu_s,
    self_peak_rss_mb,
    small_log_objects,
    wait_for_depth,
)

SMALL_BYTES = 1024
GOAL_RATIO = 5.0
SYSTEMS = ("s3flow", "naive")

# ============================================================================
# Child 1: the naive consumer, written the way the typical boto3 tutorial does.
# ============================================================================


def naive_consumer(cfg: dict[str, Any]) -> dict[str, Any]:
    """Receive 1, get, count, put, delete; until the queue is empty (or a limit)."""
    import gzip

    import boto3
    from botocore.config import Config

    t0 = time.perf_counter()
    cpu0 = self_cpu_s()
    conf = Config(region_name=region(), s3={"addressing_style": "path"})
    s3 = boto3.client("s3", config=conf)
    sqs = boto3.client("sqs", config=conf)
    api = ApiCalls()
    api.attach(s3)
    api.attach(sqs)
    url = cfg["queue_url"]
    out_bucket, out_prefix = cfg["out_bucket"], cfg["out_prefix"]
    budget_s = float(cfg.get("budget_s") or 0)
    max_objects = int(cfg.get("max_objects") or 0)
    processed: list[str] = []
    test_events = messages = bytes_in = 0
    last_done = t0
    stopped = "drained"
    while True:
        if max_objects and len(processed) >= max_objects:
            stopped = "max_objects"
            break
        if budget_s and time.perf_counter() - t0 > budget_s:
            stopped = "time_budget"
            break
        resp = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=1)
        if not resp.get("Messages"):
            attrs = sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]
            if int(attrs["ApproximateNumberOfMessages"]) == 0:
                break
            continue
        message = resp["Messages"][0]
        messages += 1
        body = json.loads(message["Body"])
        if body.get("Event") == "s3:TestEvent":
            test_events += 1
        else:
            for record in body.get("Records", []):
                bucket = record["s3"]["bucket"]["name"]
                key = unquote_plus(record["s3"]["object"]["key"])
                obj = s3.get_object(Bucket=bucket, Key=key)
                data = obj["Body"].read()
                compressed = len(data)
                bytes_in += compressed
                if data[:2] == b"\x1f\x8b":
                    data = gzip.decompress(data)
                lines = data.count(b"\n")
                if data and not data.endswith(b"\n"):
                    lines += 1
                result = {
                    "bucket": bucket,
                    "key": key,
                    "etag": obj["ETag"].strip('"'),
                    "compressed_bytes": compressed,
                    "uncompressed_bytes": len(data),
                    "lines": lines,
                }
                s3.put_object(
                    Bucket=out_bucket,
                    Key=f"{out_prefix}{key}.json",
                    Body=json.dumps(result).encode(),
                    ContentType="application/json",
                )
                processed.append(key)
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        last_done = time.perf_counter()
    t_end = time.perf_counter()
    return {
        "t0_abs": t0,
        "t_busy_s": last_done - t0,
        "t_exit_s": t_end - t0,
        "cpu_s": self_cpu_s() - cpu0,
        "peak_rss_mb": self_peak_rss_mb(),
        "objects": len(processed),
        "processed_keys": processed,
        "messages": messages,
        "test_events": test_events,
        "bytes_in": bytes_in,
        "stopped": stopped,
        "api": api.report(len(processed)),
    }


# ============================================================================
# Child 2: s3flow's worker (line-count, default concurrency), burst mode.
# ============================================================================


def s3flow_consumer(cfg: dict[str, Any]) -> dict[str, Any]:
    """``run_worker(settings, burst=True)`` with a clock on each settled message."""
    import asyncio
    import contextlib

    import s3flow.app
    from s3flow.app import run_worker
    from s3flow.settings import load_settings
    from s3flow.worker.engine import WorkerObserver

    class Clock(WorkerObserver):
        """Times each message's phases; perf_counter and monotonic share one clock here."""

        def __init__(self) -> None:
            self.settled = 0
            self.last = 0.0
            self.started: dict[str, float] = {}
            self.finished: dict[str, float] = {}
            self.phases: dict[str, list[float]] = {
                "received_to_started": [],
                "started_to_finished": [],
                "finished_to_settled": [],
                "received_to_settled": [],
            }

        def object_started(self, pipeline: str, event: Any) -> None:
            self.started[event.key] = time.perf_counter()

        def object_finished(self, pipeline: str, event: Any, result: Any, error: Any) -> None:
            self.finished[event.key] = time.perf_counter()

        def message_settled(self, pipeline: str, message: Any, outcome: Any) -> None:
            now = time.perf_counter()
            self.settled += 1
            self.last = now
            try:
                records = json.loads(message.body).get("Records") or []
                key = unquote_plus(records[0]["s3"]["object"]["key"]) if records else None
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                key = None
            received = getattr(message, "received_at", None)
            if key is None or key not in self.finished or received is None:
                return
            p = self.phases
            p["received_to_started"].append(self.started[key] - received)
            p["started_to_finished"].append(self.finished[key] - self.started[key])
            p["finished_to_settled"].append(now - self.finished[key])
            p["received_to_settled"].append(now - received)

        def report(self) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name, xs in self.phases.items():
                if xs:
                    xs = sorted(xs)
                    out[name] = {
                        "mean_ms": round(1000 * sum(xs) / len(xs), 1),
                        "p50_ms": round(1000 * xs[len(xs) // 2], 1),
                        "p90_ms": round(1000 * xs[int(len(xs) * 0.9)], 1),
                    }
            return out

    # Count the SDK calls the worker makes: wrap the client factory app.py uses.
    api: ApiCalls | None = None
    real_open = getattr(s3flow.app, "open_clients", None)
    if real_open is not None:
        api = ApiCalls()

        @contextlib.asynccontextmanager
        async def counting_open(*args: Any, **kwargs: Any) -> Any:
            async with real_open(*args, **kwargs) as clients:
                assert api is not None
                api.attach(clients.s3)
                api.attach(clients.sqs)
                yield clients

        s3flow.app.open_clients = counting_open  # type: ignore[assignment]

    settings = load_settings(None, cfg["settings"])
    name = settings.pipelines[0].name
    clock = Clock()
    t0 = time.perf_counter()
    clock.last = t0
    cpu0 = self_cpu_s()
    metrics = asyncio.run(run_worker(settings, burst=True, observer=clock))
    t_end = time.perf_counter()
    m = metrics.pipelines[name]
    return {
        "t0_abs": t0,
        "t_busy_s": clock.last - t0,
        "t_exit_s": t_end - t0,
        "cpu_s": self_cpu_s() - cpu0,
        "peak_rss_mb": self_peak_rss_mb(),
        "objects": m.objects_processed,
        "messages": clock.settled,
        "test_events": m.test_events,
        "bytes_in": m.bytes_in,
        "concurrency": settings.pipelines[0].concurrency,
        "metrics": m.as_dict(),
        "stopped": "drained",
        "api": api.report(m.objects_processed, m.messages_received) if api else None,
        "phases": clock.report(),
    }


def child_main(mode: str, cfg_path: str) -> int:
    """Entry point of a child process: run the consumer, write its JSON report."""
    cfg = json.loads(Path(cfg_path).read_text())
    fn = naive_consumer if mode == "naive" else s3flow_consumer
    report = fn(cfg)
    Path(cfg["result_path"]).write_text(json.dumps(report))
    return 0


# ============================================================================
# Parent: endpoint, provisioning, ceilings, workloads, verification, report.
# ============================================================================


def pipeline_conf(system: str, workload: str) -> dict[str, Any]:
    """A line-count pipeline with its own bucket, queue and output bucket."""
    base = f"bench-{system}-{workload}"
    return {
        "name": f"{system}-{workload}",
        "processor": "line-count",
        "bucket": f"{base}-in",
        "queue": base,
        "output": f"s3://{base}-out/results/",
    }


class Ceilings:
    """Measures what the endpoint itself can do with a tight boto3 client."""

    def __init__(self, endpoint_pid: int | None, threads: int, seconds: float) -> None:
        self.moto = ProcessCpu(endpoint_pid)
        self.seconds = seconds
        self.pool = [boto3_clients(pool=4) for _ in range(threads)]
        self.s3, self.sqs = self.pool[0]
        self.bucket = "bench-ceiling"
        self.results: dict[str, Any] = {}

    def _threads(self, n: int, fn: Callable[[int, float], int]) -> dict[str, Any]:
        """Run ``fn(i, deadline)`` on ``n`` threads; ops/s and moto CPU share."""
        barrier = threading.Barrier(n + 1)
        counts = [0] * n
        errors: list[BaseException] = []
        box = {"deadline": 0.0}

        def run(i: int) -> None:
            barrier.wait()
            try:
                counts[i] = fn(i, box["deadline"])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        moto0 = self.moto.read()
        box["deadline"] = time.perf_counter() + self.seconds
        t0 = time.perf_counter()
        barrier.wait()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        moto_cpu = self.moto.read() - moto0
        if errors:
            raise BenchError(f"ceiling measurement failed: {errors[0]!r}") from errors[0]
        ops = sum(counts)
        return {
            "threads": n,
            "ops": ops,
            "seconds": round(elapsed, 3),
            "per_s": round(ops / elapsed, 1) if elapsed else 0.0,
            "moto_cpu_util": round(moto_cpu / elapsed, 2) if elapsed else 0.0,
            "moto_cpu_ms_per_op": round(moto_cpu * 1000 / ops, 3) if ops else None,
            # what moto could serve with one full core (it runs under one GIL)
            "moto_core_bound_per_s": round(ops / moto_cpu, 1) if moto_cpu else None,
        }

    def _fill(self, url: str, bodies: list[str]) -> None:
        batches = [bodies[i : i + 10] for i in range(0, len(bodies), 10)]

        def send(batch: list[str]) -> None:
            entries = [{"Id": str(j), "MessageBody": b} for j, b in enumerate(batch)]
            resp = self.sqs.send_message_batch(QueueUrl=url, Entries=entries)
            if resp.get("Failed"):
                raise BenchError(f"SendMessageBatch failed: {resp['Failed'][:1]}")

        for batch in batches:
            send(batch)
        wait_for_depth(self.sqs, url, len(bodies))

    def measure(self, depth: int, small: list[Blob], large: Blob | None) -> dict[str, Any]:
        """Every ceiling; returns the dict stored under endpoint.ceilings."""
        s3, sqs = self.s3, self.sqs
        s3.create_bucket(Bucket=self.bucket)
        url = sqs.create_queue(QueueName="bench-ceiling", Attributes={"VisibilityTimeout": "60"})[
            "QueueUrl"
        ]
        keys = [f"small/obj-{i:05d}.log" for i in range(depth)]
        parallel(
            lambda i: s3.put_object(Bucket=self.bucket, Key=keys[i], Body=small[i].data),
            range(depth),
            8,
        )
        bodies = [
            json.dumps(
                {
                    "Records": [
                        {
                            "eventName": "ObjectCreated:Put",
                            "s3": {
                                "bucket": {"name": self.bucket},
                                "object": {"key": k, "size": SMALL_BYTES},
                            },
                        }
                    ]
                }
            )
            for k in keys
        ]
        out: dict[str, Any] = {"queue_depth": depth}

        def sqs_drain(i: int, deadline: float) -> int:
            _, q = self.pool[i]
            n = 0
            while True:
                msgs = q.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0
                ).get("Messages", [])
                if not msgs:
                    return n
                entries = [
                    {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]} for j, m in enumerate(msgs)
                ]
                q.delete_message_batch(QueueUrl=url, Entries=entries)
                n += len(msgs)

        for n in (1, 4):
            self._fill(url, bodies)
            out[f"sqs_receive10_delete_batch_t{n}"] = self._threads(n, sqs_drain)

        def sqs_one_by_one(i: int, deadline: float) -> int:
            # What the naive consumer does per message (time-boxed: it is slow at depth).
            _, q = self.pool[i]
            n = 0
            while time.perf_counter() < deadline:
                msgs = q.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=0
                ).get("Messages", [])
                if not msgs:
                    break
                q.delete_message(QueueUrl=url, ReceiptHandle=msgs[0]["ReceiptHandle"])
                n += 1
            return n

        self._fill(url, bodies)
        out["sqs_receive1_delete1_t1"] = self._threads(1, sqs_one_by_one)
        self.sqs.purge_queue(QueueUrl=url)
        time.sleep(0.5)

        def get_small(i: int, deadline: float) -> int:
            c, _ = self.pool[i]
            n, j = 0, i
            while time.perf_counter() < deadline:
                c.get_object(Bucket=self.bucket, Key=keys[j % depth])["Body"].read()
                n += 1
                j += len(self.pool)
            return n

        for n in (1, 4, 16):
            out[f"s3_get_1kib_t{n}"] = self._threads(n, get_small)

        def put_small(i: int, deadline: float) -> int:
            c, _ = self.pool[i]
            n = 0
            while time.perf_counter() < deadline:
                c.put_object(Bucket=self.bucket, Key=f"put/{i}/{n}.json", Body=b'{"lines": 9}' * 30)
                n += 1
            return n

        out["s3_put_360b_t16"] = self._threads(16, put_small)

        def mix(i: int, deadline: float) -> int:
            c, q = self.pool[i]
            n = 0
            while True:
                msgs = q.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0
                ).get("Messages", [])
                if not msgs:
                    return n
                for m in msgs:
                    rec = json.loads(m["Body"])["Records"][0]["s3"]
                    key = unquote_plus(rec["object"]["key"])
                    data = c.get_object(Bucket=rec["bucket"]["name"], Key=key)["Body"].read()
                    doc = json.dumps({"key": key, "lines": count_lines(data)}).encode()
                    c.put_object(Bucket=self.bucket, Key=f"mix/{key}.json", Body=doc)
                    n += 1
                entries = [
                    {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]} for j, m in enumerate(msgs)
                ]
                q.delete_message_batch(QueueUrl=url, Entries=entries)

        for n in (4, 16):
            self._fill(url, bodies)
            out[f"small_object_call_mix_t{n}"] = self._threads(n, mix)
        best = max(
            (out["small_object_call_mix_t4"], out["small_object_call_mix_t16"]),
            key=lambda r: float(r["per_s"]),
        )
        out["small_objects_per_s"] = best["per_s"]
        out["small_objects_moto_core_bound_per_s"] = best["moto_core_bound_per_s"]
        out["small_objects_note"] = (
            "small_objects_per_s: best measured call mix (receive 10, per message get 1 KiB + "
            "put result, delete batch) from one boto3 client process with threads; "
            "small_objects_moto_core_bound_per_s: the same mix divided by moto's CPU per object, "
            "i.e. what moto could serve with one full core (its GIL caps it near one core)"
        )

        if large is not None:
            size_mib = len(large.data) / MIB
            s3.put_object(Bucket=self.bucket, Key="large/blob.log.gz", Body=large.data)

            def get_large(i: int, deadline: float) -> int:
                c, _ = self.pool[i]
                n = 0
                while time.perf_counter() < deadline:
                    body = c.get_object(Bucket=self.bucket, Key="large/blob.log.gz")["Body"]
                    while body.read(MIB):
                        pass
                    n += 1
                return n

            for n in (1, 4):
                r = self._threads(n, get_large)
                r["mib_per_s"] = round(r["per_s"] * size_mib, 1)
                out[f"s3_get_{size_mib:.0f}mib_t{n}"] = r
            out["large_get_mib_per_s"] = max(
                out[f"s3_get_{size_mib:.0f}mib_t{n}"]["mib_per_s"] for n in (1, 4)
            )
            out["client_gunzip_count_1core"] = gunzip_ceiling(large)
        return out


def gunzip_ceiling(blob: Blob) -> dict[str, Any]:
    """Client-side CPU ceiling: zlib inflate + newline count of one blob, one thread."""
    import zlib

    t0 = time.perf_counter()
    d = zlib.decompressobj(31)
    lines = 0
    view = memoryview(blob.data)
    for i in range(0, len(view), MIB):
        lines += d.decompress(view[i : i + MIB]).count(b"\n")
    elapsed = time.perf_counter() - t0
    if lines != blob.lines:
        raise BenchError(f"gunzip ceiling counted {lines} lines, expected {blob.lines}")
    return {
        "seconds": round(elapsed, 3),
        "compressed_mib_per_s": round(len(blob.data) / MIB / elapsed, 1),
        "uncompressed_mib_per_s": round(blob.uncompressed_bytes / MIB / elapsed, 1),
    }


class Runner:
    """Uploads a workload for one system, runs its consumer child, verifies, reports."""

    def __init__(self, args: argparse.Namespace, endpoint_pid: int | None, tmp: Path) -> None:
        self.args = args
        self.moto = ProcessCpu(endpoint_pid)
        self.tmp = tmp
        self.s3, self.sqs = boto3_clients(pool=16)

    def upload(self, conf: dict[str, Any], keys: list[str], blobs: list[Blob]) -> float:
        t0 = time.perf_counter()
        threads = 8 if len(blobs[0].data) < MIB else 4
        parallel(
            lambda i: self.s3.put_object(Bucket=conf["bucket"], Key=keys[i], Body=blobs[i].data),
            range(len(keys)),
            threads,
        )
        return time.perf_counter() - t0

    def run(
        self, system: str, workload: str, keys: list[str], blobs: list[Blob], rnd: int
    ) -> dict[str, Any]:
        """Round ``rnd`` (0-based) of one system on one workload."""
        conf = pipeline_conf(system, workload)
        # Each round writes under its own output prefix, so verification only sees its results.
        conf["output"] = conf["output"].replace("/results/", f"/results/r{rnd}/")
        url = self.sqs.get_queue_url(QueueName=conf["queue"])["QueueUrl"]
        leftover = queue_depth(self.sqs, url)
        if rnd > 0 and (leftover["visible"] or leftover["in_flight"]):
            self.sqs.purge_queue(QueueUrl=url)  # a subset run of the naive consumer left some
            time.sleep(0.5)
        upload_s = self.upload(conf, keys, blobs)
        # The first round also holds the s3:TestEvent sent when the notification was set up.
        depth = wait_for_depth(self.sqs, url, len(keys) + (1 if rnd == 0 else 0))
        out_bucket, _, out_prefix = conf["output"][5:].partition("/")
        tag = f"{system}-{workload}-r{rnd}"
        result_path = self.tmp / f"{tag}.result.json"
        cfg: dict[str, Any] = {"result_path": str(result_path)}
        if system == "s3flow":
            settings: dict[str, Any] = {"pipelines": [conf]}
            for path, value in self.args.s3flow_set:
                apply_override(settings, path, value)
            cfg["settings"] = settings
        else:
            cfg.update(
                queue_url=url,
                out_bucket=out_bucket,
                out_prefix=out_prefix,
                budget_s=self.args.naive_budget_s,
                max_objects=self.args.naive_max_objects,
            )
        # A fresh working directory per run: relative paths in the defaults (the SQLite
        # state store) land there, never in the repository, and no run sees another's state.
        workdir = self.tmp / tag
        workdir.mkdir()
        cfg_path = self.tmp / f"{tag}.cfg.json"
        cfg_path.write_text(json.dumps(cfg))
        cmd = [python(), str(Path(__file__).resolve()), f"--{system}-consumer", str(cfg_path)]
        timeout = (self.args.naive_budget_s or 1800) + 300
        stat0 = proc_stat()
        with CpuSampler(self.moto) as moto:
            child: ChildRun = run_child(cmd, self.tmp / f"{tag}.log", timeout, cwd=workdir)
        load = machine_load(stat0, child.wall_s)
        moto_cpu = moto.total()
        if child.returncode != 0:
            raise BenchError(
                f"{system} consumer exited with {child.returncode}:\n{child.log_tail()}"
            )
        rep = json.loads(result_path.read_text())
        processed = rep.pop("processed_keys", None)
        expect = dict(zip(keys, blobs, strict=True))
        done_keys = set(processed) if processed is not None else set(keys)
        verified = self.verify(system, out_bucket, out_prefix, expect, done_keys, rep)
        after = queue_depth(self.sqs, url)
        subset = rep["objects"] < len(keys)
        if not subset and (after["visible"] or after["in_flight"]):
            raise BenchError(f"{system}/{workload}: queue not empty after the run: {after}")
        if system == "s3flow":
            dlq = self.sqs.get_queue_url(QueueName=f"{conf['queue']}-dlq")["QueueUrl"]
            dlq_depth = queue_depth(self.sqs, dlq)["visible"]
            if dlq_depth:
                raise BenchError(f"s3flow/{workload}: {dlq_depth} messages dead-lettered")
        n = rep["objects"]
        busy = rep["t_busy_s"]
        moto_busy = moto.between(rep["t0_abs"], rep["t0_abs"] + busy)
        return {
            "objects": n,
            "objects_total": len(keys),
            "subset": subset,
            "stopped": rep["stopped"],
            "queue_depth_at_start": depth,
            "wall_s": round(busy, 3),
            "wall_s_to_exit": round(rep["t_exit_s"], 3),
            "process_wall_s": round(child.wall_s, 3),
            "objects_per_s": round(n / busy, 2),
            "mib_per_s": round(rep["bytes_in"] / MIB / busy, 2),
            "cpu_ms_per_object": round(rep["cpu_s"] * 1000 / n, 3),
            "cpu_s": round(rep["cpu_s"], 3),
            "process_cpu_s": round(child.cpu_s, 3),
            "worker_cpu_util": round(rep["cpu_s"] / rep["t_exit_s"], 2),
            "peak_rss_mb": round(rep["peak_rss_mb"], 1),
            "moto_cpu_s": round(moto_cpu, 3),
            "moto_cpu_s_busy": round(moto_busy, 3),
            "moto_cpu_util": round(moto_busy / busy, 2),
            "moto_cpu_ms_per_object": round(moto_busy * 1000 / n, 3),
            "api_calls": rep["api"],
            **({"message_phases": rep["phases"]} if rep.get("phases") else {}),
            **load,
            "compressed_bytes_read": rep["bytes_in"],
            "messages_settled": rep["messages"],
            "test_events": rep["test_events"],
            "upload_s": round(upload_s, 2),
            "verified": verified,
            **({"concurrency": rep["concurrency"]} if "concurrency" in rep else {}),
            **({"worker_metrics": rep["metrics"]} if "metrics" in rep else {}),
        }

    def verify(
        self,
        system: str,
        bucket: str,
        prefix: str,
        expect: dict[str, Blob],
        done_keys: set[str],
        rep: dict[str, Any],
    ) -> str:
        """Every processed input has exactly one result with the right counts; else raise."""
        if rep["objects"] != len(done_keys):
            raise BenchError(f"{system}: reports {rep['objects']} objects, {len(done_keys)} keys")
        unknown = done_keys - set(expect)
        if unknown:
            raise BenchError(f"{system}: processed unknown keys {sorted(unknown)[:3]}")
        have = list_keys(self.s3, bucket, prefix)
        want = {f"{prefix}{k}.json" for k in done_keys}
        if have != want:
            raise BenchError(
                f"{system}: {len(have)} result objects for {len(want)} inputs; "
                f"missing {sorted(want - have)[:3]}, unexpected {sorted(have - want)[:3]}"
            )

        def check(key: str) -> None:
            doc = get_json(self.s3, bucket, f"{prefix}{key}.json")
            blob = expect[key]
            if doc.get("lines") != blob.lines or doc.get("uncompressed_bytes") != (
                blob.uncompressed_bytes
            ):
                raise BenchError(
                    f"{system}: wrong result for {key}: lines={doc.get('lines')} "
                    f"(want {blob.lines}), bytes={doc.get('uncompressed_bytes')} "
                    f"(want {blob.uncompressed_bytes})"
                )

        parallel(check, sorted(done_keys), 8)
        return f"{len(done_keys)} results present, line and byte counts correct"


def apply_override(settings: dict[str, Any], path: str, value: Any) -> None:
    """``worker.ack_batch_window_s`` -> settings['worker'][...]; ``pipeline.x`` -> the pipeline."""
    head, _, rest = path.partition(".")
    if not rest:
        raise BenchError(f"--s3flow-set {path}: use section.key (worker.x, aws.x, pipeline.x)")
    node = settings["pipelines"][0] if head == "pipeline" else settings.setdefault(head, {})
    parts = rest.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def parse_set(text: str) -> tuple[str, Any]:
    """``key=value`` with a JSON value when it parses (numbers, booleans), else a string."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("expected section.key=value")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median objects/s (lower median for an even count), plus all rates."""
    ordered = sorted(runs, key=lambda r: float(r["objects_per_s"]))
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs"] = len(runs)
    chosen["objects_per_s_all_runs"] = [r["objects_per_s"] for r in runs]
    chosen["cpu_ms_per_object_all_runs"] = [r["cpu_ms_per_object"] for r in runs]
    chosen["peak_rss_mb_all_runs"] = [r["peak_rss_mb"] for r in runs]
    return chosen


def ratio(a: float, b: float) -> float | None:
    """a / b rounded, None when b is 0."""
    return round(a / b, 2) if b else None


def notes_for(workload: str, res: dict[str, Any], ceilings: dict[str, Any]) -> list[str]:
    """Plain-language bottleneck notes from the measurements."""
    s, n = res["systems"]["s3flow"], res["systems"]["naive"]
    notes: list[str] = []
    if n["subset"]:
        notes.append(
            f"naive consumer ran on a subset: {n['objects']} of {n['objects_total']} objects "
            f"(stopped by {n['stopped']}); its rate is computed from that subset"
        )
    cores = os.cpu_count() or 0
    for name, r in (("s3flow", s), ("naive", n)):
        notes.append(
            f"{name}: moto server at {r['moto_cpu_util']:.0%} of one core "
            f"({r['moto_cpu_ms_per_object']:.2f} ms/object), worker at "
            f"{r['worker_cpu_util']:.0%} of one core; whole machine "
            f"{r.get('machine_cores_busy', '?')} of {cores} cores busy (other processes included)"
        )
    if workload == "small":
        ceiling = ceilings.get("small_objects_per_s")
        bound = ceilings.get("small_objects_moto_core_bound_per_s")
        if ceiling:
            notes.append(
                f"endpoint ceiling for the per-object call mix (receive 10, get 1 KiB, put "
                f"result, delete batch; boto3 threads): {ceiling:.0f} objects/s measured, "
                f"{bound} objects/s if moto had a full core; s3flow reaches "
                f"{s['objects_per_s'] / ceiling:.0%} / "
                f"{s['objects_per_s'] / bound if bound else 0:.0%} of them"
            )
        if s["moto_cpu_util"] >= 0.85:
            notes.append(
                f"s3flow is endpoint-bound: moto (one process, one GIL) is at "
                f"{s['moto_cpu_util']:.0%} of a core during s3flow's run"
            )
        if bound and n["objects_per_s"]:
            notes.append(
                f"best ratio this endpoint allows: {bound / n['objects_per_s']:.1f}x "
                f"(moto one-core bound {bound} objects/s / naive {n['objects_per_s']} objects/s)"
            )
        ph = s.get("message_phases") or {}
        if ph.get("finished_to_settled") and ph.get("received_to_settled"):
            held = ph["finished_to_settled"]["mean_ms"]
            slot = ph["received_to_settled"]["mean_ms"]
            notes.append(
                f"s3flow time per message from receive to settled: {slot} ms mean, of which "
                f"{ph['started_to_finished']['mean_ms']} ms processing (GetObject + PutObject) "
                f"and {held} ms ({held / slot:.0%}) waiting for the batched delete "
                "(ack window + DeleteMessageBatch; the slot is already free by then)"
            )
        api = s.get("api_calls") or {}
        deletes = (api.get("calls") or {}).get("sqs.DeleteMessageBatch")
        if api.get("messages_per_receive") and deletes:
            notes.append(
                f"s3flow batching: {api['messages_per_receive']} messages per ReceiveMessage "
                f"(demand-driven: it asks only for free slots), "
                f"{s['messages_settled'] / deletes:.1f} per DeleteMessageBatch, "
                f"{api.get('per_object')} API calls per object"
            )
        n_lat = n["wall_s"] * 1000 / max(1, n["objects"])
        one = ceilings.get("sqs_receive1_delete1_t1", {}).get("moto_cpu_ms_per_op")
        ten = ceilings.get("sqs_receive10_delete_batch_t1", {}).get("moto_cpu_ms_per_op")
        notes.append(
            f"naive: {n_lat:.1f} ms per object for "
            f"{(n['api_calls'] or {}).get('per_object')} sequential calls"
            + (
                f"; at this queue depth moto spends {one} ms CPU per ReceiveMessage(1) + "
                f"DeleteMessage pair vs {ten} ms per message with ReceiveMessage(10) + "
                "DeleteMessageBatch (each ReceiveMessage scans the whole queue in moto), so the "
                "naive consumer is partly endpoint-bound too"
                if one and ten
                else ""
            )
        )
        r = res["ratio"]["objects_per_s"] or 0
        verdict = "met" if r >= GOAL_RATIO else "MISSED"
        notes.append(f"goal s3flow >= {GOAL_RATIO:.0f}x naive objects/s: {verdict} ({r}x)")
    else:
        gz = ceilings.get("client_gunzip_count_1core", {}).get("compressed_mib_per_s")
        get = ceilings.get("large_get_mib_per_s")
        if gz:
            notes.append(
                f"client-side gunzip+count ceiling: {gz} compressed MiB/s per core; endpoint "
                f"GetObject ceiling: {get} MiB/s; s3flow reads {s['mib_per_s']} MiB/s"
            )
    c = res["ratio"]["cpu_ms_per_object"]
    if c is not None:
        notes.append(
            f"s3flow CPU per object is {c}x the naive consumer's ({'lower' if c < 1 else 'HIGHER'})"
        )
    return notes


def print_report(doc: dict[str, Any]) -> None:
    """Rich tables: per workload and system, then the endpoint ceilings."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    t = Table(title="s3flow engine benchmark (line-count) vs naive sequential boto3 consumer")
    for col in (
        "workload",
        "system",
        "objects",
        "wall s",
        "obj/s",
        "MiB/s",
        "CPU ms/obj",
        "peak RSS MiB",
        "moto CPU",
    ):
        t.add_column(col, justify="left" if col in ("workload", "system") else "right")
    for wname, w in doc["workloads"].items():
        for sname in SYSTEMS:
            r = w["systems"][sname]
            objs = f"{r['objects']}" + ("" if not r["subset"] else f" of {r['objects_total']}")
            t.add_row(
                wname,
                sname,
                objs,
                f"{r['wall_s']:.2f}",
                f"{r['objects_per_s']:.1f}",
                f"{r['mib_per_s']:.2f}",
                f"{r['cpu_ms_per_object']:.2f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{r['moto_cpu_util']:.0%}",
            )
        rr = w["ratio"]
        t.add_row(
            wname,
            "[bold]s3flow/naive[/]",
            "",
            "",
            f"[bold]{rr['objects_per_s']}x[/]",
            f"{rr['mib_per_s']}x",
            f"{rr['cpu_ms_per_object']}x",
            f"{rr['peak_rss_mb']}x",
            "",
            end_section=True,
        )
    console.print(t)
    c = doc["endpoint"]["ceilings"]
    if c:
        ct = Table(title=f"endpoint ceilings (moto server, queue depth {c.get('queue_depth')})")
        for col in (
            "measurement",
            "threads",
            "ops/s",
            "MiB/s",
            "moto CPU",
            "moto ms/op",
            "moto@1core/s",
        ):
            ct.add_column(col, justify="left" if col == "measurement" else "right")
        for k, v in c.items():
            if isinstance(v, dict) and "per_s" in v:
                ct.add_row(
                    k,
                    str(v["threads"]),
                    f"{v['per_s']:.1f}",
                    str(v.get("mib_per_s", "")),
                    f"{v['moto_cpu_util']:.0%}",
                    str(v.get("moto_cpu_ms_per_op", "")),
                    str(v.get("moto_core_bound_per_s", "")),
                )
        g = c.get("client_gunzip_count_1core")
        if g:
            ct.add_row("client gunzip+count (no endpoint)", "1", "", str(g["compressed_mib_per_s"]))
        console.print(ct)
    for wname, w in doc["workloads"].items():
        for note in w["bottleneck"]:
            console.print(f"[dim]{wname}:[/] {note}")
    console.print(f"results: {doc['output_path']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--small", type=int, default=None, help="small objects (default 1000)")
    p.add_argument("--large", type=int, default=None, help="large gzip objects (default 20)")
    p.add_argument(
        "--large-mib", type=float, default=None, help="compressed MiB per large object (20)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 100 small, 2 large of 2 MiB")
    p.add_argument(
        "--naive-budget-s",
        type=float,
        default=150.0,
        help="stop the naive consumer after this long and rate it on that subset (0 = no limit)",
    )
    p.add_argument(
        "--naive-max-objects",
        type=int,
        default=0,
        help="process at most this many objects with the naive consumer (0 = all)",
    )
    p.add_argument(
        "--ceiling-seconds", type=float, default=None, help="time box per ceiling test (3)"
    )
    p.add_argument("--no-ceilings", action="store_true", help="skip the endpoint ceilings")
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="rounds per workload and system; the median run (by objects/s) is reported "
        "(default 3, --quick 1)",
    )
    p.add_argument(
        "--s3flow-set",
        type=parse_set,
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override an s3flow setting for experiments, e.g. worker.ack_batch_window_s=0.01 "
        "or pipeline.concurrency=32 (recorded in the JSON; the default run uses none)",
    )
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "engine.json")
    p.add_argument(
        "--keep-scratch", action="store_true", help="keep the temp dir (child logs, moto log)"
    )
    p.add_argument("--naive-consumer", metavar="CFG", help=argparse.SUPPRESS)
    p.add_argument("--s3flow-consumer", metavar="CFG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    preset = (100, 2, 2.0, 1.5) if args.quick else (1000, 20, 20.0, 3.0)
    args.small = args.small if args.small is not None else preset[0]
    args.large = args.large if args.large is not None else preset[1]
    args.large_mib = args.large_mib if args.large_mib is not None else preset[2]
    args.ceiling_seconds = args.ceiling_seconds or preset[3]
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.small < 1 or args.large < 0:
        p.error("--small must be >= 1 and --large >= 0")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the JSON document."""
    import asyncio

    from rich.console import Console

    from s3flow.local.endpoint import LocalEndpoint
    from s3flow.provisioning import provision
    from s3flow.settings import load_settings

    console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)
    started = time.perf_counter()
    doc: dict[str, Any] = {
        "benchmark": "engine",
        "description": (
            "s3flow line-count (default concurrency, burst worker) vs a naive sequential boto3 "
            "consumer (receive 1, get, count, put, delete), same embedded endpoint, one run"
        ),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
    }
    workloads = [("small", args.small)] + ([("large", args.large)] if args.large else [])
    console.print("generating data ...")
    small = small_log_objects(args.small, SMALL_BYTES)
    large = gzip_log_blob(int(args.large_mib * MIB)) if args.large else None
    data: dict[str, tuple[list[str], list[Blob]]] = {
        "small": ([f"small/obj-{i:05d}.log" for i in range(args.small)], small)
    }
    if large is not None:
        data["large"] = (
            [f"large/obj-{i:03d}.log.gz" for i in range(args.large)],
            [large] * args.large,
        )
    doc["config"] = {
        "small_objects": args.small,
        "small_object_bytes": SMALL_BYTES,
        "large_objects": args.large,
        "large_object_compressed_bytes": len(large.data) if large else 0,
        "large_object_uncompressed_bytes": large.uncompressed_bytes if large else 0,
        "large_object_lines": large.lines if large else 0,
        "large_objects_note": "the same generated gzip blob uploaded under different keys",
        "naive_budget_s": args.naive_budget_s,
        "naive_max_objects": args.naive_max_objects,
        "repeat": args.repeat,
        "s3flow_overrides": {k: v for k, v in args.s3flow_set},
        "ceiling_seconds": args.ceiling_seconds,
        "timing": (
            "wall_s = consumer start (before its AWS clients are created) to the last message "
            "deleted, measured inside the child; wall_s_to_exit adds the burst-mode drain check "
            "(one empty 1 s long poll for both); process_wall_s adds interpreter start and imports"
        ),
        "cpu": (
            "cpu_ms_per_object = the child's user+sys CPU over wall_s_to_exit / objects; "
            "process_cpu_s includes interpreter start and imports; moto's CPU is separate"
        ),
    }
    tmp = Path(tempfile.mkdtemp(prefix="s3flow-bench-engine-"))
    endpoint = LocalEndpoint(log_path=str(tmp / "moto.log"))
    console.print("starting the embedded endpoint ...")
    endpoint.start()
    try:
        os.environ.update(endpoint.env())
        doc["endpoint"] = {
            "kind": "moto server via s3flow.local.LocalEndpoint (patched, see EMULATORS.md)",
            "url": endpoint.url,
        }
        confs = [pipeline_conf(s, w) for w, _ in workloads for s in SYSTEMS]
        settings = load_settings(None, {"pipelines": confs})
        asyncio.run(provision(settings))
        if args.no_ceilings:
            doc["endpoint"]["ceilings"] = {}
        else:
            console.print(f"measuring endpoint ceilings at queue depth {args.small} ...")
            ceil = Ceilings(endpoint.pid, 16, args.ceiling_seconds)
            doc["endpoint"]["ceilings"] = ceil.measure(args.small, small, large)
        ceilings = doc["endpoint"]["ceilings"]
        runner = Runner(args, endpoint.pid, tmp)
        doc["workloads"] = {}
        for wname, n in workloads:
            keys, blobs = data[wname]
            res: dict[str, Any] = {"objects": n, "systems": {}}
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SYSTEMS}
            for rnd in range(args.repeat):
                # Alternate which system goes first, so drift in the endpoint or the
                # machine's background load does not always favour the same one.
                order = SYSTEMS if rnd % 2 == 0 else tuple(reversed(SYSTEMS))
                for system in order:
                    console.print(
                        f"{wname} round {rnd + 1}/{args.repeat}: uploading {n} objects, "
                        f"running {system} ..."
                    )
                    r = runner.run(system, wname, keys, blobs, rnd)
                    runs[system].append(r)
                    console.print(
                        f"  {system}: {r['objects']} objects in {r['wall_s']:.2f}s = "
                        f"{r['objects_per_s']:.1f}/s, {r['cpu_ms_per_object']:.2f} CPU ms/object, "
                        f"moto {r['moto_cpu_util']:.0%}, machine {r.get('machine_cores_busy')} "
                        "cores busy"
                    )
            for system in SYSTEMS:
                res["systems"][system] = median_run(runs[system])
            s, nv = res["systems"]["s3flow"], res["systems"]["naive"]
            res["ratio"] = {
                "objects_per_s": ratio(s["objects_per_s"], nv["objects_per_s"]),
                "mib_per_s": ratio(s["mib_per_s"], nv["mib_per_s"]),
                "cpu_ms_per_object": ratio(s["cpu_ms_per_object"], nv["cpu_ms_per_object"]),
                "peak_rss_mb": ratio(s["peak_rss_mb"], nv["peak_rss_mb"]),
                "note": "s3flow / naive; > 1 is better for rates, < 1 is better for CPU and RSS",
            }
            if wname == "small":
                res["goal"] = {
                    "objects_per_s_ratio_min": GOAL_RATIO,
                    "met": (res["ratio"]["objects_per_s"] or 0) >= GOAL_RATIO
                    and (res["ratio"]["cpu_ms_per_object"] or 9) < 1,
                }
                if ceilings.get("small_objects_per_s"):
                    res["s3flow_share_of_endpoint_ceiling"] = round(
                        s["objects_per_s"] / ceilings["small_objects_per_s"], 2
                    )
            res["bottleneck"] = notes_for(wname, res, ceilings)
            doc["workloads"][wname] = res
    except BenchError as exc:
        raise BenchError(f"{exc}\n(child logs and moto log kept in {tmp})") from exc
    finally:
        endpoint.stop()
    doc["goals"] = goals_of(doc["workloads"])
    doc["duration_s"] = round(time.perf_counter() - started, 1)
    if args.keep_scratch:
        doc["scratch_dir"] = str(tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)  # on failure it stays, for the child logs
    return doc


def goals_of(workloads: dict[str, Any]) -> dict[str, bool]:
    """The run's goals as booleans: the small-object ratio, and CPU per object lower
    than the naive consumer's on every workload."""
    goals: dict[str, bool] = {}
    small = workloads.get("small")
    if small and "goal" in small:
        goals["small_5x_naive_objects_per_s"] = bool(small["goal"]["met"])
    for name, w in workloads.items():
        cpu = (w.get("ratio") or {}).get("cpu_ms_per_object")
        goals[f"{name}_cpu_per_object_below_naive"] = cpu is not None and cpu < 1
    return goals


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.naive_consumer:
        return child_main("naive", args.naive_consumer)
    if args.s3flow_consumer:
        return child_main("s3flow", args.s3flow_consumer)
    return run_and_write(run, args, print_report)


if __name__ == "__main__":
    sys.exit(main())
