"""Rows <-> records: the column lists and converters shared by the SQLite mixins.

Each ``*_COLS`` list is the column order its converters read and write: a
``SELECT {COLS}`` row goes to ``file_record`` / ``tracked_file`` /
``manifest_record``, and ``file_row`` / ``manifest_row`` give the parameters
for an ``INSERT ({COLS})``. Lists and dicts are stored as JSON text. Where the
columns are the record's fields by name and in order (files, manifests, job
events), the converters follow the column list itself.

A job is stored whole as ``record`` (:func:`s3flow.state.jobs.job_to_json`, the
encoding every backend shares) next to the columns it is looked up by
(``job_row``); a ``job_events`` row (``JOB_EVENT_COLS``) reads back with
``job_event``.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable
from typing import Any, TypeVar

from s3flow.state.jobs import EventType, JobEvent, JobRecord, job_to_json
from s3flow.state.manifest_lifecycle import files_from_text, files_to_text
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

T = TypeVar("T")
#: Converts one column between its stored form and its field's.
Convert = Callable[[Any], Any]


@functools.cache
def _names(cols: str) -> tuple[str, ...]:
    """The column names of a ``*_COLS`` list."""
    return tuple(c.strip() for c in cols.split(","))


def _from_row(cls: Callable[..., T], cols: str, r: tuple[Any, ...], **read: Convert) -> T:
    """A row in ``cols`` order, each column a field of ``cls`` by its name, as a ``cls``.

    ``read`` converts the columns not stored as the field holds them (JSON, enums).
    """
    return cls(**{n: read[n](v) if n in read else v for n, v in zip(_names(cols), r, strict=True)})


def _to_row(obj: object, cols: str, **write: Convert) -> tuple[Any, ...]:
    """Inverse of :func:`_from_row`: ``obj``'s fields in ``cols`` order (``write`` converts)."""
    values = ((n, getattr(obj, n)) for n in _names(cols))
    return tuple(write[n](v) if n in write else v for n, v in values)


_value = operator.attrgetter("value")  # an enum member as stored


def file_record(r: tuple[Any, ...]) -> FileRecord:
    """A ``files`` row (``FILE_COLS`` order) as a record.

    Positional, unlike the generic :func:`_from_row`: it runs for every object's
    claim and completion, where the generic form costs twice the CPU."""
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
    return _from_row(ManifestRecord, MANIFEST_COLS, r, status=ManifestStatus, files=files_from_text)


def manifest_row(m: ManifestRecord) -> tuple[Any, ...]:
    """Inverse of :func:`manifest_record`."""
    return _to_row(m, MANIFEST_COLS, status=_value, files=files_to_text)


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
    return _from_row(JobEvent, JOB_EVENT_COLS, r, type=EventType, data=json.loads)
