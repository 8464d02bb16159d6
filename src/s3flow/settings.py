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

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
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
