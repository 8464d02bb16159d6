"""Engine benchmark on fast endpoints: ElasticMQ (SQS) + S3Proxy (S3) behind an AWS-like delay.

moto caps ``bench/engine.py`` (the emulator, not the engine, is measured there). Here
the JVM servers are fast and a latency proxy (:mod:`s3flow.local.latency`) adds a set
delay to every request (default 10 ms SQS, 20 ms S3), so that, as against AWS,
round trips dominate and the worker's own CPU shows. One run, side by side, per
object size (1 KiB and 1 MiB), each system in its own child process:

* ``s3flow``  -- ``run_worker(burst=True)``, processor ``line-count``, concurrency 16/64/256;
* ``asyncio`` -- a hand-written aiobotocore consumer as a skilled user writes it: C/10
  loops of (receive 10, ``gather`` get+count+put, delete batch), same concurrency;
* ``naive``   -- boto3, receive 1, get, count, put, delete (time-boxed);
* ``download`` (1 MiB only) -- a bare aiobotocore GetObject loop at the same concurrency,
  the bytes/s bound for big objects.

Neither server sends S3 notifications: the benchmark writes each object's event to
the queue itself, in the exact S3 notification shape (with ``sequencer``). The queue
is filled before a consumer starts, so enqueue->delete includes the backlog wait;
receive->delete is the per-message time inside the consumer.

    .venv/bin/python bench/engine_fast.py            # full run (~5 min on 2 cores)
    .venv/bin/python bench/engine_fast.py --quick    # ~1-2 min

Writes ``bench/results/engine_fast.json`` and prints a table. See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from _common import (
    MIB,
    RESULTS_DIR,
    BenchError,
    ChildRun,
    ProcessCpu,
    count_lines,
    machine_info,
    machine_load,
    parallel,
    proc_stat,
    python,
    run_child,
    self_cpu_s,
    self_peak_rss_mb,
    small_log_objects,
    write_json,
)

REGION = "us-east-1"
SMALL, LARGE = 1024, MIB


# ============================================================================
# Shared by the children: the work every consumer does per object.
# ============================================================================


def result_doc(bucket: str, key: str, etag: str, data: bytes) -> bytes:
    """The output of ``line-count`` (the same fields for every consumer)."""
    return json.dumps(
        {
            "bucket": bucket,
            "key": key,
            "etag": etag,
            "compressed_bytes": len(data),
            "uncompressed_bytes": len(data),
            "lines": count_lines(data),
        }
    ).encode()


def _setting(kv: str) -> tuple[str, Any]:
    """``key=value`` of ``--s3flow-set``: the value as JSON, else as a string."""
    key, sep, raw = kv.partition("=")
    if not sep or not key:
        raise SystemExit(f"--s3flow-set {kv!r}: expected KEY=VALUE")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def aio_config(pool: int) -> Any:
    """aiobotocore config for S3Proxy/ElasticMQ (path style, checksums when required)."""
    from aiobotocore.config import AioConfig

    return AioConfig(
        region_name=REGION,
        max_pool_connections=pool,
        s3={"addressing_style": "path"},
        retries={"max_attempts": 5, "mode": "standard"},
    )


def finish(
    t0: float,
    cpu0: float,
    deletes: dict[str, float],
    extra: dict[str, Any],
    cpu_first: float | None = None,
) -> dict:
    """The child's report: wall, CPU, peak RSS and the time each key was deleted.

    ``cpu_first``: the process CPU when the first message was received (or the first
    GET sent); what was spent before it is reported as ``cpu_startup_s``.
    """
    return {
        "t0_wall": t0,
        "cpu_s": self_cpu_s() - cpu0,
        "cpu_startup_s": (cpu_first - cpu0) if cpu_first is not None else 0.0,
        "peak_rss_mb": self_peak_rss_mb(),
        "deletes": deletes,
        **extra,
    }


# ============================================================================
# Child: naive sequential boto3 consumer.
# ============================================================================


def naive_consumer(cfg: dict[str, Any]) -> dict[str, Any]:
    """Receive 1, get, count, put, delete -- until drained or out of time."""
    import boto3
    from botocore.config import Config

    conf = Config(region_name=REGION, s3={"addressing_style": "path"})
    s3, sqs = boto3.client("s3", config=conf), boto3.client("sqs", config=conf)
    url, out_bucket, prefix = cfg["queue_url"], cfg["out_bucket"], cfg["out_prefix"]
    deletes: dict[str, float] = {}
    recv: list[float] = []
    bytes_in = 0
    t0, cpu0 = time.time(), self_cpu_s()
    first, cpu_first = 0.0, None
    while time.time() - t0 < cfg["budget_s"]:
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=1).get(
            "Messages", []
        )
        if not msgs:
            break
        r0 = time.time()
        if not first:
            first, cpu_first = r0, self_cpu_s()
        msg = msgs[0]
        for rec in json.loads(msg["Body"])["Records"]:
            bucket, key = rec["s3"]["bucket"]["name"], unquote_plus(rec["s3"]["object"]["key"])
            obj = s3.get_object(Bucket=bucket, Key=key)
            data = obj["Body"].read()
            bytes_in += len(data)
            doc = result_doc(bucket, key, obj["ETag"].strip('"'), data)
            s3.put_object(Bucket=out_bucket, Key=f"{prefix}{key}.json", Body=doc)
        sqs.delete_message(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"])
        now = time.time()
        deletes[key] = now
        recv.append(now - r0)
    extra = {"bytes_in": bytes_in, "receive_to_delete_s": recv, "t_first_wall": first}
    return finish(t0, cpu0, deletes, extra, cpu_first)


# ============================================================================
# Child: hand-written asyncio consumer (aiobotocore), the skilled user's version.
# ============================================================================


def asyncio_consumer(cfg: dict[str, Any]) -> dict[str, Any]:
    """C/10 loops of: receive 10, gather(get, count, put), delete batch."""
    import asyncio

    from aiobotocore.session import get_session

    conc = int(cfg["concurrency"])
    url, out_bucket, prefix = cfg["queue_url"], cfg["out_bucket"], cfg["out_prefix"]
    deletes: dict[str, float] = {}
    recv: list[float] = []
    stats = {"bytes_in": 0, "first": 0.0}
    cpu_first: list[float] = []

    async def main() -> None:
        session = get_session()
        async with (
            session.create_client("s3", config=aio_config(conc + 10)) as s3,
            session.create_client("sqs", config=aio_config(max(10, conc // 10 + 10))) as sqs,
        ):

            async def one(msg: dict[str, Any]) -> str:
                key = ""
                for rec in json.loads(msg["Body"])["Records"]:
                    bucket = rec["s3"]["bucket"]["name"]
                    key = unquote_plus(rec["s3"]["object"]["key"])
                    obj = await s3.get_object(Bucket=bucket, Key=key)
                    async with obj["Body"] as body:
                        data = await body.read()
                    stats["bytes_in"] += len(data)
                    doc = result_doc(bucket, key, obj["ETag"].strip('"'), data)
                    await s3.put_object(Bucket=out_bucket, Key=f"{prefix}{key}.json", Body=doc)
                return key

            async def loop() -> None:
                while True:
                    resp = await sqs.receive_message(
                        QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1
                    )
                    msgs = resp.get("Messages", [])
                    if not msgs:
                        return
                    r0 = time.time()
                    if not stats["first"]:
                        stats["first"], cpu_first[:] = r0, [self_cpu_s()]
                    keys = await asyncio.gather(*(one(m) for m in msgs))
                    entries = [
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(msgs)
                    ]
                    await sqs.delete_message_batch(QueueUrl=url, Entries=entries)
                    now = time.time()
                    for k in keys:
                        deletes[k] = now
                        recv.append(now - r0)

            await asyncio.gather(*(loop() for _ in range(max(1, conc // 10))))

    t0, cpu0 = time.time(), self_cpu_s()
    asyncio.run(main())
    extra = {
        "bytes_in": stats["bytes_in"],
        "receive_to_delete_s": recv,
        "t_first_wall": stats["first"],
    }
    return finish(t0, cpu0, deletes, extra, cpu_first[0] if cpu_first else None)


# ============================================================================
# Child: bare download loop (the bytes/s bound for big objects).
# ============================================================================


def download_consumer(cfg: dict[str, Any]) -> dict[str, Any]:
    """C tasks: GetObject + read over the keys, nothing else."""
    import asyncio

    from aiobotocore.session import get_session

    conc, bucket = int(cfg["concurrency"]), cfg["bucket"]
    keys: list[str] = list(cfg["keys"])
    done: dict[str, float] = {}
    stats = {"bytes_in": 0, "first": 0.0}
    cpu_first: list[float] = []

    async def main() -> None:
        async with get_session().create_client("s3", config=aio_config(conc + 10)) as s3:
            stats["first"], cpu_first[:] = time.time(), [self_cpu_s()]

            async def loop() -> None:
                while keys:
                    key = keys.pop()
                    obj = await s3.get_object(Bucket=bucket, Key=key)
                    async with obj["Body"] as body:
                        data = await body.read()
                    stats["bytes_in"] += len(data)
                    done[key] = time.time()

            await asyncio.gather(*(loop() for _ in range(conc)))

    t0, cpu0 = time.time(), self_cpu_s()
    asyncio.run(main())
    extra = {
        "bytes_in": stats["bytes_in"],
        "receive_to_delete_s": [],
        "t_first_wall": stats["first"],
    }
    return finish(t0, cpu0, done, extra, cpu_first[0] if cpu_first else None)


# ============================================================================
# Child: s3flow's worker.
# ============================================================================


def s3flow_consumer(cfg: dict[str, Any]) -> dict[str, Any]:
    """``run_worker(settings, burst=True)`` with a clock on each settled message."""
    import asyncio

    from s3flow.app import run_worker
    from s3flow.settings import load_settings
    from s3flow.worker.engine import WorkerObserver

    deletes: dict[str, float] = {}
    recv: list[float] = []
    first = [0.0]
    cpu_first: list[float] = []

    class Clock(WorkerObserver):
        """Wall time of each settled (deleted) message, by key."""

        def object_started(self, pipeline: str, event: Any) -> None:
            if not cpu_first:  # the first object's work begins: start-up is over
                cpu_first.append(self_cpu_s())

        def message_settled(self, pipeline: str, message: Any, outcome: Any) -> None:
            now = time.time()
            try:
                rec = json.loads(message.body)["Records"][0]
                deletes[unquote_plus(rec["s3"]["object"]["key"])] = now
            except (ValueError, KeyError, IndexError, TypeError):
                return
            received = getattr(message, "received_at", None)
            if received is not None:
                took = time.monotonic() - received
                recv.append(took)
                if not first[0] or now - took < first[0]:
                    first[0] = now - took

    settings = load_settings(None, cfg["settings"])
    t0, cpu0 = time.time(), self_cpu_s()
    metrics = asyncio.run(run_worker(settings, burst=True, observer=Clock()))
    m = metrics.pipelines[settings.pipelines[0].name]
    return finish(
        t0,
        cpu0,
        deletes,
        {
            "bytes_in": m.bytes_in,
            "receive_to_delete_s": recv,
            "t_first_wall": first[0],
            "metrics": m.as_dict(),
        },
        cpu_first[0] if cpu_first else None,
    )


CHILDREN = {
    "naive": naive_consumer,
    "asyncio": asyncio_consumer,
    "download": download_consumer,
    "s3flow": s3flow_consumer,
}


def child_main(mode: str, cfg_path: str) -> int:
    """A child process: run one consumer, write its JSON report."""
    cfg = json.loads(Path(cfg_path).read_text())
    Path(cfg["result_path"]).write_text(json.dumps(CHILDREN[mode](cfg)))
    return 0


# ============================================================================
# Parent.
# ============================================================================


def s3_event(bucket: str, key: str, size: int, etag: str, seq: int) -> str:
    """One ``ObjectCreated:Put`` notification, exactly as S3 writes it to SQS."""
    now = datetime.now(UTC)
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "awsRegion": REGION,
                    "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.")
                    + f"{now.microsecond // 1000:03d}Z",
                    "eventName": "ObjectCreated:Put",
                    "userIdentity": {"principalId": "AWS:AIDAJDPLRKLG7UEXAMPLE"},
                    "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                    "responseElements": {
                        "x-amz-request-id": uuid.uuid4().hex[:16].upper(),
                        "x-amz-id-2": uuid.uuid4().hex + uuid.uuid4().hex,
                    },
                    "s3": {
                        "s3SchemaVersion": "1.0",
                        "configurationId": "s3flow-bench",
                        "bucket": {
                            "name": bucket,
                            "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                            "arn": f"arn:aws:s3:::{bucket}",
                        },
                        "object": {
                            "key": quote_plus(key, safe="/"),
                            "size": size,
                            "eTag": etag,
                            "sequencer": f"{time.time_ns():016X}{seq:04X}"[-18:],
                        },
                    },
                }
            ]
        }
    )


class Bench:
    """Endpoints, proxies, data and the runs of one benchmark invocation."""

    def __init__(self, args: argparse.Namespace, tmp: Path, mq: Any, s3p: Any, px: Any) -> None:
        import boto3
        from botocore.config import Config

        self.args, self.tmp = args, tmp
        #: ``--s3flow-set key=value``: pipeline settings of the s3flow runs (A/B trials).
        self.pipeline_extra = dict(_setting(kv) for kv in args.s3flow_set)
        self.mq, self.s3p = mq, s3p
        self.pq, self.ps = px
        conf = Config(
            region_name=REGION,
            max_pool_connections=32,
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # Direct (no delay) clients for setup and checks.
        self.s3 = boto3.client("s3", endpoint_url=s3p.url, config=conf)
        self.sqs = boto3.client("sqs", endpoint_url=mq.url, config=conf)
        self.n = 0

    def queue(self, name: str) -> str:
        """Create ``name`` and ``name-dlq`` (redrive after 5 receives); the queue's URL."""
        dlq = self.sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "5"})
        return str(
            self.sqs.create_queue(
                QueueName=name,
                Attributes={"VisibilityTimeout": "120", "RedrivePolicy": policy},
            )["QueueUrl"]
        )

    def upload(self, bucket: str, keys: list[str], blobs: list[bytes]) -> list[str]:
        """PutObject each key (direct); their ETags."""
        self.s3.create_bucket(Bucket=bucket)
        resp = parallel(
            lambda i: self.s3.put_object(Bucket=bucket, Key=keys[i], Body=blobs[i]),
            range(len(keys)),
            8,
        )
        return [str(r["ETag"]).strip('"') for r in resp]

    def enqueue(
        self, url: str, bucket: str, keys: list[str], sizes: list[int], etags: list[str]
    ) -> dict[str, float]:
        """Write the S3 events of ``keys`` to the queue (batches of 10); enqueue times."""
        at: dict[str, float] = {}

        def send(start: int) -> None:
            chunk = range(start, min(start + 10, len(keys)))
            entries = [
                {"Id": str(j), "MessageBody": s3_event(bucket, keys[j], sizes[j], etags[j], j)}
                for j in chunk
            ]
            resp = self.sqs.send_message_batch(QueueUrl=url, Entries=entries)
            if resp.get("Failed"):
                raise BenchError(f"SendMessageBatch failed: {resp['Failed'][:1]}")
            now = time.time()
            for j in chunk:
                at[keys[j]] = now

        parallel(send, range(0, len(keys), 10), 4)
        return at

    def cleanup(self, *buckets: str) -> None:
        """Delete every object of ``buckets`` (S3Proxy's transient store lives in its heap)."""
        for bucket in buckets:
            for page in self.s3.get_paginator("list_objects").paginate(Bucket=bucket):
                # One by one: S3Proxy 2.6.0 rejects the checksum header DeleteObjects needs.
                keys = [o["Key"] for o in page.get("Contents", [])]
                parallel(lambda k, b=bucket: self.s3.delete_object(Bucket=b, Key=k), keys, 8)

    def run(self, system: str, size: int, n: int, conc: int) -> dict[str, Any]:
        """One system on ``n`` fresh objects of ``size`` bytes."""
        self.n += 1
        tag = f"{system}-{size // 1024}k-c{conc}-{self.n}"
        bucket, out_bucket = f"in-{tag}", f"out-{tag}"
        keys = [f"logs/2026/obj {i:05d}+x.log" for i in range(n)]
        if size <= SMALL:
            blobs = [b.data for b in small_log_objects(n, size, seed=self.n)]
        else:
            base = small_log_objects(1, 64 * 1024, seed=self.n)[0].data
            body = (base * (size // len(base) + 1))[: size - 1] + b"\n"
            blobs = [
                body[:-16] + hashlib.md5(str(i).encode()).hexdigest()[:15].encode() + b"\n"
                for i in range(n)
            ]
        etags = self.upload(bucket, keys, blobs)
        self.s3.create_bucket(Bucket=out_bucket)
        url = self.queue(f"q-{tag}")
        cfg: dict[str, Any] = {
            "result_path": str(self.tmp / f"{tag}.result.json"),
            "queue_url": url,
            "out_bucket": out_bucket,
            "out_prefix": "results/",
            "concurrency": conc,
            "budget_s": self.args.naive_budget_s,
            "bucket": bucket,
            "keys": keys,
            "settings": {
                "aws": {"region": REGION},
                "worker": {},
                "pipelines": [
                    {
                        "name": "bench",
                        "processor": "line-count",
                        "bucket": bucket,
                        "queue": f"q-{tag}",
                        "output": f"s3://{out_bucket}/results/",
                        "concurrency": conc,
                        "wait_time_s": 1,
                        **self.pipeline_extra,
                    }
                ],
            },
        }
        enq = {} if system == "download" else self.enqueue(url, bucket, keys, [size] * n, etags)
        workdir = self.tmp / tag
        workdir.mkdir()
        cfg_path = self.tmp / f"{tag}.cfg.json"
        cfg_path.write_text(json.dumps(cfg))
        cmd = [python(), str(Path(__file__).resolve()), "--child", system, str(cfg_path)]
        jvm = ProcessCpu(self.mq.pid).read() + ProcessCpu(self.s3p.pid).read()
        me0 = self_cpu_s()
        self.pq.reset()
        self.ps.reset()
        stat0 = proc_stat()
        profiler = None
        profiled_size = LARGE if self.args.profile_large else SMALL
        if (
            self.args.profile
            and system == "s3flow"
            and size == profiled_size
            and conc == self.args.profile
        ):
            spy = str(Path(sys.executable).parent / "py-spy")
            out = self.tmp.parent / "engine_fast_profile.raw.txt"
            cmd = [
                spy,
                "record",
                "--nonblocking",
                "-r",
                "250",
                "-o",
                str(out),
                "-f",
                "raw",
                "--",
                *cmd,
            ]
            profiler = True
        child: ChildRun = run_child(cmd, self.tmp / f"{tag}.log", 1800, cwd=workdir)
        load = machine_load(stat0, child.wall_s)
        if child.returncode != 0:
            raise BenchError(f"{system} exited with {child.returncode}:\n{child.log_tail()}")
        jvm = ProcessCpu(self.mq.pid).read() + ProcessCpu(self.s3p.pid).read() - jvm
        proxy_cpu = self_cpu_s() - me0
        rep = json.loads(Path(cfg["result_path"]).read_text())
        done: dict[str, float] = rep["deletes"]
        if not done:
            raise BenchError(f"{system}: nothing processed\n{child.log_tail()}")
        objects = len(done)
        if system != "download":
            outs = sum(
                len(p.get("Contents", []))
                for p in self.s3.get_paginator("list_objects").paginate(Bucket=out_bucket)
            )
            if outs < objects:
                raise BenchError(f"{system}: {objects} deleted but {outs} outputs")
            sample = (
                json.loads(
                    self.s3.get_object(Bucket=out_bucket, Key=f"results/{keys[0]}.json")[
                        "Body"
                    ].read()
                )
                if keys[0] in done
                else None
            )
            if sample is not None and sample.get("lines") != count_lines(blobs[0]):
                raise BenchError(f"{system}: wrong line count in {sample}")
            if system != "naive" and objects < n:
                raise BenchError(f"{system}: {objects}/{n} objects done")
        # From the first message received (or GET sent): start-up (imports, clients, the
        # store, queue checks) is not counted, for any system.
        start = rep.get("t_first_wall") or rep["t0_wall"]
        busy = max(done.values()) - start
        startup_cpu = float(rep.get("cpu_startup_s") or 0.0)
        self.cleanup(bucket, out_bucket)
        lat = sorted(done[k] - enq[k] for k in done if k in enq)
        r2d = sorted(rep["receive_to_delete_s"])

        def pct(xs: list[float], q: float) -> float | None:
            return round(1000 * xs[min(len(xs) - 1, int(len(xs) * q))], 1) if xs else None

        return {
            "system": system,
            "object_bytes": size,
            "concurrency": conc if system != "naive" else 1,
            "objects": objects,
            "objects_total": n,
            "wall_s": round(busy, 3),
            "startup_s": round(start - rep["t0_wall"], 3),
            "objects_per_s": round(objects / busy, 1),
            "mib_per_s": round(rep["bytes_in"] / MIB / busy, 2),
            # CPU from the first message on, like the wall time; start-up is apart.
            "cpu_ms_per_object": round((rep["cpu_s"] - startup_cpu) * 1000 / objects, 3),
            "cpu_ms_per_object_with_startup": round(rep["cpu_s"] * 1000 / objects, 3),
            "startup_cpu_s": round(startup_cpu, 3),
            "cpu_util": round((rep["cpu_s"] - startup_cpu) / busy, 2),
            "peak_rss_mb": round(rep["peak_rss_mb"], 1),
            "enqueue_to_delete_ms": {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99)},
            "receive_to_delete_ms": {"p50": pct(r2d, 0.5), "p99": pct(r2d, 0.99)},
            "endpoints_cpu_s": round(jvm, 2),
            "proxy_cpu_s": round(proxy_cpu, 2),
            "proxy": {"sqs": self.pq.report(), "s3": self.ps.report()},
            **load,
            **({"profiled": True} if profiler else {}),
            **({"worker_metrics": rep["metrics"]} if "metrics" in rep else {}),
        }


def goals(doc: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals as booleans (with the figures they rest on)."""
    small = [r for r in doc["runs"] if r["object_bytes"] == SMALL]
    large = [r for r in doc["runs"] if r["object_bytes"] == LARGE]

    def pick(runs: list[dict[str, Any]], system: str, conc: int | None = None) -> dict | None:
        for r in runs:
            if r["system"] == system and (conc is None or r["concurrency"] == conc):
                return r
        return None

    out: dict[str, Any] = {}
    naive = pick(small, "naive")
    ours = [r for r in small if r["system"] == "s3flow"]
    best = max(ours, key=lambda r: r["objects_per_s"]) if ours else None
    if naive and best:
        x = best["objects_per_s"] / naive["objects_per_s"]
        out["small_20x_naive"] = {
            "met": x >= 20,
            "ratio": round(x, 1),
            "s3flow_concurrency": best["concurrency"],
        }
    ratios = {}
    for r in small:
        if r["system"] == "s3flow":
            a = pick(small, "asyncio", r["concurrency"])
            if a:
                ratios[str(r["concurrency"])] = round(r["objects_per_s"] / a["objects_per_s"], 2)
    out["small_1_5x_asyncio_equal_concurrency"] = {
        "met": bool(ratios) and all(v >= 1.5 for v in ratios.values()),
        "ratio_by_concurrency": ratios,
    }
    cpu = {str(r["concurrency"]): r["cpu_ms_per_object"] for r in small if r["system"] == "s3flow"}
    out["small_cpu_le_3ms_per_object"] = {
        "met": bool(cpu) and all(v <= 3.0 for v in cpu.values()),
        "cpu_ms_by_concurrency": cpu,
        # the start-up (imports, clients, store, queue checks) spread over the objects
        "with_startup_cpu_ms_by_concurrency": {
            str(r["concurrency"]): r["cpu_ms_per_object_with_startup"]
            for r in small
            if r["system"] == "s3flow"
        },
    }
    curve = sorted(
        (r["concurrency"], r["objects_per_s"], r["cpu_util"], r.get("machine_cores_busy"))
        for r in small
        if r["system"] == "s3flow"
    )
    # Grows by > 5 % per step, or the worker already used >= 85 % of a core at the last step.
    grows = all(b[1] > a[1] * 1.05 or a[2] >= 0.85 for a, b in itertools.pairwise(curve))
    out["small_throughput_grows_until_cpu_bound"] = {
        "met": bool(curve) and grows,
        "curve": [
            {"concurrency": c, "objects_per_s": o, "worker_cpu_util": u, "machine_cores_busy": m}
            for c, o, u, m in curve
        ],
    }
    big = {}
    for r in large:
        if r["system"] == "s3flow":
            d = pick(large, "download", r["concurrency"])
            if d:
                big[str(r["concurrency"])] = round(r["mib_per_s"] / d["mib_per_s"], 3)
    out["large_90pct_of_bare_download"] = {
        "met": bool(big) and all(v >= 0.9 for v in big.values()),
        "ratio_by_concurrency": big,
        # Whose CPU each 1 MiB run used: the endpoints and the delay proxy run on this
        # machine too, and s3flow's run makes them do more per object (receive, delete,
        # PUT) than the bare download's one GET. Near the machine's cores in both runs,
        # the ratio measures the machine, not the worker.
        "cores_by_concurrency": {
            str(r["concurrency"]) + ":" + r["system"]: _cores(r)
            for r in large
            if r["system"] in ("s3flow", "download")
        },
    }
    return out


def _cores(r: dict[str, Any]) -> dict[str, float]:
    """How many cores a run kept busy: the consumer, the endpoints, the delay proxy.

    The endpoints' and the proxy's CPU is read around the consumer's whole process
    (its start-up asks little of them) and divided by the measured window.
    """
    wall = max(r["wall_s"], 1e-9)
    endpoints = r["endpoints_cpu_s"] / wall
    proxy = r["proxy_cpu_s"] / wall
    return {
        "consumer": r["cpu_util"],
        "endpoints": round(endpoints, 2),
        "proxy": round(proxy, 2),
        "total": round(r["cpu_util"] + endpoints + proxy, 2),
        "endpoints_cpu_ms_per_object": round(r["endpoints_cpu_s"] * 1000 / r["objects"], 2),
    }


def print_table(doc: dict[str, Any]) -> None:
    """A plain table of every run, then the goals."""
    cols = ("size", "system", "conc", "objs", "obj/s", "MiB/s", "cpu ms/obj", "cpu", "rss MB")
    print(" ".join(f"{c:>10}" for c in (*cols, "e2d p50", "e2d p99", "r2d p50")), file=sys.stderr)
    for r in doc["runs"]:
        e2d, r2d = r["enqueue_to_delete_ms"], r["receive_to_delete_ms"]
        row = (
            f"{r['object_bytes'] // 1024}K",
            r["system"],
            r["concurrency"],
            r["objects"],
            r["objects_per_s"],
            r["mib_per_s"],
            r["cpu_ms_per_object"],
            r["cpu_util"],
            r["peak_rss_mb"],
            e2d["p50"],
            e2d["p99"],
            r2d["p50"],
        )
        print(" ".join(f"{v!s:>10}" for v in row), file=sys.stderr)
    print(json.dumps(doc["goals"], indent=1), file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer objects (~1-2 min)")
    p.add_argument("--small", type=int, help="1 KiB objects per run (default 2000; quick 600)")
    p.add_argument("--large", type=int, help="1 MiB objects per run (default 384; quick 48)")
    p.add_argument("--concurrency", default="16,64,256", help="s3flow/asyncio concurrencies")
    p.add_argument("--large-concurrency", default="16,64", help="concurrencies for 1 MiB")
    p.add_argument("--sqs-delay-ms", type=float, default=10.0)
    p.add_argument("--s3-delay-ms", type=float, default=20.0)
    p.add_argument(
        "--naive-budget-s", type=float, help="naive consumer time box (default 20; quick 8)"
    )
    p.add_argument("--systems", default="naive,asyncio,s3flow,download")
    p.add_argument(
        "--s3flow-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pipeline setting for the s3flow runs (VALUE as JSON, else a string)",
    )
    p.add_argument(
        "--profile", type=int, default=0, help="py-spy the s3flow small run at this concurrency"
    )
    p.add_argument(
        "--profile-large", action="store_true", help="with --profile: the 1 MiB run instead"
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "engine_fast.json")
    p.add_argument("--child", nargs=2, metavar=("MODE", "CFG"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.small = args.small or (600 if args.quick else 2000)
    args.large = args.large or (48 if args.quick else 384)
    args.naive_budget_s = args.naive_budget_s or (8.0 if args.quick else 20.0)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run everything; write the JSON."""
    args = parse_args(argv)
    if args.child:
        return child_main(*args.child)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from s3flow.local.aws.server import ElasticMQ, S3Proxy, client_env
    from s3flow.local.latency import LatencyProxy, run_in_thread

    started = time.time()
    doc: dict[str, Any] = {
        "benchmark": "engine_fast",
        "description": (
            "s3flow line-count vs a hand-written aiobotocore consumer vs a naive boto3 consumer "
            "(and a bare GetObject loop for 1 MiB), ElasticMQ + S3Proxy behind a per-request "
            "delay, events written by the benchmark in S3's notification shape, one run"
        ),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "quick": args.quick,
    }
    systems = args.systems.split(",")
    concs = [int(c) for c in args.concurrency.split(",") if c]
    lconcs = [int(c) for c in args.large_concurrency.split(",") if c]
    with (
        tempfile.TemporaryDirectory(prefix="engine-fast-") as tmpdir,
        ElasticMQ(heap="512m") as mq,
        # Its transient store keeps every object in the heap: room for one run's 1 MiB
        # objects twice over (a 1 GiB heap refused PutObject with 500s at --large 1024).
        S3Proxy(heap=f"{max(1024, 2 * args.large + 256)}m") as s3p,
    ):
        tmp = Path(tmpdir)
        sqs_px = LatencyProxy(mq.port, args.sqs_delay_ms / 1000)
        s3_px = LatencyProxy(s3p.port, args.s3_delay_ms / 1000)
        with run_in_thread(sqs_px, s3_px):
            env = client_env(sqs_px.url, s3_px.url)
            os.environ.update(env)
            os.environ["AWS_DEFAULT_REGION"] = REGION
            doc["endpoints"] = {
                "sqs": f"ElasticMQ 1.7.1 via latency proxy +{args.sqs_delay_ms} ms/request",
                "s3": f"S3Proxy 2.6.0 (transient) via latency proxy +{args.s3_delay_ms} ms/request",
                "note": "servers and proxy run on the same 2 cores as the consumer",
            }
            bench = Bench(args, tmp, mq, s3p, (sqs_px, s3_px))
            plan: list[tuple[str, int, int, int]] = []
            if "naive" in systems:
                plan.append(("naive", SMALL, args.small, 1))
            for c in concs:
                for s in ("asyncio", "s3flow"):
                    if s in systems:
                        plan.append((s, SMALL, args.small, c))
            for c in lconcs:
                for s in ("download", "asyncio", "s3flow"):
                    if s in systems:
                        plan.append((s, LARGE, args.large, c))
            doc["load"] = {
                "small_objects_per_run": args.small,
                "large_objects_per_run": args.large,
                "naive_time_box_s": args.naive_budget_s,
                "queue_prefilled": True,
            }
            # The servers are JVMs: their first thousands of requests run before the JIT
            # has compiled them and cost several times the CPU of later ones (measured:
            # 512 GETs of 1 MiB cost the servers 1.48 s of CPU in the first run at
            # concurrency 16, 0.42 s in the same run repeated). An unmeasured run of each
            # system and size first, so that no measured run pays for it.
            warmup: list[tuple[str, int, int, int]] = []
            for system, size, n, c in plan:
                if system != "naive" and all((w[0], w[1]) != (system, size) for w in warmup):
                    warmup.append((system, size, n, c))
            for system, size, n, c in warmup:
                print(f"warm-up: {system} {size // 1024} KiB x{n} (not measured)", file=sys.stderr)
                bench.run(system, size, n, c)
            doc["warmup_runs"] = [
                {"system": s, "object_bytes": size, "objects": n, "concurrency": c}
                for s, size, n, c in warmup
            ]
            doc["runs"] = []
            for system, size, n, c in plan:
                print(
                    f"running {system} {size // 1024} KiB x{n} concurrency {c} ...", file=sys.stderr
                )
                doc["runs"].append(bench.run(system, size, n, c))
                r = doc["runs"][-1]
                print(
                    f"  {r['objects_per_s']} obj/s, {r['cpu_ms_per_object']} cpu ms/obj",
                    file=sys.stderr,
                )
    doc["goals"] = goals(doc)
    doc["duration_s"] = round(time.time() - started, 1)
    write_json(args.out, doc)
    print_table(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
