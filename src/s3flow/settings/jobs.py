"""[jobs], [[templates]] and [web], and the pipelines the jobs layer derives from [jobs]."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from s3flow.settings.base import OptionalBucketName, ReceiveCount, SqsSeconds, WaitTime, _Model
from s3flow.settings.pipelines import QUEUE_NAME_MAX, PipelineSettings

_NAME_PART = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")

#: S3's longest bucket name.
BUCKET_NAME_MAX = 63
#: The roles of the queues [jobs] names ``{project}-{branch}-{role}``.
QUEUE_ROLES = ("intake", "intake-dlq", "processing.fifo", "processing-dlq.fifo", "progress.fifo")
#: The role of the default uploads bucket.
BUCKET_ROLE = "uploads"
#: The longest ``{project}-{branch}`` every name [jobs] derives allows (``-`` counted):
#: the default bucket ``{project}-{branch}-uploads`` is the tightest, at 63 characters
#: (the longest queue, ``{project}-{branch}-processing-dlq.fifo``, allows 60).
NAME_PREFIX_MAX = min(
    BUCKET_NAME_MAX - len("-" + BUCKET_ROLE),
    *(QUEUE_NAME_MAX - len("-" + role) for role in QUEUE_ROLES),
)


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
        description="Outputs go to s3://<uploads bucket>/<output_prefix><job_id>/ (not "
        "under uploads/, where they would be taken as uploads).",
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
        "branch of the working directory (cut to fit), else 'main'. Project and branch "
        "have at most 54 characters together (the bucket {project}-{branch}-uploads: 63), "
        "59 with uploads_bucket set (the queue {project}-{branch}-processing-dlq.fifo: 80).",
    )
    uploads_bucket: OptionalBucketName = Field(
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
        default=900,
        ge=60,
        le=7 * 24 * 3600,
        description=(
            "How long presigned upload URLs live (at most job_timeout_s); clients ask for "
            "fresh ones for the files not sent yet (POST /api/jobs/{job_id}/uploads)."
        ),
    )
    job_timeout_s: int = Field(
        default=3600,
        ge=1,
        description=(
            "A job whose declared files have not all been stored in the bucket within this "
            "long is expired."
        ),
    )
    cors_origins: list[str] | None = Field(
        default=None,
        description="Browser origins allowed to POST straight to the uploads bucket; "
        "default: the web page's own ([web] url's, and http://127.0.0.1 and "
        "http://localhost at [web] port).",
    )
    abandoned_upload_days: int = Field(
        default=1,
        ge=1,
        description="Lifecycle rule: objects under uploads/ expire after this many days.",
    )
    concurrency: int = Field(default=4, ge=1, le=256, description="Jobs run at once per worker.")
    visibility_timeout_s: SqsSeconds = Field(
        default=120,
        ge=10,
        description="Visibility timeout of the intake and processing queues (heartbeated).",
    )
    max_receive_count: ReceiveCount = Field(
        default=3,
        description=(
            "Attempts per job before it fails with job.failed (the processing queue's "
            "redrive to its DLQ is 10 above: a safety net)."
        ),
    )
    progress_interval_s: float = Field(
        default=0.5, gt=0, description="At most one step.progress event per step this often."
    )
    wait_time_s: WaitTime = Field(
        default=20, description="Long-poll wait of the intake and processing queues."
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
            # A branch found, not chosen, is cut to what the names leave it.
            room = self.name_prefix_max() - len(self.project) - 1
            object.__setattr__(self, "branch", name_part(raw)[:room].strip("-") or "main")
        elif not _NAME_PART.fullmatch(self.branch):
            object.__setattr__(self, "branch", name_part(self.branch))
        prefix = f"{self.project}-{self.branch}"
        if len(prefix) > self.name_prefix_max():
            longest = max(self.derived_names(), key=lambda n: len(n[0]) - n[1])
            raise ValueError(
                f"project {self.project!r} ({len(self.project)} characters) and branch "
                f"{self.branch!r} ({len(self.branch or '')}) make names too long: "
                f"{longest[0]!r} has {len(longest[0])} characters, at most {longest[1]} "
                f"are allowed; project and branch may have {self.name_prefix_max() - 1} "
                "characters together: shorten one of them"
                + ("" if self.uploads_bucket else " (or set uploads_bucket)")
            )
        return self

    def name_prefix_max(self) -> int:
        """The longest ``{project}-{branch}`` the derived names allow: those of the
        queues, and of the bucket unless ``uploads_bucket`` names it
        (:data:`NAME_PREFIX_MAX` with the bucket)."""
        if self.uploads_bucket is None:
            return NAME_PREFIX_MAX
        return min(QUEUE_NAME_MAX - len("-" + role) for role in QUEUE_ROLES)

    def derived_names(self) -> list[tuple[str, int]]:
        """Each ``{project}-{branch}-{role}`` name and its longest allowed length."""
        names = [(self.resource(role), QUEUE_NAME_MAX) for role in QUEUE_ROLES]
        if self.uploads_bucket is None:
            names.append((self.resource(BUCKET_ROLE), BUCKET_NAME_MAX))
        return names

    def resource(self, role: str) -> str:
        """``{project}-{branch}-{role}``, e.g. ``acme-dev-processing.fifo``."""
        return f"{self.project}-{self.branch}-{role}"

    @property
    def bucket(self) -> str:
        """The uploads bucket's name."""
        return self.uploads_bucket or self.resource("uploads")

    def origins(self) -> list[str]:
        """``cors_origins``; unset, the page's at ``[web]``'s defaults (the root settings
        fill it from their ``[web]``)."""
        return self.cors_origins if self.cors_origins is not None else page_origins(WebSettings())


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
        visibility_timeout_s=jobs.visibility_timeout_s,
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
        # Jobs run for long: a job waiting here could run on an idle worker now.
        prefetch_messages=0,
    )


def page_origins(web: WebSettings) -> list[str]:
    """The origins the web page is served from: ``[web] url``'s, and 127.0.0.1 and
    localhost at ``[web] port`` (the default of ``[jobs] cors_origins``)."""
    origins = [f"http://127.0.0.1:{web.port}", f"http://localhost:{web.port}"]
    if web.url:
        parts = urlsplit(web.url)
        if parts.scheme and parts.netloc:
            origins.insert(0, f"{parts.scheme}://{parts.netloc}")
    return list(dict.fromkeys(origins))
