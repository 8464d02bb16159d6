"""One contract every executor passes, against the real moto server (S3, ECS, Batch).

``inline``, ``pool`` and ``subprocess`` run for real; ``ecs`` runs against moto's ECS
API with the container simulated on this machine (:mod:`container_sim`: moto runs no
container). ``batch``: moto's Batch finishes a job the moment it is submitted and runs
nothing, so it has its own tests of the calls and the state mapping below.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from container_sim import (
    HERE,
    EcsContainerSim,
    batch_docker_mode,
    batch_setup,
    client,
    ecs_setup,
    hold_ecs_tasks,
)

from s3flow.aws import open_clients, pin_endpoints
from s3flow.errors import Disposition, JobTimeoutError, S3flowError
from s3flow.events import ObjectEvent
from s3flow.executors import ExecutorSet
from s3flow.executors.base import ObjectJob
from s3flow.local.endpoint import LocalEndpoint, pid_alive
from s3flow.settings import AwsSettings, PipelineSettings, WorkerSettings
from s3flow.sinks import open_sink

pytestmark = pytest.mark.integration

EXECUTORS = ["inline", "pool", "subprocess", "ecs"]


class World:
    """Buckets, an object or two, and a pipeline whose executors are all configured."""

    def __init__(self, endpoint: LocalEndpoint, s3: Any, tmp_path: Path) -> None:
        n = uuid.uuid4().hex[:8]
        self.endpoint = endpoint
        self.s3 = s3
        self.bucket, self.out = f"ex-in-{n}", f"ex-out-{n}"
        s3.create_bucket(Bucket=self.bucket)
        s3.create_bucket(Bucket=self.out)
        self.tmp_path = tmp_path
        self.ecs = ecs_setup(endpoint.url)
        self.batch = batch_setup(endpoint.url)
        self.settings = PipelineSettings(
            name="ex",
            bucket=self.bucket,
            queue="unused",
            output=f"s3://{self.out}/res/",
            executors={
                "pool": {"processes": 1},
                "subprocess": {"environment": {"PYTHONPATH": str(HERE)}, "kill_after_s": 2},
                "ecs": {
                    "cluster": self.ecs.cluster,
                    "task_definition": self.ecs.task_definition,
                    "container": self.ecs.container,
                    "poll_interval_s": 0.2,
                },
                "batch": {
                    "job_queue": self.batch.job_queue,
                    "job_definition": self.batch.job_definition,
                    "poll_interval_s": 0.2,
                },
            },
        )

    def put(self, key: str, body: bytes) -> ObjectEvent:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        return ObjectEvent(bucket=self.bucket, key=key, size=len(body))

    def job(self, event: ObjectEvent, processor: str = "line-count", **options: Any) -> ObjectJob:
        return ObjectJob(
            processor=processor,
            options=options,
            event=event,
            output=self.settings.output,
            aws=pin_endpoints(AwsSettings()),
            pipeline="ex",
            route="r1",
            worker_id="test-worker",
        )

    def output(self, key: str) -> bytes | None:
        try:
            return bytes(self.s3.get_object(Bucket=self.out, Key=key)["Body"].read())
        except self.s3.exceptions.NoSuchKey:
            return None


@pytest.fixture()
def world(endpoint: LocalEndpoint, s3: Any, tmp_path: Path) -> World:
    return World(endpoint, s3, tmp_path)


@pytest.fixture()
def ecs_sim(world: World) -> Iterator[EcsContainerSim]:
    with (
        hold_ecs_tasks(world.endpoint.url),
        EcsContainerSim(world.endpoint.url, world.ecs.cluster) as sim,
    ):
        yield sim


@contextlib.asynccontextmanager
async def executors_for(world: World) -> AsyncIterator[ExecutorSet]:
    async with open_clients(AwsSettings()) as clients:
        sink = open_sink(world.settings.output, clients.s3)
        async with ExecutorSet(
            world.settings,
            s3=clients.s3,
            sink=sink,
            aws=pin_endpoints(clients.aws),
            worker=WorkerSettings(),
        ) as ex:
            yield ex


async def run_on(world: World, name: str, job: ObjectJob) -> Any:
    async with executors_for(world) as ex:
        return await ex.run(name, job)


def contract(request: pytest.FixtureRequest, name: str) -> None:
    if name == "ecs":
        request.getfixturevalue("ecs_sim")


@pytest.mark.parametrize("name", EXECUTORS)
def test_a_run_returns_the_processors_result(
    world: World, name: str, request: pytest.FixtureRequest
) -> None:
    contract(request, name)
    event = world.put("dir/a b+c.txt", b"one\ntwo\nthree\n")
    result = asyncio.run(run_on(world, name, world.job(event)))
    assert result.outputs == [f"s3://{world.out}/res/dir/a b+c.txt.json"]
    assert result.counters["lines"] == 3
    assert b'"lines": 3' in (world.output("res/dir/a b+c.txt.json") or b"")
    if name == "ecs":
        assert result.detail["task_arn"].startswith("arn:aws:ecs:")


@pytest.mark.parametrize("name", EXECUTORS)
def test_where_it_runs(world: World, name: str, request: pytest.FixtureRequest) -> None:
    contract(request, name)
    event = world.put("pid.txt", b"x\n")
    result = asyncio.run(run_on(world, name, world.job(event, "s3flow_testprocs:PidLineCount")))
    in_this_process = result.detail["pid"] == os.getpid()
    assert in_this_process is (name == "inline")


@pytest.mark.parametrize("name", EXECUTORS)
def test_a_permanent_error_keeps_its_class(
    world: World, name: str, request: pytest.FixtureRequest
) -> None:
    contract(request, name)
    event = world.put("bad.txt", b"ok\n\xff\xfe broken")
    with pytest.raises(S3flowError) as info:
        asyncio.run(run_on(world, name, world.job(event, text_encoding="utf-8")))
    assert info.value.error_class == "UndecodableContentError"
    assert info.value.disposition is Disposition.PERMANENT
    assert "at byte 3" in str(info.value)


@pytest.mark.parametrize("name", EXECUTORS)
def test_a_processor_bug_is_retryable(
    world: World, name: str, request: pytest.FixtureRequest
) -> None:
    contract(request, name)
    event = world.put("boom.txt", b"x\n")
    with pytest.raises(S3flowError) as info:
        asyncio.run(run_on(world, name, world.job(event, "s3flow_testprocs:AlwaysFails")))
    assert info.value.disposition is Disposition.RETRYABLE
    assert "simulated processor bug" in str(info.value)


@pytest.mark.parametrize("name", EXECUTORS)
def test_a_vanished_object_is_skipped(
    world: World, name: str, request: pytest.FixtureRequest
) -> None:
    contract(request, name)
    event = ObjectEvent(bucket=world.bucket, key="never-written.txt", size=3)
    with pytest.raises(S3flowError) as info:
        asyncio.run(run_on(world, name, world.job(event)))
    assert info.value.disposition is Disposition.SKIP


@pytest.mark.parametrize("name", ["pool", "subprocess", "ecs"])
def test_a_cancelled_run_stops_where_it_runs(
    world: World, name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    contract(request, name)
    marker = tmp_path / "m"
    marker.mkdir()
    event = world.put("slow.txt", b"x\n")
    job = world.job(event, "s3flow_testprocs:SlowProcessor", sleep_s=60, marker_dir=str(marker))

    async def go() -> float:
        async with executors_for(world) as ex:
            run = asyncio.create_task(ex.run(name, job))
            for _ in range(600):
                if list(marker.glob("started-*")):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the run never started")
            t0 = time.monotonic()
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
            return time.monotonic() - t0

    elapsed = asyncio.run(go())
    assert elapsed < 10
    stopped_where_it_ran(world, name, request, marker, "s3flow worker stopped")


def stopped_where_it_ran(
    world: World, name: str, request: pytest.FixtureRequest, marker: Path, reason: str
) -> None:
    """The run started, then its process is gone (inline has none) without finishing;
    an ECS task was stopped by the worker, with ``reason`` in its stoppedReason."""
    (started,) = marker.glob("started-*")  # it ran: stopped, not refused
    pid = int(started.name.split("-")[-2])
    if name != "inline":
        for _ in range(100):
            if not pid_alive(pid):
                break
            time.sleep(0.1)
        assert not pid_alive(pid), f"{name}: process {pid} still runs after it was stopped"
    assert not list(marker.glob("done-*"))
    if name == "ecs":
        sim: EcsContainerSim = request.getfixturevalue("ecs_sim")
        (task,) = sim.tasks.values()
        assert task.stopped_by_worker
        desc = client(world.endpoint.url, "ecs").describe_tasks(
            cluster=world.ecs.cluster, tasks=[task.arn]
        )["tasks"][0]
        assert desc["lastStatus"] == "STOPPED"
        assert reason in desc["stoppedReason"]


@pytest.mark.parametrize("name", EXECUTORS)
def test_a_run_past_its_timeout_is_stopped_where_it_runs(
    world: World, name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The job's ``timeout_s`` (what is left of ``job_timeout_s``): the run is stopped
    where it runs (an ECS task too with ``stop_on_shutdown = false``) and fails with a
    retryable JobTimeoutError that says what to change."""
    contract(request, name)
    if name == "ecs":
        assert world.settings.executors.ecs is not None
        world.settings.executors.ecs.stop_on_shutdown = False
    marker = tmp_path / "m"
    marker.mkdir()
    event = world.put("hangs.txt", b"x\n")
    job = replace(
        world.job(event, "s3flow_testprocs:SlowProcessor", sleep_s=120, marker_dir=str(marker)),
        timeout_s=8.0,  # room for a child's or container's start-up on a busy machine
    )
    t0 = time.monotonic()
    with pytest.raises(JobTimeoutError) as info:
        asyncio.run(run_on(world, name, job))
    elapsed = time.monotonic() - t0
    err = info.value
    assert err.disposition is Disposition.RETRYABLE and err.error_class == "JobTimeoutError"
    assert "hangs.txt" in str(err) and "job_timeout_s" in str(err) and "'ex'" in str(err)
    assert 8 <= elapsed < 40, elapsed
    stopped_where_it_ran(world, name, request, marker, "job_timeout_s")


def test_the_pool_runs_the_next_object_after_a_timeout(world: World, tmp_path: Path) -> None:
    """The timed-out run's child is killed, and the pool started afresh at once: the
    next object is not failed by the broken pool."""
    marker = tmp_path / "m"
    marker.mkdir()
    slow = world.put("hangs.txt", b"x\n")
    quick = world.put("next.txt", b"1\n2\n")
    hang = replace(
        world.job(slow, "s3flow_testprocs:SlowProcessor", sleep_s=120, marker_dir=str(marker)),
        timeout_s=8.0,
    )

    async def go() -> Any:
        async with executors_for(world) as ex:
            with pytest.raises(JobTimeoutError):
                await ex.run("pool", hang)
            return await ex.run("pool", world.job(quick))

    result = asyncio.run(go())
    assert result.counters["lines"] == 2


def test_ecs_run_task_carries_the_one_object_contract(
    world: World, ecs_sim: EcsContainerSim
) -> None:
    event = world.put("in/x.txt", b"1\n")
    asyncio.run(run_on(world, "ecs", world.job(event)))
    (task,) = ecs_sim.tasks.values()
    env = task.environment
    assert env["SOURCE_BUCKET"] == world.bucket and env["OBJECT_KEY"] == "in/x.txt"
    assert env["DEST_BUCKET"] == world.out and env["DEST_PREFIX"] == "res/"
    assert env["S3FLOW_PIPELINE"] == "ex" and env["S3FLOW_ROUTE"] == "r1"
    assert task.command == [
        "run",
        "line-count",
        f"s3://{world.bucket}/in/x.txt",
        "--output",
        f"s3://{world.out}/res/",
    ]
    assert task.exit_code == 0
    # the result document was read and deleted
    left = world.s3.list_objects_v2(Bucket=world.out, Prefix=".s3flow/")
    assert left.get("KeyCount", 0) == 0


# --- Batch: the calls and the state mapping (moto runs no job) --------------------------


def test_batch_submit_job_and_a_job_that_succeeded_without_running(world: World) -> None:
    """moto's simple Batch marks every job SUCCEEDED at once and runs nothing: the
    worker sees no result document and retries (on AWS the container writes it)."""
    event = world.put("b/x.txt", b"1\n")
    with batch_docker_mode(world.endpoint.url, False), pytest.raises(S3flowError) as info:
        asyncio.run(run_on(world, "batch", world.job(event)))
    err = info.value
    assert err.disposition is Disposition.RETRYABLE
    assert "Batch job" in str(err) and "no result document" in str(err)
    batch = client(world.endpoint.url, "batch")
    jobs = batch.list_jobs(jobQueue=world.batch.job_queue, jobStatus="SUCCEEDED")["jobSummaryList"]
    (summary,) = jobs
    assert summary["jobName"] == "s3flow-ex-r1"
    (job,) = batch.describe_jobs(jobs=[summary["jobId"]])["jobs"]
    env = {e["name"]: e["value"] for e in job["container"]["environment"]}
    assert env["SOURCE_BUCKET"] == world.bucket and env["OBJECT_KEY"] == "b/x.txt"
    assert env["S3FLOW_PROCESSOR"] == "line-count"
    assert env["S3FLOW_RESULT_URI"].startswith(f"s3://{world.out}/.s3flow/results/ex/")
    assert job["container"]["command"] == [
        "run",
        "line-count",
        f"s3://{world.bucket}/b/x.txt",
        "--output",
        f"s3://{world.out}/res/",
    ]


def test_batch_failed_job_is_retryable_with_its_id(world: World) -> None:
    """moto in Docker mode without Docker: the job FAILS without an exit code."""
    event = world.put("b/y.txt", b"1\n")
    with batch_docker_mode(world.endpoint.url, True), pytest.raises(S3flowError) as info:
        asyncio.run(run_on(world, "batch", world.job(event)))
    assert info.value.disposition is Disposition.RETRYABLE
    assert "ended without an exit code" in str(info.value)


def test_batch_result_document_settles_the_job(world: World) -> None:
    """What a real container does, done by hand: the result document it writes wins."""
    event = world.put("b/z.txt", b"1\n")

    async def go() -> Any:
        async with executors_for(world) as ex:
            batch = ex.get("batch")
            real_launch = batch._launch  # type: ignore[attr-defined]

            async def launch_and_run(
                client_: Any, job: ObjectJob, env: dict[str, str], cmd: Any
            ) -> Any:
                # the container's part, before the emulator's "SUCCEEDED" is seen
                import subprocess
                import sys

                child_env = {**os.environ, **env, "PYTHONPATH": str(HERE)}
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "s3flow",
                    *cmd,
                    env=child_env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                await proc.wait()
                return await real_launch(client_, job, env, cmd)

            batch._launch = launch_and_run  # type: ignore[attr-defined]
            return await batch.run(world.job(event))

    with batch_docker_mode(world.endpoint.url, False):
        result = asyncio.run(go())
    assert result.outputs == [f"s3://{world.out}/res/b/z.txt.json"]
    assert result.detail["job_arn"].startswith("arn:aws:batch:")


def test_subprocess_sigterm_is_a_clean_cancellation(world: World, tmp_path: Path) -> None:
    """`s3flow run` turns SIGTERM into a cancelled run: exit 1 with its JSON line."""
    import subprocess
    import sys

    marker = tmp_path / "m"
    marker.mkdir()
    world.put("t.txt", b"x\n")
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "s3flow",
            "run",
            "s3flow_testprocs:SlowProcessor",
            f"s3://{world.bucket}/t.txt",
            "--output",
            f"s3://{world.out}/res/",
            "--options",
            f'{{"sleep_s": 60, "marker_dir": "{marker}"}}',
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for _ in range(300):
        if list(marker.glob("started-*")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert '"disposition":"retryable"' in out and "cancelled" in out


def test_a_pool_runs_timeout_counts_from_when_a_child_starts_it(
    world: World, tmp_path: Path
) -> None:
    """One pool process, two runs of ~3 s each with 5 s left of ``job_timeout_s``: the
    second waits ~3 s for the child, then runs 3 s. Its time used to count from the
    submission, so it timed out (and was dead-lettered) having run 2 s of its 5."""
    marker = tmp_path / "m"
    marker.mkdir()
    jobs = [
        replace(
            world.job(
                world.put(f"slow{i}.txt", b"x\n"),
                "s3flow_testprocs:SlowProcessor",
                sleep_s=3.0,
                marker_dir=str(marker),
            ),
            timeout_s=5.0,
        )
        for i in range(2)
    ]

    async def go() -> list[Any]:
        async with executors_for(world) as ex:
            await ex.run("pool", world.job(world.put("warm.txt", b"1\n")))  # a child is up
            return await asyncio.gather(*(ex.run("pool", j) for j in jobs))

    results = asyncio.run(go())
    assert len(results) == 2
    assert sorted(p.read_text() for p in marker.glob("done-*")) == ["slow0.txt", "slow1.txt"]
