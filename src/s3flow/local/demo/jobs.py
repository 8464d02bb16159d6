"""The demo's upload-job stage: three files as one job through `s3flow web`, events printed live.

It runs what a user runs: `s3flow worker` and `s3flow web` as child processes
(owned: they die with the demo) on one config, and the same API client as
`s3flow upload` (:mod:`s3flow.jobs.client`): ``POST /api/uploads``, presigned
POSTs straight to the emulator, then the job's server-sent events.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape

from s3flow.app import provision_all
from s3flow.errors import S3flowError
from s3flow.jobs.client import create_upload, describe, post_file, read_events
from s3flow.local.endpoint import free_port, popen_owned
from s3flow.settings import load_settings

JOBS_CONFIG = """\
[jobs]
project = "s3flow-demo"
branch = "local"
max_file_bytes = 1048576
max_files = 10
allowed_extensions = [".txt", ".log", ".csv"]
visibility_timeout_s = 30
wait_time_s = 1

[[templates]]
name = "count-and-zip"
description = "count the lines of every file, then bundle the counts into one ZIP"
steps = [{ processor = "line-count" }, { processor = "zip" }]

[state]
url = "sqlite:{state}"

[worker]
shutdown_grace_s = 5
"""

FILES = {
    "notes.txt": b"first line\nsecond line\nthird line\n",
    "server.log": b"".join(b"GET /item/%d 200\n" % i for i in range(250)),
    "orders.csv": b"order_id,sku,qty\n"
    + b"".join(b"%d,A-%d,%d\n" % (i, i, i % 7) for i in range(40)),
}


def jobs_stage(console: Console, workdir: Path) -> None:
    """Provision the jobs resources, start worker + web, run one job and print its events."""
    cfg = workdir / "jobs.toml"
    cfg.write_text(JOBS_CONFIG.replace("{state}", str(workdir / "jobs-state.db")))
    settings = load_settings(cfg)
    console.print("      provisioning the uploads bucket and the intake / FIFO job queues ...")
    for c in asyncio.run(provision_all(settings)):
        console.print(f"      {c.kind:<12} {c.name:<45} {c.action}")
    files = []
    for name, body in FILES.items():
        path = workdir / name
        path.write_bytes(body)
        files.append(path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "s3flow"]
    procs = [
        popen_owned(
            [*cmd, "worker", "-c", str(cfg)],
            stdout=_log(workdir, "worker"),
            stderr=subprocess.STDOUT,
        ),
        popen_owned(
            [*cmd, "web", "-c", str(cfg), "--host", "127.0.0.1", "--port", str(port)],
            stdout=_log(workdir, "web"),
            stderr=subprocess.STDOUT,
        ),
    ]
    try:
        console.print(f"      `s3flow worker` and `s3flow web` ({base}) started")
        with httpx.Client(timeout=httpx.Timeout(30.0)) as client:
            _wait_healthy(client, base, procs, workdir)
            created = create_upload(
                client, base, {}, "count-and-zip", files, lambda p: "text/plain"
            )
            job_id = str(created["job_id"])
            console.print(
                f"      job [bold]{job_id}[/]: uploading {len(files)} files straight to S3 ..."
            )
            for path, post in zip(files, created["files"], strict=True):
                post_file(client, post, path, lambda n: None)
            console.print("      its event stream (GET /api/jobs/<id>/events):")
            final: dict[str, Any] = {}
            for ev in read_events(client, base, job_id, headers={}):
                line = f"      {ev.id:>3} {ev.event:<15} {escape(describe(ev))}"
                console.print(line, highlight=False, overflow="ellipsis", no_wrap=True)
                final = {"event": ev.event, **ev.data}
            if final.get("event") != "job.completed":
                raise S3flowError(
                    f"the demo job ended with {final.get('event')}: {final.get('error')}"
                )
            view = client.get(f"{base}/api/jobs/{job_id}").json()
            for out in view.get("outputs", []):
                console.print(f"      output {out['name']}: GET {out['url']}", overflow="fold")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _log(workdir: Path, name: str) -> Any:
    return (workdir / f"{name}.log").open("wb")


def _wait_healthy(
    client: httpx.Client, base: str, procs: list[subprocess.Popen[bytes]], workdir: Path
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise S3flowError(
                    f"a demo server exited with {p.returncode}; see the logs in {workdir}"
                )
        try:
            if client.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise S3flowError(f"`s3flow web` did not answer on {base} within 60 s; see {workdir}/web.log")
