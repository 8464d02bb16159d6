"""[pipelines.executors.*]: where a route's processor runs and each executor's settings."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from s3flow.settings.base import ProcessCount, _Model

#: Where a processor runs (see docs/routing.md): the worker's event loop, a process pool
#: on this machine, a ``s3flow run`` subprocess, an ECS task or an AWS Batch job.
ExecutorName = Literal["inline", "pool", "subprocess", "ecs", "batch"]
EXECUTOR_NAMES: tuple[str, ...] = ("inline", "pool", "subprocess", "ecs", "batch")
#: The container command that runs one object (the image's entry point is ``s3flow``);
#: ``{processor}``, ``{source}`` and ``{output}`` are filled in per object.
DEFAULT_CONTAINER_COMMAND = ["run", "{processor}", "{source}", "--output", "{output}"]
_PLACEHOLDERS = frozenset({"processor", "source", "output"})


def _check_command(v: list[str] | None) -> list[str] | None:
    """Each ``{name}`` in a command template is one of the known placeholders."""
    for arg in v or []:
        for name in re.findall(r"\{([^{}]*)\}", arg):
            if name not in _PLACEHOLDERS:
                raise ValueError(
                    f"unknown placeholder {{{name}}} in {arg!r}; use {{processor}}, "
                    "{source} or {output}"
                )
    return v


def _check_env_names(v: dict[str, str]) -> dict[str, str]:
    for name in v:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
    return v


class PoolExecutorSettings(_Model):
    """The ``pool`` executor: a process pool on this machine (one per pipeline, started on
    first use, shut down with the worker)."""

    processes: ProcessCount = Field(default=0, description="Worker processes; 0 = one per CPU.")


class SubprocessExecutorSettings(_Model):
    """The ``subprocess`` executor: one ``s3flow run PROCESSOR s3://bucket/key --output URI``
    process per object (the same one-object contract a container uses)."""

    command: list[str] = Field(
        default_factory=list,
        description=(
            "How to start s3flow, e.g. ['/opt/s3flow/bin/s3flow']; the run arguments are "
            "appended. Empty = this worker's interpreter (`python -m s3flow`)."
        ),
    )
    environment: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for the process."
    )
    kill_after_s: float = Field(
        default=5.0,
        ge=0,
        description="A cancelled process gets SIGTERM, then SIGKILL after this long.",
    )

    @field_validator("environment")
    @classmethod
    def _check_env(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_env_names(v)


def _command_field() -> Any:
    return Field(
        default_factory=lambda: list(DEFAULT_CONTAINER_COMMAND),
        description=(
            "Container command override (the image's entry point is `s3flow`); placeholders "
            "{processor}, {source}, {output}. None = the image's own command, e.g. "
            "`s3flow run text-to-pdf` (the object and output then come from SOURCE_BUCKET, "
            "OBJECT_KEY and DEST_BUCKET in the environment)."
        ),
    )


def _environment_field() -> Any:
    return Field(
        default_factory=dict,
        description="Extra environment variables (besides the one-object contract's).",
    )


def _poll_field(default: float) -> Any:
    return Field(
        default=default,
        gt=0,
        le=300,
        description="How often the worker asks for the state of its running tasks/jobs "
        "(one batched Describe call for all of them).",
    )


def _stop_field(what: str) -> Any:
    return Field(
        default=True,
        description=(
            f"When the worker stops before a {what} ends (shutdown_grace_s over, or a second "
            f"signal), stop the {what} too; false = leave it running (the released message "
            f"is delivered again and starts another {what}; outputs are overwritten, not "
            "doubled)."
        ),
    )


def _results_field() -> Any:
    return Field(
        default=None,
        description=(
            "s3:// prefix where each run writes its one-line JSON result document "
            "(S3FLOW_RESULT_URI; read and deleted by the worker). Default: "
            "s3://<output bucket>/.s3flow/results/<pipeline>/."
        ),
    )


class _ContainerChecks(_Model):
    """Checks of what ECS and Batch settings share (command, environment, results)."""

    @field_validator("command", check_fields=False)
    @classmethod
    def _check_cmd(cls, v: list[str] | None) -> list[str] | None:
        return _check_command(v)

    @field_validator("environment", check_fields=False)
    @classmethod
    def _check_env(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_env_names(v)

    @field_validator("results", check_fields=False)
    @classmethod
    def _check_results(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("s3://") and v[5:].split("/", 1)[0]):
            raise ValueError("must be an s3://bucket/prefix/ URL")
        return v


class EcsExecutorSettings(_ContainerChecks):
    """The ``ecs`` executor: one ECS task per object (RunTask with the object in the
    container's environment; the worker waits for STOPPED and maps the exit code)."""

    cluster: str = Field(description="ECS cluster name or ARN.")
    task_definition: str = Field(description="Task definition: family, family:revision or ARN.")
    container: str = Field(description="Name of the container (in the task definition) to run.")
    launch_type: Literal["FARGATE", "EC2", "EXTERNAL"] | None = Field(
        default="FARGATE",
        description="Launch type; None = the cluster's default capacity provider strategy.",
    )
    platform_version: str | None = Field(default=None, description="Fargate platform version.")
    subnets: list[str] = Field(
        default_factory=list,
        description="awsvpc subnets (required by Fargate on AWS); empty = no network config.",
    )
    security_groups: list[str] = Field(default_factory=list, description="awsvpc security groups.")
    assign_public_ip: bool = Field(
        default=False, description="Give the task a public IP (a public subnet without NAT)."
    )
    started_by: str = Field(
        default="s3flow", max_length=36, description="RunTask startedBy (find s3flow's tasks)."
    )
    command: list[str] | None = _command_field()
    environment: dict[str, str] = _environment_field()
    poll_interval_s: float = _poll_field(5.0)
    results: str | None = _results_field()
    stop_on_shutdown: bool = _stop_field("task")


class BatchExecutorSettings(_ContainerChecks):
    """The ``batch`` executor: one AWS Batch job per object (SubmitJob with the object in the
    container's environment; the worker waits for SUCCEEDED/FAILED and maps the exit code)."""

    job_queue: str = Field(description="Batch job queue name or ARN.")
    job_definition: str = Field(description="Job definition: name, name:revision or ARN.")
    job_name_prefix: str = Field(
        default="s3flow",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="Job names are '<prefix>-<pipeline>-<route>' (cut to Batch's 128 chars).",
    )
    command: list[str] | None = _command_field()
    environment: dict[str, str] = _environment_field()
    poll_interval_s: float = _poll_field(10.0)
    results: str | None = _results_field()
    stop_on_shutdown: bool = _stop_field("job")


def results_prefix(
    section: EcsExecutorSettings | BatchExecutorSettings, output: str, pipeline: str
) -> str:
    """Where the runs of ``pipeline`` on a container executor write their result documents:
    the section's ``results``, else ``s3://<output bucket>/.s3flow/results/``, then
    ``<pipeline>/``."""
    base = section.results or f"s3://{output[len('s3://') :].split('/', 1)[0]}/.s3flow/results/"
    return (base if base.endswith("/") else base + "/") + f"{pipeline}/"


def _container_section(executor: str) -> Any:
    """The optional section of a container executor: unset until a route uses it."""
    return Field(
        default=None,
        description=f"[pipelines.executors.{executor}]: needed by executor = '{executor}'.",
    )


class ExecutorsSettings(_Model):
    """Settings of each executor a pipeline's routes may use (``[pipelines.executors.*]``)."""

    pool: PoolExecutorSettings = Field(
        default_factory=PoolExecutorSettings, description="[pipelines.executors.pool]"
    )
    subprocess: SubprocessExecutorSettings = Field(
        default_factory=SubprocessExecutorSettings,
        description="[pipelines.executors.subprocess]",
    )
    ecs: EcsExecutorSettings | None = _container_section("ecs")
    batch: BatchExecutorSettings | None = _container_section("batch")
