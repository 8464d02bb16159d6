"""Executors without servers: result documents, exit codes, the container state mapping."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from s3flow.errors import (
    ConfigError,
    CorruptDataError,
    Disposition,
    ExecutorUnavailableError,
    ObjectChangedError,
    ObjectMissingError,
    OutputUnavailableError,
    PermanentError,
    RetryableError,
    superseded_text,
)
from s3flow.events import ObjectEvent
from s3flow.executors.base import (
    ExecutorError,
    ObjectJob,
    error_doc,
    error_for_exit,
    error_from_doc,
    exit_code_for,
    parse_doc,
    result_doc,
    result_from_doc,
)
from s3flow.executors.batch import BatchExecutor, batch_exit, job_name
from s3flow.executors.command import SubprocessExecutor, aws_environment, check_command
from s3flow.executors.contract import job_environment, output_from_env, run_arguments
from s3flow.executors.ecs import EcsExecutor, ecs_exit
from s3flow.executors.pool import PoolExecutor
from s3flow.executors.remote import Watcher
from s3flow.processors.base import Result
from s3flow.processors.registry import default_executor, portable_spec, supported_executors
from s3flow.settings import (
    DEFAULT_CONTAINER_COMMAND,
    AwsSettings,
    BatchExecutorSettings,
    EcsExecutorSettings,
    PoolExecutorSettings,
    SubprocessExecutorSettings,
)
from s3flow.worker.verify import check_pdf_bytes


async def _until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def job(**kw: Any) -> ObjectJob:
    data: dict[str, Any] = {
        "processor": "line-count",
        "options": {"text_encoding": "utf-8"},
        "event": ObjectEvent(bucket="in", key="dir/a b.txt", version_id="v1"),
        "output": "s3://out/res/",
        "pipeline": "p",
        "route": "heavy",
        "worker_id": "w1",
        "max_uncompressed_bytes": 1000,
    }
    data.update(kw)
    return ObjectJob(**data)


# --- result documents and exit codes ----------------------------------------------------


def test_a_done_document_round_trips_to_the_result() -> None:
    result = Result(outputs=["s3://out/a.json"], counters={"lines": 3}, detail={"x": [1]})
    doc = result_doc(result, processor="line-count", source="s3://in/a", seconds=0.1234)
    assert doc["status"] == "done" and doc["seconds"] == 0.123
    back = result_from_doc(json.loads(json.dumps(doc)))
    assert back.outputs == result.outputs and back.counters == {"lines": 3}
    assert back.detail == {"x": [1]}


@pytest.mark.parametrize(
    "err",
    [
        CorruptDataError("truncated gzip"),
        ObjectMissingError("gone"),
        OutputUnavailableError("no bucket"),
        RetryableError("later"),
    ],
)
def test_an_error_document_gives_back_the_same_class_and_disposition(err: Any) -> None:
    doc = error_doc(err, processor="p", source="s3://b/k")
    back = error_from_doc(json.loads(json.dumps(doc)))
    assert type(back) is type(err)
    assert back.disposition is err.disposition and str(back) == str(err)


def test_an_unknown_error_class_keeps_its_name_and_disposition() -> None:
    back = error_from_doc(
        {"status": "error", "error_class": "StateError", "disposition": "permanent", "error": "x"}
    )
    assert isinstance(back, ExecutorError)
    assert back.error_class == "StateError" and back.disposition is Disposition.PERMANENT


def test_parse_doc_takes_the_last_result_line() -> None:
    text = 'noise\n{"status": "done", "outputs": []}\n{"not": "a result"}\n'
    assert parse_doc(text) == {"status": "done", "outputs": []}
    assert parse_doc("no json here") is None


def test_exit_codes() -> None:
    assert exit_code_for(None) == 0
    assert exit_code_for(RetryableError("x")) == 1
    assert exit_code_for(CorruptDataError("x")) == 2
    assert exit_code_for(ObjectMissingError("x")) == 2
    assert isinstance(error_for_exit(2, "task t"), PermanentError)
    for code in (0, 1, 137, None):
        err = error_for_exit(code, "task t", "why")
        assert err.disposition is Disposition.RETRYABLE and "task t" in str(err)
    assert "exited 0 but reported no result" in str(error_for_exit(0, "task t"))
    assert "without an exit code" in str(error_for_exit(None, "task t"))


# --- the one-object contract ------------------------------------------------------------


def test_the_contract_environment_tells_everything() -> None:
    env = job_environment(job(), "s3://out/.s3flow/r.json")
    assert env["SOURCE_BUCKET"] == "in" and env["OBJECT_KEY"] == "dir/a b.txt"
    assert env["DEST_BUCKET"] == "out" and env["DEST_PREFIX"] == "res/"
    assert env["S3FLOW_OUTPUT"] == "s3://out/res/"
    assert env["OBJECT_VERSION_ID"] == "v1"
    assert json.loads(env["S3FLOW_OPTIONS"]) == {"text_encoding": "utf-8"}
    assert env["S3FLOW_RESULT_URI"] == "s3://out/.s3flow/r.json"
    assert env["S3FLOW_MAX_UNCOMPRESSED_BYTES"] == "1000"
    assert output_from_env({"DEST_BUCKET": "o", "DEST_PREFIX": "x"}) == "s3://o/x/"
    assert output_from_env({"DEST_BUCKET": "o"}) == "s3://o/"
    assert output_from_env({"S3FLOW_OUTPUT": "/tmp/x", "DEST_BUCKET": "o"}) == "/tmp/x"
    assert output_from_env({}) is None
    assert "OBJECT_IF_MATCH" not in env  # a versionId names the upload


def test_a_run_elsewhere_reads_only_the_upload_its_event_names() -> None:
    """The event's eTag condition travels with the job: in the environment of a
    subprocess or container run, and a superseded run's error comes back as such."""
    event = ObjectEvent(bucket="in", key="k", etag="e1", sequencer="01", if_match="e1")
    assert job_environment(job(event=event))["OBJECT_IF_MATCH"] == "e1"
    err = error_from_doc(
        error_doc(ObjectChangedError(superseded_text("e1")), processor="p", source="s3://in/k")
    )
    assert type(err) is ObjectChangedError and err.disposition is Disposition.SKIP
    assert str(err) == superseded_text("e1")


def test_the_default_container_command_is_s3flow_run() -> None:
    assert run_arguments(DEFAULT_CONTAINER_COMMAND, job()) == [
        "run",
        "line-count",
        "s3://in/dir/a b.txt",
        "--output",
        "s3://out/res/",
    ]


def test_the_subprocess_command_line_and_environment() -> None:
    ex = SubprocessExecutor(SubprocessExecutorSettings(environment={"EXTRA": "1"}))
    argv = ex.argv(job())
    assert argv[-5:] == ["run", "line-count", "s3://in/dir/a b.txt", "--output", "s3://out/res/"]
    env = ex.environment(job(aws=AwsSettings(region="eu-west-1", endpoint_url_s3="http://x")))
    assert env["S3FLOW_AWS__REGION"] == "eu-west-1"
    assert env["S3FLOW_AWS__ENDPOINT_URL_S3"] == "http://x"
    assert env["EXTRA"] == "1" and env["SOURCE_BUCKET"] == "in"
    assert "S3FLOW_AWS__ENDPOINT_URL" not in aws_environment(AwsSettings())


def test_command_templates_only_know_three_placeholders() -> None:
    with pytest.raises(ValueError, match="unknown placeholder"):
        BatchExecutorSettings(job_queue="q", job_definition="d", command=["run", "{bucket}"])


# --- processors and executors ------------------------------------------------------------


def test_cpu_bound_processors_default_to_the_pool() -> None:
    from s3flow.pipelines.line_count import LineCountProcessor
    from s3flow.processors.base import BaseProcessor

    class Heavy(BaseProcessor):
        cpu_bound = True

    class Stateful(BaseProcessor):
        cpu_bound = True

        async def start(self, pipeline: Any) -> None:
            return None

    assert default_executor(LineCountProcessor) == "inline"
    assert default_executor(Heavy) == "pool"
    assert supported_executors(Heavy) == ("inline", "pool", "subprocess", "ecs", "batch")
    # pipeline-level state (start/stop hooks) lives in the worker: inline only
    assert supported_executors(Stateful) == ("inline",)
    assert default_executor(Stateful) == "inline"


def test_decorator_registered_processors_travel_as_import_paths() -> None:
    from s3flow.processors.base import BaseProcessor
    from s3flow.processors.registry import register_processor

    @register_processor("unit-test-only")
    class Mine(BaseProcessor):
        pass

    assert portable_spec("unit-test-only") == f"{__name__}:{Mine.__qualname__}"
    assert portable_spec("line-count") == "line-count"
    assert portable_spec("pkg.mod:Cls") == "pkg.mod:Cls"


def test_pdf_markers() -> None:
    assert check_pdf_bytes(b"%PDF-", b"...%%EOF\n", "o") is None
    assert "not a PDF" in (check_pdf_bytes(b"<html", b"%%EOF", "o") or "")
    assert "truncated PDF" in (check_pdf_bytes(b"%PDF-", b"stream...", "o") or "")


# --- container state mapping ---------------------------------------------------------------


def test_ecs_exit_of_a_stopped_task() -> None:
    task = {
        "lastStatus": "STOPPED",
        "stopCode": "EssentialContainerExited",
        "stoppedReason": "Essential container in task exited",
        "containers": [
            {"name": "sidecar", "exitCode": 0},
            {"name": "s3flow", "exitCode": 2, "reason": "bad input"},
        ],
    }
    code, reason = ecs_exit(task, "s3flow")
    assert code == 2
    assert (
        reason
        == "EssentialContainerExited; Essential container in task exited; container: bad input"
    )
    never = {
        "lastStatus": "STOPPED",
        "stopCode": "TaskFailedToStart",
        "containers": [{"name": "s3flow"}],
    }
    assert ecs_exit(never, "s3flow") == (None, "TaskFailedToStart")


def test_batch_exit_of_a_finished_job() -> None:
    assert batch_exit({"status": "SUCCEEDED"}) == (0, "")
    assert batch_exit(
        {
            "status": "FAILED",
            "statusReason": "Essential container exited",
            "container": {"exitCode": 1},
        }
    ) == (
        1,
        "Essential container exited",
    )
    from_attempt = {"status": "FAILED", "attempts": [{"container": {"exitCode": 2}}]}
    assert batch_exit(from_attempt)[0] == 2
    assert batch_exit({"status": "FAILED", "statusReason": "Host terminated"}) == (
        None,
        "Host terminated",
    )
    assert job_name("s3flow", "my pipeline", "heavy/x") == "s3flow-my-pipeline-heavy-x"
    assert len(job_name("s" * 60, "p" * 64, "r" * 64)) == 128


class _NoResultS3:
    """An S3 client without any result document."""

    async def get_object(self, **kw: Any) -> Any:
        raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "no"}}, "GetObject")


class _FakeEcs:
    """RunTask -> RUNNING; DescribeTasks answers from a script; StopTask is recorded."""

    def __init__(self, states: list[dict[str, Any]]) -> None:
        self.states = states
        self.run_args: dict[str, Any] = {}
        self.describes = 0
        self.stopped: list[tuple[str, str]] = []

    async def run_task(self, **kw: Any) -> dict[str, Any]:
        self.run_args = kw
        return {"tasks": [{"taskArn": "arn:task/1", "lastStatus": "PROVISIONING"}], "failures": []}

    async def describe_tasks(self, **kw: Any) -> dict[str, Any]:
        state = self.states[min(self.describes, len(self.states) - 1)]
        self.describes += 1
        return {"tasks": [{"taskArn": "arn:task/1", **state}]}

    async def stop_task(self, **kw: Any) -> dict[str, Any]:
        self.stopped.append((kw["task"], kw["reason"]))
        return {}


def _ecs(client: Any) -> EcsExecutor:
    ex = EcsExecutor(
        EcsExecutorSettings(
            cluster="c",
            task_definition="td",
            container="s3flow",
            poll_interval_s=0.01,
            subnets=["subnet-1"],
            security_groups=["sg-1"],
        ),
        aws=AwsSettings(),
        s3=_NoResultS3(),
        output="s3://out/res/",
        pipeline="p",
    )
    ex._service_client._client = client
    return ex


async def test_ecs_run_task_arguments_and_a_permanent_exit() -> None:
    client = _FakeEcs(
        [
            {"lastStatus": "RUNNING"},
            {"lastStatus": "STOPPED", "containers": [{"name": "s3flow", "exitCode": 2}]},
        ]
    )
    ex = _ecs(client)
    with pytest.raises(PermanentError, match=r"ECS task arn:task/1 exited 2"):
        await ex.run(job())
    args = client.run_args
    assert args["cluster"] == "c" and args["taskDefinition"] == "td"
    assert args["launchType"] == "FARGATE" and args["startedBy"] == "s3flow"
    net = args["networkConfiguration"]["awsvpcConfiguration"]
    assert net == {
        "subnets": ["subnet-1"],
        "securityGroups": ["sg-1"],
        "assignPublicIp": "DISABLED",
    }
    (override,) = args["overrides"]["containerOverrides"]
    env = {e["name"]: e["value"] for e in override["environment"]}
    assert override["name"] == "s3flow"
    assert env["SOURCE_BUCKET"] == "in" and env["OBJECT_KEY"] == "dir/a b.txt"
    assert env["S3FLOW_RESULT_URI"].startswith("s3://out/.s3flow/results/p/")
    assert override["command"] == [
        "run",
        "line-count",
        "s3://in/dir/a b.txt",
        "--output",
        "s3://out/res/",
    ]
    await ex.close()


async def test_ecs_exit_0_without_a_result_document_is_retried() -> None:
    client = _FakeEcs(
        [{"lastStatus": "STOPPED", "containers": [{"name": "s3flow", "exitCode": 0}]}]
    )
    with pytest.raises(RetryableError, match="no result document"):
        await _ecs(client).run(job())


async def test_a_cancelled_ecs_run_stops_its_task() -> None:
    client = _FakeEcs([{"lastStatus": "RUNNING"}])
    ex = _ecs(client)
    run = asyncio.create_task(ex.run(job()))
    await _until(lambda: client.describes >= 2)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert client.stopped and client.stopped[0][0] == "arn:task/1"
    await ex.close()


async def test_a_launch_that_outlasts_job_timeout_s_gives_up_and_stops_its_task() -> None:
    """RunTask stalling (the SDK retrying for minutes) was not bounded by job_timeout_s:
    the lease ended with the timeout, and a second copy of the message ran beside it."""
    answer = asyncio.Event()

    class Stalling(_FakeEcs):
        async def run_task(self, **kw: Any) -> dict[str, Any]:
            await answer.wait()
            return await super().run_task(**kw)

    client = Stalling([{"lastStatus": "RUNNING"}])
    ex = _ecs(client)
    with pytest.raises(ExecutorUnavailableError, match=r"did not answer the launch.*given up"):
        await asyncio.wait_for(ex.run(job(timeout_s=0.05)), 5)
    assert client.stopped == []  # nothing started yet
    answer.set()
    await _until(lambda: bool(client.stopped))
    assert client.stopped[0][0] == "arn:task/1"
    await ex.close()


async def test_run_task_failures_and_missing_clusters() -> None:
    class NoCapacity(_FakeEcs):
        async def run_task(self, **kw: Any) -> dict[str, Any]:
            return {"tasks": [], "failures": [{"arn": "x", "reason": "RESOURCE:MEMORY"}]}

    class NoCluster(_FakeEcs):
        async def run_task(self, **kw: Any) -> dict[str, Any]:
            raise ClientError(
                {"Error": {"Code": "ClusterNotFoundException", "Message": "Cluster not found."}},
                "RunTask",
            )

    with pytest.raises(RetryableError, match="RESOURCE:MEMORY"):
        await _ecs(NoCapacity([])).run(job())
    # the operator's problem: retried without counting a failure of the file
    with pytest.raises(ExecutorUnavailableError, match="ClusterNotFoundException"):
        await _ecs(NoCluster([])).run(job())


@pytest.mark.parametrize(
    "failures",
    [
        [{"arn": "arn:ci/1", "reason": "RESOURCE:MEMORY"}],
        [
            {"arn": "arn:ci/1", "reason": "RESOURCE:CPU"},
            {"arn": "arn:ci/2", "reason": "RESOURCE:MEMORY"},
        ],
        [{"reason": "RESOURCE:PORTS"}],
        [
            {
                "arn": "arn:task-definition/td:1",
                "reason": "Capacity is unavailable at this time. Please try again later or in a "
                "different availability zone",
            }
        ],
        [{"reason": "You've reached the limit on the number of tasks you can run concurrently"}],
    ],
)
async def test_no_room_in_the_cluster_counts_no_failure_of_the_file(
    failures: list[dict[str, Any]],
) -> None:
    """A burst larger than the cluster: RunTask starts nothing for lack of capacity. The
    cluster's problem, not the file's: retried without counting (never dead-lettered)."""

    class Full(_FakeEcs):
        async def run_task(self, **kw: Any) -> dict[str, Any]:
            return {"tasks": [], "failures": failures}

    with pytest.raises(ExecutorUnavailableError) as info:
        await _ecs(Full([])).run(job())
    message = str(info.value)
    assert "ECS RunTask on cluster c started no task" in message
    assert str(failures[0]["reason"]) in message and "no room" in message


@pytest.mark.parametrize("reason", ["MISSING", "INACTIVE", "AGENT", "ATTRIBUTE"])
async def test_a_cluster_that_cannot_place_the_task_counts_no_failure_of_the_file(
    reason: str,
) -> None:
    class Unplaceable(_FakeEcs):
        async def run_task(self, **kw: Any) -> dict[str, Any]:
            return {"tasks": [], "failures": [{"arn": "arn:ci/1", "reason": reason}]}

    with pytest.raises(ExecutorUnavailableError, match=f"{reason} .arn:ci/1.*cannot place"):
        await _ecs(Unplaceable([])).run(job())


@pytest.mark.parametrize(
    "failures",
    [
        [],  # moto's answer when an EC2 cluster has no room: no task, no reason
        [{"arn": "arn:x", "reason": "Timeout waiting for network interface provisioning"}],
        [{"reason": "RESOURCE:MEMORY"}, {"reason": "SomethingNew"}],
    ],
)
async def test_other_run_task_failures_count_as_usual(failures: list[dict[str, Any]]) -> None:
    """Unknown reasons (or none) stay counted: bounded by max_receive_count, then the DLQ."""

    class Odd(_FakeEcs):
        async def run_task(self, **kw: Any) -> dict[str, Any]:
            return {"tasks": [], "failures": failures}

    with pytest.raises(RetryableError, match="started no task") as info:
        await _ecs(Odd([])).run(job())
    assert not isinstance(info.value, ExecutorUnavailableError)
    if not failures:
        assert "no reason given" in str(info.value)


class _FakeBatch:
    def __init__(self, states: list[dict[str, Any]]) -> None:
        self.states = states
        self.submitted: dict[str, Any] = {}
        self.describes = 0
        self.terminated: list[str] = []

    async def submit_job(self, **kw: Any) -> dict[str, Any]:
        self.submitted = kw
        return {"jobId": "j-1", "jobArn": "arn:job/j-1", "jobName": kw["jobName"]}

    async def describe_jobs(self, **kw: Any) -> dict[str, Any]:
        state = self.states[min(self.describes, len(self.states) - 1)]
        self.describes += 1
        return {"jobs": [{"jobId": "j-1", **state}]}

    async def terminate_job(self, **kw: Any) -> dict[str, Any]:
        self.terminated.append(kw["jobId"])
        return {}


def _batch(client: Any) -> BatchExecutor:
    ex = BatchExecutor(
        BatchExecutorSettings(job_queue="heavy", job_definition="jd", poll_interval_s=0.01),
        aws=AwsSettings(),
        s3=_NoResultS3(),
        output="s3://out/res/",
        pipeline="p",
        job_timeout_s=30,
    )
    ex._service_client._client = client
    return ex


async def test_batch_submit_arguments_and_a_failed_job() -> None:
    client = _FakeBatch(
        [
            {"status": "RUNNABLE"},
            {
                "status": "FAILED",
                "statusReason": "Essential container exited",
                "container": {"exitCode": 1},
            },
        ]
    )
    ex = _batch(client)
    with pytest.raises(RetryableError, match=r"Batch job j-1 exited 1: Essential container exited"):
        await ex.run(job())
    args = client.submitted
    assert args["jobName"] == "s3flow-p-heavy"
    assert args["jobQueue"] == "heavy" and args["jobDefinition"] == "jd"
    assert args["timeout"] == {"attemptDurationSeconds": 60}  # Batch's minimum
    env = {e["name"]: e["value"] for e in args["containerOverrides"]["environment"]}
    assert env["DEST_BUCKET"] == "out" and env["S3FLOW_PROCESSOR"] == "line-count"


async def test_a_cancelled_batch_run_terminates_its_job() -> None:
    client = _FakeBatch([{"status": "RUNNING"}])
    ex = _batch(client)
    run = asyncio.create_task(ex.run(job()))
    await _until(lambda: client.describes >= 1)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert client.terminated == ["j-1"]


async def test_the_watcher_batches_describe_calls() -> None:
    seen: list[list[str]] = []
    final: set[str] = set()

    async def describe(ids: list[str]) -> dict[str, dict[str, Any]]:
        seen.append(list(ids))
        return {i: {"done": i in final} for i in ids}

    w = Watcher(describe, lambda d: bool(d["done"]), interval_s=0.01, what="task", batch=100)
    waits = [asyncio.create_task(w.wait(f"t{i}")) for i in range(250)]
    await _until(lambda: len(seen) >= 3)
    final.update(f"t{i}" for i in range(250))
    results = await asyncio.gather(*waits)
    assert all(r == {"done": True} for r in results)
    # 250 waiting tasks: 3 calls per tick (100 + 100 + 50), never one per task
    assert max(len(c) for c in seen) == 100
    assert len(seen) < 250


async def test_the_watcher_gives_up_on_a_task_that_never_shows_up() -> None:
    async def describe(ids: list[str]) -> dict[str, dict[str, Any]]:
        return {}

    w = Watcher(describe, lambda d: True, interval_s=0.001, what="ECS task")
    with pytest.raises(RetryableError, match="ECS task t1 is not found"):
        await w.wait("t1")


async def test_stop_on_shutdown_false_leaves_the_task_running() -> None:
    client = _FakeEcs([{"lastStatus": "RUNNING"}])
    ex = _ecs(client)
    ex.settings = ex.settings.model_copy(update={"stop_on_shutdown": False})
    run = asyncio.create_task(ex.run(job()))
    await _until(lambda: client.describes >= 1)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert client.stopped == []
    await ex.close()


async def test_a_run_cancelled_while_run_task_is_on_the_wire_stops_what_it_started() -> None:
    class SlowLaunch(_FakeEcs):
        async def run_task(self, **kw: Any) -> dict[str, Any]:
            await asyncio.sleep(0.2)
            return await super().run_task(**kw)

    client = SlowLaunch([{"lastStatus": "RUNNING"}])
    run = asyncio.create_task(_ecs(client).run(job()))
    await asyncio.sleep(0.05)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert client.stopped and client.stopped[0][0] == "arn:task/1"


async def test_pool_child_pids_names_every_child() -> None:
    """Each of the pool's processes answers, also when the first one up could take every probe."""
    pool = PoolExecutor(PoolExecutorSettings(processes=2))
    try:
        pids = await pool.child_pids()
        assert len(pids) == 2
        assert await pool.child_pids() == pids  # the same children, no new ones
    finally:
        await pool.close()


async def test_a_pool_run_cancelled_at_shutdown_leaves_no_unretrieved_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each SIGTERM with pool runs under way logged "Future exception was never
    retrieved ... BrokenProcessPool" at ERROR, once the pool was killed."""
    import gc

    monkeypatch.syspath_prepend(str(Path(__file__).parents[2] / "integration"))
    pool = PoolExecutor(PoolExecutorSettings(processes=1))
    slow = job(
        processor="s3flow_testprocs:SlowProcessor",
        options={"sleep_s": 60, "marker_dir": str(tmp_path)},
        timeout_s=120,  # the run's future is shielded against the run's cancel
    )
    run = asyncio.create_task(pool.run(slow))
    try:
        await _until(lambda: any(tmp_path.glob("started-*")), timeout_s=60)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    finally:
        await pool.close()
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0.05)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


# --- the subprocess executor's command ---------------------------------------------------


def _script(path: Path, mode: int = 0o755, body: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.write_text(body)
    path.chmod(mode)
    return path


def test_the_subprocess_command_is_checked_at_start(tmp_path: Path) -> None:
    check_command(SubprocessExecutorSettings())  # empty: this interpreter
    check_command(SubprocessExecutorSettings(command=[str(_script(tmp_path / "ok"))]))
    check_command(SubprocessExecutorSettings(command=["sh", "-c"]))  # on the PATH
    cases = {
        str(tmp_path / "nope"): "does not exist",
        str(_script(tmp_path / "plain", 0o644)): r"is not executable \(chmod \+x it\)",
        str(tmp_path): "is a directory",
        "s3flow-not-installed-anywhere": "is not an executable found on the PATH",
    }
    for program, problem in cases.items():
        with pytest.raises(ConfigError) as info:
            check_command(SubprocessExecutorSettings(command=[program, "--flag"]))
        message = str(info.value)
        assert message.startswith("[pipelines.executors.subprocess] command: ")
        assert re.search(problem, message), message
        assert "leave it empty for this worker's interpreter" in message


def test_a_bare_command_is_looked_up_on_the_processs_own_path(tmp_path: Path) -> None:
    """The process gets the executor's ``environment``: its PATH is where the name is found."""
    _script(tmp_path / "my-s3flow")
    with pytest.raises(ConfigError, match="not an executable found on the PATH"):
        check_command(SubprocessExecutorSettings(command=["my-s3flow"]))
    check_command(
        SubprocessExecutorSettings(command=["my-s3flow"], environment={"PATH": str(tmp_path)})
    )


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda d: d / "gone", "does not exist"),
        (lambda d: _script(d / "plain", 0o644), "is not executable"),
        # exists and is executable, but its interpreter is gone (a removed virtualenv)
        (lambda d: _script(d / "orphan", body=f"#!{d}/venv/bin/python\n"), "FileNotFoundError"),
    ],
)
async def test_a_command_that_cannot_start_makes_the_executor_unavailable(
    tmp_path: Path, make: Callable[[Path], Path], problem: str
) -> None:
    """Not the object's failure (none is counted): the operator's, like a missing cluster."""
    program = make(tmp_path)
    ex = SubprocessExecutor(SubprocessExecutorSettings(command=[str(program)]))
    with pytest.raises(ExecutorUnavailableError) as info:
        await ex.run(job())
    message = str(info.value)
    assert f"cannot start {str(program)!r} for s3://in/dir/a b.txt" in message
    assert problem in message and "[pipelines.executors.subprocess] command" in message
    assert info.value.disposition is Disposition.RETRYABLE
    await ex.close()


def test_a_pool_childs_death_is_told_by_its_exit_code() -> None:
    """Every death read "killed, out of memory?", an os._exit(9) too (the subprocess
    executor said "exited 9")."""
    from s3flow.executors.pool import _death

    assert _death(9) == "exited 9"
    assert _death(-15) == "killed by SIGTERM"
    assert _death(-9) == "killed, out of memory?"  # SIGKILL: what the OOM killer sends
    assert _death(None) == "ended, its exit status unread: killed, out of memory?"


async def test_a_dead_childs_exit_code_is_waited_for() -> None:
    """The pool's thread reaps a dead child a moment after it is gone: read at once, an
    os._exit(7) was told as "killed, out of memory?" (3 deaths in 7)."""
    from s3flow.executors.pool import _dying

    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()  # its pid is free: not alive

    class Reaped:
        exitcode: int | None = None

    proc = Reaped()
    asyncio.get_running_loop().call_later(0.05, setattr, proc, "exitcode", 7)
    assert await _dying({gone.pid: proc}, wait_s=5) == {gone.pid: 7}
    never = Reaped()
    assert await _dying({gone.pid: never}, wait_s=0.05) == {gone.pid: None}


async def test_a_processor_that_returns_no_result_is_a_processor_error() -> None:
    """A missing `return` in a user's process(): `s3flow run` crashed with an
    AttributeError and no JSON line, the pool said only "AssertionError:"."""
    from s3flow.errors import ProcessorError
    from s3flow.executors.base import ObjectJob
    from s3flow.executors.one import run_object
    from s3flow.processors.base import BaseProcessor, ProcessContext

    class Forgets(BaseProcessor):
        async def process(self, ctx: ProcessContext) -> Result:
            return None  # type: ignore[return-value]

    job = ObjectJob(
        processor="mine:Forgets",
        options={},
        event=ObjectEvent(bucket="in", key="a.txt"),
        output="s3://out/",
        timeout_s=10,
    )
    with pytest.raises(ProcessorError, match="returned NoneType, not a Result"):
        await run_object(Forgets({}), job, s3=None, sink=None)  # type: ignore[arg-type]


async def test_a_fenced_inline_sink_keeps_its_class_and_awaits_the_fence(tmp_path: Path) -> None:
    """The write fence wrapped the sink: a processor checking isinstance(ctx.sink,
    LocalDirSink) or reading its directory failed on every object once a store was set."""
    from s3flow.executors.base import ObjectJob
    from s3flow.executors.inline import InlineExecutor
    from s3flow.processors.base import BaseProcessor, ProcessContext, Result
    from s3flow.sinks.local import LocalDirSink

    class Checks(BaseProcessor):
        async def process(self, ctx: ProcessContext) -> Result:
            assert isinstance(ctx.sink, LocalDirSink), type(ctx.sink)
            return Result(outputs=[await ctx.sink.write("out.txt", b"x")])

    fenced: list[str] = []

    async def fence() -> None:
        fenced.append("checked")

    sink = LocalDirSink(tmp_path)
    ex = InlineExecutor(s3=None, sink=sink, processors={"mine|{}": Checks({})})
    job = ObjectJob(
        processor="mine",
        options={},
        event=ObjectEvent(bucket="in", key="a.txt"),
        output=str(tmp_path),
        timeout_s=10,
    )
    result = await ex.run(job, before_write=fence)
    assert fenced == ["checked"] and len(result.outputs) == 1
    assert sink.before_write is None  # the pipeline's own sink is left as it was
