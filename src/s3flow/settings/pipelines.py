"""[[pipelines]]: a pipeline, its validation and its routes."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from s3flow.settings.base import (
    BucketName,
    ByteRangeChecked,
    OptionalRegex,
    ReceiveCount,
    SqsSeconds,
    WaitTime,
    _Model,
    bucket_name_problem,
)
from s3flow.settings.executors import ExecutorName, ExecutorsSettings

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: SQS's longest queue name (".fifo" included).
QUEUE_NAME_MAX = 80
# SQS queue names: 1-80 chars, alphanumerics, hyphens, underscores (+ ".fifo", counted).
_QUEUE_NAME_RE = re.compile(r"(?=.{1,80}\Z)[A-Za-z0-9_-]+(\.fifo)?\Z")


def queue_name_of(queue: str) -> str:
    """The name of a queue given by name or URL (a URL's last path segment)."""
    return queue.rstrip("/").rsplit("/", 1)[-1]


def _valid_name(v: str) -> str:
    """A validator of pipeline and route names."""
    if not _NAME_RE.match(v):
        raise ValueError("use 1-64 letters, digits, '_', '-' or '.'")
    return v


def _valid_optional_name(v: str | None) -> str | None:
    return None if v is None else _valid_name(v)


#: A pipeline's or a route's name (checked by :func:`_valid_name`).
_Name = Annotated[str, AfterValidator(_valid_name)]
_OptionalName = Annotated[str | None, AfterValidator(_valid_optional_name)]


class ValidationSettings(_Model, ByteRangeChecked):
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
    key_pattern: OptionalRegex = Field(
        default=None, description="Regular expression every key must match (re.search)."
    )

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


def metadata_name(name: str) -> str:
    """A metadata name as S3 reports it: lower case, without ``x-amz-meta-``."""
    name = name.lower()
    return name[len("x-amz-meta-") :] if name.startswith("x-amz-meta-") else name


class RouteSettings(_Model, ByteRangeChecked):
    """One routing rule of a pipeline (``[[pipelines.routes]]``): what it matches and where
    matching objects go. Rules are tried in order, the first match wins; a rule without
    match keys is the default (it must be last). No match: the object is quarantined."""

    name: _OptionalName = Field(
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
    key_regex: OptionalRegex = Field(
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

    @field_validator("key_glob", "content_type", "key_regex")
    @classmethod
    def _not_empty(cls, v: str | None) -> str | None:
        # "" would count as no match key (the default rule) yet match no object (a glob)
        # or every one (a regex): either way not what was meant.
        if v is not None and not v.strip():
            raise ValueError(
                "is empty: it would match nothing (or everything); leave it out "
                "(a rule without match keys is the default rule) or give a pattern"
            )
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata_names(cls, v: dict[str, str]) -> dict[str, str]:
        # S3 reports metadata names lower-cased without the prefix: two names that become
        # one, or an empty name, could never both match.
        seen: dict[str, str] = {}
        for name in v:
            as_s3 = metadata_name(name)
            if not as_s3.strip():
                raise ValueError(
                    f"metadata name {name!r} is empty once 'x-amz-meta-' is taken off; "
                    "give the name after the prefix, e.g. {'processor-type' = 'pool'}"
                )
            if as_s3 in seen:
                raise ValueError(
                    f"metadata names {seen[as_s3]!r} and {name!r} are the same name to S3 "
                    f"({as_s3!r}: names are case-insensitive, 'x-amz-meta-' optional); "
                    "keep one of them"
                )
            seen[as_s3] = name
        return v

    @field_validator("tags")
    @classmethod
    def _tag_keys(cls, v: dict[str, str]) -> dict[str, str]:
        if any(not key for key in v):
            raise ValueError("a tag key is empty: S3 tag keys have 1 to 128 characters")
        return v

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


#: A URL scheme at the start of an output (``s3:``, ``S3:``, ``file:``, ``https:``).
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def output_problem(output: str) -> str | None:
    """What is wrong with an ``output`` (``s3://bucket/prefix/`` or a local directory),
    or None. A typo of ``s3://`` (``s3:/b/``, ``S3://b/``) or another URL scheme is
    refused: taken as a directory, it would write into ``./s3:/b/``."""
    if not output:
        return "must be 's3://bucket/prefix/' or a local directory"
    if output.startswith("s3://"):
        bucket = output[5:].split("/", 1)[0]
        if not bucket:
            return "an s3:// output needs a bucket: 's3://bucket/prefix/'"
        return bucket_name_problem(bucket)
    if _SCHEME_RE.match(output):
        return (
            f"{output!r} looks like a URL, and only s3://bucket/prefix/ URLs (lower case, "
            "two slashes) are supported; for a local directory whose name has a ':', "
            "write it as ./name"
        )
    return None


class PipelineSettings(_Model):
    """One pipeline: a queue of S3 notifications, a filter, a processor and an output.

    Environment: `S3FLOW_PIPELINES__<INDEX>__<KEY>` sets one key of the file's pipeline
    INDEX (0 = the first `[[pipelines]]`), its other keys kept; tables go on down
    (`S3FLOW_PIPELINES__0__VALIDATION__MAX_BYTES`). An INDEX one past the end adds a
    pipeline (every required key then from the environment). `S3FLOW_PIPELINES` holding
    a JSON list replaces the file's list (it cannot be combined with indexed variables).
    """

    name: _Name = Field(description="Unique pipeline name (letters, digits, '_', '-', '.').")
    processor: str = Field(
        default="line-count",
        description="Processor name (built-in or entry point) or 'module:attribute' path.",
    )
    bucket: BucketName = Field(
        description=(
            "Source bucket whose ObjectCreated events feed the queue: the name alone "
            "(no s3://, the key prefix goes in prefix)."
        )
    )
    prefix: str = Field(default="", description="Only keys starting with this prefix.")
    suffix: str = Field(default="", description="Only keys ending with this suffix.")
    key_regex: OptionalRegex = Field(
        default=None, description="Only keys matching this regular expression (re.search)."
    )
    queue: str = Field(
        description=(
            "SQS queue name or URL that receives the notifications. `s3flow provision` "
            "creates a queue given by name; one given by URL must exist."
        )
    )
    dlq: str | None = Field(
        default=None,
        description=(
            "Dead-letter queue name or URL. Default: '<queue>-dlq' (by name, also for a "
            "queue given by URL; so a queue without dlq has at most 76 characters). Never "
            "a pipeline's queue (several pipelines may share one DLQ), and not FIFO "
            "('.fifo') for a standard queue."
        ),
    )
    output: str = Field(
        description=(
            "Where results go: 's3://bucket/prefix/' or a local directory path. Not under "
            "the pipeline's own prefix in its bucket unless a suffix or key_regex keeps "
            "the outputs out (else each output is processed again)."
        )
    )
    concurrency: int = Field(
        default=16, ge=1, le=1000, description="Objects processed at once by this pipeline."
    )
    prefetch_messages: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description=(
            "Messages received ahead of a free slot, so that a slot freed starts its next "
            "object at once instead of after a receive round trip; they stay leased while "
            "they wait and take their key lock and claim meanwhile (a duplicate is "
            "acknowledged without a slot), and a stopping worker releases them and what they "
            "hold. None = concurrency, at most 16 (enough to cover a receive round trip "
            "and the state-store calls before the work while the slots empty), but 0 at "
            "concurrency 1 (a slow one-at-a-time pipeline holds no message another worker "
            "could take). 0 = receive only for free slots."
        ),
    )
    visibility_timeout_s: SqsSeconds = Field(
        default=60,
        ge=1,
        description="Queue visibility timeout; the worker heartbeats at about half of it.",
    )
    wait_time_s: WaitTime = Field(
        default=20,
        description=(
            "Long-poll wait per receive; at most [worker] shutdown_grace_s (at least 1), "
            "so that a stop is not held up longer by a receive on the wire (a stop waits "
            "for it: cut short, the poll the server still holds would take messages "
            "out of sight)."
        ),
    )
    max_receive_count: ReceiveCount = Field(
        default=3,
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
            "Largest decompressed size of one compressed object (gzip, zstd, bz2, xz); beyond "
            "it the object fails permanently with the reason (a decompression bomb)."
        ),
    )
    retry_base_s: float = Field(
        default=2.0, ge=0, description="First retry delay; doubles per receive (with jitter)."
    )
    retry_max_s: float = Field(
        default=900.0, ge=0, le=43200, description="Upper bound of a retry delay."
    )
    job_timeout_s: SqsSeconds = Field(
        default=3600,
        ge=1,
        description=(
            "Longest an object may be worked on, counted from when its work starts (a "
            "message waiting for a slot stays leased; on the pool, a run waiting for a "
            "free child process). A run still going then is stopped "
            "where it runs (task cancelled, process killed, container stopped) and counts "
            "as a failure: retried, dead-lettered at max_receive_count."
        ),
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
            "wrong output is retried, never acknowledged. An output that a processor "
            "with verified_by_write (line-count) wrote inline is checked by S3's answer "
            "to that write instead, when it shows it right (docs/routing.md)."
        ),
    )
    verify_outputs_by_write: bool = Field(
        default=True,
        description=(
            "Take S3's answer to an output's PutObject as its verification when the "
            "processor vouches for its writes (verified_by_write, e.g. line-count). False: "
            "HEAD every output all the same (an S3-compatible store whose reads may not "
            "see a write that was just answered)."
        ),
    )

    @field_validator("queue", "dlq")
    @classmethod
    def _check_queue(cls, v: str | None) -> str | None:
        if v is None or v.startswith(("https://", "http://")):
            return v
        if not _QUEUE_NAME_RE.match(v):
            raise ValueError(
                "a queue name is 1-80 letters, digits, '-' or '_' (a '.fifo' at the end "
                "counts among the 80), or a full https:// queue URL"
            )
        return v

    @field_validator("output")
    @classmethod
    def _check_output(cls, v: str) -> str:
        problem = output_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _check_dlq(self) -> PipelineSettings:
        dlq = queue_name_of(self.dlq_name)
        if self.dlq is None and len(dlq) > QUEUE_NAME_MAX:
            # The default '<queue>-dlq' of a 77-80 character queue: provision and the
            # template would ask SQS for a name it refuses.
            raise ValueError(
                f"pipeline {self.name!r}: its default dlq {dlq!r} (the queue's name + '-dlq') "
                f"has {len(dlq)} characters, and SQS allows at most {QUEUE_NAME_MAX}: give "
                f"queue a name of at most {QUEUE_NAME_MAX - len('-dlq')} characters, or set "
                "dlq to a name of your own"
            )
        if dlq.endswith(".fifo") and not queue_name_of(self.queue).endswith(".fifo"):
            # A standard queue's redrive policy cannot name a FIFO queue, and provision
            # would create it without FifoQueue, which SQS refuses for a '.fifo' name.
            raise ValueError(
                f"pipeline {self.name!r}: dlq {self.dlq_name!r} is a FIFO queue ('.fifo') but "
                f"queue {self.queue!r} is a standard queue, whose dead letters can only go "
                "to a standard queue (SQS refuses the redrive policy); name a dlq without "
                "'.fifo' (or leave dlq out: '<queue>-dlq')"
            )
        return self

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
            # First: two routes without match keys are both named 'default' unless named.
            if default_at is not None:
                raise ValueError(
                    f"route {i + 1} ({name!r}) comes after the default route "
                    f"{self.route_name(default_at)!r} (route {default_at + 1}: a route without "
                    "match keys takes every object): it could never match; put the default "
                    "route last, and only one"
                )
            if name in seen:
                raise ValueError(f"route name {name!r} is used twice: give each route its own")
            seen.add(name)
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

    def output_loop(self) -> str | None:
        """Why the pipeline's output lands inside its own notification filter, or None.

        Not a validator of its own: the jobs runner's settings (no S3 notification)
        write into their bucket's root; the root settings check their pipelines."""
        # An output landing inside the pipeline's own notification filter is an upload to
        # it: each output is processed into another, for ever. Output keys end as the
        # processor chooses (line-count: '<key>.json'), so a suffix or key_regex is
        # trusted to keep them out; without either, an output prefix under the
        # pipeline's prefix in its own bucket surely loops.
        if not self.output.startswith("s3://") or self.suffix or self.key_regex:
            return None
        bucket, _, out_prefix = self.output[len("s3://") :].partition("/")
        if out_prefix and not out_prefix.endswith("/"):
            out_prefix += "/"  # as the S3 sink writes it
        if bucket == self.bucket and out_prefix.startswith(self.prefix):
            return (
                f"pipeline {self.name!r}: output {self.output!r} is inside the pipeline's own "
                f"notification filter (bucket {self.bucket!r}, prefix {self.prefix!r}, no "
                "suffix or key_regex): every output would be taken as a new object and "
                "processed again, for ever; write the outputs to another bucket or to a "
                "prefix outside prefix, or narrow the filter (a prefix the outputs are not "
                "under, or a suffix or key_regex they do not match)"
            )
        return None

    def route_name(self, index: int) -> str:
        """The name of ``routes[index]``: its own, else 'default' or 'route-<n>'."""
        r = self.routes[index]
        if r.name:
            return r.name
        return "default" if r.is_default else f"route-{index + 1}"

    def route_run(self, index: int) -> tuple[str, dict[str, Any]]:
        """(processor, options) that ``routes[index]`` runs: its processor, else the
        pipeline's; its options over the pipeline's when it runs the pipeline's
        processor, else its own alone."""
        r = self.routes[index]
        processor = r.processor or self.processor
        if processor == self.processor:
            return processor, {**self.options, **r.options}
        return processor, dict(r.options)

    def processor_runs(self) -> list[tuple[str, dict[str, Any]]]:
        """(processor, options) of each route, or of the pipeline when it has none."""
        if not self.routes:
            return [(self.processor, dict(self.options))]
        return [self.route_run(i) for i in range(len(self.routes))]

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
    def prefetch(self) -> int:
        """Messages received ahead of a free slot (``prefetch_messages`` resolved)."""
        if self.prefetch_messages is not None:
            return self.prefetch_messages
        # Measured (bench/engine_fast.py, 20 ms per S3 request): at concurrency 16, half
        # the slots' worth left slots idle while prefetched messages did their store calls.
        return 0 if self.concurrency == 1 else min(16, self.concurrency)

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
