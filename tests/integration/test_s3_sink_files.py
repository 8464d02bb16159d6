"""S3Sink: object metadata, and write_file (PutObject or multipart) on the emulator."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from s3flow.aws import open_clients
from s3flow.errors import AwsPermanentError
from s3flow.local.endpoint import LocalEndpoint
from s3flow.settings import AwsSettings
from s3flow.sinks import s3 as s3_sink
from s3flow.sinks.base import FileSink
from s3flow.sinks.receipts import WriteReceipt, receipt_sink
from s3flow.sinks.s3 import S3Sink

pytestmark = pytest.mark.integration

META = {"source-key": "a/b.txt", "pages": "3"}


def _run(coro_fn: Any) -> Any:
    async def go() -> Any:
        async with open_clients(AwsSettings()) as clients:
            return await coro_fn(S3Sink(clients.s3, "s3://sink-files/out/"))

    return asyncio.run(go())


@pytest.fixture()
def bucket(endpoint: LocalEndpoint, s3: Any) -> str:
    s3.create_bucket(Bucket="sink-files")
    return "sink-files"


def test_write_passes_metadata(s3: Any, bucket: str) -> None:
    uri = _run(lambda sink: sink.write("m.bin", b"data", "text/plain", META))
    assert uri == "s3://sink-files/out/m.bin"
    head = s3.head_object(Bucket=bucket, Key="out/m.bin")
    assert head["ContentType"] == "text/plain" and head["Metadata"] == META


def test_small_file_is_one_put(s3: Any, bucket: str, tmp_path: Path) -> None:
    path = tmp_path / "small.pdf"
    path.write_bytes(b"%PDF-small")

    async def write(sink: S3Sink) -> str:
        assert isinstance(sink, FileSink)
        return await sink.write_file("small.pdf", str(path), "application/pdf", META)

    assert _run(write) == "s3://sink-files/out/small.pdf"
    obj = s3.get_object(Bucket=bucket, Key="out/small.pdf")
    assert obj["Body"].read() == b"%PDF-small"
    assert obj["ContentType"] == "application/pdf" and obj["Metadata"] == META


def test_big_file_is_a_multipart_upload(
    s3: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_sink, "MULTIPART_THRESHOLD", 1024 * 1024)
    monkeypatch.setattr(s3_sink, "PART_BYTES", 5 * 1024 * 1024)  # S3's minimum
    data = os.urandom(12 * 1024 * 1024)  # 3 parts: 5 + 5 + 2 MiB
    path = tmp_path / "big.pdf"
    path.write_bytes(data)
    uri = _run(lambda sink: sink.write_file("big.pdf", str(path), "application/pdf", META))
    assert uri == "s3://sink-files/out/big.pdf"
    obj = s3.get_object(Bucket=bucket, Key="out/big.pdf")
    assert obj["Body"].read() == data
    assert obj["ContentType"] == "application/pdf" and obj["Metadata"] == META
    assert obj["ETag"].strip('"').endswith("-3")  # a multipart ETag: 3 parts


def test_failed_multipart_upload_is_aborted(
    s3: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_sink, "MULTIPART_THRESHOLD", 1024 * 1024)
    monkeypatch.setattr(s3_sink, "PART_BYTES", 1024 * 1024)  # too small: S3 refuses
    path = tmp_path / "failed.pdf"
    path.write_bytes(os.urandom(3 * 1024 * 1024))
    with pytest.raises(AwsPermanentError, match="EntityTooSmall"):
        _run(lambda sink: sink.write_file("failed.pdf", str(path), "application/pdf"))
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="out/failed")


def test_a_write_receipt_shows_what_a_head_of_the_output_shows(s3: Any, bucket: str) -> None:
    """What output verification takes from a receipt instead of a HEAD (docs/routing.md)."""
    receipts: dict[str, WriteReceipt] = {}

    async def write(sink: S3Sink) -> list[str]:
        vouched = receipt_sink(sink, receipts)
        return [
            await vouched.write("r/doc.json", b'{"lines": 3}', "application/json"),
            await vouched.write("r/ü b+c.csv", b"a,b\n1,2\n", "text/csv; charset=utf-8"),
        ]

    uris = _run(write)
    assert sorted(receipts) == sorted(uris)
    for uri in uris:
        head = s3.head_object(Bucket=bucket, Key=uri.removeprefix(f"s3://{bucket}/"))
        assert receipts[uri] == WriteReceipt(head["ContentLength"], head["ContentType"])
