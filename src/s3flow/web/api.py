"""The routes under ``/api`` (issue 11, part 3).

``POST /api/uploads``, ``POST /api/jobs/{job_id}/uploads`` (fresh upload URLs),
``GET /api/jobs/{job_id}``, ``GET /api/jobs`` and ``GET /api/config``; the event
stream ``GET /api/jobs/{job_id}/events`` is served before routing, by
:mod:`s3flow.web.events`. They read the :class:`~s3flow.web.runtime.WebRuntime`
from ``app.state.runtime``; authentication happens before them
(:mod:`s3flow.web.auth`), errors become ``{"error": ...}`` (:mod:`s3flow.web.errors`).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request

from s3flow.errors import translate_aws_error
from s3flow.jobs.uploads import UploadClosedError, UploadRequest, create_upload, resign_upload
from s3flow.state.jobs import JobCursor, JobOutput, JobRecord, JobStatus, job_page
from s3flow.web.errors import ApiError
from s3flow.web.render import config_json, job_json
from s3flow.web.responses import SafeJSONResponse
from s3flow.web.runtime import WebRuntime

__all__ = ["MAX_BODY_BYTES", "router"]

#: Largest request body accepted (an upload request lists names and sizes only).
MAX_BODY_BYTES = 1024 * 1024
_DEFAULT_LIMIT = 50
_MAX_LIMIT = 500
#: Lifetime of an output's download URL when ``[jobs]`` does not say.
_DOWNLOAD_EXPIRY_S = 900

router = APIRouter(prefix="/api")


def _is_number(text: str, max_digits: int) -> bool:
    """True for 1 to ``max_digits`` ASCII digits (what ``int()`` takes, unlike ``isdigit``)."""
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


def _runtime(request: Request) -> WebRuntime:
    runtime: WebRuntime = request.app.state.runtime
    return runtime


async def _json_body(request: Request) -> Any:
    """The request body decoded as JSON; 413 beyond :data:`MAX_BODY_BYTES`, 400 if not JSON."""
    declared = request.headers.get("content-length")
    too_large = ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    if declared is not None and _is_number(declared, 20) and int(declared) > MAX_BODY_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large
    if not body:
        raise ApiError(
            400,
            'the body is empty: send JSON {"template": ..., "files": [{"name", "size", '
            '"content_type"}]}',
        )
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # [[[[... within the size limit
        raise ApiError(400, "the body is not valid JSON: nested too deeply") from exc


async def _download_url(runtime: WebRuntime, output: JobOutput) -> str:
    """A presigned GET of one output, served as a download named like the output."""
    jobs = runtime.settings.jobs
    expiry = jobs.presign_expiry_s if jobs is not None else _DOWNLOAD_EXPIRY_S
    try:
        url = await runtime.s3.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": output.bucket,
                "Key": output.key,
                "ResponseContentDisposition": (
                    f"attachment; filename*=UTF-8''{quote(output.name, safe='')}"
                ),
            },
            ExpiresIn=expiry,
        )
    except Exception as exc:  # credentials missing, bad endpoint
        raise translate_aws_error(exc, "GeneratePresignedUrl") from exc
    return str(url)


async def _job_body(runtime: WebRuntime, job: JobRecord) -> dict[str, Any]:
    urls = [await _download_url(runtime, o) for o in job.outputs]
    return job_json(job, urls)


async def _job_or_404(runtime: WebRuntime, job_id: str) -> JobRecord:
    job = await runtime.store.get_job(job_id)
    if job is None:
        raise _no_job(job_id)
    return job


def _no_job(job_id: str) -> ApiError:
    return ApiError(404, f"no job {job_id[:100]!r}: check the job_id POST /api/uploads returned")


@router.post("/uploads", status_code=201)
async def post_upload(request: Request) -> SafeJSONResponse:
    """Create a job and presign one POST per file: 201, or 400 saying what is wrong."""
    runtime = _runtime(request)
    upload = UploadRequest.from_json(await _json_body(request))
    created = await create_upload(runtime.settings, runtime.store, runtime.s3, upload)
    return SafeJSONResponse(created.to_json(), status_code=201)


@router.post("/jobs/{job_id}/uploads")
async def post_resign(job_id: str, request: Request) -> SafeJSONResponse:
    """Fresh presigned POSTs for the files the job still waits for (its first ones expired).

    200 with the body of ``POST /api/uploads`` (``files`` lists only files not yet
    received); 404 for an unknown job; 409 when the job takes no more files.
    """
    runtime = _runtime(request)
    try:
        again = await resign_upload(runtime.settings, runtime.store, runtime.s3, job_id)
    except UploadClosedError as exc:
        raise ApiError(409, str(exc)) from exc
    if again is None:
        raise _no_job(job_id)
    return SafeJSONResponse(again.to_json())


@router.get("/jobs")
async def list_jobs(request: Request) -> SafeJSONResponse:
    """Jobs, newest first: ``?status=`` filters, ``?limit=`` (1-500, default 50).

    ``next_cursor`` is null on the last page; otherwise ``?cursor=<next_cursor>``
    (with the same ``status``) gives the jobs after this page.
    """
    runtime = _runtime(request)
    status: JobStatus | None = None
    raw_status = request.query_params.get("status")
    if raw_status:
        try:
            status = JobStatus(raw_status)
        except ValueError:
            allowed = ", ".join(s.value for s in JobStatus)
            raise ApiError(
                400, f"status {raw_status[:40]!r} is not a job status; use one of: {allowed}"
            ) from None
    raw_limit = request.query_params.get("limit")
    limit = _DEFAULT_LIMIT
    if raw_limit:
        # ASCII digits only: "²".isdigit() is True but int() refuses it.
        if not _is_number(raw_limit, 3) or not 1 <= int(raw_limit) <= _MAX_LIMIT:
            raise ApiError(
                400,
                f"limit {raw_limit[:20]!r} is not a whole number from 1 to {_MAX_LIMIT}: "
                f"use digits 0-9, e.g. ?limit={_DEFAULT_LIMIT}",
            )
        limit = int(raw_limit)
    after: JobCursor | None = None
    raw_cursor = request.query_params.get("cursor")
    if raw_cursor:
        after = JobCursor.from_token(raw_cursor)
        if after is None:
            raise ApiError(
                400,
                f"cursor {raw_cursor[:40]!r} is not one this API gave: pass the previous "
                "page's next_cursor as it is, or leave cursor out for the newest jobs",
            )
    jobs, following = await job_page(runtime.store, status=status, limit=limit, after=after)
    return SafeJSONResponse(
        {
            "jobs": [await _job_body(runtime, job) for job in jobs],
            "next_cursor": None if following is None else following.token(),
        }
    )


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, request: Request) -> SafeJSONResponse:
    """One job with its files, steps and outputs (download URLs presigned); 404 if unknown."""
    runtime = _runtime(request)
    return SafeJSONResponse(await _job_body(runtime, await _job_or_404(runtime, job_id)))


@router.get("/config")
async def get_config(request: Request) -> SafeJSONResponse:
    """Templates and upload limits, for clients that check files before sending them."""
    return SafeJSONResponse(config_json(_runtime(request).settings))
