"""The worker with routes, executors and output verification, against the moto server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from container_sim import (
    HERE,
    EcsContainerSim,
    batch_docker_mode,
    batch_setup,
    ecs_setup,
    hold_ecs_tasks,
)
from itest_support import Harness, spawn_worker, wait_for
from s3flow_testprocs import VouchedWriteThenDelete, WriteThenDelete

from s3flow.errors import ConfigError
from s3flow.local.endpoint import pid_alive
from s3flow.settings import load_settings
from s3flow.state import open_state_store
from s3flow.state.records import FileStatus, HistoryEntry
from s3flow.worker.handler import WorkerObserver
from s3flow.worker.outcomes import Outcome, Retry
from s3flow.worker.source import ReceivedMessage

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).parents[2] / "examples"


def example_routes(name: str) -> list[dict[str, Any]]:
    """The ``[[pipelines.routes]]`` of an example config."""
    p = load_settings(EXAMPLES / name).pipelines[0]
    return [r.model_dump(exclude_none=True) for r in p.routes]


def history(harness: Harness, key: str) -> list[HistoryEntry]:
    async def go() -> list[HistoryEntry]:
        async with open_state_store(harness.state_url) as store:
            return await store.history(harness.bucket, key)

    return asyncio.run(go())


def status(harness: Harness, key: str) -> FileStatus:
    async def go() -> FileStatus:
        async with open_state_store(harness.state_url) as store:
            (rec,) = await store.versions(harness.bucket, key)
            return rec.status

    return asyncio.run(go())


def output_doc(harness: Harness, key: str) -> dict[str, Any]:
    body = harness.s3.get_object(Bucket=harness.out_bucket, Key=f"res/{key}.json")["Body"]
    return dict(json.loads(body.read()))


def completed_detail(harness: Harness, key: str) -> str:
    (done,) = [h for h in history(harness, key) if h.new is FileStatus.COMPLETED]
    return done.detail


SUBPROCESS_ENV = {"subprocess": {"environment": {"PYTHONPATH": str(HERE)}}}


def test_metadata_routes_two_objects_to_different_executors(harness: Harness) -> None:
    """The local example: processor-type=pool -> the pool, anything else -> `s3flow run`."""
    harness.configure(
        processor="s3flow_testprocs:PidLineCount",
        routes=example_routes("routing-local.toml"),
        executors={"pool": {"processes": 1}, **SUBPROCESS_ENV},
    )
    harness.put("heavy.txt", b"1\n2\n", Metadata={"processor-type": "pool"})
    harness.put("light.txt", b"1\n", Metadata={"processor-type": "something-else"})
    m = harness.run()
    p = m.pipelines["p"]
    assert p.objects_processed == 2 and p.acked == 2
    heavy, light = output_doc(harness, "heavy.txt"), output_doc(harness, "light.txt")
    assert heavy["lines"] == 2 and light["lines"] == 1
    # neither ran in this process, and not in the same one either
    assert os.getpid() not in (heavy["pid"], light["pid"]) and heavy["pid"] != light["pid"]
    proc = "s3flow_testprocs:PidLineCount"
    assert completed_detail(harness, "heavy.txt") == f"route 'heavy': processor {proc} on pool"
    assert (
        completed_detail(harness, "light.txt") == f"route 'default': processor {proc} on subprocess"
    )
    assert harness.depth() == (0, 0)


def test_a_cpu_bound_processor_runs_in_the_pool_by_default(harness: Harness) -> None:
    harness.configure(processor="s3flow_testprocs:CpuBoundPidLineCount")
    harness.put("a.txt", b"x\n")
    harness.run()
    assert output_doc(harness, "a.txt")["pid"] != os.getpid()
    assert completed_detail(harness, "a.txt").endswith(" on pool")


def test_an_existing_config_keeps_working_inline(harness: Harness) -> None:
    harness.configure()
    harness.put("a.txt", b"x\n")
    harness.run()
    assert completed_detail(harness, "a.txt") == "route 'default': processor line-count on inline"


def test_no_matching_route_quarantines_with_the_reason(harness: Harness) -> None:
    harness.configure(routes=[{"name": "heavy", "metadata": {"processor-type": "pool"}}])
    harness.put("stray.txt", b"x\n")
    m = harness.run()
    assert m.pipelines["p"].quarantined == 1
    assert harness.depth() == (0, 0) and harness.depth(harness.dlq_url) == (0, 0)
    assert harness.output_keys() == []
    tags = harness.s3.get_object_tagging(Bucket=harness.bucket, Key="stray.txt")["TagSet"]
    tag = {t["Key"]: t["Value"] for t in tags}["s3flow-reason"]
    assert tag.startswith("no route matches _heavy: no metadata")  # tag-safe characters
    assert status(harness, "stray.txt") is FileStatus.QUARANTINED
    (entry,) = [h for h in history(harness, "stray.txt") if h.new is FileStatus.QUARANTINED]
    assert entry.detail == "NoRoute: no route matches (heavy: no metadata 'processor-type')"


def test_a_missing_output_is_retried_never_acked_then_dead_lettered(harness: Harness) -> None:
    """The processor writes its output and deletes it again: verification catches it."""
    WriteThenDelete.calls = 0
    harness.configure(processor="s3flow_testprocs:WriteThenDelete", max_receive_count=3)
    harness.put("gone.txt", b"x\n")
    m = harness.run()
    p = m.pipelines["p"]
    assert WriteThenDelete.calls == 3  # tried three times: never acked in between
    assert p.objects_processed == 0 and p.retried == 2 and p.dead_lettered == 1
    (dead,) = harness.dlq_messages()
    attrs = {k: v["StringValue"] for k, v in dead["MessageAttributes"].items()}
    assert attrs["s3flow.error-class"] == "RetriesExhausted.OutputVerificationError"
    assert "output verification failed: output s3://" in attrs["s3flow.error"]
    assert "res/gone.txt.json does not exist" in attrs["s3flow.error"]
    assert status(harness, "gone.txt") is FileStatus.DEAD
    assert harness.depth() == (0, 0)


@pytest.mark.parametrize("truncated", [False, True])
def test_pdf_outputs_are_read_back(harness: Harness, truncated: bool) -> None:
    harness.configure(
        processor="s3flow_testprocs:FakePdf", options={"truncated": truncated}, max_receive_count=1
    )
    harness.put("doc.txt", b"hello\n")
    m = harness.run()
    p = m.pipelines["p"]
    if not truncated:
        assert p.objects_processed == 1 and harness.output_keys() == ["res/doc.txt.pdf"]
        return
    assert p.objects_processed == 0 and p.dead_lettered == 1
    (dead,) = harness.dlq_messages()
    error = dead["MessageAttributes"]["s3flow.error"]["StringValue"]
    assert "res/doc.txt.pdf is a truncated PDF: no %%EOF in its last 1024 bytes" in error


def test_a_processor_vouching_for_its_writes_is_verified_by_their_answers(
    harness: Harness,
) -> None:
    """``verified_by_write``: inline, the PutObject's answer is the check (no HEAD), so
    an output the processor removed afterwards goes unnoticed: the processor vouched."""
    VouchedWriteThenDelete.calls = 0
    harness.configure(processor="s3flow_testprocs:VouchedWriteThenDelete", max_receive_count=3)
    harness.put("gone.txt", b"x\n")
    m = harness.run()
    p = m.pipelines["p"]
    assert VouchedWriteThenDelete.calls == 1
    assert p.objects_processed == 1 and p.acked == 1 and p.retried == 0
    assert harness.output_keys() == []  # removed, and yet acked: no HEAD was made
    assert status(harness, "gone.txt") is FileStatus.COMPLETED
    assert harness.depth() == (0, 0)


def test_writes_made_in_another_process_are_fetched_even_when_vouched_for(
    harness: Harness,
) -> None:
    """On the pool executor the worker never saw the write's answer: HEAD, as always."""
    harness.configure(
        processor="s3flow_testprocs:VouchedWriteThenDelete",
        routes=[{"name": "all", "executor": "pool"}],
        executors={"pool": {"processes": 1}},
        max_receive_count=1,
    )
    harness.put("gone.txt", b"x\n")
    m = harness.run()
    p = m.pipelines["p"]
    assert p.objects_processed == 0 and p.dead_lettered == 1
    (dead,) = harness.dlq_messages()
    error = dead["MessageAttributes"]["s3flow.error"]["StringValue"]
    assert "res/gone.txt.json does not exist" in error
    assert harness.depth() == (0, 0)


def test_verification_can_be_turned_off(harness: Harness) -> None:
    harness.configure(processor="s3flow_testprocs:WriteThenDelete", verify_outputs=False)
    harness.put("gone.txt", b"x\n")
    m = harness.run()
    assert m.pipelines["p"].objects_processed == 1  # the operator's choice


def test_a_route_whose_processor_refuses_its_options_stops_the_worker_at_start(
    harness: Harness,
) -> None:
    """text-to-pdf checks its font when built: a pool route with a font that does not
    exist is refused at start, naming the route, instead of dead-lettering every file."""
    harness.configure(
        processor="text-to-pdf",
        executor="pool",
        executors={"pool": {"processes": 1}},
        routes=[
            {"name": "he", "key_glob": "he/*", "options": {"font_file": "/nonexistent.ttf"}},
            {"name": "default"},
        ],
    )
    harness.put("he/a.txt", b"shalom\n")
    with pytest.raises(ConfigError) as info:
        harness.run()
    assert str(info.value) == (
        "pipeline 'p', route 'he': text-to-pdf: font_file '/nonexistent.ttf' does not exist"
    )
    assert harness.depth() == (1, 0)  # never received: nothing failed, nothing dead-lettered
    assert harness.depth(harness.dlq_url) == (0, 0)


def test_a_subprocess_command_that_does_not_exist_stops_the_worker_at_start(
    harness: Harness, tmp_path: Path
) -> None:
    missing = tmp_path / "venv" / "bin" / "s3flow"
    harness.configure(executor="subprocess", executors={"subprocess": {"command": [str(missing)]}})
    harness.put("a.txt", b"1\n")
    with pytest.raises(ConfigError) as info:
        harness.run()
    assert str(info.value).startswith(
        f"pipeline 'p', route 'default': [pipelines.executors.subprocess] command: "
        f"'{missing}' does not exist; set it to the s3flow executable to run"
    )
    assert harness.depth() == (1, 0) and harness.depth(harness.dlq_url) == (0, 0)


class _FixAfterRetries(WorkerObserver):
    """Runs ``fix`` once the message has been retried ``n`` times."""

    def __init__(self, n: int, fix: Any) -> None:
        self.n, self.fix = n, fix
        self.retries: list[Retry] = []

    def message_settled(self, pipeline: str, message: ReceivedMessage, outcome: Outcome) -> None:
        if isinstance(outcome, Retry):
            self.retries.append(outcome)
            if len(self.retries) == self.n:
                self.fix()


def test_a_subprocess_command_that_cannot_start_is_retried_without_counting(
    harness: Harness, tmp_path: Path
) -> None:
    """The command passes the start check but its interpreter is gone (a virtualenv
    removed under the worker): the launch fails with ENOENT. Not the file's failure:
    retried more often than max_receive_count without being dead-lettered, and done once
    the interpreter is back."""
    shell = tmp_path / "venv" / "bin" / "sh"
    command = tmp_path / "s3flow-here"
    command.write_text(f'#!{shell}\nexec {sys.executable} -m s3flow "$@"\n')
    command.chmod(0o755)
    harness.configure(
        executor="subprocess",
        executors={"subprocess": {"command": [str(command)]}},
        max_receive_count=2,
        retry_base_s=1,
        retry_max_s=1,
    )
    harness.put("a.txt", b"1\n2\n")

    def fix() -> None:
        shell.parent.mkdir(parents=True)
        shell.symlink_to("/bin/sh")

    observer = _FixAfterRetries(3, fix)
    m = harness.run(observer=observer, timeout_s=60)
    p = m.pipelines["p"]
    assert p.objects_processed == 1 and p.dead_lettered == 0
    assert [r.error_class for r in observer.retries] == ["ExecutorUnavailableError"] * 3
    assert f"cannot start {str(command)!r} for s3://{harness.bucket}/a.txt" in (
        observer.retries[0].error
    )
    assert harness.result("a.txt")["lines"] == 2  # type: ignore[index]
    (rec,) = harness.records("a.txt")
    assert rec.status is FileStatus.COMPLETED and rec.failures == 0
    assert harness.depth() == (0, 0) and harness.depth(harness.dlq_url) == (0, 0)


def test_ecs_route_with_a_simulated_container_and_a_long_task(harness: Harness) -> None:
    """The example's ECS route on moto's ECS API. moto runs no container: the test plays
    it (container_sim) and holds the task RUNNING twice as long as the visibility
    timeout; the worker's heartbeat keeps the message invisible all along."""
    ecs = ecs_setup(harness.endpoint.url)
    harness.configure(
        visibility_timeout_s=4,
        routes=[{"name": "default", "executor": "ecs"}],
        executors={
            "ecs": {
                "cluster": ecs.cluster,
                "task_definition": ecs.task_definition,
                "container": ecs.container,
                "poll_interval_s": 0.2,
            }
        },
    )
    harness.put("long.txt", b"1\n2\n3\n")
    with (
        hold_ecs_tasks(harness.endpoint.url),
        EcsContainerSim(harness.endpoint.url, ecs.cluster, hold_s=8) as sim,
    ):
        m = harness.run(timeout_s=90)
    p = m.pipelines["p"]
    assert p.objects_processed == 1 and p.acked == 1
    assert p.visibility_extensions >= 2
    (task,) = sim.tasks.values()  # one task: the message never came back meanwhile
    assert harness.result("long.txt")["lines"] == 3  # type: ignore[index]
    detail = completed_detail(harness, "long.txt")
    assert detail == f"route 'default': processor line-count on ecs, {task.arn}"
    assert harness.depth() == (0, 0)


def test_the_ecs_batch_example_on_the_emulator(harness: Harness) -> None:
    """examples/routing-ecs-batch.toml's routes: processor-type=pool -> Batch, else ECS.

    The ECS object completes (container simulated). The Batch object does not: moto
    marks the job SUCCEEDED without running anything, so no result document and no
    output exist; the worker retries it and dead-letters it after max_receive_count -
    exactly what a job definition whose image does not run `s3flow run` would get.
    """
    ecs, batch = ecs_setup(harness.endpoint.url), batch_setup(harness.endpoint.url)
    harness.configure(
        routes=example_routes("routing-ecs-batch.toml"),
        max_receive_count=2,
        executors={
            "ecs": {
                "cluster": ecs.cluster,
                "task_definition": ecs.task_definition,
                "container": ecs.container,
                "poll_interval_s": 0.2,
            },
            "batch": {
                "job_queue": batch.job_queue,
                "job_definition": batch.job_definition,
                "poll_interval_s": 0.2,
            },
        },
    )
    harness.put("heavy.txt", b"1\n", Metadata={"processor-type": "pool"})
    harness.put("light.txt", b"1\n")
    with (
        batch_docker_mode(harness.endpoint.url, False),
        hold_ecs_tasks(harness.endpoint.url),
        EcsContainerSim(harness.endpoint.url, ecs.cluster),
    ):
        m = harness.run(timeout_s=90)
    p = m.pipelines["p"]
    assert p.objects_processed == 1 and p.dead_lettered == 1
    assert completed_detail(harness, "light.txt").startswith(
        "route 'default': processor line-count on ecs, arn:aws:ecs:"
    )
    (dead,) = harness.dlq_messages()
    attrs = {k: v["StringValue"] for k, v in dead["MessageAttributes"].items()}
    assert attrs["s3flow.error-class"] == "RetriesExhausted.RetryableError"
    assert "Batch job" in attrs["s3flow.error"] and "no result document" in attrs["s3flow.error"]
    assert status(harness, "heavy.txt") is FileStatus.DEAD


@pytest.mark.parametrize("executor", ["pool", "subprocess"])
def test_a_second_signal_kills_the_child_and_releases_the_message(
    harness: Harness, tmp_path: Path, executor: str
) -> None:
    marker = tmp_path / "m"
    marker.mkdir()
    harness.configure(
        processor="s3flow_testprocs:SlowProcessor",
        executor=executor,
        visibility_timeout_s=120,
        options={"sleep_s": 120.0, "marker_dir": str(marker)},
    )
    harness.settings.worker.shutdown_grace_s = 60  # type: ignore[union-attr]
    config = harness.write_config()
    harness.put("slow.txt", b"x\n")
    log = tmp_path / "worker.log"
    proc = spawn_worker(config, log)
    try:
        (started,) = wait_for(lambda: list(marker.glob("started-*")), 60, "the run started")
        child = int(started.name.split("-")[-2])
        assert child != proc.pid and pid_alive(child)
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "finishing in-flight work" in log.read_text(), 10, "first signal")
        time.sleep(0.5)
        assert proc.poll() is None  # the grace period (60 s) lets the run go on
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert time.monotonic() - t0 < 15
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not pid_alive(child), 10, f"{executor} child {child} gone")
    assert not list(marker.glob("done-*"))
    assert "released 1" in log.read_text()
    wait_for(lambda: harness.depth() == (1, 0), 10, "the message visible again")


def test_pool_runs_that_wait_for_the_child_keep_their_lease_and_run_once(
    harness: Harness, tmp_path: Path
) -> None:
    """One pool process, four objects at once, each ~2 s of a 4 s job_timeout_s: the
    last waits ~6 s for the child. Its timeout counts from when the child starts it,
    and its lease (visibility and claim) must last as long: it lapsed at the slot's
    deadline (4 s + the 4 s stop grace), the message came back, and a second delivery
    ran the object again while the first still did. Before that the waiting runs timed
    out in the pool's queue."""
    marker = tmp_path / "m"
    marker.mkdir()
    harness.configure(
        processor="s3flow_testprocs:SlowProcessor",
        executor="pool",
        executors={"pool": {"processes": 1}},
        concurrency=4,
        prefetch_messages=0,
        job_timeout_s=4,
        visibility_timeout_s=4,
        options={"sleep_s": 2.0, "marker_dir": str(marker)},
    )
    keys = [f"k{i}.txt" for i in range(4)]
    for key in keys:
        harness.put(key, b"a\n")
    m = harness.run(timeout_s=120)
    started = sorted(p.read_text() for p in marker.glob("started-*"))
    assert started == keys  # each run once
    p = m.pipelines["p"]
    assert (p.objects_processed, p.duplicates, p.retried, p.dead_lettered) == (4, 0, 0, 0)
    assert harness.depth() == (0, 0) and harness.depth(harness.dlq_url) == (0, 0)
    recs = harness.records()  # nothing left claimed or processing
    assert len(recs) == 4 and all(r.status is FileStatus.COMPLETED for r in recs), recs
