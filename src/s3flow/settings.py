"""The one validated settings object.

Sources, highest priority first: explicit overrides (CLI flags), ``S3FLOW_*``
environment variables (nested with ``__``, e.g. ``S3FLOW_AWS__REGION``), the
TOML file (``-c s3flow.toml`` or ``S3FLOW_CONFIG``), defaults. Unknown keys are
errors that name the key. The field descriptions drive ``docs/configuration.md``
and the CLI help (``s3flow config-reference``).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from s3flow.errors import ConfigError


def check_regex(v: str) -> str:
    """A validator: ``v`` if it compiles as a Python regular expression."""
    try:
        re.compile(v)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc
    return v


CONFIG_ENV = "S3FLOW_CONFIG"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# SQS queue names: 1-80 chars, alphanumerics, hyphens, underscores (+ ".fifo").
_QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}(\.fifo)?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AwsSettings(_Model):
    """Where and how to reach AWS (or any S3/SQS-compatible endpoint)."""

    region: str = Field(
        default_factory=lambda: (
            os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        ),
        description="AWS region. Defaults to AWS_REGION / AWS_DEFAULT_REGION, else us-east-1.",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="Endpoint for every service. When unset the SDK honours AWS_ENDPOINT_URL.",
    )
    endpoint_url_s3: str | None = Field(
        default=None, description="S3 endpoint; overrides endpoint_url and AWS_ENDPOINT_URL_S3."
    )
    endpoint_url_sqs: str | None = Field(
        default=None, description="SQS endpoint; overrides endpoint_url and AWS_ENDPOINT_URL_SQS."
    )
    profile: str | None = Field(default=None, description="Named profile from ~/.aws/config.")
    max_attempts: int = Field(
        default=5,
        ge=1,
        le=20,
        description=(
            "SDK retries per call after the first attempt (botocore's retries.max_attempts, "
            "standard retry mode): a call is tried at most max_attempts + 1 times."
        ),
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP connect timeout.")
    read_timeout_s: float = Field(
        default=60.0, gt=0, description="Socket read timeout (must exceed wait_time_s)."
    )
    max_pool_connections: int = Field(
        default=0,
        ge=0,
        description="HTTP connections per client; 0 = sized from the pipelines' concurrency.",
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        description="S3 addressing style; 'auto' uses path style for custom endpoints.",
    )


class ValidationSettings(_Model):
    """Per-pipeline checks made before an object is processed; failures are quarantined."""

    min_bytes: int = Field(default=0, ge=0, description="Smallest acceptable object size.")
    max_bytes: int | None = Field(
        default=None, ge=0, description="Largest acceptable object size (None = no limit)."
    )
    suffixes: list[str] = Field(
        default_factory=list, description="Allowed key suffixes (empty = any), e.g. ['.ndjson']."
    )
    content_types: list[str] = Field(
        default_factory=list,
        description="Allowed Content-Type values (empty = any), e.g. ['text/plain'].",
    )
    key_pattern: str | None = Field(
        default=None, description="Regular expression every key must match (re.search)."
    )

    @field_validator("key_pattern")
    @classmethod
    def _check_pattern(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return v

    @model_validator(mode="after")
    def _check_range(self) -> ValidationSettings:
        if self.max_bytes is not None and self.max_bytes < self.min_bytes:
            raise ValueError("max_bytes must be >= min_bytes")
        return self

    @property
    def active(self) -> bool:
        """Whether any rule is set."""
        return bool(
            self.min_bytes
            or self.max_bytes is not None
            or self.suffixes
            or self.content_types
            or self.key_pattern
        )


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

    processes: int = Field(
        default=0, ge=0, le=256, description="Worker processes; 0 = one per CPU."
    )


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


class ExecutorsSettings(_Model):
    """Settings of each executor a pipeline's routes may use (``[pipelines.executors.*]``)."""

    pool: PoolExecutorSettings = Field(
        default_factory=PoolExecutorSettings, description="[pipelines.executors.pool]"
    )
    subprocess: SubprocessExecutorSettings = Field(
        default_factory=SubprocessExecutorSettings,
        description="[pipelines.executors.subprocess]",
    )
    ecs: EcsExecutorSettings | None = Field(
        default=None, description="[pipelines.executors.ecs]: needed by executor = 'ecs'."
    )
    batch: BatchExecutorSettings | None = Field(
        default=None, description="[pipelines.executors.batch]: needed by executor = 'batch'."
    )


class RouteSettings(_Model):
    """One routing rule of a pipeline (``[[pipelines.routes]]``): what it matches and where
    matching objects go. Rules are tried in order, the first match wins; a rule without
    match keys is the default (it must be last). No match: the object is quarantined."""

    name: str | None = Field(
        default=None,
        description="Shown in the file's history and the result; default 'default' for the "
        "default rule, else 'route-<n>' (n from 1).",
    )
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "User metadata to match (x-amz-meta-*; names case-insensitive, with or without the "
            "prefix), e.g. {'processor-type' = 'pool'}. Values match exactly, or as a glob "
            "(*, ?, [...]). Needs a HEAD of the object."
        ),
    )
    key_glob: str | None = Field(
        default=None, description="Glob the whole key must match ('*' also matches '/')."
    )
    key_regex: str | None = Field(
        default=None, description="Regular expression the key must match (re.search)."
    )
    min_bytes: int | None = Field(default=None, ge=0, description="Smallest size (inclusive).")
    max_bytes: int | None = Field(default=None, ge=0, description="Largest size (inclusive).")
    content_type: str | None = Field(
        default=None,
        description="Content-Type glob, e.g. 'text/*' (parameters ignored, case-insensitive). "
        "Needs a HEAD.",
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="Object tags to match (values exact or glob). Needs GetObjectTagging.",
    )
    processor: str | None = Field(
        default=None, description="Processor for matching objects; None = the pipeline's."
    )
    executor: ExecutorName | None = Field(
        default=None,
        description="Where it runs; None = the pipeline's executor setting.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Processor options: merged over the pipeline's [pipelines.options] when the route "
            "runs the pipeline's processor; a route naming another processor gets only these."
        ),
    )

    @field_validator("key_regex")
    @classmethod
    def _check_regex(cls, v: str | None) -> str | None:
        return None if v is None else check_regex(v)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME_RE.match(v):
            raise ValueError("use 1-64 letters, digits, '_', '-' or '.'")
        return v

    @model_validator(mode="after")
    def _check_range(self) -> RouteSettings:
        if (
            self.min_bytes is not None
            and self.max_bytes is not None
            and self.max_bytes < self.min_bytes
        ):
            raise ValueError("max_bytes must be >= min_bytes")
        return self

    @property
    def is_default(self) -> bool:
        """Whether this rule has no match keys (it takes every object that reaches it)."""
        return not (
            self.metadata
            or self.key_glob
            or self.key_regex
            or self.min_bytes is not None
            or self.max_bytes is not None
            or self.content_type
            or self.tags
        )


class PipelineSettings(_Model):
    """One pipeline: a queue of S3 notifications, a filter, a processor and an output."""

    name: str = Field(description="Unique pipeline name (letters, digits, '_', '-', '.').")
    processor: str = Field(
        default="line-count",
        description="Processor name (built-in or entry point) or 'module:attribute' path.",
    )
    bucket: str = Field(description="Source bucket whose ObjectCreated events feed the queue.")
    prefix: str = Field(default="", description="Only keys starting with this prefix.")
    suffix: str = Field(default="", description="Only keys ending with this suffix.")
    key_regex: str | None = Field(
        default=None, description="Only keys matching this regular expression (re.search)."
    )
    queue: str = Field(description="SQS queue name or URL that receives the notifications.")
    dlq: str | None = Field(
        default=None, description="Dead-letter queue name or URL. Default: '<queue>-dlq'."
    )
    output: str = Field(
        description="Where results go: 's3://bucket/prefix/' or a local directory path."
    )
    concurrency: int = Field(
        default=16, ge=1, le=1000, description="Objects processed at once by this pipeline."
    )
    visibility_timeout_s: int = Field(
        default=60,
        ge=1,
        le=43200,
        description="Queue visibility timeout; the worker heartbeats at about half of it.",
    )
    wait_time_s: int = Field(default=20, ge=0, le=20, description="Long-poll wait per receive.")
    max_receive_count: int = Field(
        default=3,
        ge=1,
        le=1000,
        description=(
            "Failed attempts of an object before the worker dead-letters it with the reason. "
            "Counted in the state store (a crash or a claim held elsewhere spends nothing); "
            "without a store, the message's receive count."
        ),
    )
    queue_max_receive_count: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description=(
            "maxReceiveCount of the queue's redrive policy: a safety net for messages that "
            "kill the worker itself, kept above max_receive_count so crashes never move a "
            "good file to the DLQ. None = max_receive_count + 10."
        ),
    )
    max_uncompressed_bytes: int = Field(
        default=4 * 1024**3,
        ge=1,
        description=(
            "Largest decompressed size of one compressed object (gzip, zstd, bz2); beyond it "
            "the object fails permanently with the reason (a decompression bomb)."
        ),
    )
    retry_base_s: float = Field(
        default=2.0, ge=0, description="First retry delay; doubles per receive (with jitter)."
    )
    retry_max_s: float = Field(
        default=900.0, ge=0, le=43200, description="Upper bound of a retry delay."
    )
    job_timeout_s: int = Field(
        default=3600,
        ge=1,
        le=43200,
        description="Longest an object may be worked on; the heartbeat stops extending after it.",
    )
    ignore_removed: bool = Field(
        default=True, description="Acknowledge ObjectRemoved:* events without work."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Processor-specific options (a TOML table)."
    )
    validation: ValidationSettings = Field(
        default_factory=ValidationSettings,
        description="Checks before processing ([pipelines.validation]); failures are quarantined.",
    )
    on_permanent_error: Literal["dead-letter", "quarantine"] = Field(
        default="dead-letter",
        description=(
            "Unreadable content (corrupt compression, undecodable text): send the message to "
            "the DLQ, or quarantine the object (tag + state record) and ack."
        ),
    )
    executor: ExecutorName | None = Field(
        default=None,
        description=(
            "Where the processor runs: inline (the worker's event loop), pool (a process "
            "pool on this machine), subprocess (`s3flow run`), ecs or batch. None = pool for "
            "CPU-bound processors (cpu_bound = True), else inline. See docs/routing.md."
        ),
    )
    executors: ExecutorsSettings = Field(
        default_factory=ExecutorsSettings,
        description="Executor settings ([pipelines.executors.pool|subprocess|ecs|batch]).",
    )
    routes: list[RouteSettings] = Field(
        default_factory=list,
        description=(
            "Routing rules ([[pipelines.routes]]): by metadata, key, size, content type or "
            "tags to a processor + executor; first match wins; no match = quarantined. "
            "Empty = every object goes to the pipeline's processor."
        ),
    )
    verify_outputs: bool = Field(
        default=True,
        description=(
            "Before the ack, HEAD every declared output (exists, size > 0, the processor's "
            "declared content type; PDFs: %PDF- and %%EOF by ranged reads); a missing or "
            "wrong output is retried, never acknowledged."
        ),
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("use 1-64 letters, digits, '_', '-' or '.'")
        return v

    @field_validator("queue", "dlq")
    @classmethod
    def _check_queue(cls, v: str | None) -> str | None:
        if v is None or v.startswith(("https://", "http://")):
            return v
        if not _QUEUE_NAME_RE.match(v):
            raise ValueError(
                "a queue name is 1-80 letters, digits, '-' or '_' (or a full https:// queue URL)"
            )
        return v

    @field_validator("key_regex")
    @classmethod
    def _check_regex(cls, v: str | None) -> str | None:
        return None if v is None else check_regex(v)

    @field_validator("output")
    @classmethod
    def _check_output(cls, v: str) -> str:
        if not v:
            raise ValueError("must be 's3://bucket/prefix/' or a local directory")
        if v.startswith("s3://"):
            bucket = v[5:].split("/", 1)[0]
            if not bucket:
                raise ValueError("an s3:// output needs a bucket: 's3://bucket/prefix/'")
        elif "://" in v:
            raise ValueError("only s3:// URLs and local directories are supported")
        return v

    @model_validator(mode="after")
    def _check_timeouts(self) -> PipelineSettings:
        if self.retry_max_s < self.retry_base_s:
            raise ValueError("retry_max_s must be >= retry_base_s")
        if (
            self.queue_max_receive_count is not None
            and self.queue_max_receive_count <= self.max_receive_count
        ):
            raise ValueError(
                f"queue_max_receive_count ({self.queue_max_receive_count}) must be greater "
                f"than max_receive_count ({self.max_receive_count}): the queue's redrive is "
                "the safety net behind the worker's own limit"
            )
        return self

    @model_validator(mode="after")
    def _check_routes(self) -> PipelineSettings:
        seen: set[str] = set()
        default_at: int | None = None
        for i, r in enumerate(self.routes):
            name = self.route_name(i)
            if name in seen:
                raise ValueError(f"route name {name!r} is used twice")
            seen.add(name)
            if default_at is not None:
                raise ValueError(
                    f"route {name!r} comes after the default route "
                    f"{self.route_name(default_at)!r} (a route without match keys takes every "
                    "object): it could never match; put the default route last"
                )
            if r.is_default:
                default_at = i
        for executor, where in self.executor_uses():
            if executor not in ("ecs", "batch"):
                continue
            if getattr(self.executors, executor) is None:
                needs = (
                    "cluster, task_definition, container"
                    if executor == "ecs"
                    else "job_queue, job_definition"
                )
                raise ValueError(
                    f"{where} uses executor {executor!r} but [pipelines.executors.{executor}] "
                    f"is not set ({needs})"
                )
            if not self.output.startswith("s3://"):
                raise ValueError(
                    f"{where} uses executor {executor!r}: a container cannot write to this "
                    f"machine's directory {self.output!r}; the output must be s3://bucket/prefix/"
                )
        return self

    def route_name(self, index: int) -> str:
        """The name of ``routes[index]``: its own, else 'default' or 'route-<n>'."""
        r = self.routes[index]
        if r.name:
            return r.name
        return "default" if r.is_default else f"route-{index + 1}"

    def executor_uses(self) -> list[tuple[str, str]]:
        """(executor, where it is set) for every explicit executor setting."""
        out: list[tuple[str, str]] = []
        if self.executor is not None:
            out.append((self.executor, "the pipeline"))
        for i, r in enumerate(self.routes):
            if r.executor is not None:
                out.append((r.executor, f"route {self.route_name(i)!r}"))
        return out

    @property
    def redrive_max_receive_count(self) -> int:
        """The queue redrive policy's maxReceiveCount (the safety net)."""
        if self.queue_max_receive_count is not None:
            return self.queue_max_receive_count
        return min(1000, self.max_receive_count + 10)

    @property
    def dlq_name(self) -> str:
        """The DLQ name or URL, defaulting to '<queue>-dlq'."""
        if self.dlq:
            return self.dlq
        if self.queue.startswith(("https://", "http://")):
            return self.queue.rstrip("/") + "-dlq"
        return f"{self.queue}-dlq"


class WorkerSettings(_Model):
    """Process-wide worker behaviour."""

    worker_id: str = Field(
        default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}",
        description="Identifies this worker in results and logs. Default: host-pid.",
    )
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM/SIGINT, time in-flight objects get to finish."
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve Prometheus /metrics, /healthz and /readyz on this port (0 = any free "
        "port, logged); None = off.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Bind address of the metrics port ('0.0.0.0' in a container).",
    )
    metrics_sample_s: float = Field(
        default=15.0, gt=0, description="How often queue depths and the oldest record are sampled."
    )
    pollers_per_pipeline: int = Field(
        default=0,
        ge=0,
        le=32,
        description="Concurrent receive loops; 0 = one per 10 slots (max 4).",
    )
    ack_batch_window_s: float = Field(
        default=0.05, ge=0, le=5, description="How long deletes wait to fill a batch of 10."
    )
    malloc_mmap_threshold_bytes: int = Field(
        default=1_048_576,
        ge=0,
        le=32 * 1024 * 1024,
        description=(
            "glibc malloc serves blocks from this size with mmap, so freed stream buffers "
            "go back to the system (lower peak RSS); 0 = glibc's own dynamic threshold. "
            "$MALLOC_MMAP_THRESHOLD_ wins when set."
        ),
    )
    log_format: Literal["text", "json"] = Field(default="text", description="Log line format.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )


class LocalSettings(_Model):
    """The embedded local AWS endpoint (moto server) used by `s3flow local` and `demo`."""

    host: str = Field(default="127.0.0.1", description="Bind address (keep it on loopback).")
    port: int = Field(default=0, ge=0, le=65535, description="Port; 0 picks a free one.")


class StateSettings(_Model):
    """Where s3flow keeps file lifecycles, idempotency claims, checkpoints and locks."""

    url: str = Field(
        default="sqlite:.s3flow/state.db",
        description=(
            "'sqlite:PATH' (relative to the working directory), 'sqlite:///abs/path.db', "
            "'dynamodb://TABLE_PREFIX' (multi-node), or 'none' to run without a store."
        ),
    )
    claim_ttl_s: float = Field(
        default=0,
        ge=0,
        description=(
            "How long a claim lives without renewal; 0 = the pipeline's visibility_timeout_s "
            "(claims are renewed with the visibility heartbeat, at about half of it)."
        ),
    )
    retention_days: float = Field(
        default=30,
        ge=0,
        description=(
            "Days a finished file record (completed, dead, quarantined) and history lines, "
            "checkpoints, idle locks, completed manifests and finished upload jobs are kept "
            "before they expire (SQLite: pruned by the worker; DynamoDB: TTL). Must exceed "
            "the queues' message retention (14 days at most), or a late duplicate delivery "
            "would be processed again; 0 keeps everything forever."
        ),
    )

    @field_validator("retention_days")
    @classmethod
    def _check_retention(cls, v: float) -> float:
        if 0 < v <= 14:
            raise ValueError(
                "must exceed 14 (the longest SQS message retention: a duplicate delivery "
                "must still find its record), or be 0 to keep records forever"
            )
        return v

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if (
            v == "none"
            or v.startswith(("sqlite:", "dynamodb://"))
            or v.endswith((".db", ".sqlite"))
        ):
            return v
        raise ValueError(
            "use 'sqlite:PATH', 'sqlite:///abs/path.db', 'dynamodb://PREFIX' or 'none'"
        )


_NAME_PART = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


def _git_branch() -> str | None:
    """The current git branch of the working directory, or None (no git, detached, error)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--abbrev-ref", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    name = out.stdout.strip()
    return name if out.returncode == 0 and name and name != "HEAD" else None


def name_part(value: str) -> str:
    """``feature/Upload_Jobs`` -> ``feature-upload-jobs``: safe inside bucket and queue names."""
    slug = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")
    return re.sub(r"-{2,}", "-", slug)[:31].strip("-") or "main"


class StepSettings(_Model):
    """One step of a job template: a processor and its options."""

    processor: str = Field(
        description="Processor name (see `s3flow processors`), e.g. 'line-count'."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="The processor's options (as in [pipelines.options])."
    )


class TemplateSettings(_Model):
    """A named recipe for upload jobs: ordered steps and where outputs go."""

    name: str = Field(description="Template name clients ask for ('count', 'pdf', ...).")
    steps: list[StepSettings] = Field(
        min_length=1, description="Steps run in order over the job's files."
    )
    output_prefix: str = Field(
        default="outputs/",
        description="Outputs go to s3://<uploads bucket>/<output_prefix><job_id>/.",
    )
    description: str = Field(default="", description="Shown by the web page and `s3flow jobs`.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v):
            raise ValueError("use letters, digits, '_', '-' or '.' (at most 64)")
        return v


class JobsSettings(_Model):
    """Upload jobs: presigned uploads grouped into jobs run by a template, with live progress.

    Resource names follow ``{project}-{branch}-{role}``; see docs/jobs.md.
    """

    project: str = Field(description="Project name: the first part of every resource name.")
    branch: str | None = Field(
        default=None,
        description="Branch part of resource names; default $S3FLOW_BRANCH, else the git "
        "branch of the working directory, else 'main'.",
    )
    uploads_bucket: str | None = Field(
        default=None,
        description="Bucket for uploads and outputs; default {project}-{branch}-uploads.",
    )
    max_file_bytes: int = Field(
        default=100 * 1024 * 1024, gt=0, description="Largest file a client may upload."
    )
    max_files: int = Field(default=20, ge=1, le=1000, description="Most files in one upload.")
    allowed_extensions: list[str] = Field(
        default_factory=lambda: [".txt", ".log", ".csv", ".json", ".ndjson", ".md"],
        description="File name extensions clients may upload (lower case, with the dot); [] = any.",
    )
    allowed_content_types: list[str] = Field(
        default_factory=list, description="Content types clients may declare; [] = any."
    )
    presign_expiry_s: int = Field(
        default=900, ge=60, le=7 * 24 * 3600, description="How long presigned upload URLs live."
    )
    job_timeout_s: int = Field(
        default=3600,
        ge=1,
        description="A job whose declared files have not all arrived after this long is expired.",
    )
    cors_origins: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8080", "http://localhost:8080"],
        description="Browser origins allowed to POST straight to the uploads bucket.",
    )
    abandoned_upload_days: int = Field(
        default=1,
        ge=1,
        description="Lifecycle rule: objects under uploads/ expire after this many days.",
    )
    concurrency: int = Field(default=4, ge=1, le=256, description="Jobs run at once per worker.")
    visibility_timeout_s: int = Field(
        default=120, ge=10, le=43200, description="Processing queue visibility (heartbeated)."
    )
    max_receive_count: int = Field(
        default=3, ge=1, le=1000, description="Attempts per job before it fails (processing DLQ)."
    )
    progress_interval_s: float = Field(
        default=0.5, gt=0, description="At most one step.progress event per step this often."
    )
    wait_time_s: int = Field(
        default=20, ge=0, le=20, description="Long-poll wait of the intake and processing queues."
    )
    expiry_check_s: float = Field(
        default=30.0, gt=0, description="How often the bridge looks for overdue jobs to expire."
    )

    @field_validator("project")
    @classmethod
    def _check_project(cls, v: str) -> str:
        if not _NAME_PART.fullmatch(v):
            raise ValueError("use lower-case letters, digits and '-' (at most 31), e.g. 'acme'")
        return v

    @field_validator("allowed_extensions")
    @classmethod
    def _check_ext(cls, v: list[str]) -> list[str]:
        for ext in v:
            if not re.fullmatch(r"\.[a-z0-9][a-z0-9._-]*", ext):
                raise ValueError(f"{ext!r}: write extensions lower case with the dot, e.g. '.txt'")
        return v

    @model_validator(mode="after")
    def _resolve_branch(self) -> JobsSettings:
        if self.branch is None:
            raw = os.environ.get("S3FLOW_BRANCH") or _git_branch() or "main"
            object.__setattr__(self, "branch", name_part(raw))
        elif not _NAME_PART.fullmatch(self.branch):
            object.__setattr__(self, "branch", name_part(self.branch))
        return self

    def resource(self, role: str) -> str:
        """``{project}-{branch}-{role}``, e.g. ``acme-dev-processing.fifo``."""
        return f"{self.project}-{self.branch}-{role}"

    @property
    def bucket(self) -> str:
        """The uploads bucket's name."""
        return self.uploads_bucket or self.resource("uploads")


class WebSettings(_Model):
    """The HTTP API and page (`s3flow web`)."""

    host: str = Field(default="127.0.0.1", description="Bind address.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port (0 picks a free one).")
    tokens: list[str] = Field(
        default_factory=list,
        description="Accepted API tokens, stored hashed: 'sha256:<hex of the token>' "
        "(`s3flow web hash-token` prints one). Empty: no auth, loopback only.",
    )
    url: str | None = Field(
        default=None,
        description="Where clients (`s3flow upload`) find the API; default http://127.0.0.1:8080.",
    )
    heartbeat_s: float = Field(default=15.0, gt=0, description="SSE comment heartbeat interval.")

    @field_validator("tokens")
    @classmethod
    def _check_tokens(cls, v: list[str]) -> list[str]:
        for t in v:
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", t):
                raise ValueError(
                    "each token must be 'sha256:' + 64 lower-case hex digits (the SHA-256 of "
                    "the token, never the token itself); `s3flow web hash-token` prints one"
                )
        return v


#: Name of the pipeline that [jobs] adds (the bridge on the intake queue).
JOBS_BRIDGE = "jobs-intake"


def bridge_pipeline(jobs: JobsSettings) -> PipelineSettings:
    """The intake pipeline [jobs] implies: uploads/ events -> the jobs bridge."""
    return PipelineSettings(
        name=JOBS_BRIDGE,
        processor="jobs-bridge",
        bucket=jobs.bucket,
        prefix="uploads/",
        queue=jobs.resource("intake"),
        dlq=jobs.resource("intake-dlq"),
        output=f"s3://{jobs.bucket}/outputs/",
        concurrency=16,
        wait_time_s=jobs.wait_time_s,
        on_permanent_error="quarantine",
        options={
            "processing_queue": jobs.resource("processing.fifo"),
            "max_file_bytes": jobs.max_file_bytes,
            "sweep_interval_s": jobs.expiry_check_s,
        },
    )


def processing_pipeline(jobs: JobsSettings) -> PipelineSettings:
    """Runner settings of the processing FIFO queue (the job worker; not an S3 pipeline)."""
    return PipelineSettings(
        name="jobs-processing",
        processor="jobs-runner",
        bucket=jobs.bucket,
        queue=jobs.resource("processing.fifo"),
        dlq=jobs.resource("processing-dlq.fifo"),
        output=f"s3://{jobs.bucket}/outputs/",
        concurrency=jobs.concurrency,
        wait_time_s=jobs.wait_time_s,
        visibility_timeout_s=jobs.visibility_timeout_s,
        max_receive_count=jobs.max_receive_count,
        retry_base_s=1.0,
        retry_max_s=60.0,
    )


class Settings(BaseSettings):
    """All of s3flow's configuration, validated once at start."""

    model_config = SettingsConfigDict(
        env_prefix="S3FLOW_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    aws: AwsSettings = Field(default_factory=AwsSettings, description="AWS access.")
    worker: WorkerSettings = Field(default_factory=WorkerSettings, description="Worker process.")
    local: LocalSettings = Field(default_factory=LocalSettings, description="Embedded endpoint.")
    state: StateSettings = Field(default_factory=StateSettings, description="State store.")
    pipelines: list[PipelineSettings] = Field(
        default_factory=list, description="The pipelines this worker runs."
    )
    jobs: JobsSettings | None = Field(
        default=None, description="Upload jobs (presigned uploads, templates, live progress)."
    )
    templates: list[TemplateSettings] = Field(
        default_factory=list, description="Job templates ([[templates]])."
    )
    web: WebSettings = Field(default_factory=WebSettings, description="HTTP API and page.")

    @model_validator(mode="after")
    def _jobs_bridge(self) -> Settings:
        # [jobs] brings its own pipeline: the bridge on the intake queue. Being an
        # ordinary pipeline, provision, status, files and dlq all cover it.
        if self.jobs is not None and not any(p.name == JOBS_BRIDGE for p in self.pipelines):
            self.pipelines.append(bridge_pipeline(self.jobs))
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        names = [t.name for t in self.templates]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"template name {name!r} is used twice")
        if self.templates and self.jobs is None:
            raise ValueError(
                "[[templates]] are set but [jobs] is not: add a [jobs] table with a project"
            )
        seen: set[str] = set()
        for p in self.pipelines:
            if p.name in seen:
                raise ValueError(f"pipeline name {p.name!r} is used twice")
            seen.add(p.name)
        for p in self.pipelines:
            for q in self.pipelines:
                if q is p or q.bucket != p.bucket or q.name < p.name:
                    continue
                overlap = (q.prefix.startswith(p.prefix) or p.prefix.startswith(q.prefix)) and (
                    q.suffix.endswith(p.suffix) or p.suffix.endswith(q.suffix)
                )
                if overlap and not (p.key_regex and q.key_regex) and self.state.url != "none":
                    raise ValueError(
                        f"pipelines {p.name!r} and {q.name!r} both take keys of bucket "
                        f"{p.bucket!r} (prefix/suffix overlap): an object would be claimed "
                        "by one and skipped as done by the other; make the prefixes or "
                        "suffixes disjoint, or give both a key_regex"
                    )
            ttl = self.state.claim_ttl_s
            if ttl and ttl < p.visibility_timeout_s:
                raise ValueError(
                    f"state.claim_ttl_s ({ttl}) is shorter than pipeline {p.name!r}'s "
                    f"visibility_timeout_s ({p.visibility_timeout_s}): claims are renewed with "
                    "the visibility heartbeat and would expire mid-job; use 0 (the default: "
                    "the visibility timeout) or a longer value"
                )
            if p.wait_time_s >= self.aws.read_timeout_s:
                raise ValueError(
                    f"pipeline {p.name!r}: wait_time_s ({p.wait_time_s}) must be shorter than "
                    f"aws.read_timeout_s ({self.aws.read_timeout_s}) or long polls time out"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # TOML is loaded by load_settings() and passed as init data, merged with
        # overrides; the env then wins over the file, as documented.
        return (env_settings, init_settings)

    def pipeline(self, name: str) -> PipelineSettings:
        """Return the pipeline called ``name`` or raise ConfigError listing the known ones."""
        for p in self.pipelines:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.pipelines) or "(none configured)"
        raise ConfigError(f"no pipeline named {name!r}; configured pipelines: {known}")

    def template(self, name: str) -> TemplateSettings | None:
        """The job template called ``name``, or None."""
        return next((t for t in self.templates if t.name == name), None)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _format_loc(loc: tuple[int | str, ...], data: dict[str, Any]) -> str:
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and 0 <= item < len(node):
                node = node[item]
                name = node.get("name") if isinstance(node, dict) else None
                if name:
                    label = f"[{item}] ({name!r})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + item)
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


def format_validation_error(exc: ValidationError, source: str, data: dict[str, Any]) -> str:
    """Render a pydantic error as lines naming each bad key, its problem and the source."""
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = _format_loc(tuple(err["loc"]), data)
        if err["type"] == "extra_forbidden":
            lines.append(f"  - {loc}: unknown key (check the spelling; see docs/configuration.md)")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"  - {loc or '<top>'}: {err['msg']}{shown}")
    return "\n".join(lines)


def load_settings(
    config: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Load and validate settings from a TOML file, the environment and overrides.

    ``config`` defaults to ``$S3FLOW_CONFIG``; with neither, only the
    environment, overrides and defaults are used. Raises :class:`ConfigError`
    with a message naming each bad key.
    """
    path = config if config is not None else os.environ.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    source = "defaults and environment"
    if path:
        p = Path(path)
        source = str(p)
        try:
            with p.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"config file {p} does not exist (given by -c/--config or {CONFIG_ENV})"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc}") from exc
    merged = _deep_merge(data, overrides or {})
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, merged)) from exc
