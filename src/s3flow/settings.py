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
