"""`s3flow upload` and `s3flow jobs` as a user runs them: real `s3flow web` and `s3flow worker`
subprocesses on the emulator; `s3flow provision` of the jobs resources is idempotent."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from itest_support import wait_for
from jobs_support import JobsProject, stop_process, waiting_job

from s3flow.app import open_store, provision_all
from s3flow.local.endpoint import free_port
from s3flow.ops.jobs import retry_id
from s3flow.state.jobs import JobRecord, JobStatus

pytestmark = pytest.mark.integration


def _s3flow(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "s3flow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_provision_of_the_jobs_resources_is_idempotent(tmp_path: Path, s3: Any, sqs: Any) -> None:
    project = JobsProject(tmp_path, s3, sqs)  # provisions once
    again = asyncio.run(provision_all(project.settings))
    assert {c.action for c in again} == {"unchanged"}, [(c.kind, c.name, c.action) for c in again]
    names = {c.name for c in again}
    for role in ("intake", "intake-dlq", "processing.fifo", "processing-dlq.fifo", "progress.fifo"):
        assert project.resource(role) in names
    attrs = sqs.get_queue_attributes(
        QueueUrl=project.url("processing.fifo"), AttributeNames=["All"]
    )
    redrive = json.loads(attrs["Attributes"]["RedrivePolicy"])
    # Above max_receive_count (3): the runner fails a job itself, even after a killed worker.
    assert attrs["Attributes"]["FifoQueue"] == "true" and int(redrive["maxReceiveCount"]) == 13
    cors = s3.get_bucket_cors(Bucket=project.bucket)["CORSRules"][0]
    assert "POST" in cors["AllowedMethods"]
    rules = s3.get_bucket_lifecycle_configuration(Bucket=project.bucket)["Rules"]
    assert any(
        r["Filter"] == {"Prefix": "uploads/"} and r["Expiration"]["Days"] == 1 for r in rules
    )
    dry = _s3flow("provision", "-c", str(project.cfg), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert project.resource("progress.fifo") in dry.stdout


def test_upload_follows_the_job_and_jobs_commands_show_it(
    tmp_path: Path, s3: Any, sqs: Any
) -> None:
    project = JobsProject(tmp_path, s3, sqs)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "s3flow"]
    procs = [
        project.worker(),
        subprocess.Popen(
            [*cmd, "web", "-c", str(project.cfg), "--port", str(port)],
            stdout=(tmp_path / "web.log").open("wb"),
            stderr=subprocess.STDOUT,
        ),
    ]
    try:
        # Right after `s3flow web &`, as the README's lines run: upload waits for the API
        # to listen (it said "cannot reach the s3flow API" and gave up).
        a, b = tmp_path / "a.txt", tmp_path / "b.log"
        a.write_bytes(b"1\n2\n3\n")
        b.write_bytes(b"x\n")
        up = _s3flow(
            "upload", "-c", str(project.cfg), "--url", url, "--template", "bundle", "-q",
            "--api-wait-s", "60", str(a), str(b),
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        assert _healthy(url)
        job_id = re.search(r"job (job-[0-9a-f]{32})", up.stdout).group(1)  # type: ignore[union-attr]
        lines = [ln.split()[1] for ln in up.stdout.splitlines() if re.match(r"\s*\d+ \w", ln)]
        assert lines[0] == "job.created" and lines[-1] == "job.completed"
        assert lines.count("file.received") == 2
        # The same log through the store, and the job in the listing.
        shown = _s3flow("jobs", "show", job_id, "-c", str(project.cfg), "--json")
        assert shown.returncode == 0, shown.stderr
        doc = json.loads(shown.stdout)
        assert doc["status"] == "completed" and doc["outputs"][0]["name"] == f"{job_id}.zip"
        events = _s3flow("jobs", "events", job_id, "-c", str(project.cfg))
        assert events.returncode == 0
        logged = [ln.split() for ln in events.stdout.splitlines()]
        assert [w[3] for w in logged if len(w) > 3 and w[0].isdigit()] == lines
        listed = _s3flow("jobs", "list", "-c", str(project.cfg), "--status", "completed", "--json")
        assert job_id in {j["job_id"] for j in json.loads(listed.stdout)}
        bad = _s3flow("jobs", "list", "-c", str(project.cfg), "--status", "nope")
        assert bad.returncode != 0 and "waiting_for_files" in bad.stdout + bad.stderr
        # A refused upload: exit 2 with the server's reason.
        exe = tmp_path / "x.exe"
        exe.write_bytes(b"MZ")
        refused = _s3flow("upload", "-c", str(project.cfg), "--url", url, "-t", "count", str(exe))
        assert refused.returncode == 2
        assert "extension '.exe' is not allowed" in " ".join(refused.stderr.split())
        # A directory is named as one (it said "is not a readable file").
        folder = _s3flow(
            "upload", "-c", str(project.cfg), "--url", url, "-t", "count", str(tmp_path)
        )
        assert folder.returncode == 2
        assert f"{tmp_path} is a directory: give its files" in " ".join(folder.stderr.split())
        # Cancel a job still waiting for its files; retry needs a failed job with its files.
        created = project.create("count", {"late.txt": b"l\n"})
        cancel = _s3flow("jobs", "cancel", created["job_id"], "-c", str(project.cfg))
        assert cancel.returncode == 0, cancel.stderr
        assert "cancelled by an operator" in " ".join(cancel.stdout.split())
        retry = _s3flow("jobs", "retry", created["job_id"], "-c", str(project.cfg))
        said = " ".join(retry.stderr.split())
        assert retry.returncode == 2, said
        assert "failed before late.txt was received (cancelled by an operator" in said, said
        again = _s3flow("jobs", "retry", job_id, "-c", str(project.cfg))
        assert again.returncode == 2 and "only failed or expired" in " ".join(again.stderr.split())
    finally:
        stop_process(*procs)


def _cancelled_with_its_files(project: JobsProject, files: dict[str, bytes]) -> dict[str, Any]:
    """A job (its creation answer) cancelled once every file is in, a worker running:
    a failed job whose files all arrived."""
    created = project.create("count", files)
    project.post_files(created, files)
    job_id = created["job_id"]
    wait_for(lambda: (j := project.job(job_id)) and not j.missing, 60, "the files")
    cancel = _s3flow("jobs", "cancel", job_id, "-c", str(project.cfg))
    assert cancel.returncode == 0, cancel.stderr
    return created


def test_a_failed_job_is_retried_as_a_new_job(tmp_path: Path, s3: Any, sqs: Any) -> None:
    project = JobsProject(tmp_path, s3, sqs)
    worker = project.worker()
    try:
        created = _cancelled_with_its_files(project, {"a.txt": b"a\n"})
        job_id = created["job_id"]
        retry = _s3flow("jobs", "retry", job_id, "-c", str(project.cfg))
        assert retry.returncode == 0, retry.stderr
        new_id = re.search(r"retried as (job-[0-9a-f]{32})", retry.stdout).group(1)  # type: ignore[union-attr]
        done = project.consume_until([new_id], timeout_s=90)
        # A second retry (a double click, a script run twice) ran the files once more.
        twice = _s3flow("jobs", "retry", job_id, "-c", str(project.cfg))
        assert twice.returncode == 2, twice.stdout + twice.stderr
        said = " ".join(twice.stderr.split())
        assert f"job {job_id} was retried already as {new_id} (completed)" in said, said
        assert len(project.jobs_list()) == 2
    finally:
        stop_process(worker)
    assert done[new_id].status == "completed"
    created_event = project.events(new_id)[0].data
    assert created_event["retry_of"] == job_id
    # the documented job.created shape, the files under the first upload's keys
    old_key = project.job(job_id).files[0].key  # type: ignore[union-attr]
    assert created_event["files"] == [{"name": "a.txt", "key": old_key, "size": 2}]
    assert created_event["upload_id"] == done[new_id].upload_id != created["upload_id"]
    # outputs named as a first run names them, under the new job's prefix
    names = [o.name for o in done[new_id].outputs]
    assert names == [f"{old_key.rsplit('/', 1)[1]}.json"], names
    assert all(o.key.startswith(f"outputs/{new_id}/") for o in done[new_id].outputs)


def test_a_job_whose_files_are_gone_is_not_retried(tmp_path: Path, s3: Any, sqs: Any) -> None:
    """A failed job whose upload was deleted (or expired by the bucket's lifecycle rule)
    is refused with the files' names and what to do; no new job is queued, which would
    only fail on its first step."""
    project = JobsProject(tmp_path, s3, sqs)
    worker = project.worker()
    try:
        job_id = _cancelled_with_its_files(project, {"a.txt": b"a\n", "b.txt": b"b\n"})["job_id"]
    finally:
        stop_process(worker)
    job = project.job(job_id)
    assert job is not None
    s3.delete_object(Bucket=project.bucket, Key=job.files[1].key)
    retry = _s3flow("jobs", "retry", job_id, "-c", str(project.cfg))
    said = " ".join(retry.stderr.split())
    assert retry.returncode == 2, retry.stdout + retry.stderr
    assert f"job {job_id}: b.txt is no longer in s3://{project.bucket}/" in said
    assert "upload the files again as a new job" in said
    assert [j.job_id for j in project.jobs_list()] == [job_id]


def _failed_job() -> JobRecord:
    """A failed job whose files all arrived (not stored yet)."""
    old = waiting_job(f"job-{uuid.uuid4().hex}")
    return replace(
        old,
        status=JobStatus.FAILED,
        files=tuple(replace(f, received=True) for f in old.files),
        error="it failed",
    )


def test_a_retry_whose_message_cannot_be_sent_leaves_no_queued_job(
    tmp_path: Path, s3: Any, sqs: Any
) -> None:
    """The new job is recorded before its message is sent; when the send fails for real
    (the processing queue is gone), it is ended as failed ("not queued"), the error says
    so and what to do, and once the queue is back the old job is retried again."""
    project = JobsProject(tmp_path, s3, sqs)
    old = _failed_job()

    async def store_job() -> None:
        async with open_store(project.settings) as store:
            assert store is not None
            await store.create_job(old, event_id=f"{old.job_id}:created", data={})

    asyncio.run(store_job())
    s3.put_object(Bucket=project.bucket, Key=old.files[0].key, Body=b"a\n")
    sqs.delete_queue(QueueUrl=project.url("processing.fifo"))
    failed = _s3flow("jobs", "retry", old.job_id, "-c", str(project.cfg))
    assert failed.returncode == 2, failed.stdout + failed.stderr
    retries = [j for j in project.jobs_list() if j.job_id != old.job_id]
    assert [(j.status, (j.error or "")[:12]) for j in retries] == [
        (JobStatus.FAILED, "not queued: ")
    ]  # no job left queued without a message
    said = " ".join(failed.stderr.split())
    assert project.resource("processing.fifo") in said and "Nothing was queued" in said
    assert f"s3flow jobs retry {old.job_id}" in said
    asyncio.run(provision_all(project.settings))  # the queue is back: retried again
    again = _s3flow("jobs", "retry", old.job_id, "-c", str(project.cfg))
    assert again.returncode == 0, again.stderr
    queued = [j for j in project.jobs_list() if j.status is JobStatus.QUEUED]
    assert len(queued) == 1 and project.depth("processing.fifo") == 1


def test_a_retry_stopped_before_it_was_queued_is_made_again(
    tmp_path: Path, s3: Any, sqs: Any
) -> None:
    """A retry recorded but stopped before its files and queue events (a store blip,
    Ctrl-C) was refused by the next `jobs retry` ("retried already ... waiting for
    files"), and expired, never run."""
    project = JobsProject(tmp_path, s3, sqs)
    old = _failed_job()
    half = replace(old, job_id=retry_id(old.job_id), upload_id=uuid.uuid4().hex, last_seq=0)
    half = replace(half, status=JobStatus.WAITING_FOR_FILES, error=None)

    async def store_jobs() -> None:
        async with open_store(project.settings) as store:
            assert store is not None
            await store.create_job(old, event_id=f"{old.job_id}:created", data={})
            await store.create_job(half, event_id=f"{half.job_id}:job.created", data={})

    asyncio.run(store_jobs())
    s3.put_object(Bucket=project.bucket, Key=old.files[0].key, Body=b"a\n")
    again = _s3flow("jobs", "retry", old.job_id, "-c", str(project.cfg))
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"retried as {half.job_id}" in again.stdout
    job = project.job(half.job_id)
    assert job is not None and job.status is JobStatus.QUEUED
    assert project.depth("processing.fifo") == 1


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        time.sleep(0.2)
        return False
