"""Shared helpers for the side-by-side benchmarks in ``bench/``.

Only the standard library is imported at module level: benchmark consumers run
in child processes that import this module, and their peak RSS must not carry
libraries they do not use. boto3 / psutil are imported inside the functions
that need them.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import platform
import random
import resource
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
MIB = 1024 * 1024


class BenchError(RuntimeError):
    """A benchmark run is invalid (wrong results, missing outputs, a child failed)."""


# --- machine -----------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU count, platform, Python and library versions, load at start."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "moto": _version("moto"),
        "boto3": _version("boto3"),
        "botocore": _version("botocore"),
        "aiobotocore": _version("aiobotocore"),
        "s3flow": _version("s3flow"),
        "loadavg_at_start": load,
    }


# --- child processes ---------------------------------------------------------


@dataclass
class ChildRun:
    """What the kernel says about a finished child process."""

    returncode: int
    wall_s: float  # fork to exit, as seen by the parent
    cpu_s: float  # user + system of the whole child process (all threads)
    maxrss_mb: float  # ru_maxrss: includes the parent's RSS at fork (see self_peak_rss_mb)
    log_path: Path

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the child's stdout+stderr."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])


def run_child(
    cmd: Sequence[str], log_path: Path, timeout_s: float, cwd: Path | None = None
) -> ChildRun:
    """Run ``cmd`` (in ``cwd``); collect its own rusage with ``wait4``."""
    with log_path.open("wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        deadline = started + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                raise BenchError(f"child {cmd[:4]} exceeded {timeout_s:.0f}s and was killed")
            time.sleep(0.05)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(
        returncode=proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        maxrss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        log_path=log_path,
    )


def self_cpu_s() -> float:
    """CPU seconds (user + system, all threads) of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def self_peak_rss_mb() -> float:
    """Peak RSS of this process image so far (MiB): ``VmHWM`` from /proc/self/status.

    Not ``ru_maxrss``: Linux carries the pre-exec high-water mark across
    fork/vfork + exec, so a child of a big parent would report the parent's RSS.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ProcessCpu:
    """CPU seconds of another process (and its children), e.g. the moto server."""

    def __init__(self, pid: int | None) -> None:
        import psutil

        self._proc = psutil.Process(pid) if pid else None

    def read(self) -> float:
        """User + system seconds so far (0.0 when unknown)."""
        if self._proc is None:
            return 0.0
        try:
            t = self._proc.cpu_times()
            total = float(t.user + t.system)
            for child in self._proc.children(recursive=True):
                ct = child.cpu_times()
                total += float(ct.user + ct.system)
        except Exception:
            return 0.0
        return total


# --- data ---------------------------------------------------------------------

_METHODS = ["GET"] * 8 + ["POST"] * 3 + ["PUT", "DELETE"]
_PATHS = [
    "/api/v1/users/{}",
    "/api/v1/orders/{}/items",
    "/static/app.{}.js",
    "/healthz",
    "/api/v1/search?q=item{}",
    "/login",
    "/api/v2/carts/{}/checkout",
]
_STATUSES = ["200"] * 20 + ["201", "204", "301", "304", "400", "404", "404", "500", "503"]
_AGENTS = [
    '"Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0"',
    '"curl/8.5.0"',
    '"python-requests/2.32"',
    '"Mozilla/5.0 (Macintosh) Safari/605.1"',
    '"Go-http-client/1.1"',
]


def log_lines(rng: random.Random, n: int, start_ms: int = 0) -> bytes:
    """``n`` random-ish access-log lines (~110 bytes each, gzip ratio ~4.3)."""
    r = rng.getrandbits
    ch = rng.choice
    out = []
    for i in range(n):
        ts = start_ms + i * 7
        out.append(
            f"2024-05-17T{(ts // 3600000) % 24:02d}:{(ts // 60000) % 60:02d}:"
            f"{(ts // 1000) % 60:02d}.{ts % 1000:03d}Z 10.{r(8)}.{r(8)}.{r(8)} "
            f"{ch(_METHODS)} {ch(_PATHS).format(r(14))} {ch(_STATUSES)} {r(16)} {r(9)}ms "
            f"req={r(32):08x} {ch(_AGENTS)}\n"
        )
    return "".join(out).encode()


@dataclass
class Blob:
    """Generated object content and what a correct line counter must report."""

    data: bytes
    uncompressed_bytes: int
    lines: int


def count_lines(data: bytes) -> int:
    """s3flow's definition: newlines, plus a last line without a newline."""
    n = data.count(b"\n")
    if data and not data.endswith(b"\n"):
        n += 1
    return n


def gzip_log_blob(target_bytes: int, seed: int = 20) -> Blob:
    """One gzip member of log lines whose compressed size is just over ``target_bytes``."""
    rng = random.Random(seed)
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31 = gzip container
    parts: list[bytes] = []
    size = raw = lines = 0
    block = 20_000
    while size < target_bytes:
        text = log_lines(rng, block, start_ms=lines * 7)
        raw += len(text)
        lines += block
        out = comp.compress(text)
        parts.append(out)
        size += len(out)
    parts.append(comp.flush())
    return Blob(b"".join(parts), raw, lines)


def small_log_objects(n: int, size: int, seed: int = 1) -> list[Blob]:
    """``n`` distinct text objects of exactly ``size`` bytes, ending with a newline."""
    rng = random.Random(seed)
    per = max(1, size // 100 + 2)
    text = log_lines(rng, per * 64)
    out = []
    for i in range(n):
        start = (i * 997) % max(1, len(text) - size - 1)
        start = text.find(b"\n", start) + 1
        body = text[start : start + size - 1]
        if len(body) < size - 1:
            body = body.ljust(size - 1, b"x")
        body += b"\n"
        out.append(Blob(body, len(body), count_lines(body)))
    return out


def gunzip_count(data: bytes) -> tuple[int, int]:
    """(uncompressed bytes, lines) of a gzip blob (for checks)."""
    raw = gzip.decompress(data)
    return len(raw), count_lines(raw)


# --- AWS helpers (boto3, synchronous) -----------------------------------------


def region() -> str:
    """The region from the environment (AWS_REGION / AWS_DEFAULT_REGION), else us-east-1."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def boto3_clients(pool: int = 10) -> tuple[Any, Any]:
    """(s3, sqs) boto3 clients on the endpoint from the environment; own session."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    cfg = Config(
        region_name=region(),
        max_pool_connections=max(pool, 10),
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path"},
    )
    return session.client("s3", config=cfg), session.client("sqs", config=cfg)


def parallel(fn: Callable[[Any], Any], items: Iterable[Any], threads: int) -> list[Any]:
    """``fn`` over ``items`` on ``threads`` threads; the first exception propagates."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fn, items))


def queue_depth(sqs: Any, url: str) -> dict[str, int]:
    """Visible / in flight / delayed counts of a queue."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return {
        "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        "delayed": int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
    }


def wait_for_depth(sqs: Any, url: str, want: int, timeout_s: float = 120.0) -> int:
    """Poll until ``want`` messages are visible; return the count. BenchError on timeout."""
    deadline = time.monotonic() + timeout_s
    have = 0
    while time.monotonic() < deadline:
        have = queue_depth(sqs, url)["visible"]
        if have >= want:
            return have
        time.sleep(0.2)
    raise BenchError(f"queue {url} holds {have} messages after {timeout_s:.0f}s; expected {want}")


def list_keys(s3: Any, bucket: str, prefix: str = "") -> set[str]:
    """Every key under ``prefix``."""
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update(obj["Key"] for obj in page.get("Contents", []))
    return keys


def get_json(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    """GetObject and parse JSON."""
    doc = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    if not isinstance(doc, dict):
        raise BenchError(f"s3://{bucket}/{key} is not a JSON object")
    return doc


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as indented JSON, creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def run_and_write(
    run: Callable[[argparse.Namespace], dict[str, Any]],
    args: argparse.Namespace,
    report: Callable[[dict[str, Any]], None],
) -> int:
    """Run a benchmark, write its JSON to ``args.output`` and print ``report``; the exit code."""
    try:
        doc = run(args)
    except BenchError as exc:
        print(f"BENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    out: Path = args.output
    doc["output_path"] = str(out)
    write_json(out, doc)
    report(doc)
    return 0


def python() -> str:
    """The interpreter running this benchmark (the project venv)."""
    return sys.executable


class CpuSampler:
    """Samples another process's CPU time every ``interval_s`` on a daemon thread.

    ``time.perf_counter`` is CLOCK_MONOTONIC on Linux, shared by all processes,
    so a child can report the instants of its busy window and the parent can ask
    how much CPU the endpoint used inside exactly that window.
    """

    def __init__(self, cpu: ProcessCpu, interval_s: float = 0.1) -> None:
        self._cpu = cpu
        self._interval = interval_s
        self._samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cpu-sampler")

    def __enter__(self) -> CpuSampler:
        self._samples.append((time.perf_counter(), self._cpu.read()))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._samples.append((time.perf_counter(), self._cpu.read()))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._samples.append((time.perf_counter(), self._cpu.read()))

    def _at(self, t: float) -> float:
        s = self._samples
        if t <= s[0][0]:
            return s[0][1]
        for (t0, c0), (t1, c1) in itertools.pairwise(s):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.0)
        return s[-1][1]

    def between(self, t0: float, t1: float) -> float:
        """CPU seconds used between two perf_counter instants (linear interpolation)."""
        return max(0.0, self._at(t1) - self._at(t0))

    def total(self) -> float:
        """CPU seconds over the whole sampling period."""
        return self._samples[-1][1] - self._samples[0][1]


class ApiCalls:
    """Counts SDK calls per operation (and messages per receive) via botocore events.

    Works for boto3 and aiobotocore clients: ``attach(client)`` registers a
    synchronous ``after-call`` handler. Calls an s3flow fast-path client serves
    itself (``fast_calls_by_operation``) are added at :meth:`report`; its
    received messages are not seen, so pass ``messages_received`` then.
    """

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.messages_received = 0
        self._fast: list[Any] = []

    def attach(self, client: Any) -> None:
        """Count every call ``client`` makes from now on."""
        client.meta.events.register("after-call", self._after)
        if hasattr(client, "fast_calls_by_operation"):
            self._fast.append(client)

    def _after(self, model: Any = None, parsed: Any = None, **_: Any) -> None:
        if model is None:
            return
        name = f"{model.service_model.endpoint_prefix}.{model.name}"
        self.calls[name] = self.calls.get(name, 0) + 1
        if model.name == "ReceiveMessage" and isinstance(parsed, dict):
            self.messages_received += len(parsed.get("Messages") or [])

    def report(self, objects: int, messages_received: int | None = None) -> dict[str, Any]:
        """Calls per operation, per object, and the mean receive batch."""
        calls = dict(self.calls)
        for client in self._fast:
            service = client.meta.service_model.endpoint_prefix
            for op, n in client.fast_calls_by_operation.items():
                calls[f"{service}.{op}"] = calls.get(f"{service}.{op}", 0) + n
        receives = sum(v for k, v in calls.items() if k.endswith(".ReceiveMessage"))
        total = sum(calls.values())
        received = self.messages_received if messages_received is None else messages_received
        return {
            "calls": dict(sorted(calls.items())),
            "total": total,
            "per_object": round(total / objects, 2) if objects else None,
            "receive_calls": receives,
            "messages_per_receive": round(received / receives, 2) if receives else None,
        }


def proc_stat() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine so far, from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            fields = [float(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return (0.0, 0.0, 0.0)
    hz = float(os.sysconf("SC_CLK_TCK"))
    # user nice system idle iowait irq softirq steal guest guest_nice
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    steal = fields[7] if len(fields) > 7 else 0.0
    total = sum(fields[:8])
    return ((total - idle - steal) / hz, steal / hz, total / hz)


def machine_load(before: tuple[float, float, float], wall_s: float) -> dict[str, float]:
    """Cores busy (all processes) and cores stolen by the hypervisor since ``before``."""
    after = proc_stat()
    if not wall_s or not after[2]:
        return {}
    return {
        "machine_cores_busy": round((after[0] - before[0]) / wall_s, 2),
        "machine_cores_stolen": round((after[1] - before[1]) / wall_s, 2),
    }
