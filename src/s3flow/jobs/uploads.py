"""Creating an upload: check the request, store the job, presign one POST per file.

:class:`UploadRequest` is what a client sends to ``POST /api/uploads``;
:func:`plan_upload` checks it against ``[jobs]`` and the templates (pure, every
refusal a :class:`BadUploadError` a person can act on); :func:`create_upload`
stores the job with its ``job.created`` event and presigns the POSTs. Each
policy pins the exact key, the content type and ``content-length-range``
[declared size, declared size] (S3 enforces it; the bridge checks the size
again, for endpoints that do not).
"""

from __future__ import annotations

import re
import time
import unicodedata
import uuid
from dataclasses import dataclass
from typing import Any

from s3flow.errors import S3flowError, aws_errors
from s3flow.settings import JobsSettings, Settings
from s3flow.state.jobs import EventType, JobFile, JobRecord, JobStatus, JobStep, JobStore

__all__ = [
    "MAX_NAME_CHARS",
    "UPLOADS_PREFIX",
    "BadUploadError",
    "DeclaredFile",
    "PresignedPost",
    "UploadClosedError",
    "UploadCreated",
    "UploadRequest",
    "create_upload",
    "parse_upload_key",
    "plan_upload",
    "resign_upload",
    "safe_name",
]

#: Every upload's objects live under ``uploads/<upload_id>/``.
UPLOADS_PREFIX = "uploads/"
_KEY = re.compile(r"^uploads/(?P<upload>[0-9a-f]{32})/(?P<index>\d{1,4})-(?P<name>[^/]+)$")
#: Longest file name an upload takes, in characters (code points).
MAX_NAME_CHARS = 200


class BadUploadError(S3flowError):
    """An upload request that cannot be accepted (the HTTP API answers 400 with it)."""


class UploadClosedError(S3flowError):
    """A job that takes no more files: not waiting for them, or past its deadline (409)."""


@dataclass(frozen=True)
class DeclaredFile:
    """One file a client says it will upload."""

    name: str
    size: int
    content_type: str


@dataclass(frozen=True)
class UploadRequest:
    """The body of ``POST /api/uploads``."""

    template: str
    files: tuple[DeclaredFile, ...]

    @classmethod
    def from_json(cls, body: Any) -> UploadRequest:
        """Parse a decoded JSON body; a wrong shape is a :class:`BadUploadError`."""
        if not isinstance(body, dict):
            raise BadUploadError(
                'the body must be a JSON object: {"template": ..., "files": [...]}'
            )
        template = body.get("template")
        if template is None or template == "":
            raise BadUploadError('"template" is missing: name one of the configured templates')
        if not isinstance(template, str):
            raise BadUploadError(
                '"template" must be a string, the name of a configured template (got '
                f"{type(template).__name__} {str(template)[:40]})"
            )
        _unicode(template, '"template"')
        files = body.get("files")
        if not isinstance(files, list) or not files:
            raise BadUploadError(
                '"files" must be a non-empty list of {"name", "size", "content_type"}'
            )
        out = []
        for i, f in enumerate(files):
            if not isinstance(f, dict):
                raise BadUploadError(
                    f"files[{i}] must be an object with name, size and content_type"
                )
            name, size, ctype = f.get("name"), f.get("size"), f.get("content_type")
            if not isinstance(name, str):
                raise BadUploadError(f'files[{i}]: "name" must be a string')
            if not isinstance(size, int) or isinstance(size, bool):
                raise BadUploadError(
                    f'files[{i}] ({name!r}): "size" must be an integer number of bytes'
                )
            if ctype is None or ctype == "":  # as S3 itself takes a file without one
                ctype = "application/octet-stream"
            if not isinstance(ctype, str):
                raise BadUploadError(f'files[{i}] ({name!r}): "content_type" must be a string')
            _unicode(name, f'files[{i}]: "name"')
            _unicode(ctype, f'files[{i}]: "content_type"')
            out.append(DeclaredFile(name=name, size=size, content_type=ctype))
        return cls(template=template, files=tuple(out))


@dataclass(frozen=True)
class PresignedPost:
    """Where and how to POST one file straight to S3."""

    name: str
    key: str
    url: str
    fields: dict[str, str]


@dataclass(frozen=True)
class UploadCreated:
    """The answer to ``POST /api/uploads`` (201)."""

    upload_id: str
    job_id: str
    files: tuple[PresignedPost, ...]
    expires_at: float  # when the URLs expire (server clock, Unix seconds)
    expires_in_s: int  # how long they live from now (for clients whose clock differs)

    def to_json(self) -> dict[str, Any]:
        """The documented JSON body."""
        return {
            "upload_id": self.upload_id,
            "job_id": self.job_id,
            "files": [
                {"name": f.name, "key": f.key, "url": f.url, "fields": f.fields} for f in self.files
            ],
            "expires_at": self.expires_at,
            "expires_in_s": self.expires_in_s,
        }


def _unicode(text: str, what: str) -> None:
    """Refuse text JSON decodes but UTF-8 cannot hold (a lone surrogate, ``"\\ud800"``):
    stored, it would make every answer that lists it fail to encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadUploadError(
            f"{what} is not valid Unicode text (a lone surrogate at character {exc.start}): "
            "send it as UTF-8"
        ) from exc


#: Characters that change how the text around them displays (bidirectional controls).
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def safe_name(name: str) -> str:
    """The client's file name made safe for a key: refuses paths and control characters.

    Letters (any script), digits, ``.``, ``-``, ``_`` stay; spaces and other
    characters become ``_``. Raises :class:`BadUploadError` for names that
    are empty, have a path separator, a control character, or are ``.``/``..``.
    """
    if not name or name in {".", ".."}:
        raise BadUploadError(f"file name {name!r} is not a file name")
    if "/" in name or "\\" in name:
        raise BadUploadError(f"file name {name!r} has a path separator: send the bare file name")
    if any(unicodedata.category(c) in ("Cc", "Cs") or c == "\x7f" for c in name):
        raise BadUploadError(f"file name {name!r} has a control character")
    if any(c in _BIDI_CONTROLS for c in name):
        # "invoice\u202etxt.exe" shows as "invoiceexe.txt": a name to disguise a type
        raise BadUploadError(
            f"file name {name!r} has a text-direction control character (U+202A-202E, "
            "U+2066-2069, U+200E/200F, U+061C), which makes a name display as another: "
            "rename the file"
        )
    if len(name) > MAX_NAME_CHARS:
        raise BadUploadError(
            f"file name {name[:40]!r}... is longer than {MAX_NAME_CHARS} characters"
        )
    cleaned = re.sub(r"[^\w.\-]", "_", unicodedata.normalize("NFC", name))
    return cleaned.lstrip(".") or "file"


def _extension(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def plan_upload(settings: Settings, request: UploadRequest) -> list[JobFile]:
    """The files of a new job, or :class:`BadUploadError` saying what is wrong."""
    jobs = _jobs(settings)
    template = settings.template(request.template)
    if template is None:
        known = ", ".join(t.name for t in settings.templates) or "(none configured)"
        raise BadUploadError(f"unknown template {request.template!r}; templates: {known}")
    if len(request.files) > jobs.max_files:
        raise BadUploadError(
            f"{len(request.files)} files is more than the {jobs.max_files} one upload may have"
        )
    seen: dict[str, str] = {}
    planned: list[JobFile] = []
    for index, f in enumerate(request.files):
        safe = safe_name(f.name)
        ext = _extension(f.name)
        if jobs.allowed_extensions and ext not in jobs.allowed_extensions:
            allowed = ", ".join(jobs.allowed_extensions)
            raise BadUploadError(
                f"{f.name!r}: extension {ext or '(none)'!r} is not allowed; allowed: {allowed}"
            )
        ctype = f.content_type.split(";")[0].strip().lower()
        if jobs.allowed_content_types and ctype not in jobs.allowed_content_types:
            allowed = ", ".join(jobs.allowed_content_types)
            raise BadUploadError(
                f"{f.name!r}: content type {ctype!r} is not allowed; allowed: {allowed}"
            )
        if f.size < 0:
            raise BadUploadError(f"{f.name!r}: size {f.size} is negative: give its size in bytes")
        if f.size == 0:
            raise BadUploadError(f"{f.name!r} is empty (0 bytes): empty files cannot be uploaded")
        if f.size > jobs.max_file_bytes:
            raise BadUploadError(
                f"{f.name!r}: {f.size} bytes is more than the {jobs.max_file_bytes} bytes "
                "allowed per file"
            )
        # One name to a person: the same letters composed or not (NFC), in any case.
        same = unicodedata.normalize("NFC", f.name).casefold()
        if same in seen:
            first = seen[same]
            twice = "is listed twice" if first == f.name else f"and {first!r} are one name"
            raise BadUploadError(
                f"{f.name!r} {twice}: the files of one upload need different names "
                "(not only in case or accents' encoding)"
            )
        seen[same] = f.name
        # key: relative to uploads/<upload_id>/, filled in by create_upload
        planned.append(JobFile(name=f.name, key=f"{index}-{safe}", size=f.size, content_type=ctype))
    return planned


def parse_upload_key(key: str) -> tuple[str, int] | None:
    """``uploads/<upload_id>/<index>-<name>`` -> (upload_id, index); None for other keys."""
    m = _KEY.match(key)
    return (m["upload"], int(m["index"])) if m else None


def _jobs(settings: Settings) -> JobsSettings:
    if settings.jobs is None:
        raise BadUploadError("upload jobs are not configured on this server (no [jobs] table)")
    return settings.jobs


async def create_upload(
    settings: Settings,
    store: JobStore,
    s3: Any,
    request: UploadRequest,
    *,
    now: float | None = None,
) -> UploadCreated:
    """Check ``request``, store its job (``job.created``) and presign one POST per file."""
    jobs = _jobs(settings)
    planned = plan_upload(settings, request)
    template = settings.template(request.template)
    assert template is not None  # plan_upload checked it
    upload_id = uuid.uuid4().hex
    job_id = f"job-{uuid.uuid4().hex}"
    at = time.time() if now is None else now
    files = tuple(
        JobFile(
            name=f.name,
            key=f"{UPLOADS_PREFIX}{upload_id}/{f.key}",
            size=f.size,
            content_type=f.content_type,
        )
        for f in planned
    )
    job = JobRecord(
        job_id=job_id,
        upload_id=upload_id,
        template=template.name,
        status=JobStatus.WAITING_FOR_FILES,
        files=files,
        steps=tuple(JobStep(name=s.processor) for s in template.steps),
        created_at=at,
        updated_at=at,
        expires_at=at + jobs.job_timeout_s,
    )
    # The upload URLs end with the job at the latest: a file sent after its deadline
    # expires the job, so a URL good for longer would only invite a wasted upload.
    url_ttl_s = min(jobs.presign_expiry_s, jobs.job_timeout_s)
    posts = await _presign(s3, jobs, files, url_ttl_s)
    await store.create_job(
        job,
        event_id=f"{job_id}:{EventType.JOB_CREATED}",
        data={
            "upload_id": upload_id,
            "template": template.name,
            "files": [{"name": f.name, "key": f.key, "size": f.size} for f in files],
            "expires_at": job.expires_at,
        },
    )
    return UploadCreated(
        upload_id=upload_id,
        job_id=job_id,
        files=posts,
        expires_at=at + url_ttl_s,
        expires_in_s=url_ttl_s,
    )


async def _presign(
    s3: Any, jobs: JobsSettings, files: tuple[JobFile, ...], ttl_s: int
) -> tuple[PresignedPost, ...]:
    """One presigned POST per file, pinning its key, content type and exact size."""
    posts = []
    for f in files:
        with aws_errors("GeneratePresignedPost"):
            post = await s3.generate_presigned_post(
                Bucket=jobs.bucket,
                Key=f.key,
                Fields={"Content-Type": f.content_type},
                Conditions=[
                    {"Content-Type": f.content_type},
                    # exactly the declared size (checked in plan_upload: 1..max_file_bytes)
                    ["content-length-range", f.size, f.size],
                ],
                ExpiresIn=ttl_s,
            )
        posts.append(
            PresignedPost(name=f.name, key=f.key, url=post["url"], fields=dict(post["fields"]))
        )
    return tuple(posts)


async def resign_upload(
    settings: Settings, store: JobStore, s3: Any, job_id: str, *, now: float | None = None
) -> UploadCreated | None:
    """Fresh presigned POSTs for the files ``job_id`` still waits for (None: no such job).

    Upload URLs live ``presign_expiry_s``; a client sending many files over a slow
    link starts its last ones later than that, and S3 refuses them ("Policy
    expired"). It asks for new ones here, for the job's files not yet received,
    living as long as the first ones but never past the job's deadline. A job
    that takes no more files (all received, ended, or past its deadline) is an
    :class:`UploadClosedError` saying so.
    """
    jobs = _jobs(settings)
    job = await store.get_job(job_id)
    if job is None:
        return None
    if job.status is not JobStatus.WAITING_FOR_FILES:
        hint = (
            "create a new upload for its files"
            if job.status in (JobStatus.FAILED, JobStatus.EXPIRED)
            else "every file it declared has been stored"
        )
        raise UploadClosedError(f"job {job_id} is {job.status}, not waiting for files: {hint}")
    at = time.time() if now is None else now
    left_s = int(job.expires_at - at)
    if left_s < 1:
        raise UploadClosedError(
            f"job {job_id} is past its deadline (job_timeout_s = {jobs.job_timeout_s}): it "
            "expires without the files it still waits for; create a new upload"
        )
    ttl_s = min(jobs.presign_expiry_s, left_s)
    waiting = tuple(f for f in job.files if not f.received)
    return UploadCreated(
        upload_id=job.upload_id,
        job_id=job.job_id,
        files=await _presign(s3, jobs, waiting, ttl_s),
        expires_at=at + ttl_s,
        expires_in_s=ttl_s,
    )
