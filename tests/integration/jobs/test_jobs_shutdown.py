"""A graceful stop of the job worker costs a job no attempt: real worker subprocesses on
the emulator, SIGTERM while a step runs, then a second worker finishes the job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from itest_support import wait_for
from jobs_support import slow_project, stop_process

from s3flow.state.jobs import EventType, JobStatus

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
def test_a_job_stopped_by_a_graceful_shutdown_runs_again_without_spending_an_attempt(
    tmp_path: Path, s3: Any, sqs: Any
) -> None:
    """The stopped run's message was released with its receive count, which counts the
    job's attempts: with max_receive_count = 1 the next worker failed the job ("its worker
    stopped during its last allowed attempt... out of memory?"), and with the default 3,
    three rolling deploys during one long job failed it."""
    project, markers = slow_project(tmp_path, s3, sqs, sleep_s=8, jobs={"max_receive_count": 1})
    files = {"a.txt": b"1\n2\n3\n"}
    created = project.create("slow", files)
    job_id = created["job_id"]
    first = project.worker("worker-1.log")
    try:
        project.post_files(created, files)
        wait_for(lambda: any(markers.iterdir()), 60, "the step to start")
    finally:
        stop_process(first)  # SIGTERM: 5 s of grace, then the run is stopped
    log1 = (tmp_path / "worker-1.log").read_text(errors="replace")
    assert "stopped by the shutdown; handed on to the next worker" in log1, log1[-3000:]

    second = project.worker("worker-2.log")
    try:
        done = project.consume_until([job_id], timeout_s=90)
    finally:
        stop_process(second)
    job = done[job_id]
    events = project.events(job_id)
    assert job.status is JobStatus.COMPLETED, [(e.type, e.data) for e in events]
    kinds = [e.type for e in events]
    assert kinds.count(EventType.JOB_COMPLETED) == 1 and EventType.JOB_FAILED not in kinds
    started = [e.data["attempt"] for e in events if e.type == EventType.STEP_STARTED]
    assert started == [1, 2]  # two runs, each with its own events
    assert project.depth("processing.fifo") == 0
    assert project.depth("processing-dlq.fifo") == 0
