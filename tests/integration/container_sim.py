"""ECS and Batch on the emulator (moto server), and what the emulator does not do.

moto implements the ECS and Batch *APIs* (RunTask, DescribeTasks, StopTask, SubmitJob,
DescribeJobs, TerminateJob) but runs no container:

* an ECS task starts RUNNING and moves one state further on every DescribeTasks
  (RUNNING -> DEACTIVATING -> STOPPING -> DEPROVISIONING -> STOPPED); its container's
  ``exitCode`` is always 0. :func:`hold_ecs_tasks` makes tasks stay RUNNING until
  StopTask (moto's state-manager API), and :class:`EcsContainerSim` plays the container
  runtime: for every RUNNING task it runs the task's container command (``s3flow run
  ...``) with the task's environment overrides on this machine, then stops the task
  with StopTask - the exit code cannot be set on the emulator, so what the run reports
  travels in its result document, as it does on AWS;
* a Batch job is SUCCEEDED the moment it is submitted (moto's simple mode, no Docker) or
  FAILED (Docker mode without Docker), never with an exit code, and nothing runs.

Fargate's ``awsvpc`` networking is not usable on moto 5.2.5 (RunTask fails with a 500),
so the task definitions here have no network mode and RunTask gets no subnets.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

HERE = Path(__file__).parent


def moto_api(endpoint_url: str, path: str, body: dict[str, Any]) -> None:
    """POST to moto's own API (``/moto-api/...``)."""
    req = urllib.request.Request(
        f"{endpoint_url}/moto-api/{path}", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


@contextlib.contextmanager
def hold_ecs_tasks(endpoint_url: str) -> Iterator[None]:
    """ECS tasks stay RUNNING however often they are described, until StopTask."""
    moto_api(
        endpoint_url,
        "state-manager/set-transition",
        {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**9}},
    )
    try:
        yield
    finally:
        moto_api(endpoint_url, "state-manager/unset-transition", {"model_name": "ecs::task"})


@contextlib.contextmanager
def batch_docker_mode(endpoint_url: str, use_docker: bool) -> Iterator[None]:
    """moto's Batch: simple mode (jobs SUCCEEDED at once) or Docker mode (FAILED here)."""
    moto_api(endpoint_url, "config", {"batch": {"use_docker": use_docker}})
    try:
        yield
    finally:
        moto_api(endpoint_url, "config", {"batch": {"use_docker": False}})


def client(endpoint_url: str, service: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint_url, region_name="us-east-1")


@dataclass
class EcsSetup:
    cluster: str
    task_definition: str
    container: str = "s3flow"


def ecs_setup(endpoint_url: str) -> EcsSetup:
    """A cluster and a task definition whose container is the s3flow image."""
    ecs = client(endpoint_url, "ecs")
    name = f"c-{uuid.uuid4().hex[:8]}"
    ecs.create_cluster(clusterName=name)
    ecs.register_task_definition(
        family=name,
        containerDefinitions=[
            # moto needs a memory per container to place the task
            {"name": "s3flow", "image": "s3flow:latest", "essential": True, "memory": 512}
        ],
    )
    return EcsSetup(cluster=name, task_definition=name)


@dataclass
class BatchSetup:
    job_queue: str
    job_definition: str


def batch_setup(endpoint_url: str) -> BatchSetup:
    """A compute environment, a job queue and a job definition."""
    batch, iam = client(endpoint_url, "batch"), client(endpoint_url, "iam")
    n = uuid.uuid4().hex[:8]
    role = iam.create_role(RoleName=f"batch-{n}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    env = batch.create_compute_environment(
        computeEnvironmentName=f"ce-{n}", type="UNMANAGED", state="ENABLED", serviceRole=role
    )
    batch.create_job_queue(
        jobQueueName=f"queue-{n}",
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env["computeEnvironmentArn"]}],
    )
    batch.register_job_definition(
        jobDefinitionName=f"def-{n}",
        type="container",
        containerProperties={"image": "s3flow:latest", "vcpus": 1, "memory": 512},
    )
    return BatchSetup(job_queue=f"queue-{n}", job_definition=f"def-{n}")


@dataclass
class SimulatedTask:
    arn: str
    environment: dict[str, str]
    command: list[str]
    exit_code: int | None = None
    stopped_by_worker: bool = False
    stdout: str = ""
    log: list[str] = field(default_factory=list)


class EcsContainerSim:
    """Plays the container runtime moto lacks, for the tasks of one cluster.

    Each RUNNING task's container command runs here as ``python -m s3flow <command>``
    with the task's environment overrides (the emulator's endpoint comes from this
    process's environment, as a task role and region would on AWS). When the process
    ends, the task is stopped with StopTask after ``hold_s``; when the worker stops the
    task first (StopTask: desiredStatus STOPPED), the process gets SIGTERM.
    """

    def __init__(self, endpoint_url: str, cluster: str, *, hold_s: float = 0.0) -> None:
        self.endpoint_url = endpoint_url
        self.cluster = cluster
        self.hold_s = hold_s
        self.tasks: dict[str, SimulatedTask] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __enter__(self) -> EcsContainerSim:
        t = threading.Thread(target=self._poll, name="ecs-sim", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in list(self._threads):
            t.join(timeout=30)

    def _poll(self) -> None:
        ecs = client(self.endpoint_url, "ecs")
        while not self._stop.is_set():
            arns = ecs.list_tasks(cluster=self.cluster, desiredStatus="RUNNING")["taskArns"]
            for arn in arns:
                with self._lock:
                    if arn in self.tasks:
                        continue
                    self.tasks[arn] = SimulatedTask(arn, {}, [])
                t = threading.Thread(target=self._run_task, args=(arn,), daemon=True)
                t.start()
                self._threads.append(t)
            self._stop.wait(0.1)

    def _run_task(self, arn: str) -> None:
        ecs = client(self.endpoint_url, "ecs")
        task = ecs.describe_tasks(cluster=self.cluster, tasks=[arn])["tasks"][0]
        (override,) = task["overrides"]["containerOverrides"]
        env = {e["name"]: e["value"] for e in override.get("environment", [])}
        command = list(override.get("command") or [])
        sim = self.tasks[arn]
        sim.environment, sim.command = env, command
        child_env = dict(os.environ)
        child_env.update(env)
        child_env["PYTHONPATH"] = os.pathsep.join([str(HERE), child_env.get("PYTHONPATH", "")])
        proc = subprocess.Popen(
            [sys.executable, "-m", "s3flow", *command],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        while proc.poll() is None:
            desc = ecs.describe_tasks(cluster=self.cluster, tasks=[arn])["tasks"][0]
            if desc.get("desiredStatus") == "STOPPED":
                sim.stopped_by_worker = True
                proc.terminate()
                break
            time.sleep(0.1)
        out, _ = proc.communicate(timeout=60)
        sim.exit_code, sim.stdout = proc.returncode, out
        if not sim.stopped_by_worker:
            deadline = time.monotonic() + self.hold_s
            while time.monotonic() < deadline and not self._stop.is_set():
                time.sleep(0.05)
            ecs.stop_task(
                cluster=self.cluster,
                task=arn,
                reason=f"Essential container in task exited (simulated, exit {proc.returncode})",
            )
