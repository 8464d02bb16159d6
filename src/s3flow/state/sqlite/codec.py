"""Rows <-> records: the column lists and converters shared by the SQLite mixins.

Each ``*_COLS`` list is the column order its converters read and write: a
``SELECT {COLS}`` row goes to ``file_record`` / ``tracked_file`` /
``manifest_record``, and ``file_row`` / ``manifest_row`` give the parameters
for an ``INSERT ({COLS})``. Lists and dicts are stored as JSON text.

A job is stored whole as ``record`` (:func:`s3flow.state.jobs.job_to_json`, the
encoding every backend shares) next to the columns it is looked up by
(``job_row``); a ``job_events`` row (``JOB_EVENT_COLS``) reads back with
``job_event``.
"""

from __future__ import annotations

import json
from typing import Any

from s3flow.state.jobs import EventType, JobEvent, JobRecord, job_to_json
from s3flow.state.lifecycle import files_from_text, files_to_text
from s3flow.state.records import (
    FileRecord,
    FileStatus,
    ManifestFile,
    ManifestFileStatus,
    ManifestRecord,
    ManifestStatus,
    TrackedFile,
)

FILE_COLS = (
    "bucket, key, version, pipeline, status, size, sequencer, attempts, last_error_class, "
    "last_error, outputs, worker_id, claim_owner, claim_expires_at, fencing_token, "
    "timestamps, created_at, updated_at, failures"
)
MANIFEST_FILE_COLS = (
    "dataset, date, bucket, key, version, size, etag, version_id, status, manifest_id, "
    "added_at, updated_at, detail"
)
MANIFEST_COLS = (
    "manifest_id, dataset, date, status, files, trigger, fencing_token, sealed_by, "
    "created_at, updated_at, location, detail, attempts"
)
JOB_COLS = (
    "job_id, upload_id, template, status, created_at, updated_at, expires_at, last_seq, record"
)
JOB_EVENT_COLS = "job_id, seq, event_id, type, data, at"


def file_record(r: tuple[Any, ...]) -> FileRecord:
    """A ``files`` row (``FILE_COLS`` order) as a record."""
    return FileRecord(
        r[0],
        r[1],
        r[2],
        r[3],
        FileStatus(r[4]),
        r[5],
        r[6],
        r[7],
        r[8],
        r[9],
        json.loads(r[10]),
        r[11],
        r[12],
        r[13],
        r[14],
        json.loads(r[15]),
        r[16],
        r[17],
        r[18],
    )


def file_row(rec: FileRecord) -> tuple[Any, ...]:
    """Inverse of :func:`file_record`."""
    return (
        rec.bucket,
        rec.key,
        rec.version,
        rec.pipeline,
        rec.status.value,
        rec.size,
        rec.sequencer,
        rec.attempts,
        rec.last_error_class,
        rec.last_error,
        json.dumps(rec.outputs),
        rec.worker_id,
        rec.claim_owner,
        rec.claim_expires_at,
        rec.fencing_token,
        json.dumps(rec.timestamps),
        rec.created_at,
        rec.updated_at,
        rec.failures,
    )


def tracked_file(r: tuple[Any, ...]) -> TrackedFile:
    """A ``manifest_files`` row (``MANIFEST_FILE_COLS`` order) as a tracked file."""
    return TrackedFile(
        dataset=r[0],
        date=r[1],
        file=ManifestFile(bucket=r[2], key=r[3], size=r[5], etag=r[6], version_id=r[7]),
        status=ManifestFileStatus(r[8]),
        manifest_id=r[9],
        added_at=r[10],
        updated_at=r[11],
        detail=r[12],
    )


def manifest_record(r: tuple[Any, ...]) -> ManifestRecord:
    """A ``manifests`` row (``MANIFEST_COLS`` order) as a record."""
    return ManifestRecord(
        manifest_id=r[0],
        dataset=r[1],
        date=r[2],
        status=ManifestStatus(r[3]),
        files=files_from_text(r[4]),
        trigger=r[5],
        fencing_token=r[6],
        sealed_by=r[7],
        created_at=r[8],
        updated_at=r[9],
        location=r[10],
        detail=r[11],
        attempts=r[12],
    )


def manifest_row(m: ManifestRecord) -> tuple[Any, ...]:
    """Inverse of :func:`manifest_record`."""
    return (
        m.manifest_id,
        m.dataset,
        m.date,
        m.status.value,
        files_to_text(m.files),
        m.trigger,
        m.fencing_token,
        m.sealed_by,
        m.created_at,
        m.updated_at,
        m.location,
        m.detail,
        m.attempts,
    )


def job_row(job: JobRecord) -> tuple[Any, ...]:
    """The parameters of an ``INSERT INTO jobs ({JOB_COLS})`` for ``job``."""
    return (
        job.job_id,
        job.upload_id,
        job.template,
        job.status.value,
        job.created_at,
        job.updated_at,
        job.expires_at,
        job.last_seq,
        job_to_json(job),
    )


def job_event(r: tuple[Any, ...]) -> JobEvent:
    """A ``job_events`` row (``JOB_EVENT_COLS`` order) as an event."""
    return JobEvent(
        job_id=r[0],
        seq=r[1],
        event_id=r[2],
        type=EventType(r[3]),
        data=json.loads(r[4]),
        at=r[5],
    )
