"""Manifests: the sealed list of NDJSON files of one dataset and date.

Written by the manifest builder to
``<manifest_prefix><dataset>/date=<YYYY-MM-DD>/<manifest_id>.json``::

    {"version": 1, "manifest_id": "...", "dataset": "...", "date": "YYYY-MM-DD",
     "created_at": "<iso8601>", "sealed_by": "<worker id>", "fencing_token": N,
     "trigger": "count|bytes|age",
     "files": [{"bucket": ..., "key": ..., "size": N, "etag": "...",
                "version_id": null|"..."}],
     "total_files": N, "total_bytes": N}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date as _date
from typing import Any

from s3flow.errors import PermanentError

__all__ = ["InputFile", "Manifest", "ManifestError", "parse_manifest"]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,127}$")
_DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=/-]{0,255}$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


class ManifestError(PermanentError):
    """A manifest is not valid JSON or does not follow the manifest format."""


@dataclass(frozen=True)
class InputFile:
    """One input file listed by a manifest."""

    bucket: str
    key: str
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None

    def uri(self) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest."""

    manifest_id: str
    dataset: str
    date: str
    files: tuple[InputFile, ...]
    version: int = 1
    created_at: str | None = None
    sealed_by: str | None = None
    fencing_token: int | None = None
    trigger: str | None = None
    total_bytes: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def partition(self) -> str:
        """``<dataset>/date=<YYYY-MM-DD>/``: where the parts go under the output prefix."""
        return f"{self.dataset}/date={self.date}/"

    def part_name(self, n: int) -> str:
        """``part-<manifest-id>-<nnnnn>.parquet``."""
        return f"part-{self.manifest_id}-{n:05d}.parquet"

    @property
    def part_prefix(self) -> str:
        """The key prefix shared by this manifest's parts (relative to the output prefix)."""
        return f"{self.partition}part-{self.manifest_id}-"


def _req(doc: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in doc:
        raise ManifestError(f"manifest: missing field {name!r}")
    value = doc[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ManifestError(f"manifest: field {name!r} has the wrong type ({value!r})")
    return value


def _text(doc: dict[str, Any], name: str) -> str | None:
    """An optional field as text; None when it is absent or empty."""
    value = doc.get(name)
    return str(value) if value else None


def _file(i: int, item: Any) -> InputFile:
    if not isinstance(item, dict):
        raise ManifestError(f"manifest: files[{i}] is not an object")
    bucket, key = item.get("bucket"), item.get("key")
    if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
        raise ManifestError(f"manifest: files[{i}] needs non-empty 'bucket' and 'key'")
    size = item.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ManifestError(f"manifest: files[{i}].size is not a non-negative integer")
    etag = _text(item, "etag")
    return InputFile(
        bucket=bucket,
        key=key,
        size=size,
        etag=etag.strip('"') if etag else None,
        version_id=_text(item, "version_id"),
    )


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate a manifest document; ManifestError (permanent) if it is not one."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"manifest: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ManifestError("manifest: not a JSON object")
    version = _req(doc, "version", int)
    if version != 1:
        raise ManifestError(f"manifest: unsupported version {version} (this s3flow reads 1)")
    manifest_id = _req(doc, "manifest_id", str)
    if not _ID_RE.match(manifest_id):
        raise ManifestError(
            f"manifest: manifest_id {manifest_id!r} must be 1-128 letters, digits, "
            "'_', '-', '.' or '='"
        )
    dataset = _req(doc, "dataset", str)
    if not _DATASET_RE.match(dataset) or ".." in dataset.split("/") or dataset.endswith("/"):
        raise ManifestError(f"manifest: dataset {dataset!r} is not a safe path component")
    day = _req(doc, "date", str)
    try:
        if not _DATE_RE.match(day):
            raise ValueError(day)
        _date.fromisoformat(day)
    except ValueError as exc:
        raise ManifestError(f"manifest: date {day!r} is not YYYY-MM-DD") from exc
    files_raw = _req(doc, "files", list)
    files = tuple(_file(i, item) for i, item in enumerate(files_raw))
    total_files = doc.get("total_files")
    if total_files is not None and total_files != len(files):
        raise ManifestError(
            f"manifest: total_files is {total_files} but {len(files)} files are listed"
        )
    token = doc.get("fencing_token")
    total_bytes = doc.get("total_bytes")
    return Manifest(
        manifest_id=manifest_id,
        dataset=dataset,
        date=day,
        files=files,
        version=version,
        created_at=_text(doc, "created_at"),
        sealed_by=_text(doc, "sealed_by"),
        fencing_token=token if isinstance(token, int) else None,
        trigger=_text(doc, "trigger"),
        total_bytes=total_bytes if isinstance(total_bytes, int) else None,
        raw=doc,
    )
