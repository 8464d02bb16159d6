"""Upload-jobs test helpers: an isolated [jobs] project per test on the shared emulator.

The one home of the jobs-project helpers (the web tests import them too): the TOML
writer, stopping the ``s3flow`` subprocesses, :class:`JobsProject`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from itest_support import spawn_worker, wait_for

from s3flow.app import open_store, provision_all
from s3flow.aws import open_clients
from s3flow.jobs.progress import ProgressConsumer
from s3flow.jobs.uploads import UploadRequest, create_upload
from s3flow.settings import Settings, load_settings
from s3flow.state.jobs import JobEvent, JobFile, JobRecord, JobStatus, JobStep

SLOW = "s3flow_testprocs:SlowProcessor"
FAILS = "s3flow_testprocs:AlwaysFails"


@dataclass
class JobsProject:
    """One ``[jobs]`` project (own bucket and queues), its config file and helpers."""

    tmp_path: Path
    s3: Any
    sqs: Any
    extra_templates: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.project = f"t{uuid.uuid4().hex[:8]}"
        self.cfg = self.tmp_path / "jobs.toml"
        self.state_url = f"sqlite:{self.tmp_path}/state.db"
        data: dict[str, Any] = {
            "jobs": {
                "project": self.project,
                "branch": "it",
                "max_file_bytes": 1_000_000,
                "max_files": 30,
                "allowed_extensions": [".txt", ".log", ".csv"],
                "visibility_timeout_s": 10,
                "wait_time_s": 1,
                **self.jobs,
            },
            "templates": [
                {"name": "count", "steps": [{"processor": "line-count"}]},
                {
                    "name": "bundle",
                    "steps": [{"processor": "line-count"}, {"processor": "zip"}],
                },
                *self.extra_templates,
            ],
            "worker": {"shutdown_grace_s": 5, "ack_batch_window_s": 0.02},
            "state": {"url": self.state_url},
        }
        self.data = data
        self.settings: Settings = load_settings(None, data)
        self.cfg.write_text(toml_text(data))
        asyncio.run(provision_all(self.settings))
        self.bucket = self.resource("uploads")
        # The notification's s3:TestEvent.
        url = self.url("intake")
        self.sqs.purge_queue(QueueUrl=url)

    def resource(self, role: str) -> str:
        return f"{self.project}-it-{role}"

    def url(self, role: str) -> str:
        return str(self.sqs.get_queue_url(QueueName=self.resource(role))["QueueUrl"])

    def depth(self, role: str) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.url(role),
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )

    def worker(self, log_name: str = "worker.log") -> Any:
        return spawn_worker(self.cfg, self.tmp_path / log_name)

    def wait_running(self, log_name: str = "worker.log", timeout_s: float = 60) -> None:
        """Wait until the worker subprocess logs that it is polling."""
        log = self.tmp_path / log_name
        wait_for(
            lambda: log.exists() and "running:" in log.read_text(errors="replace"),
            timeout_s,
            "the worker to start",
        )

    def create(self, template: str, files: dict[str, bytes]) -> dict[str, Any]:
        """POST /api/uploads' work, in process: the job plus one presigned POST per file."""
        req = UploadRequest.from_json(
            {
                "template": template,
                "files": [
                    {"name": n, "size": len(b), "content_type": "text/plain"}
                    for n, b in files.items()
                ],
            }
        )

        async def go() -> dict[str, Any]:
            async with open_clients(self.settings.aws) as c, open_store(self.settings) as store:
                assert store is not None
                created = await create_upload(self.settings, store, c.s3, req)
                return created.to_json()

        return asyncio.run(go())

    def post_files(self, created: dict[str, Any], files: dict[str, bytes]) -> None:
        """Upload each file straight to the emulator with its presigned POST."""
        for post in created["files"]:
            body = files[post["name"]]
            r = httpx.post(
                post["url"], data=post["fields"], files={"file": (post["name"], body, "text/plain")}
            )
            assert r.status_code in (200, 201, 204), r.text

    def job(self, job_id: str) -> JobRecord | None:
        async def go() -> JobRecord | None:
            async with open_store(self.settings) as store:
                assert store is not None
                return await store.get_job(job_id)

        return asyncio.run(go())

    def jobs_list(self) -> list[JobRecord]:
        """Every job of the store (newest first)."""

        async def go() -> list[JobRecord]:
            async with open_store(self.settings) as store:
                assert store is not None
                return await store.list_jobs(limit=1000)

        return asyncio.run(go())

    def events(self, job_id: str) -> list[JobEvent]:
        async def go() -> list[JobEvent]:
            async with open_store(self.settings) as store:
                assert store is not None
                return await store.events(job_id)

        return asyncio.run(go())

    def consume_until(
        self, job_ids: list[str], timeout_s: float = 60.0, *, stop_when: str = "terminal"
    ) -> dict[str, JobRecord]:
        """Run the progress consumer until every job is terminal (or ``stop_when`` is seen)."""

        async def go() -> dict[str, JobRecord]:
            deadline = time.monotonic() + timeout_s
            async with (
                open_clients(self.settings.aws) as c,
                open_store(self.settings) as store,
            ):
                assert store is not None
                url = (await c.sqs.get_queue_url(QueueName=self.resource("progress.fifo")))[
                    "QueueUrl"
                ]
                async with ProgressConsumer(sqs=c.sqs, queue_url=url, store=store, wait_time_s=1):
                    while True:
                        jobs = {j: await store.get_job(j) for j in job_ids}
                        if stop_when == "terminal":
                            if all(r is not None and r.status.terminal for r in jobs.values()):
                                return {k: v for k, v in jobs.items() if v is not None}
                        else:
                            seen = [
                                any(e.type == stop_when for e in await store.events(j))
                                for j in job_ids
                            ]
                            if all(seen):
                                return {k: v for k, v in jobs.items() if v is not None}
                        if time.monotonic() > deadline:
                            states = {k: (v.status if v else None) for k, v in jobs.items()}
                            raise AssertionError(f"jobs not done after {timeout_s}s: {states}")
                        await asyncio.sleep(0.1)

        return asyncio.run(go())


def slow_project(
    tmp_path: Path, s3: Any, sqs: Any, *, sleep_s: int, jobs: dict[str, Any] | None = None
) -> tuple[JobsProject, Path]:
    """A project with template "slow": one step that sleeps ``sleep_s`` and leaves
    started-/done- markers in the returned directory."""
    markers = tmp_path / "markers"
    markers.mkdir()
    step = {"processor": SLOW, "options": {"sleep_s": sleep_s, "marker_dir": str(markers)}}
    project = JobsProject(
        tmp_path, s3, sqs, jobs=jobs or {}, extra_templates=[{"name": "slow", "steps": [step]}]
    )
    return project, markers


def waiting_job(
    job_id: str, created_at: float | None = None, expires_at: float | None = None
) -> JobRecord:
    """A job of one small file waiting for it (expiring in an hour unless told)."""
    now = time.time() if created_at is None else created_at
    return JobRecord(
        job_id=job_id,
        upload_id=uuid.uuid4().hex,
        template="count",
        status=JobStatus.WAITING_FOR_FILES,
        files=(JobFile(name="a.txt", key="uploads/x/0-a.txt", size=2, content_type="text/plain"),),
        steps=(JobStep(name="line-count"),),
        created_at=now,
        updated_at=now,
        expires_at=now + 3600 if expires_at is None else expires_at,
    )


def toml_text(data: dict[str, Any]) -> str:
    """Just enough TOML for the test configs: tables, arrays of tables, inline tables."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        return str(v)

    out: list[str] = []
    for section, body in data.items():
        if isinstance(body, list):
            for item in body:
                out.append(f"[[{section}]]")
                out += [f"{k} = {val(v)}" for k, v in item.items()]
        else:
            out.append(f"[{section}]")
            out += [f"{k} = {val(v)}" for k, v in body.items()]
        out.append("")
    return "\n".join(out)


def stop_process(*procs: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """SIGTERM each (all at once, so they stop side by side), wait; SIGKILL one that stays."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
