"""``POST /upload``: one file through the server, for HTML forms and ``curl -F``.

A multipart/form-data body with a ``file`` part, an optional ``template``
(default: the first configured template) and, when ``[web] tokens`` are set
and no ``Authorization: Bearer`` header is sent, a ``token`` field *before*
the file. It needs no JavaScript::

    curl -F template=count -F file=@report.txt http://127.0.0.1:8080/upload

The file becomes a one-file upload job exactly as ``POST /api/uploads`` would
create it (:func:`s3flow.jobs.uploads.create_upload`: same checks, same job,
same key ``uploads/<upload_id>/0-<safe name>``), and the server stores it at
that key itself, so the bridge picks it up like any presigned upload. The
answer (201) is JSON: the key, the bucket and the job (see
:func:`post_form_upload`). docs/web.md says why the key is the job's upload
key and not ``incoming/…``.

Limits are enforced while the body streams in: a declared ``Content-Length``
far beyond ``max_file_bytes`` is refused before reading (413), a file part
that grows beyond it is refused at that byte (413), a disallowed name or
extension as soon as the part's headers arrive (400). The file is spooled (in
memory up to 1 MiB, then a temporary file) because S3 needs its length
before the job can be created.
"""

from __future__ import annotations

import contextlib
import mimetypes
import tempfile
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from s3flow.errors import S3flowError, translate_aws_error
from s3flow.jobs.uploads import DeclaredFile, UploadRequest, create_upload, plan_upload
from s3flow.settings import Settings
from s3flow.state.jobs import EventType
from s3flow.web.auth import TokenChecker, request_token
from s3flow.web.errors import ApiError
from s3flow.web.responses import SafeJSONResponse
from s3flow.web.runtime import WebRuntime

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["FORM_OVERHEAD_BYTES", "FormUpload", "read_form", "router"]

#: Room for the form's other fields and the multipart framing beyond the file itself.
FORM_OVERHEAD_BYTES = 64 * 1024
#: The longest value of a text field (``template``, ``token``).
_MAX_FIELD_BYTES = 4096
#: A file spooled in memory up to this size, then in a temporary file.
_SPOOL_BYTES = 1024 * 1024
_GENERIC_TYPES = frozenset({"", "application/octet-stream"})
_EXAMPLE = "curl -F file=@report.txt [-F template=NAME] URL/upload"

router = APIRouter()


@dataclass
class _Part:
    """The part being read: its headers, then (text fields) its value."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    name: str = ""
    filename: str | None = None
    content_type: str = ""
    value: bytearray = field(default_factory=bytearray)


@dataclass
class FormUpload:
    """What a form brought: the file (spooled), its name and type, the other fields."""

    filename: str
    content_type: str
    size: int
    body: IO[bytes]
    template: str | None = None
    token: str | None = None


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _content_type(declared: str, filename: str) -> str:
    """The part's media type; a generic one (none, octet-stream) is guessed from the name."""
    media = declared.split(";", 1)[0].strip().lower()
    if media not in _GENERIC_TYPES:
        return media
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    if guessed:
        return guessed
    if filename.lower().endswith((".log", ".ndjson", ".md")):
        return "text/plain"
    return "application/octet-stream"


def _default_template(settings: Settings) -> str:
    return settings.templates[0].name if settings.templates else ""


class _Reader:
    """Feeds body chunks to a streaming multipart parser and applies the limits as they come.

    The parser's callbacks only record what happened; :meth:`feed` then
    handles the records, so a refusal (an :class:`ApiError`) is raised from
    this code, not from inside the parser.
    """

    def __init__(
        self, boundary: bytes, settings: Settings, checker: TokenChecker, bearer: str | None
    ) -> None:
        jobs = settings.jobs
        assert jobs is not None
        self.settings = settings
        self.max_file_bytes = jobs.max_file_bytes
        self.checker = checker
        self.authorized = not checker.enabled or checker.check(bearer)
        self.part = _Part()
        self.events: list[tuple[str, bytes]] = []
        self.template: str | None = None
        self.token: str | None = None
        self.file: IO[bytes] | None = None
        self.filename: str | None = None
        self.file_type = ""
        self.size = 0
        self.in_file = False
        self.other_bytes = 0
        self.ended = False
        callbacks: MultipartCallbacks = {
            "on_part_begin": lambda: self.events.append(("part_begin", b"")),
            "on_part_data": lambda d, s, e: self.events.append(("part_data", d[s:e])),
            "on_part_end": lambda: self.events.append(("part_end", b"")),
            "on_header_field": lambda d, s, e: self.events.append(("header_field", d[s:e])),
            "on_header_value": lambda d, s, e: self.events.append(("header_value", d[s:e])),
            "on_header_end": lambda: self.events.append(("header_end", b"")),
            "on_headers_finished": lambda: self.events.append(("headers_finished", b"")),
            "on_end": lambda: self.events.append(("end", b"")),
        }
        try:
            self.parser = MultipartParser(boundary, callbacks)
        except FormParserError as exc:  # a boundary over 256 bytes (RFC 2046: at most 70)
            raise ApiError(400, f"the multipart body is malformed: {exc}") from exc

    def close(self) -> None:
        """Drop the spooled file (after a refusal)."""
        if self.file is not None:
            self.file.close()

    def feed(self, chunk: bytes) -> None:
        """Parse one chunk of the body (``b""``: the body is complete)."""
        try:
            if chunk:
                self.parser.write(chunk)
            else:
                self.parser.finalize()
        except FormParserError as exc:
            raise ApiError(400, f"the multipart body is malformed: {exc}") from exc
        events, self.events = self.events, []
        for kind, data in events:
            self._handle(kind, data)

    def _handle(self, kind: str, data: bytes) -> None:
        part = self.part
        if kind == "part_begin":
            self.part = _Part()
        elif kind == "header_field":
            part.header_field += data
        elif kind == "header_value":
            part.header_value += data
        elif kind == "header_end":
            part.headers.append((bytes(part.header_field).lower(), bytes(part.header_value)))
            part.header_field.clear()
            part.header_value.clear()
        elif kind == "headers_finished":
            self._start_part(part)
        elif kind == "part_data":
            self._part_data(part, data)
        elif kind == "part_end":
            self._end_part(part)
        elif kind == "end":
            self.ended = True

    def _start_part(self, part: _Part) -> None:
        for name, value in part.headers:
            if name == b"content-disposition":
                _, options = parse_options_header(value)
                part.name = _decode(options.get(b"name", b""))
                if b"filename" in options:
                    part.filename = _decode(options[b"filename"])
            elif name == b"content-type":
                part.content_type = _decode(value)
        if part.filename is None:
            return
        if part.name != "file":
            raise ApiError(
                400, f"send the file in a field named 'file', not {part.name[:40]!r}: {_EXAMPLE}"
            )
        if self.file is not None:
            raise ApiError(
                400, "one file per request: POST /upload again, or use the page for several"
            )
        if not self.authorized:
            raise ApiError(
                401,
                "this server needs a token: send 'Authorization: Bearer <token>', or a 'token' "
                "field before the file",
                {"WWW-Authenticate": 'Bearer realm="s3flow"'},
            )
        self.filename = part.filename
        self.file_type = _content_type(part.content_type, part.filename)
        # The name, extension, content type and template, checked before any byte is read
        # (the size is checked as the bytes come, and again once it is known).
        plan_upload(
            self.settings,
            UploadRequest(
                template=self.template or _default_template(self.settings),
                files=(DeclaredFile(name=part.filename, size=1, content_type=self.file_type),),
            ),
        )
        self.file = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115
        self.in_file = True

    def _part_data(self, part: _Part, data: bytes) -> None:
        if self.in_file:
            assert self.file is not None
            self.size += len(data)
            if self.size > self.max_file_bytes:
                raise ApiError(
                    413,
                    f"{self.filename!r} is larger than the {self.max_file_bytes} bytes allowed "
                    "per file",
                )
            self.file.write(data)
            return
        self.other_bytes += len(data)
        if len(part.value) + len(data) > _MAX_FIELD_BYTES or (
            self.other_bytes > FORM_OVERHEAD_BYTES
        ):
            raise ApiError(413, f"the form field {part.name[:40]!r} is too long")
        part.value += data

    def _end_part(self, part: _Part) -> None:
        if self.in_file:
            self.in_file = False
            return
        value = _decode(bytes(part.value)).strip()
        if part.name == "template":
            self.template = value or None
        elif part.name == "token":
            self.token = value or None
            if not self.authorized:
                if not self.checker.check(self.token):
                    raise ApiError(
                        401,
                        "the API token was not accepted: check the token you were given",
                        {"WWW-Authenticate": 'Bearer realm="s3flow"'},
                    )
                self.authorized = True


async def read_form(request: Request, settings: Settings, checker: TokenChecker) -> FormUpload:
    """Read the multipart body of ``request`` with the limits applied as it streams in.

    Raises :class:`ApiError` (400, 401, 413) or
    :class:`~s3flow.jobs.uploads.BadUploadError` (400) at the first refusal;
    the caller owns (and closes) the returned file.
    """
    jobs = settings.jobs
    if jobs is None:
        raise ApiError(400, "upload jobs are not configured on this server (no [jobs] table)")
    media, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if media != b"multipart/form-data":
        raise ApiError(400, f"send the file as multipart/form-data (an HTML form, or {_EXAMPLE})")
    if not boundary:
        raise ApiError(
            400,
            "the Content-Type multipart/form-data has no boundary: let the client build the "
            f"form and its header (an HTML form, or {_EXAMPLE}) rather than setting it by hand",
        )
    declared = request.headers.get("content-length")
    limit = jobs.max_file_bytes + FORM_OVERHEAD_BYTES
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, f"the body is larger than the {jobs.max_file_bytes} bytes allowed per file"
        )
    bearer = request_token(request.scope)
    # Without [web] tokens any token is ignored, as on every /api route.
    if bearer is not None and checker.enabled and not checker.check(bearer):
        raise ApiError(
            401,
            "the API token was not accepted: check the token you were given",
            {"WWW-Authenticate": 'Bearer realm="s3flow"'},
        )
    reader = _Reader(boundary, settings, checker, bearer)
    try:
        async for chunk in request.stream():
            if chunk:
                reader.feed(chunk)
        reader.feed(b"")
        if not reader.ended:
            raise ApiError(400, "the multipart body ended early (the upload was interrupted?)")
        if not reader.authorized:
            raise ApiError(
                401,
                "this server needs a token: send 'Authorization: Bearer <token>', or a "
                "'token' field before the file",
                {"WWW-Authenticate": 'Bearer realm="s3flow"'},
            )
        if reader.file is None or reader.filename is None:
            raise ApiError(400, f"no file in the form: send it in a field named 'file': {_EXAMPLE}")
    except BaseException:
        reader.close()
        raise
    reader.file.seek(0)
    return FormUpload(
        filename=reader.filename,
        content_type=reader.file_type,
        size=reader.size,
        body=reader.file,
        template=reader.template,
        token=reader.token,
    )


async def _mark_failed(runtime: WebRuntime, job_id: str, error: str) -> None:
    """Fail a job whose only file could not be stored (instead of leaving it to expire)."""
    with contextlib.suppress(Exception):
        await runtime.store.append_event(
            job_id,
            event_id=f"{job_id}:{EventType.JOB_FAILED}:form",
            type=EventType.JOB_FAILED,
            data={"error": error},
        )


@router.post("/upload", status_code=201)
async def post_form_upload(request: Request) -> SafeJSONResponse:
    """One file through the server: a one-file job, the file stored at the job's key.

    201 ``{"key", "bucket", "name", "size", "content_type", "template",
    "job_id", "upload_id", "job_url", "status_url", "events_url"}``; 400
    (bad form, name, extension, type, template, empty file), 401 (token),
    413 (too large) and 503 (storage), each as ``{"error": ...}``.
    """
    runtime: WebRuntime = request.app.state.runtime
    settings = runtime.settings
    checker: TokenChecker = request.app.checker
    form = await read_form(request, settings, checker)
    try:
        template = form.template or _default_template(settings)
        upload = UploadRequest(
            template=template,
            files=(
                DeclaredFile(name=form.filename, size=form.size, content_type=form.content_type),
            ),
        )
        created = await create_upload(settings, runtime.store, runtime.s3, upload)
        jobs = settings.jobs
        assert jobs is not None
        key = created.files[0].key
        try:
            await runtime.s3.put_object(
                Bucket=jobs.bucket,
                Key=key,
                Body=form.body,
                ContentLength=form.size,
                ContentType=form.content_type,
            )
        except Exception as exc:
            error = translate_aws_error(exc, f"PutObject s3://{jobs.bucket}/{key}")
            await _mark_failed(runtime, created.job_id, f"the file could not be stored: {error}")
            if isinstance(exc, S3flowError):
                raise
            raise error from exc
    finally:
        form.body.close()
    job_id = created.job_id
    body: dict[str, Any] = {
        "key": key,
        "bucket": jobs.bucket,
        "name": form.filename,
        "size": form.size,
        "content_type": form.content_type,
        "template": template,
        "job_id": job_id,
        "upload_id": created.upload_id,
        "job_url": f"/jobs/{job_id}",
        "status_url": f"/api/jobs/{job_id}",
        "events_url": f"/api/jobs/{job_id}/events",
    }
    return SafeJSONResponse(body, status_code=201)
