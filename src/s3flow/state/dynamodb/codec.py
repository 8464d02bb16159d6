"""DynamoDB items <-> state records: keys, file records, history, tracked files, manifests, jobs.

Pure functions, no I/O. The key layout of each table is described in
:mod:`s3flow.state.dynamodb`.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
import zlib
from typing import Any

from s3flow.state.jobs import (
    EventType,
    JobEvent,
    JobPosition,
    JobRecord,
    job_from_json,
    job_to_json,
)
from s3flow.state.manifest_lifecycle import files_from_text, files_to_text
from s3flow.state.records import (
    FileRecord,
    FileStatus,
    HistoryEntry,
    ManifestFile,
    ManifestFileStatus,
    ManifestRecord,
    ManifestStatus,
    ManifestTooLargeError,
    ObjectId,
    TrackedFile,
)

Item = dict[str, Any]

# --- values and keys ---------------------------------------------------------------------


def num(v: float) -> str:
    """A number attribute's text (never in exponent notation)."""
    text = repr(v)
    if "e" in text or "E" in text:
        text = format(v, "f")
    return text


def opt_str(item: Item, name: str) -> str | None:
    """The string attribute ``name`` of ``item`` (None when absent)."""
    v = item.get(name)
    return None if v is None else str(v["S"])


def opt_float(item: Item, name: str) -> float | None:
    """The number attribute ``name`` of ``item`` as a float (None when absent)."""
    v = item.get(name)
    return None if v is None else float(v["N"])


#: DynamoDB's key limits in UTF-8 bytes: a partition key 2,048, a sort key 1,024 (of a
#: table and of an index alike).
PK_MAX_BYTES = 2048
SK_MAX_BYTES = 1024


def fit_key(text: str, max_bytes: int) -> str:
    """``text`` as a key value: as it is when it fits in ``max_bytes``, else
    ``sha256:<hex digest of its UTF-8 bytes>``.

    Keys hold object keys JSON-escaped (a quote or backslash takes 2 bytes, a control
    character 6), so S3's longest keys (1,024 bytes) can pass DynamoDB's limits. The
    digest identifies the object as well (a lookup computes it again), the items keep
    the bucket and key as attributes, and no JSON key starts with ``s``.
    """
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return "sha256:" + hashlib.sha256(data).hexdigest()


def object_pk(bucket: str, key: str) -> str:
    """The ``pk`` of an object's items in the files and history tables."""
    return fit_key(
        json.dumps([bucket, key], ensure_ascii=False, separators=(",", ":")), PK_MAX_BYTES
    )


def record_key(oid: ObjectId) -> Item:
    """The key of one version's item in the files table."""
    return {"pk": {"S": object_pk(oid.bucket, oid.key)}, "sk": {"S": "v:" + oid.version}}


def json_key(*parts: str) -> str:
    """``parts`` as a JSON list: a key of the manifests table."""
    return json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))


def tracked_key(dataset: str, date: str, oid: ObjectId) -> Item:
    """The key of a tracked file in the manifests table.

    Its ``sk`` also ends the file's ``pending_sk`` (``<date>#<17 digits>#<sk>``), a sort
    key of the pending index: it is kept short enough for both.
    """
    room = SK_MAX_BYTES - len(date.encode()) - len("#00000000000000000#")
    return {
        "pk": {"S": json_key("file", dataset, date)},
        "sk": {"S": fit_key(json_key(oid.bucket, oid.key, oid.version), room)},
    }


def manifest_key(manifest_id: str) -> Item:
    """The key of a manifest in the manifests table."""
    return {"pk": {"S": json_key("manifest", manifest_id)}, "sk": {"S": "m"}}


def marker_key(dataset: str, manifest_id: str) -> Item:
    """The key of an unfinished seal's marker in the manifests table."""
    return {"pk": {"S": json_key("unfinished", dataset)}, "sk": {"S": manifest_id}}


def dataset_key(dataset: str) -> Item:
    """The key of a dataset's entry in the manifests table's list of datasets."""
    return {"pk": {"S": json_key("datasets")}, "sk": {"S": dataset}}


def purge_seconds(purge_at: float) -> int:
    """The TTL value stored for ``purge_at``: whole unix seconds, rounded up."""
    return math.ceil(purge_at)


def expiry_day(purge_at: float | None) -> int | None:
    """The UTC day (days since the epoch) an item with this ``purge_at`` expires on."""
    return None if purge_at is None else purge_seconds(purge_at) // 86_400


def with_purge(item: Item, purge_at: float | None) -> Item:
    """``item`` with its TTL attribute ``purge_at`` (unchanged when None)."""
    if purge_at is not None:
        item["purge_at"] = {"N": str(purge_seconds(purge_at))}
    return item


# --- write ids ------------------------------------------------------------------------------

#: The attribute holding the id of the conditional write that last changed an item.
WID = "wid"


def write_id() -> str:
    """A new write's id: a conditional write that fails on the item it wrote itself
    (the SDK retried it after the answer was lost) knows that item by this id."""
    return uuid.uuid4().hex


def ours(item: Item, wid: str) -> bool:
    """Whether ``item`` (as a failed condition or a read returned it) was written by ``wid``."""
    return bool(item.get(WID, {}).get("S") == wid)


# --- the files' status counters (meta table) ---------------------------------------------

#: The meta item listing the pipelines that have counters and the last day bucket written.
COUNTS_REGISTRY_PK = "fcounts"


def counts_pk(pipeline: str, day: int | None = None) -> str:
    """The meta ``pk`` of a pipeline's live counters, or of its bucket of expiry ``day``."""
    return "fcount#" + (json_key(pipeline) if day is None else json_key(pipeline, str(day)))


def listing_key(pipeline: str, status: str) -> str:
    """``lst``: the listing-index partition of a pipeline's records in one status."""
    return json_key(pipeline, status)


# --- file records and history ------------------------------------------------------------

_OPT_STR = ("sequencer", "last_error_class", "last_error", "worker_id", "claim_owner")


def encode_record(rec: FileRecord, rev: int, purge_at: float | None = None) -> Item:
    """The files-table item of ``rec`` at revision ``rev`` (expiring at ``purge_at``)."""
    item: Item = {
        "pk": {"S": object_pk(rec.bucket, rec.key)},
        "sk": {"S": "v:" + rec.version},
        "bucket": {"S": rec.bucket},
        "key": {"S": rec.key},
        "version": {"S": rec.version},
        "pipeline": {"S": rec.pipeline},
        "status": {"S": rec.status.value},
        "attempts": {"N": str(rec.attempts)},
        "failures": {"N": str(rec.failures)},
        "outputs": {"L": [{"S": o} for o in rec.outputs]},
        "fencing_token": {"N": str(rec.fencing_token)},
        "timestamps": {"M": {k: {"N": num(v)} for k, v in rec.timestamps.items()}},
        "created_at": {"N": num(rec.created_at)},
        "updated_at": {"N": num(rec.updated_at)},
        "rev": {"N": str(rev)},
        "lst": {"S": listing_key(rec.pipeline, rec.status.value)},
        "lst_at": {"N": num(rec.updated_at)},
    }
    with_purge(item, purge_at)
    for name in _OPT_STR:
        value = getattr(rec, name)
        if value is not None:
            item[name] = {"S": value}
    if rec.size is not None:
        item["size"] = {"N": str(rec.size)}
    if rec.claim_expires_at is not None:
        item["claim_expires_at"] = {"N": num(rec.claim_expires_at)}
    return item


def decode_record(item: Item) -> tuple[FileRecord, int]:
    """A files-table item as ``(record, revision)``."""
    size = item.get("size")
    rec = FileRecord(
        bucket=item["bucket"]["S"],
        key=item["key"]["S"],
        version=item["version"]["S"],
        pipeline=item["pipeline"]["S"],
        status=FileStatus(item["status"]["S"]),
        size=None if size is None else int(size["N"]),
        sequencer=opt_str(item, "sequencer"),
        attempts=int(item["attempts"]["N"]),
        failures=int(item.get("failures", {"N": "0"})["N"]),
        last_error_class=opt_str(item, "last_error_class"),
        last_error=opt_str(item, "last_error"),
        outputs=[o["S"] for o in item.get("outputs", {}).get("L", [])],
        worker_id=opt_str(item, "worker_id"),
        claim_owner=opt_str(item, "claim_owner"),
        claim_expires_at=opt_float(item, "claim_expires_at"),
        fencing_token=int(item["fencing_token"]["N"]),
        timestamps={k: float(v["N"]) for k, v in item.get("timestamps", {}).get("M", {}).items()},
        created_at=float(item["created_at"]["N"]),
        updated_at=float(item["updated_at"]["N"]),
    )
    return rec, int(item.get("rev", {}).get("N", "0"))


def encode_history(
    rec: FileRecord, entry: HistoryEntry, rev: int, purge_at: float | None = None
) -> Item:
    """The history-table item of ``entry`` (a transition of ``rec`` to revision ``rev``)."""
    micros = max(0, round(entry.at * 1_000_000))
    item: Item = {
        "pk": {"S": object_pk(rec.bucket, rec.key)},
        "sk": {"S": f"{micros:017d}#{rev:010d}#{uuid.uuid4().hex[:8]}"},
        "version": {"S": entry.version},
        "at": {"N": num(entry.at)},
        "new": {"S": entry.new.value},
    }
    if entry.old is not None:
        item["old"] = {"S": entry.old.value}
    if entry.worker_id is not None:
        item["worker_id"] = {"S": entry.worker_id}
    if entry.detail:
        item["detail"] = {"S": entry.detail}
    return with_purge(item, purge_at)


def decode_history(item: Item) -> HistoryEntry:
    """A history-table item as a HistoryEntry."""
    old = opt_str(item, "old")
    return HistoryEntry(
        at=float(item["at"]["N"]),
        version=item["version"]["S"],
        old=None if old is None else FileStatus(old),
        new=FileStatus(item["new"]["S"]),
        worker_id=opt_str(item, "worker_id"),
        detail=opt_str(item, "detail") or "",
    )


# --- tracked files and manifests ---------------------------------------------------------


def encode_pending(dataset: str, date: str, file: ManifestFile, now: float) -> Item:
    """The item of ``file`` newly tracked as pending, in the ``pending`` index."""
    key = tracked_key(dataset, date, file.id)
    item: Item = {
        **key,
        "kind": {"S": "file"},
        "dataset": {"S": dataset},
        "date": {"S": date},
        "bucket": {"S": file.bucket},
        "key": {"S": file.key},
        "version": {"S": file.version},
        "size": {"N": str(file.size)},
        "etag": {"S": file.etag},
        "status": {"S": ManifestFileStatus.PENDING.value},
        "added_at": {"N": num(now)},
        "updated_at": {"N": num(now)},
        "pending_ds": {"S": dataset},
        "pending_sk": {"S": f"{date}#{max(0, round(now * 1_000_000)):017d}#{key['sk']['S']}"},
    }
    if file.version_id is not None:
        item["version_id"] = {"S": file.version_id}
    return item


def decode_tracked(item: Item) -> TrackedFile:
    """A tracked file's item as a TrackedFile."""
    return TrackedFile(
        dataset=item["dataset"]["S"],
        date=item["date"]["S"],
        file=ManifestFile(
            bucket=item["bucket"]["S"],
            key=item["key"]["S"],
            size=int(item["size"]["N"]),
            etag=item["etag"]["S"],
            version_id=opt_str(item, "version_id"),
        ),
        status=ManifestFileStatus(item["status"]["S"]),
        manifest_id=opt_str(item, "manifest_id"),
        added_at=float(item["added_at"]["N"]),
        updated_at=float(item["updated_at"]["N"]),
        detail=opt_str(item, "detail") or "",
    )


def manifest_listed(m: ManifestRecord) -> str:
    """``mls_at``: a manifest's sort key in the listing index, ``(created_at, id)`` order."""
    return f"{max(0, round(m.created_at * 1_000_000)):017d}#{m.manifest_id}"


#: A manifest's file list longer than this (UTF-8 bytes) is stored zlib-compressed, as
#: ``files_z``: a DynamoDB item holds 400 KB (file lists compress about 5x: 5,000 entries
#: of 30-byte keys and 32-hex eTags take 121 KB; about 16,000 such entries fit).
FILES_INLINE_MAX_BYTES = 64 * 1024
#: The most a compressed file list may take (the item's other attributes need the rest).
FILES_STORED_MAX_BYTES = 380 * 1024


def encode_files(m: ManifestRecord) -> Item:
    """A manifest's file list as item attributes: ``files`` (JSON text), or ``files_z``
    (the JSON zlib-compressed) when longer than :data:`FILES_INLINE_MAX_BYTES`.

    Raises ManifestTooLargeError when even compressed it does not fit in one item.
    """
    text = files_to_text(m.files)
    data = text.encode()
    if len(data) <= FILES_INLINE_MAX_BYTES:
        return {"files": {"S": text}}
    packed = zlib.compress(data, 6)
    if len(packed) > FILES_STORED_MAX_BYTES:
        raise ManifestTooLargeError(
            f"manifest {m.manifest_id} of dataset {m.dataset!r} lists {len(m.files)} files: "
            f"{len(data)} bytes of JSON, {len(packed)} compressed, more than one DynamoDB "
            f"item holds ({FILES_STORED_MAX_BYTES} bytes for the list); lower the "
            "pipeline's manifest_max_files (or manifest_max_bytes) so manifests list "
            "fewer files"
        )
    return {"files_z": {"B": packed}}


def decode_files(item: Item) -> list[ManifestFile]:
    """Inverse of :func:`encode_files`."""
    packed = item.get("files_z")
    if packed is not None:
        return files_from_text(zlib.decompress(packed["B"]).decode())
    return files_from_text(item["files"]["S"])


def encode_manifest(m: ManifestRecord, rev: int, purge_at: float | None = None) -> Item:
    """The item of manifest ``m`` at revision ``rev`` (expiring at ``purge_at``)."""
    item: Item = {
        **manifest_key(m.manifest_id),
        "kind": {"S": "manifest"},
        "manifest_id": {"S": m.manifest_id},
        "dataset": {"S": m.dataset},
        "date": {"S": m.date},
        "status": {"S": m.status.value},
        **encode_files(m),
        "trigger": {"S": m.trigger},
        "fencing_token": {"N": str(m.fencing_token)},
        "sealed_by": {"S": m.sealed_by},
        "created_at": {"N": num(m.created_at)},
        "updated_at": {"N": num(m.updated_at)},
        "attempts": {"N": str(m.attempts)},
        "rev": {"N": str(rev)},
        "mls": {"S": json_key(m.dataset, m.status.value)},
        "mls_at": {"S": manifest_listed(m)},
    }
    if m.location is not None:
        item["location"] = {"S": m.location}
    if m.detail:
        item["detail"] = {"S": m.detail}
    return with_purge(item, purge_at)


def decode_manifest(item: Item) -> tuple[ManifestRecord, int]:
    """A manifest's item as ``(record, revision)``."""
    rec = ManifestRecord(
        manifest_id=item["manifest_id"]["S"],
        dataset=item["dataset"]["S"],
        date=item["date"]["S"],
        status=ManifestStatus(item["status"]["S"]),
        files=decode_files(item),
        trigger=item["trigger"]["S"],
        fencing_token=int(item["fencing_token"]["N"]),
        sealed_by=item["sealed_by"]["S"],
        created_at=float(item["created_at"]["N"]),
        updated_at=float(item["updated_at"]["N"]),
        location=opt_str(item, "location"),
        detail=opt_str(item, "detail") or "",
        attempts=int(item["attempts"]["N"]),
    )
    return rec, int(item.get("rev", {}).get("N", "0"))


# --- upload jobs and their event logs ----------------------------------------------------


def job_key(job_id: str) -> Item:
    """The key of a job's item in the jobs table."""
    return {"pk": {"S": "job#" + job_id}}


def upload_key(upload_id: str) -> Item:
    """The key of the item naming an upload's job in the jobs table."""
    return {"pk": {"S": "upload#" + upload_id}}


def event_marker_key(job_id: str, event_id: str) -> Item:
    """The key of the item recording that ``event_id`` is in ``job_id``'s log (jobs table)."""
    return {"pk": {"S": "event#" + json_key(job_id, event_id)}}


def job_event_key(job_id: str, seq: int) -> Item:
    """The key of event ``seq`` of a job in the job-events table."""
    return {"job_id": {"S": job_id}, "seq": {"N": str(seq)}}


def job_listed(job: JobPosition) -> str:
    """The sort key of ``job`` in the ``status`` index: newest last, ties by job id.

    ``<created_at in microseconds, 17 digits>#<job_id>`` compares as
    ``(created_at, job_id)``, the order SQLite lists jobs by (descending).
    """
    return f"{max(0, round(job.created_at * 1_000_000)):017d}#{job.job_id}"


def encode_job(job: JobRecord, purge_at: float | None = None) -> Item:
    """The jobs-table item of ``job``: the record as JSON, plus what it is found and listed by."""
    item: Item = {
        **job_key(job.job_id),
        "kind": {"S": "job"},
        "job_id": {"S": job.job_id},
        "upload_id": {"S": job.upload_id},
        "status": {"S": job.status.value},
        "listed": {"S": job_listed(job)},
        "created_at": {"N": num(job.created_at)},
        "updated_at": {"N": num(job.updated_at)},
        "last_seq": {"N": str(job.last_seq)},
        "record": {"S": job_to_json(job)},
    }
    return with_purge(item, purge_at)


def decode_job(item: Item) -> JobRecord:
    """A job's item as its record."""
    return job_from_json(item["record"]["S"])


def encode_upload(upload_id: str, job_id: str) -> Item:
    """The item naming the job of ``upload_id``."""
    return {**upload_key(upload_id), "kind": {"S": "upload"}, "job_id": {"S": job_id}}


def encode_event_marker(event: JobEvent, purge_at: float | None = None) -> Item:
    """The idempotency marker of ``event`` (its job, event id and seq)."""
    item: Item = {
        **event_marker_key(event.job_id, event.event_id),
        "kind": {"S": "event"},
        "job_id": {"S": event.job_id},
        "event_id": {"S": event.event_id},
        "seq": {"N": str(event.seq)},
    }
    return with_purge(item, purge_at)


def encode_job_event(event: JobEvent, data: str, purge_at: float | None = None) -> Item:
    """The job-events item of ``event``; ``data`` is its data as JSON text."""
    item: Item = {
        **job_event_key(event.job_id, event.seq),
        "event_id": {"S": event.event_id},
        "type": {"S": event.type.value},
        "data": {"S": data},
        "at": {"N": num(event.at)},
    }
    return with_purge(item, purge_at)


def decode_job_event(item: Item) -> JobEvent:
    """A job-events item as a JobEvent."""
    return JobEvent(
        job_id=item["job_id"]["S"],
        seq=int(item["seq"]["N"]),
        event_id=item["event_id"]["S"],
        type=EventType(item["type"]["S"]),
        data=json.loads(item["data"]["S"]),
        at=float(item["at"]["N"]),
    )
