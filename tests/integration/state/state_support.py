"""Shared by the state-store contract suites: the fake clock, backend marks, ids."""

from __future__ import annotations

import pytest

from s3flow.state import (
    ManifestFile,
    ManifestRecord,
    ManifestStatus,
    ObjectId,
)

T0 = 1_700_000_000.0
B = "bucket-a"


class FakeClock:
    """A clock the test advances by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


backends = pytest.mark.parametrize("make_store", ["sqlite", "dynamodb"], indirect=True)
# The tests of listings run on a DynamoDB store that reads small pages too.
paged_backends = pytest.mark.parametrize(
    "make_store", ["sqlite", "dynamodb", "dynamodb-paged"], indirect=True
)


def oid(key: str = "dir/a.txt", version: str = "v1") -> ObjectId:
    return ObjectId(B, key, version)


def mfile(
    key: str, size: int = 100, etag: str = "e1", version_id: str | None = None
) -> ManifestFile:
    return ManifestFile(B, key, size, etag, version_id)


def draft(
    mid: str, files: list[ManifestFile], token: int, date: str = "2025-12-23"
) -> ManifestRecord:
    return ManifestRecord(
        manifest_id=mid,
        dataset="ds",
        date=date,
        status=ManifestStatus.SEALING,
        files=files,
        trigger="count",
        fencing_token=token,
        sealed_by="w1",
        created_at=0.0,
    )
