"""Upload jobs end to end on the emulator: presigned POSTs -> bridge -> FIFO job worker ->
progress queue -> event log. The worker is a real `s3flow worker` subprocess."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from itest_support import wait_for
from jobs_support import FAILS, JobsProject, slow_project, stop_process

from s3flow.app import open_store
from s3flow.errors import S3flowError
from s3flow.ops.jobs import cancel_job, retry_job
from s3flow.state.jobs import EventType, JobStatus

pytestmark = pytest.mark.integration


def _contiguous(events: list[Any]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


def test_three_files_one_job_zip_bundle(tmp_path: Path, s3: Any, sqs: Any) -> None:
    project = JobsProject(tmp_path, s3, sqs)
    files = {"a.txt": b"1\n2\n3\n", "b.log": b"x\n", "c.csv": b"h\nr1\nr2\nr3\n"}
    created = project.create("bundle", files)
    job_id = created["job_id"]
    assert [f["key"].rsplit("/", 1)[-1] for f in created["files"]] == [
        "0-a.txt",
        "1-b.log",
        "2-c.csv",
    ]
    worker = project.worker()
    try:
        project.post_files(created, files)
        done = project.consume_until([job_id], timeout_s=90)
    finally:
        stop_process(worker)
    job = done[job_id]
    assert job.status is JobStatus.COMPLETED, job.error
    assert [s.status for s in job.steps] == ["completed", "completed"]
    assert [o.name for o in job.outputs] == [f"{job_id}.zip"]
    body = s3.get_object(Bucket=job.outputs[0].bucket, Key=job.outputs[0].key)["Body"].read()
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        names = sorted(zf.namelist())
        counts = {n: json.loads(zf.read(n))["lines"] for n in names}
    assert counts == {"0-a.txt.json": 3, "1-b.log.json": 1, "2-c.csv.json": 4}
    events = project.events(job_id)
    _contiguous(events)
    types = [e.type for e in events]
    assert types[0] is EventType.JOB_CREATED
    assert types.count(EventType.FILE_RECEIVED) == 3
    assert types.index(EventType.JOB_QUEUED) > max(
        i for i, t in enumerate(types) if t is EventType.FILE_RECEIVED
    )
    assert [e.data["step"] for e in events if e.type is EventType.STEP_STARTED] == [0, 1]
    assert types[-1] is EventType.JOB_COMPLETED and types.count(EventType.JOB_COMPLETED) == 1
    # The worker's exit summary counts the job (and the bridge its three files).
    log = (tmp_path / "worker.log").read_text()
    processed = dict(re.findall(r"(\S+): processed (\d+),", log))
    assert processed == {"jobs-intake": "3", "jobs-processing": "1"}, processed
    # Nothing left anywhere: every queue drained, nothing dead-lettered.
    for role in ("intake", "intake-dlq", "processing.fifo", "processing-dlq.fifo", "progress.fifo"):
        assert project.depth(role) == 0, role


def test_object_of_no_upload_is_quarantined_and_others_go_on(
    tmp_path: Path, s3: Any, sqs: Any
) -> None:
    project = JobsProject(tmp_path, s3, sqs)
    stray = "uploads/0123456789abcdef0123456789abcdef/0-stray.txt"
    s3.put_object(Bucket=project.bucket, Key=stray, Body=b"x\n")
    s3.put_object(Bucket=project.bucket, Key="uploads/not-an-upload.txt", Body=b"x\n")
    files = {"a.txt": b"a\n"}
    created = project.create("count", files)
    worker = project.worker()
    try:
        project.post_files(created, files)
        done = project.consume_until([created["job_id"]], timeout_s=60)
    finally:
        stop_process(worker)
    assert done[created["job_id"]].status is JobStatus.COMPLETED
    log = (tmp_path / "worker.log").read_text()
    assert "belongs to no upload" in log and "is not an upload file" in log
    assert project.depth("intake-dlq") == 0


def test_declared_files_that_never_arrive_expire_the_job(tmp_path: Path, s3: Any, sqs: Any) -> None:
    project = JobsProject(tmp_path, s3, sqs, jobs={"job_timeout_s": 6, "expiry_check_s": 0.5})
    files = {"a.txt": b"a\n", "late.txt": b"b\n"}
    worker = project.worker()
    try:
        project.wait_running()
        created = project.create("count", files)
        job_id = created["job_id"]
        project.post_files({**created, "files": created["files"][:1]}, files)
        job = wait_for(lambda: project.job(job_id), 10, "job")
        wait_for(lambda: (j := project.job(job_id)) and j.files[0].received, 10, "a.txt")
        wait_for(lambda: (j := project.job(job_id)) and j.status.terminal, 60, "expiry")
    finally:
        stop_process(worker)
    job = project.job(job_id)
    assert job is not None and job.status is JobStatus.EXPIRED
    assert "late.txt" in (job.error or "")
    last = project.events(job_id)[-1]
    assert last.type is EventType.JOB_EXPIRED and last.data["missing"] == ["late.txt"]


def test_files_stored_in_time_while_no_worker_ran_do_not_expire_the_job(
    tmp_path: Path, s3: Any, sqs: Any
) -> None:
    """Every file is stored before the deadline, but no worker runs until after it: their
    notifications wait on the intake queue. The job runs; it is not expired as "never
    arrived" by the sweep a starting worker makes before its pollers catch up. A file
    stored after its job's deadline still expires the job."""
    project = JobsProject(tmp_path, s3, sqs, jobs={"job_timeout_s": 6, "expiry_check_s": 0.5})
    files = {"a.txt": b"1\n2\n", "b.txt": b"3\n"}
    in_time = project.create("count", files)
    late = project.create("count", {"c.txt": b"4\n", "late.txt": b"5\n"})
    project.post_files(in_time, files)
    project.post_files({**late, "files": late["files"][:1]}, {"c.txt": b"4\n"})
    deadline = max(project.job(c["job_id"]).expires_at for c in (in_time, late))  # type: ignore[union-attr]
    wait_for(lambda: time.time() > deadline + 1.5, 30, "the jobs' deadlines")
    project.post_files({**late, "files": late["files"][1:]}, {"late.txt": b"5\n"})
    worker = project.worker()
    try:
        done = project.consume_until([in_time["job_id"], late["job_id"]], timeout_s=90)
    finally:
        stop_process(worker)
    job = done[in_time["job_id"]]
    assert job.status is JobStatus.COMPLETED, job.error
    assert [f.received for f in job.files] == [True, True]
    expired = done[late["job_id"]]
    assert expired.status is JobStatus.EXPIRED, expired.status
    assert "late.txt" in (expired.error or "")
    for role in ("intake", "intake-dlq", "processing.fifo", "processing-dlq.fifo"):
        assert project.depth(role) == 0, role


def test_a_file_stored_after_the_deadline_expires_the_job_at_once(
    tmp_path: Path, s3: Any, sqs: Any
) -> None:
    """The sweep is far off (an hour): the late file's own notification expires its job,
    instead of queueing a job whose deadline has passed."""
    project = JobsProject(tmp_path, s3, sqs, jobs={"job_timeout_s": 5, "expiry_check_s": 3600})
    files = {"a.txt": b"1\n", "late.txt": b"2\n"}
    worker = project.worker()
    try:
        project.wait_running()
        created = project.create("count", files)
        job_id = created["job_id"]
        project.post_files({**created, "files": created["files"][:1]}, files)
        wait_for(lambda: (j := project.job(job_id)) and j.files[0].received, 30, "a.txt")
        deadline = project.job(job_id).expires_at  # type: ignore[union-attr]
        wait_for(lambda: time.time() > deadline + 1.5, 30, "the job's deadline")
        project.post_files({**created, "files": created["files"][1:]}, files)
        job = wait_for(lambda: (j := project.job(job_id)) and j.status.terminal and j, 30, "end")
    finally:
        stop_process(worker)
    assert job.status is JobStatus.EXPIRED, job.status
    assert job.error and "late.txt" in job.error
    assert EventType.JOB_QUEUED not in [e.type for e in project.events(job_id)]
    assert project.depth("intake-dlq") == 0


def test_a_file_of_another_size_than_declared_fails_the_job(
    tmp_path: Path, s3: Any, sqs: Any
) -> None:
    project = JobsProject(tmp_path, s3, sqs)
    created = project.create("count", {"a.txt": b"1\n"})  # declares 2 bytes
    job_id = created["job_id"]
    worker = project.worker()
    try:
        # The emulator does not enforce the policy's content-length-range: 9 bytes get in.
        r = httpx.post(
            created["files"][0]["url"],
            data=created["files"][0]["fields"],
            files={"file": ("a.txt", b"1\n2\n3\n4\n5", "text/plain")},
        )
        if r.status_code >= 300:  # an endpoint that enforces it: nothing else to check
            assert "EntityTooLarge" in r.text or "content-length" in r.text.lower(), r.text
            return
        job = wait_for(lambda: (j := project.job(job_id)) and j.status.terminal and j, 60, "job")
    finally:
        stop_process(worker)
    assert job.status is JobStatus.FAILED
    assert "arrived with 9 bytes but the upload declared 2" in (job.error or ""), job.error
    assert EventType.JOB_QUEUED not in [e.type for e in project.events(job_id)]

    # A retry is refused with the job's own reason (it said the file "never arrived").
    async def retry() -> None:
        async with open_store(project.settings) as store:
            await retry_job(project.settings, store, sqs, job_id, s3=s3)

    with pytest.raises(S3flowError) as refused:
        asyncio.run(retry())
    said = " ".join(str(refused.value).split())
    assert f"job {job_id} failed before 'a.txt' was received" not in said  # names, unquoted
    assert f"job {job_id} failed before a.txt was received" in said, said
    assert "arrived with 9 bytes but the upload declared 2" in said, said
    assert "never arrived" not in said, said


def test_twenty_concurrent_uploads_all_complete(tmp_path: Path, s3: Any, sqs: Any) -> None:
    project = JobsProject(tmp_path, s3, sqs)
    created = []
    for i in range(20):
        files = {f"f{i}-{j}.txt": f"{i}\n{j}\n".encode() for j in range(2)}
        created.append((project.create("count", files), files))
    worker = project.worker()
    try:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda cf: project.post_files(*cf), created))
        done = project.consume_until([c["job_id"] for c, _ in created], timeout_s=120)
    finally:
        stop_process(worker)
    assert {j.status for j in done.values()} == {JobStatus.COMPLETED}
    for job in done.values():
        assert len(job.outputs) == 2
        _contiguous(project.events(job.job_id))
    assert project.depth("processing-dlq.fifo") == 0


def test_failing_step_fails_the_job_after_max_receives(tmp_path: Path, s3: Any, sqs: Any) -> None:
    project = JobsProject(
        tmp_path,
        s3,
        sqs,
        extra_templates=[{"name": "broken", "steps": [{"processor": FAILS}]}],
    )
    files = {"a.txt": b"a\n"}
    created = project.create("broken", files)
    worker = project.worker()
    try:
        project.post_files(created, files)
        done = project.consume_until([created["job_id"]], timeout_s=120)
        # The last attempt published job.failed and deleted the message.
        wait_for(lambda: project.depth("processing.fifo") == 0, 60, "the message's delete")
    finally:
        stop_process(worker)
    job = done[created["job_id"]]
    assert job.status is JobStatus.FAILED
    assert "failed 3 times" in (job.error or "") and "boom" in (job.error or "")
    assert "last error: a.txt: " in (job.error or "")  # the file it failed on, by name
    assert project.depth("processing-dlq.fifo") == 0


def test_a_worker_killed_in_the_last_attempt_still_fails_the_job(
    tmp_path: Path, s3: Any, sqs: Any
) -> None:
    # max_receive_count 1: the first attempt is the last
    project, markers = slow_project(tmp_path, s3, sqs, sleep_s=30, jobs={"max_receive_count": 1})
    files = {"a.txt": b"a\n"}
    created = project.create("slow", files)
    job_id = created["job_id"]
    first = project.worker("worker1.log")
    try:
        project.post_files(created, files)
        wait_for(lambda: any(p.name.startswith("started-") for p in markers.iterdir()), 60, "step")
        os.kill(first.pid, signal.SIGKILL)  # OOM killer: no job.failed from this worker
        first.wait()
    finally:
        stop_process(first)
    second = project.worker("worker2.log")
    try:
        # The message comes back after its visibility timeout (10 s); the job must end.
        done = project.consume_until([job_id], timeout_s=90)
        wait_for(lambda: project.depth("processing.fifo") == 0, 60, "the message's delete")
    finally:
        stop_process(second)
    job = done[job_id]
    assert job.status is JobStatus.FAILED
    assert "stopped during its last allowed attempt (1 of 1" in (job.error or ""), job.error
    assert f"s3flow jobs retry {job_id}" in (job.error or "")
    assert project.events(job_id)[-1].type is EventType.JOB_FAILED
    assert project.depth("processing-dlq.fifo") == 0
    assert len([p for p in markers.iterdir() if p.name.startswith("started-")]) == 1


def test_sigkill_of_the_job_worker_mid_step_completes_once(
    tmp_path: Path, s3: Any, sqs: Any
) -> None:
    project, markers = slow_project(tmp_path, s3, sqs, sleep_s=3)
    files = {"a.txt": b"a\nb\n", "b.txt": b"c\n"}
    created = project.create("slow", files)
    job_id = created["job_id"]
    first = project.worker("worker1.log")
    try:
        project.post_files(created, files)
        wait_for(lambda: any(p.name.startswith("started-") for p in markers.iterdir()), 60, "step")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        stop_process(first)
    assert not any(p.name.startswith("done-") for p in markers.iterdir())
    second = project.worker("worker2.log")
    try:
        done = project.consume_until([job_id], timeout_s=120)
    finally:
        stop_process(second)
    job = done[job_id]
    assert job.status is JobStatus.COMPLETED, job.error
    events = project.events(job_id)
    _contiguous(events)
    assert [e.type for e in events].count(EventType.JOB_COMPLETED) == 1
    assert sorted(o.name for o in job.outputs) == ["0-a.txt.json", "1-b.txt.json"]
    # The killed worker may have held an intake message whose ack it had not sent yet: it
    # comes back after the visibility timeout (10 s here) and the second worker acks it
    # as a duplicate. Nothing may stay invisible or reach a DLQ.
    second = project.worker("worker3.log")
    try:
        for role in ("intake", "intake-dlq", "processing.fifo", "processing-dlq.fifo"):
            wait_for(lambda r=role: project.depth(r) == 0, 60, f"{role} to be empty")
    finally:
        stop_process(second)


def test_a_job_cancelled_while_it_runs_stops_and_writes_no_output(
    tmp_path: Path, s3: Any, sqs: Any
) -> None:
    """`s3flow jobs cancel` ended the job's record, but its worker went on: every step
    ran, and the outputs of the cancelled job appeared in its final location."""
    project, markers = slow_project(tmp_path, s3, sqs, sleep_s=30)
    files = {"a.txt": b"a\n", "b.txt": b"b\n"}
    created = project.create("slow", files)
    job_id = created["job_id"]
    worker = project.worker()
    try:
        project.post_files(created, files)
        wait_for(lambda: any(p.name.startswith("started-") for p in markers.iterdir()), 60, "step")

        async def cancel() -> None:
            async with open_store(project.settings) as store:
                assert store is not None
                await cancel_job(store, job_id, reason="test")

        asyncio.run(cancel())
        # Acknowledged within a progress interval or so, long before the 30 s step ends.
        wait_for(lambda: project.depth("processing.fifo") == 0, 20, "the message's delete")
        log = (tmp_path / "worker.log").read_text()
        assert f"job {job_id}: it ended while it ran" in log, log[-2000:]
    finally:
        stop_process(worker)
    job = project.job(job_id)
    assert job is not None and job.status is JobStatus.FAILED
    assert "cancelled by an operator" in (job.error or "")
    listed = s3.list_objects_v2(Bucket=project.bucket, Prefix=f"outputs/{job_id}/")
    assert listed.get("KeyCount", 0) == 0  # no output of the cancelled job
    assert len([p for p in markers.iterdir() if p.name.startswith("started-")]) == 1


def test_an_uploaded_file_deleted_before_its_step_fails_the_job_at_once(
    tmp_path: Path, s3: Any, sqs: Any
) -> None:
    """b.txt is deleted (by hand, or the bucket's lifecycle rule) while the step runs:
    no attempt can find it again, so the job fails on the first, naming the file and
    what to do. It was retried max_receive_count times (minutes in production)."""
    project, markers = slow_project(tmp_path, s3, sqs, sleep_s=3)
    files = {"a.txt": b"a\n", "b.txt": b"b\n"}
    created = project.create("slow", files)
    job_id = created["job_id"]
    worker = project.worker()
    try:
        project.post_files(created, files)
        wait_for(lambda: any(p.name.startswith("started-") for p in markers.iterdir()), 60, "step")
        s3.delete_object(Bucket=project.bucket, Key=created["files"][1]["key"])
        done = project.consume_until([job_id], timeout_s=120)
    finally:
        stop_process(worker)
    job = done[job_id]
    assert job.status is JobStatus.FAILED
    assert job.error is not None and "the uploaded file is gone" in job.error, job.error
    assert "b.txt" in job.error and not job.error.startswith("failed ")
    started = [e for e in project.events(job_id) if e.type is EventType.STEP_STARTED]
    assert len(started) == 1, started  # one attempt
