"""text-to-pdf side by side: s3flow (its processor, its pool executor) vs a naive ReportLab
canvas script, one run.

Every system converts the same generated text files (ASCII access-log lines of
~110 bytes, wider than an A4 text column, so s3flow wraps them). All but
``s3flow_pool`` read **local files**, each in its own child process, and their figures
are measured inside the child after its imports. Pages/s and MB/s of text (MB = 10^6
bytes).

- **naive**: the script as it is usually written: a ReportLab canvas, the
  default font (Helvetica 12), one ``drawString`` per line, ``showPage`` when the
  page is full, ``save()`` at the end; one process, the whole document in memory.
- **s3flow**: ``TextToPdfProcessor.process`` (default options: DejaVu Sans Mono
  9 pt, A4, wrapping, title and page numbers, zlib level 6) on a context that reads
  the local file through s3flow's ``ObjectReader`` and writes through a
  ``LocalDirSink`` - the processor code the worker runs, minus GetObject.
- **s3flow_x2**: two such processes at once, one file each: what a two-process
  pool does on two cores. Aggregate MB/s = both files' bytes / (last end - first
  start), on the shared monotonic clock.
- **s3flow_pool**: the worker's own ``PoolExecutor`` (``processes = 2``: the 2
  cores) converting both files, read from S3 and written back to S3 through S3Proxy
  (a local JVM S3 endpoint, transient store): one ``ObjectJob`` per file, built as the
  worker's handler builds them, both submitted at once (as the worker does with
  concurrency >= processes). Wall = first submit to last Result, in this process.
  The pool is started and warmed before the first timed round (``child_pids()``
  spawns every child, then one small job per child imports the processor, loads the
  font and builds the child's S3 client) and lives through every round, as a
  worker's pool does. MB/s = both files' bytes / wall; pages/s from the Results;
  peak RSS = the larger child ``VmHWM``. S3Proxy runs on the same 2 cores.
- **s3flow_sans**: s3flow with ``monospace = false`` (proportional wrapping).

Also, once per run:

- **memory**: the processor on a ~200 MB object through the emulator (moto):
  GetObject stream in, S3 sink (multipart upload) out; the child's VmHWM.
- **library choice**: ReportLab canvas vs fpdf2, each drawing the same wrapped
  rows with the same TrueType font (DejaVu Sans Mono, 9 pt) on two sizes of a
  Latin/Greek/Cyrillic text, whole document in memory as the libraries work;
  pages/s, MB/s, peak RSS and RSS growth per MB of text.

    .venv/bin/python bench/text_to_pdf.py            # ~3 min on 2 cores
    .venv/bin/python bench/text_to_pdf.py --quick    # smoke run
    .venv/bin/python bench/text_to_pdf.py --no-pool  # without S3Proxy (needs Java)

Writes ``bench/results/text_to_pdf.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    MIB,
    RESULTS_DIR,
    BenchError,
    ProcessCpu,
    log_lines,
    machine_info,
    machine_load,
    parallel,
    proc_stat,
    python,
    run_child,
    self_peak_rss_mb,
    write_json,
)

MB = 1_000_000
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit"]
WORDS += ["sed", "do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore"]
GREEK = ["η", "γρήγορη", "καφέ", "αλεπού", "πηδάει", "πάνω", "από", "τον", "τεμπέλη", "σκύλο"]
CYRILLIC = ["съешь", "же", "ещё", "этих", "мягких", "французских", "булок", "да", "выпей", "чаю"]

# ============================================================================
# Data
# ============================================================================


def make_logs(path: Path, size: int, seed: int) -> int:
    """ASCII access-log lines (~110 bytes each) up to ``size`` bytes; the bytes written."""
    rng = random.Random(seed)
    written = 0
    with path.open("wb") as fh:
        while written < size:
            block = log_lines(rng, 10_000, start_ms=written)
            fh.write(block)
            written += len(block)
    return written


def make_prose(path: Path, size: int, seed: int) -> int:
    """Lines of 0-22 words, 5% Greek and 5% Cyrillic; the bytes written."""
    rng = random.Random(seed)
    out: list[str] = []
    written = 0
    while written < size:
        r = rng.random()
        pool = GREEK if r < 0.05 else CYRILLIC if r < 0.1 else WORDS
        line = " ".join(rng.choice(pool) for _ in range(rng.randint(0, 22)))
        out.append(line)
        written += len(line.encode()) + 1
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path.stat().st_size


# ============================================================================
# Children (each imports only what it uses)
# ============================================================================


def _report(started: float, ended: float, src: str, pages: int, out: str, **extra: Any) -> None:
    size = os.path.getsize(src)
    wall = ended - started
    doc = {
        "t_start": started,
        "t_end": ended,
        "wall_s": round(wall, 3),
        "text_bytes": size,
        "pages": pages,
        "pdf_bytes": os.path.getsize(out) if os.path.exists(out) else None,
        "pages_per_s": round(pages / wall, 1),
        "mb_per_s": round(size / MB / wall, 3),
        "peak_rss_mb": round(self_peak_rss_mb(), 1),
        **extra,
    }
    print(json.dumps(doc), flush=True)


def child_naive(src: str, out: str) -> None:
    """The usual ReportLab script: Helvetica, one drawString per line, one process."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    started = time.perf_counter()
    c = canvas.Canvas(out, pagesize=A4)
    height = A4[1]
    y = height - 40
    pages = 0
    with open(src, encoding="utf-8") as fh:
        for line in fh:
            c.drawString(40, y, line.rstrip("\n"))
            y -= 12
            if y < 40:
                c.showPage()
                pages += 1
                y = height - 40
    c.save()
    pages += y != height - 40  # save() ends a page that has something on it
    _report(started, time.perf_counter(), src, pages, out)


def child_s3flow(src: str, out: str, options: dict[str, Any]) -> None:
    """s3flow's processor on a local file, written through a LocalDirSink."""
    from s3flow.events import ObjectEvent
    from s3flow.objects import ObjectInfo, ObjectReader
    from s3flow.pipelines.text_to_pdf.processor import TextToPdfProcessor
    from s3flow.processors.base import ProcessContext
    from s3flow.sinks.local import LocalDirSink

    class FileBody:
        def __init__(self, path: str) -> None:
            self._fh = open(path, "rb")  # noqa: SIM115 - closed by close()

        async def read(self, n: int) -> bytes:
            return self._fh.read(n)

        def close(self) -> None:
            self._fh.close()

    class FileContext(ProcessContext):
        async def open(self) -> ObjectReader:
            info = ObjectInfo("local", self.event.key, None, None, None, None, None, {})
            return ObjectReader(info, FileBody(src))

    key = Path(out).name.removesuffix(".pdf")
    processor = TextToPdfProcessor(options)
    ctx = FileContext(
        event=ObjectEvent(bucket="local", key=key),
        pipeline="bench",
        worker_id="bench",
        s3=None,
        sink=LocalDirSink(Path(out).parent),
    )
    started = time.perf_counter()
    result = asyncio.run(processor.process(ctx))
    ended = time.perf_counter()
    if result.outputs != [out]:
        raise BenchError(f"s3flow wrote {result.outputs}, expected {out}")
    _report(started, ended, src, int(result.counters["pages"]), out)


def child_s3flow_s3(bucket: str, key: str, output: str) -> None:
    """s3flow's processor on an S3 object (the emulator), written through an S3 sink."""
    from s3flow.aws import open_clients
    from s3flow.events import ObjectEvent
    from s3flow.pipelines.text_to_pdf.processor import TextToPdfProcessor
    from s3flow.processors.base import ProcessContext
    from s3flow.settings import AwsSettings
    from s3flow.sinks.s3 import S3Sink

    async def main() -> tuple[float, float, Any]:
        processor = TextToPdfProcessor({})
        async with open_clients(AwsSettings()) as clients:
            ctx = ProcessContext(
                event=ObjectEvent(bucket=bucket, key=key),
                pipeline="bench",
                worker_id="bench",
                s3=clients.s3,
                sink=S3Sink(clients.s3, output),
            )
            started = time.perf_counter()
            result = await processor.process(ctx)
            return started, time.perf_counter(), result

    started, ended, result = asyncio.run(main())
    wall = ended - started
    size = int(result.counters["text_bytes"])
    doc = {
        "wall_s": round(wall, 3),
        "text_bytes": size,
        "pages": result.counters["pages"],
        "pdf_bytes": result.counters["bytes_out"],
        "pages_per_s": round(result.counters["pages"] / wall, 1),
        "mb_per_s": round(size / MB / wall, 3),
        "peak_rss_mb": round(self_peak_rss_mb(), 1),
        "output": result.outputs[0],
    }
    print(json.dumps(doc), flush=True)


def _rows(src: str, columns: int) -> Any:
    """The rows of a text file wrapped at ``columns`` characters (for the library test)."""
    with open(src, encoding="utf-8") as fh:
        for line in fh:
            line = line.rstrip("\n")
            while len(line) > columns:
                yield line[:columns]
                line = line[columns:]
            yield line


def child_lib(lib: str, src: str, out: str) -> None:
    """ReportLab or fpdf2 drawing the same wrapped rows with the same TrueType font."""
    size, leading = 9.0, 10.8
    width, height, margin = 595.2756, 841.8898, 42.52
    columns = int((width - 2 * margin) // (0.60205078125 * size))
    started = time.perf_counter()
    pages = 1
    if lib == "reportlab":
        from reportlab.pdfbase import pdfmetrics
        from reportlab.pdfbase.ttfonts import TTFont
        from reportlab.pdfgen import canvas

        pdfmetrics.registerFont(TTFont("Mono", FONT))
        c = canvas.Canvas(out, pagesize=(width, height))
        c.setFont("Mono", size)
        y = height - margin
        for row in _rows(src, columns):
            if y < margin:
                c.showPage()
                c.setFont("Mono", size)
                y = height - margin
                pages += 1
            c.drawString(margin, y, row)
            y -= leading
        c.save()
    else:
        from fpdf import FPDF

        pdf = FPDF(unit="pt", format=(width, height))
        pdf.set_margins(margin, margin, margin)
        pdf.set_auto_page_break(True, margin)
        pdf.add_font("Mono", fname=FONT)
        pdf.set_font("Mono", size=size)
        pdf.add_page()
        for row in _rows(src, columns):
            pdf.cell(0, leading, row, new_x="LMARGIN", new_y="NEXT")
        pdf.output(out)
        pages = pdf.page
    _report(started, time.perf_counter(), src, pages, out)


# ============================================================================
# Parent
# ============================================================================


def run(args: list[str], log: Path, timeout_s: float = 900) -> dict[str, Any]:
    """Run this script as a child with ``args``; its JSON line plus the kernel's view."""
    child = run_child([python(), __file__, "--child", *args], log, timeout_s)
    if child.returncode != 0:
        raise BenchError(f"child {args[:2]} failed ({child.returncode}):\n{child.log_tail()}")
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("{")]
    if not lines:
        raise BenchError(f"child {args[:2]} printed no result:\n{child.log_tail()}")
    doc: dict[str, Any] = json.loads(lines[-1])
    doc["cpu_s"] = round(child.cpu_s, 3)
    doc["process_wall_s"] = round(child.wall_s, 3)
    return doc


def check_pdf(path: Path, pages: int) -> None:
    """The file is a complete PDF with ``pages`` pages (pypdf walks the page tree)."""
    import pypdf

    with path.open("rb") as fh:
        head = fh.read(5)
        fh.seek(-8, os.SEEK_END)
        tail = fh.read()
    if head != b"%PDF-" or b"%%EOF" not in tail:
        raise BenchError(f"{path} is not a complete PDF")
    found = len(pypdf.PdfReader(path).pages)
    if found != pages:
        raise BenchError(f"{path}: {found} pages, the child reported {pages}")


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by MB/s, with every run's MB/s and the worst peak RSS."""
    by_rate = sorted(runs, key=lambda r: r["mb_per_s"])
    med = dict(by_rate[len(by_rate) // 2])
    med["mb_per_s_all_runs"] = [r["mb_per_s"] for r in runs]
    med["peak_rss_mb_max"] = max(r["peak_rss_mb"] for r in runs)
    for k in ("t_start", "t_end"):
        med.pop(k, None)
    return med


def child_vm_hwm_mb(pid: int) -> float | None:
    """Peak RSS (``VmHWM``, MiB) of another live process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


class PoolBench:
    """s3flow's ``PoolExecutor`` converting the throughput files from S3 to S3 (S3Proxy).

    One pool of ``processes`` spawned children lives through every round, as a worker's
    pool does; it is started and warmed (every child imported, one small job each, the
    S3 client built) before the first timed round. A round submits one
    :class:`ObjectJob` per file at once, built as the worker's handler builds them, and
    waits for every Result: wall = first submit to last result.
    """

    IN, OUT = "bench-t2p-pool-in", "bench-t2p-pool-out"

    def __init__(self, files: list[Path], processes: int) -> None:
        self.files = files
        self.processes = processes
        self.output = f"s3://{self.OUT}/pdf/"
        self.pids: set[int] = set()
        self.warmup_s: float | None = None
        self.last_pages: list[int] = []
        self.warmup_cpu_s: list[float] = []
        self._env = dict(os.environ)
        self._server: Any = None
        self._runner: asyncio.Runner | None = None
        self._executor: Any = None
        self._s3: Any = None
        self._aws: Any = None
        self._server_cpu: Any = None

    def start(self) -> PoolBench:
        """Start S3Proxy, upload the files, start and warm the pool (not timed)."""
        import boto3
        from botocore.config import Config

        from s3flow.executors.pool import PoolExecutor
        from s3flow.local.aws.server import S3Proxy, client_env
        from s3flow.settings import AwsSettings, PoolExecutorSettings, WorkerSettings

        self._server = S3Proxy(heap="1g").start()
        # Credentials and S3Proxy's checksum settings reach the spawned children by the
        # environment they inherit; the endpoint goes in the job's [aws] settings.
        os.environ.update(client_env(s3_url=self._server.url))
        os.environ["AWS_REGION"] = "us-east-1"
        self._aws = AwsSettings(region="us-east-1", endpoint_url_s3=self._server.url)
        self._s3 = boto3.client(
            "s3",
            endpoint_url=self._server.url,
            config=Config(
                region_name="us-east-1",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self._server_cpu = ProcessCpu(self._server.pid)
        self._s3.create_bucket(Bucket=self.IN)
        self._s3.create_bucket(Bucket=self.OUT)
        for f in self.files:
            self._s3.upload_file(str(f), self.IN, f.name)
        warm = self.files[0].read_bytes()[: 64 * 1024]
        self._s3.put_object(Bucket=self.IN, Key="warmup.log", Body=warm[: warm.rfind(b"\n") + 1])
        self._executor = PoolExecutor(
            PoolExecutorSettings(processes=self.processes),
            WorkerSettings(worker_id="bench-pool"),
        )
        self._runner = asyncio.Runner()
        started = time.perf_counter()
        self.pids = self._runner.run(self._warm_up())
        self.warmup_s = round(time.perf_counter() - started, 3)
        return self

    def job(self, key: str) -> Any:
        """The ObjectJob the worker's handler builds for ``key`` (pool route, defaults)."""
        from s3flow.events import ObjectEvent
        from s3flow.executors.base import ObjectJob

        size = self._s3.head_object(Bucket=self.IN, Key=key)["ContentLength"]
        return ObjectJob(
            processor="text-to-pdf",
            options={},
            event=ObjectEvent(bucket=self.IN, key=key, size=size),
            output=self.output,
            aws=self._aws,
            pipeline="bench-text-to-pdf",
            route="default",
            worker_id="bench-pool",
            max_uncompressed_bytes=4 * 1024**3,
        )

    async def _warm_up(self) -> set[int]:
        """Spawn every child, then one small job per child at once (imports, font, client).

        ``child_pids()`` spawns every child and waits until each one has answered.
        """
        pids = await self._executor.child_pids()
        if len(pids) != self.processes:
            raise BenchError(f"only {len(pids)} of {self.processes} pool children answered")
        cpu = {pid: ProcessCpu(pid) for pid in pids}
        before = {pid: c.read() for pid, c in cpu.items()}
        warm = self.job("warmup.log")
        await asyncio.gather(*(self._executor.run(warm) for _ in range(self.processes)))
        self.warmup_cpu_s = [round(c.read() - before[pid], 3) for pid, c in cpu.items()]
        return pids

    async def _round(self, jobs: list[Any]) -> tuple[float, float, list[Any]]:
        started = time.perf_counter()
        results = await asyncio.gather(*(self._executor.run(job) for job in jobs))
        return started, time.perf_counter(), list(results)

    def run_round(self) -> dict[str, Any]:
        """Every file through the pool at once; the round's figures."""
        assert self._runner is not None
        jobs = [self.job(f.name) for f in self.files]
        cpu = {pid: ProcessCpu(pid) for pid in self.pids}
        cpu_before = {pid: c.read() for pid, c in cpu.items()}
        server_before = self._server_cpu.read()
        before = proc_stat()
        started, ended, results = self._runner.run(self._round(jobs))
        wall = ended - started
        load = machine_load(before, wall)
        sizes = [f.stat().st_size for f in self.files]
        text = [int(r.counters["text_bytes"]) for r in results]
        if text != sizes:
            raise BenchError(f"the pool converted {text} bytes of text, the files have {sizes}")
        for f, r in zip(self.files, results, strict=True):
            want = f"{self.output}{f.name}.pdf"
            if r.outputs != [want]:
                raise BenchError(f"the pool wrote {r.outputs}, expected {want}")
            head = self._s3.head_object(Bucket=self.OUT, Key=f"pdf/{f.name}.pdf")
            if head["ContentLength"] != r.counters["bytes_out"]:
                raise BenchError(f"{want}: {head['ContentLength']} bytes, reported {r.counters}")
        self.last_pages = [int(r.counters["pages"]) for r in results]
        pages = sum(self.last_pages)
        total = sum(sizes)
        hwm = [child_vm_hwm_mb(pid) for pid in self.pids]
        if None in hwm:
            raise BenchError("a pool child is gone (the pool restarted?)")
        return {
            "processes": self.processes,
            "files": len(jobs),
            "jobs_submitted_at_once": len(jobs),
            "wall_s": round(wall, 3),
            "text_bytes": total,
            "pages": pages,
            "pdf_bytes": sum(int(r.counters["bytes_out"]) for r in results),
            "mb_per_s": round(total / MB / wall, 3),
            "pages_per_s": round(pages / wall, 1),
            "peak_rss_mb": round(max(h for h in hwm if h is not None), 1),
            "per_job_processing_s": [round(r.detail["processing_ms"] / 1000, 3) for r in results],
            "cpu_s": round(sum(cpu[p].read() - cpu_before[p] for p in self.pids), 3),
            "s3proxy_cpu_s": round(self._server_cpu.read() - server_before, 3),
            **load,
        }

    def check_output(self, path: Path) -> None:
        """Download the last round's PDF of the first file and check it (complete, pages)."""
        self._s3.download_file(self.OUT, f"pdf/{self.files[0].name}.pdf", str(path))
        check_pdf(path, self.last_pages[0])

    def close(self) -> None:
        """Shut the pool down, stop S3Proxy, restore the environment."""
        try:
            if self._runner is not None:
                if self._executor is not None:
                    self._runner.run(self._executor.close())
                self._runner.close()
        finally:
            if self._server is not None:
                self._server.close()
            os.environ.clear()
            os.environ.update(self._env)


def run_throughput(
    files: list[Path], work: Path, rounds: int, systems: list[str], pool: PoolBench | None
) -> dict[str, Any]:
    """``rounds`` rounds of every system in rotating order; the median run of each."""
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    out = work / "out"
    out.mkdir(exist_ok=True)
    a = files[0]
    for rnd in range(rounds):
        order = systems[rnd % len(systems) :] + systems[: rnd % len(systems)]
        for system in order:
            before = proc_stat()
            if system == "s3flow_pool":
                if pool is None:
                    raise BenchError("s3flow_pool needs the pool bench")
                r = pool.run_round()  # machine load over its own timed span
                target = out / "pool.pdf"
            elif system == "s3flow_x2":
                pairs = [(f, out / f"{f.name}.x2.pdf") for f in files[:2]]
                docs = parallel(
                    lambda p: run(
                        ["s3flow", str(p[0]), str(p[1]), "{}"], work / f"{p[1].name}.log"
                    ),
                    pairs,
                    threads=2,
                )
                total = sum(d["text_bytes"] for d in docs)
                span = max(d["t_end"] for d in docs) - min(d["t_start"] for d in docs)
                r = {
                    "processes": 2,
                    "files": 2,
                    "wall_s": round(span, 3),
                    "text_bytes": total,
                    "pages": sum(d["pages"] for d in docs),
                    "mb_per_s": round(total / MB / span, 3),
                    "pages_per_s": round(sum(d["pages"] for d in docs) / span, 1),
                    "peak_rss_mb": max(d["peak_rss_mb"] for d in docs),
                    "per_process_mb_per_s": [d["mb_per_s"] for d in docs],
                    "cpu_s": round(sum(d["cpu_s"] for d in docs), 3),
                }
                target = pairs[0][1]
            else:
                target = out / f"{a.name}.{system}.pdf"
                args = {
                    "naive": ["naive", str(a), str(target)],
                    "s3flow": ["s3flow", str(a), str(target), "{}"],
                    "s3flow_sans": ["s3flow", str(a), str(target), '{"monospace": false}'],
                }[system]
                r = run(args, work / f"{system}.log")
            if system != "s3flow_pool":
                r.update(machine_load(before, r["wall_s"]))
            r["round"] = rnd + 1
            runs[system].append(r)
            print(
                f"round {rnd + 1}/{rounds} {system}: {r['mb_per_s']} MB/s, "
                f"{r['pages_per_s']} pages/s, peak RSS {r['peak_rss_mb']} MB",
                flush=True,
            )
            if rnd == rounds - 1 and system == "s3flow_pool":
                assert pool is not None
                pool.check_output(target)
            elif rnd == rounds - 1 and system != "s3flow_x2":
                check_pdf(target, r["pages"])
    return {s: median_run(rs) for s, rs in runs.items()}


def run_memory(src: Path, target_bytes: int, work: Path) -> dict[str, Any]:
    """The processor on a ~200 MB object through moto; the child's peak RSS."""
    import boto3

    from s3flow.local.endpoint import LocalEndpoint

    ep = LocalEndpoint().start()
    saved = dict(os.environ)
    try:
        os.environ.update(ep.env())
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        os.environ.setdefault("AWS_REGION", "us-east-1")
        s3 = boto3.client("s3", endpoint_url=ep.url, region_name="us-east-1")
        s3.create_bucket(Bucket="bench-t2p-in")
        s3.create_bucket(Bucket="bench-t2p-out")
        block = src.read_bytes()
        data = block * (target_bytes // len(block)) + block[: target_bytes % len(block)]
        data = data[: data.rfind(b"\n") + 1]
        s3.put_object(Bucket="bench-t2p-in", Key="big.log", Body=data)
        size = len(data)
        del data, block
        before = proc_stat()
        r = run(
            ["s3flow-s3", "bench-t2p-in", "big.log", "s3://bench-t2p-out/pdf/"],
            work / "memory.log",
        )
        r.update(machine_load(before, r["process_wall_s"]))
        head = s3.head_object(Bucket="bench-t2p-out", Key="pdf/big.log.pdf")
        if head["ContentLength"] != r["pdf_bytes"] or head["ContentType"] != "application/pdf":
            raise BenchError(f"the 200 MB output is not what the child reported: {head}")
        r["object_bytes"] = size
        r["where"] = "moto server on 127.0.0.1 (GetObject stream in, multipart upload out)"
        return r
    finally:
        os.environ.clear()
        os.environ.update(saved)
        ep.stop()


def run_libraries(work: Path, sizes_mb: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for lib in ("reportlab", "fpdf2", "s3flow"):
        per_size = []
        for mb in sizes_mb:
            src = work / f"prose-{mb}.txt"
            if not src.exists():
                make_prose(src, mb * MB, seed=mb)
            target = work / "out" / f"lib-{lib}-{mb}.pdf"
            before = proc_stat()
            if lib == "s3flow":
                r = run(["s3flow", str(src), str(target), "{}"], work / f"lib-{lib}.log")
            else:
                r = run(["lib", lib, str(src), str(target)], work / f"lib-{lib}.log")
            r.update(machine_load(before, r["process_wall_s"]))
            r.pop("t_start", None)
            r.pop("t_end", None)
            per_size.append(r)
            print(
                f"library {lib} {mb} MB: {r['mb_per_s']} MB/s, {r['pages_per_s']} pages/s, "
                f"peak RSS {r['peak_rss_mb']} MB",
                flush=True,
            )
        out[lib] = {
            "runs": per_size,
            "mb_per_s": round(statistics.mean(r["mb_per_s"] for r in per_size), 3),
            "pages_per_s": round(statistics.mean(r["pages_per_s"] for r in per_size), 1),
        }
        if lib != "s3flow":  # the libraries hold the document: RSS grows with the text
            small, big = per_size[0], per_size[-1]
            grow = (big["peak_rss_mb"] - small["peak_rss_mb"]) / (
                (big["text_bytes"] - small["text_bytes"]) / MB
            )
            out[lib]["rss_mb_per_text_mb"] = round(grow, 2)
            out[lib]["rss_at_200mb_extrapolated_mb"] = round(
                big["peak_rss_mb"] + grow * (200 - big["text_bytes"] / MB)
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=32, help="size of each throughput file (MB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-mb", type=int, default=200, help="the memory test's object")
    parser.add_argument("--lib-mb", type=int, nargs=2, default=[4, 8], help="library test sizes")
    parser.add_argument("--quick", action="store_true", help="4 MB files, 1 round, 20 MB object")
    parser.add_argument("--no-libraries", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-pool", action="store_true", help="skip the s3flow_pool system")
    parser.add_argument("--processes", type=int, default=2, help="s3flow_pool's processes")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "text_to_pdf.json")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "naive":
            child_naive(*rest)
        elif kind == "s3flow":
            child_s3flow(rest[0], rest[1], json.loads(rest[2]))
        elif kind == "s3flow-s3":
            child_s3flow_s3(*rest)
        elif kind == "lib":
            child_lib(*rest)
        else:
            raise SystemExit(f"unknown child {kind}")
        return 0

    if args.quick:
        args.mb, args.rounds, args.memory_mb, args.lib_mb = 4, 1, 20, [1, 2]
    info = machine_info()
    for dist in ("reportlab", "fpdf2", "pypdf"):
        from importlib import metadata

        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    systems = ["naive", "s3flow", "s3flow_x2", "s3flow_pool", "s3flow_sans"]
    if args.no_pool:
        systems.remove("s3flow_pool")
    pool: PoolBench | None = None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="s3flow-bench-t2p-") as tmp:
        work = Path(tmp)
        files = [work / "logs-a.log", work / "logs-b.log"]
        for i, f in enumerate(files):
            make_logs(f, args.mb * MB, seed=11 + i)
        print(f"files: 2 x {files[0].stat().st_size / MIB:.1f} MiB of log lines", flush=True)
        if not args.no_pool:
            pool = PoolBench(files, args.processes)
            try:
                pool.start()
                print(
                    f"pool: {args.processes} processes started and warmed in {pool.warmup_s} s",
                    flush=True,
                )
                results = run_throughput(files, work, args.rounds, systems, pool)
            finally:
                pool.close()
        else:
            results = run_throughput(files, work, args.rounds, systems, None)
        memory = None if args.no_memory else run_memory(files[0], args.memory_mb * MB, work)
        libraries = None if args.no_libraries else run_libraries(work, args.lib_mb)

    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    naive = results["naive"]["mb_per_s"]
    ratios = {
        f"{s}_vs_naive_mb_per_s": round(results[s]["mb_per_s"] / naive, 2)
        for s in systems
        if s != "naive"
    }
    goals: dict[str, Any] = {
        "at_least_3x_naive_mb_per_s_two_processes": ratios["s3flow_x2_vs_naive_mb_per_s"] >= 3,
        "at_least_3x_naive_mb_per_s_one_process": ratios["s3flow_vs_naive_mb_per_s"] >= 3,
    }
    if "s3flow_pool" in results:
        goals["at_least_3x_naive_mb_per_s_pool_executor"] = (
            ratios["s3flow_pool_vs_naive_mb_per_s"] >= 3
        )
    if memory is not None:
        goals["peak_rss_at_most_300mb_on_200mb"] = memory["peak_rss_mb"] <= 300
    doc = {
        "benchmark": "text_to_pdf",
        "description": "text -> PDF: s3flow's text-to-pdf processor from local files (1 process; "
        "2 processes on 2 files at once), s3flow's pool executor (2 processes, the same 2 files "
        "from S3 to S3 through S3Proxy) vs a naive ReportLab canvas script from local files "
        "(Helvetica, one drawString per line, one process)",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        "machine": info,
        "workload": {
            "files": 2,
            "bytes_per_file": files[0].stat().st_size if files[0].exists() else args.mb * MB,
            "content": "ASCII access-log lines, ~110 bytes each (s3flow wraps them at 9 pt "
            "on A4; the naive script draws them unwrapped, past the page edge)",
            "rounds": args.rounds,
        },
        "pool_executor": None
        if pool is None
        else {
            "processes": pool.processes,
            "endpoint": "S3Proxy 2.6.0 (transient store, JVM -Xmx1g) on 127.0.0.1, no added "
            "latency; GetObject stream in, PutObject out (PDFs under 16 MiB)",
            "warm_up_s": pool.warmup_s,
            "warm_up_job_cpu_s_per_child": pool.warmup_cpu_s,
            "warm_up": "before the first timed round: child_pids() (every child spawned and "
            "started), then one 64 KB text-to-pdf job per child at once (imports, font, the "
            "child's S3 client); the pool then lives through every round, as a worker's does",
        },
        "systems": results,
        "ratios": ratios,
        "memory_200mb": memory,
        "library_choice": libraries,
        "goals": goals,
        "notes": [
            "mb_per_s = text bytes / 10^6 / wall_s, wall_s measured inside the child after "
            "its imports; pages_per_s likewise (pages differ: layouts differ)",
            "peak_rss_mb = the child's VmHWM",
            "s3flow_pool: the worker's PoolExecutor with 2 processes; both files submitted "
            "at once as ObjectJobs (as the worker does with concurrency >= processes), read "
            "from S3Proxy and written back to it; wall_s = first submit to last Result in the "
            "parent, pool warm-up (children spawned and imported, one small job each) done "
            "before timing; mb_per_s = both files' bytes / wall_s; S3Proxy shares the 2 cores "
            "(s3proxy_cpu_s); peak_rss_mb = the larger child VmHWM over the pool's life",
            "the >= 3x goal is for s3flow on its pool executor on 2 cores: "
            "at_least_3x_naive_mb_per_s_pool_executor (s3flow_pool vs naive)",
            "the machine is shared: compare ratios, and look at machine_cores_busy",
        ],
    }
    write_json(args.out, doc)
    print(json.dumps({"ratios": ratios, "goals": goals}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
