"""A manifest's file list in its DynamoDB item: inline, compressed, or a clear refusal."""

from __future__ import annotations

import os

import pytest

from s3flow.state.dynamodb.codec import (
    FILES_INLINE_MAX_BYTES,
    decode_manifest,
    encode_files,
    encode_manifest,
)
from s3flow.state.records import ManifestFile, ManifestRecord, ManifestStatus, ManifestTooLargeError


def manifest(keys: list[str]) -> ManifestRecord:
    return ManifestRecord(
        manifest_id="m1",
        dataset="ds",
        date="2025-12-23",
        status=ManifestStatus.SEALED,
        files=[ManifestFile("b", k, 10, "e1", None) for k in keys],
        trigger="count",
        fencing_token=1,
        sealed_by="w1",
        created_at=1.0,
    )


def test_a_short_list_is_json_text_and_reads_back() -> None:
    m = manifest(["2025-12-23/a.json", "2025-12-23/b.json"])
    item = encode_manifest(m, 1)
    assert "files" in item and "files_z" not in item
    assert decode_manifest(item)[0].files == m.files


def test_a_long_list_is_compressed_and_reads_back() -> None:
    m = manifest([f"2025-12-23/part-{i:05d}.ndjson" for i in range(5000)])
    item = encode_manifest(m, 1)
    assert "files" not in item
    packed = item["files_z"]["B"]
    assert len(packed) < FILES_INLINE_MAX_BYTES  # ~500 KB of JSON
    assert decode_manifest(item)[0].files == m.files


def test_a_list_no_item_can_hold_is_refused_saying_what_to_lower() -> None:
    # 900 keys of 1,000 random hex digits: ~950 KB of JSON, ~520 KB compressed
    m = manifest([os.urandom(500).hex() for _ in range(900)])
    with pytest.raises(ManifestTooLargeError) as caught:
        encode_files(m)
    message = str(caught.value)
    assert "manifest m1 of dataset 'ds' lists 900 files" in message
    assert "manifest_max_files" in message
