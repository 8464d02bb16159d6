"""The JSON bodies of the API: a job as clients see it, and the page's configuration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from s3flow.jobs.uploads import MAX_NAME_CHARS
from s3flow.settings import Settings
from s3flow.state.jobs import JobRecord

__all__ = ["config_json", "job_fields", "job_json"]


def job_fields(
    job: JobRecord, *, files: list[dict[str, Any]], outputs: list[dict[str, Any]]
) -> dict[str, Any]:
    """What every JSON view of a job shows, in this order (the API's and ``s3flow jobs``').

    Each view gives its own entries for the job's ``files`` and ``outputs``: the
    API shows sizes and presigned URLs, the CLI object keys.
    """
    return {
        "job_id": job.job_id,
        "upload_id": job.upload_id,
        "template": job.template,
        "status": str(job.status),
        "files": files,
        "steps": [
            {"name": s.name, "status": str(s.status), "progress": dict(s.progress)}
            for s in job.steps
        ],
        "outputs": outputs,
        "error": job.error,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }


def job_json(job: JobRecord, output_urls: Sequence[str | None]) -> dict[str, Any]:
    """``GET /api/jobs/{job_id}``: ``output_urls`` are the outputs' presigned GETs, in order.

    The documented keys (``job_id``, ``upload_id``, ``template``, ``status``,
    ``files``, ``steps``, ``outputs``, ``error``) plus the times and
    ``last_seq`` (the id of the job's latest event).
    """
    doc = job_fields(
        job,
        files=[{"name": f.name, "received": f.received, "size": f.size} for f in job.files],
        outputs=[
            {"name": o.name, "url": url, "size": o.size}
            for o, url in zip(job.outputs, output_urls, strict=True)
        ],
    )
    return {**doc, "expires_at": job.expires_at, "last_seq": job.last_seq}


def config_json(settings: Settings) -> dict[str, Any]:
    """``GET /api/config``: what a client checks before uploading, and the templates."""
    jobs = settings.jobs
    return {
        "jobs_enabled": jobs is not None,
        "auth": bool(settings.web.tokens),
        "templates": [
            {
                "name": t.name,
                "description": t.description,
                "steps": [{"name": s.processor} for s in t.steps],
            }
            for t in settings.templates
        ],
        "max_file_bytes": jobs.max_file_bytes if jobs else None,
        "max_files": jobs.max_files if jobs else None,
        "max_name_chars": MAX_NAME_CHARS,
        "allowed_extensions": list(jobs.allowed_extensions) if jobs else [],
        "allowed_content_types": list(jobs.allowed_content_types) if jobs else [],
        # what the upload URLs get: at most the job's own time
        "presign_expiry_s": min(jobs.presign_expiry_s, jobs.job_timeout_s) if jobs else None,
    }
