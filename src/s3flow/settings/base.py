"""The model base and shared validators; the process-wide [aws], [worker], [local], [state]."""

from __future__ import annotations

import codecs
import ipaddress
import os
import re
from typing import TYPE_CHECKING, Annotated, Literal, Self, get_args
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


def check_regex(v: str) -> str:
    """A validator: ``v`` if it compiles as a Python regular expression."""
    try:
        re.compile(v)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc
    return v


def codec_info(name: str) -> codecs.CodecInfo:
    """A validator's codec lookup: the codec called ``name``; ValueError if there is none."""
    try:
        return codecs.lookup(name)
    except LookupError as exc:
        raise ValueError(f"unknown text encoding {name!r}") from exc


def text_codec(name: str) -> str:
    """A validator: ``name`` if it is a codec that decodes text; ValueError otherwise.

    Also a trial decode: some codecs are text encodings by name only ("undefined"
    refuses everything) and would fail every object.
    """
    if not codec_info(name)._is_text_encoding:
        raise ValueError(f"{name!r} is not a text encoding (e.g. 'utf-8', 'utf-16', 'latin-1')")
    try:
        codecs.getincrementaldecoder(name)(errors="strict").decode(b"", final=True)
    except Exception as exc:
        raise ValueError(f"{name!r} cannot decode text ({exc})") from exc
    return name


def check_byte_range(min_bytes: int | None, max_bytes: int | None) -> None:
    """A validator: ValueError when ``max_bytes < min_bytes`` (None is no bound)."""
    if min_bytes is not None and max_bytes is not None and max_bytes < min_bytes:
        raise ValueError("max_bytes must be >= min_bytes")


def _check_optional_regex(v: str | None) -> str | None:
    return None if v is None else check_regex(v)


#: A DNS host name, as the SDK accepts one in an endpoint URL (labels of letters, digits
#: and '-', not starting or ending with '-').
_HOST_NAME = re.compile(r"^((?!-)[A-Z\d-]{1,63}(?<!-)\.)*((?!-)[A-Z\d-]{1,63}(?<!-))$", re.I)


def _valid_host(host: str) -> bool:
    """Whether ``host`` (as urlsplit gives it: no brackets) is a host name or an IP."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        name = host[:-1] if host.endswith(".") else host
        return len(name) <= 255 and _HOST_NAME.match(name) is not None
    return True


_BUCKET_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,253}[A-Za-z0-9])?$")


def bucket_name_problem(name: str) -> str | None:
    """What is wrong with the S3 bucket name ``name``, or None.

    Lenient on purpose: names AWS does not allow today (capitals, '_', up to 255
    characters, shorter than 3) still name older buckets in us-east-1 and buckets of
    S3-compatible stores and emulators; what no store takes (a URL, a path, spaces) is
    refused.
    """
    url = name.lower().startswith("s3://")
    if url or "/" in name:
        bucket, _, prefix = name[5 if url else 0 :].partition("/")
        hint = f"; the key prefix goes in `prefix = {prefix!r}`" if prefix.strip("/") else ""
        return f"{name!r} is not a bucket name: write the name alone, {bucket!r}{hint}"
    if not _BUCKET_RE.match(name):
        return (
            f"{name!r} is not a bucket name: up to 255 letters, digits, '.', '-' or '_', "
            "beginning and ending with a letter or digit"
        )
    return None


def endpoint_url_problem(url: str) -> str | None:
    """What keeps ``url`` from being an endpoint URL the SDK takes, with what to write
    instead (None: nothing): an ``http``/``https`` scheme, a host, a port from 1 to 65535,
    no query and no queue's path (``/<account>/<queue>``).

    The SDK's own check fails every client with ``ValueError: Invalid endpoint``; this
    one runs where the URL is read, to name the setting or variable it came from.
    """
    example = "write it as http://HOST:PORT or https://HOST, e.g. 'http://localhost:4566'"
    if not url.strip():
        return f"it is empty; {example}, or leave it unset for AWS"
    if any(c.isspace() for c in url):
        return f"it contains whitespace; {example}"
    if "://" not in url:
        return f"it has no scheme: write 'http://{url}' (or https://)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"its port is not a number from 1 to 65535; {example}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"its scheme {parts.scheme!r} is not http or https; {example}"
    host = parts.hostname
    if not host:
        return f"it names no host; {example}"
    if not _valid_host(host):
        return f"{host!r} is not a host name or IP address; {example}"
    if port is not None and not 1 <= port <= 65535:
        return f"its port {port} is not from 1 to 65535; {example}"
    server = f"{parts.scheme}://{parts.netloc}"
    # A queue URL pasted as the endpoint (every request would go to it). A path alone
    # can be right: a gateway serving S3 under one (https://gw.example.com/s3).
    if re.match(r"/\d{12}/", parts.path) or parts.query or parts.fragment:
        rest = url[len(server) :]
        return (
            f"it has a queue's path or a query ({rest!r}) after the server: an endpoint "
            f"is the server (queues and buckets are named in their own settings); "
            f"write {server!r}"
        )
    return None


def _check_endpoint_url(v: str | None) -> str | None:
    if v is not None:
        problem = endpoint_url_problem(v)
        if problem is not None:
            raise ValueError(f"not an endpoint URL: {problem}")
    return v


#: A setting holding a Python regular expression (checked to compile).
Regex = Annotated[str, AfterValidator(check_regex)]
#: A setting holding a Python regular expression (checked to compile), or None.
OptionalRegex = Annotated[str | None, AfterValidator(_check_optional_regex)]
#: A setting holding an endpoint URL (http/https, a host, a port 1-65535), or None.
EndpointUrl = Annotated[str | None, AfterValidator(_check_endpoint_url)]


def _check_bucket_name(v: str) -> str:
    problem = bucket_name_problem(v)
    if problem:
        raise ValueError(problem)
    return v


def _check_optional_bucket_name(v: str | None) -> str | None:
    return None if v is None else _check_bucket_name(v)


#: A setting holding an S3 bucket name (:func:`bucket_name_problem`), or None.
BucketName = Annotated[str, AfterValidator(_check_bucket_name)]
OptionalBucketName = Annotated[str | None, AfterValidator(_check_optional_bucket_name)]


# Bounds SQS sets on the queue settings of [[pipelines]] and [jobs].
#: Seconds SQS keeps a received message invisible, in all (at most 12 hours).
SqsSeconds = Annotated[int, Field(le=43200)]
#: Long-poll wait of one receive in seconds (SQS: 0 to 20).
WaitTime = Annotated[int, Field(ge=0, le=20)]
#: Receives of a message before it is dead-lettered (SQS maxReceiveCount: 1 to 1000).
ReceiveCount = Annotated[int, Field(ge=1, le=1000)]
#: Worker processes of a process pool on this machine: 0 = one per CPU, at most 256.
ProcessCount = Annotated[int, Field(ge=0, le=256)]


class ByteRangeChecked(BaseModel):
    """Mixin of models with ``min_bytes`` and ``max_bytes`` fields (None: no bound):
    validation fails when ``max_bytes < min_bytes``."""

    if TYPE_CHECKING:
        min_bytes: int | None
        max_bytes: int | None

    @model_validator(mode="after")
    def _check_byte_range(self) -> Self:
        check_byte_range(self.min_bytes, self.max_bytes)
        return self


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: A region name as botocore accepts it.
_REGION = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")


class AwsSettings(_Model):
    """Where and how to reach AWS (or any S3/SQS-compatible endpoint)."""

    region: str = Field(
        default_factory=lambda: (
            os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        ),
        description="AWS region. Defaults to AWS_REGION / AWS_DEFAULT_REGION, else us-east-1.",
    )
    endpoint_url: EndpointUrl = Field(
        default=None,
        description=(
            "Endpoint for every service, 'http://HOST:PORT' or 'https://HOST'. When unset "
            "the SDK honours AWS_ENDPOINT_URL."
        ),
    )
    endpoint_url_s3: EndpointUrl = Field(
        default=None, description="S3 endpoint; overrides endpoint_url and AWS_ENDPOINT_URL_S3."
    )
    endpoint_url_sqs: EndpointUrl = Field(
        default=None, description="SQS endpoint; overrides endpoint_url and AWS_ENDPOINT_URL_SQS."
    )
    profile: str | None = Field(default=None, description="Named profile from ~/.aws/config.")

    @field_validator("region")
    @classmethod
    def _region_name(cls, value: str) -> str:
        # botocore's own rule (it raises InvalidRegionError when it builds a client)
        if not _REGION.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an AWS region name: use one like us-east-1 or eu-west-2 "
                "(letters, digits and inner hyphens), or leave it out for AWS_REGION, "
                "AWS_DEFAULT_REGION, else us-east-1"
            )
        return value

    max_attempts: int = Field(
        default=5,
        ge=1,
        le=20,
        description=(
            "SDK retries per call after the first attempt (botocore's retries.max_attempts, "
            "standard retry mode): a call is tried at most max_attempts + 1 times."
        ),
    )
    connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "TCP connect timeout. A custom endpoint that refuses a connection, or makes "
            "none within it, fails a command or worker at start, without the SDK's retries."
        ),
    )
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
    fast_path: bool = Field(
        default=True,
        description=(
            "Serve the hot calls (S3 GetObject, PutObject, HeadObject; SQS ReceiveMessage, "
            "DeleteMessageBatch, ChangeMessageVisibilityBatch) with s3flow's own signed "
            "HTTP requests (a sixth of the SDK's CPU per call), retried as the SDK's "
            "standard mode (max_attempts, back-off, retry quota); other calls, and these "
            "with parameters it does not handle, go through the SDK. false: every call "
            "through the SDK."
        ),
    )


#: The levels ``log_level`` takes.
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class WorkerSettings(_Model):
    """Process-wide worker behaviour."""

    worker_id: str = Field(
        default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}",
        description="Identifies this worker in results and logs. Default: host-pid.",
    )
    shutdown_grace_s: float = Field(
        default=30.0,
        ge=0,
        description=(
            "On SIGTERM/SIGINT, time in-flight objects get to finish, counted from the "
            "signal; the worker exits within about this plus 5 s."
        ),
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
        description=(
            "Concurrent receive loops per pipeline; 0 = one per 10 messages of "
            "concurrency + prefetch_messages, rounded up (at most 4)."
        ),
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
    log_level: LogLevel = Field(
        default="INFO", description="Log level (any case, as --log-level takes it)."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        # Only a known level is changed: an error then quotes what was written.
        if isinstance(v, str) and v.upper() in get_args(LogLevel):
            return v.upper()
        return v


class LocalSettings(_Model):
    """The embedded local AWS endpoint (moto server) that `s3flow local` runs (its
    --host/--port win; `s3flow demo` starts its own on a free port)."""

    host: str = Field(default="127.0.0.1", description="Bind address (keep it on loopback).")
    port: int = Field(default=4566, ge=0, le=65535, description="Port; 0 picks a free one.")


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
