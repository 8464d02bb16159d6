"""The ``zip`` job step (:mod:`s3flow.pipelines.zip_bundle`) on the emulator: inputs read
from real S3 objects (moto server on 127.0.0.1), the archive written by the real S3 sink."""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import itertools
import os
import shutil
import struct
import subprocess
import tempfile
import tracemalloc
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest

from s3flow.aws import open_clients
from s3flow.errors import ObjectMissingError, PermanentError
from s3flow.events import ObjectEvent
from s3flow.objects import zstd
from s3flow.pipelines.zip_bundle import ZipProcessor
from s3flow.processors.base import BundleContext, Result
from s3flow.settings import AwsSettings
from s3flow.sinks.s3 import S3Sink

pytestmark = pytest.mark.integration

_counter = itertools.count()
_ZIP64_EXTRA = 0x0001  # header id of the ZIP64 extended information extra field


class Buckets:
    """An input and an output bucket of one test."""

    def __init__(self, s3: Any, *, versioned: bool = False) -> None:
        n = f"{next(_counter)}-{uuid.uuid4().hex[:6]}"
        self.s3 = s3
        self.inputs = f"zip-in-{n}"
        self.outputs = f"zip-out-{n}"
        s3.create_bucket(Bucket=self.inputs)
        s3.create_bucket(Bucket=self.outputs)
        if versioned:
            s3.put_bucket_versioning(
                Bucket=self.inputs, VersioningConfiguration={"Status": "Enabled"}
            )

    def put(self, key: str, body: bytes, **extra: Any) -> ObjectEvent:
        resp = self.s3.put_object(Bucket=self.inputs, Key=key, Body=body, **extra)
        return ObjectEvent(bucket=self.inputs, key=key, version_id=resp.get("VersionId"))

    def read(self, uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        body: bytes = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body


def bundle(buckets: Buckets, events: list[ObjectEvent], **options: Any) -> Result:
    """Run the zip step on ``events`` with real clients; the archive goes to ``outputs``."""

    async def run() -> Result:
        async with open_clients(AwsSettings()) as clients:
            ctx = BundleContext(
                job_id="job-1",
                inputs=events,
                s3=clients.s3,
                sink=S3Sink(clients.s3, f"s3://{buckets.outputs}/bundles/"),
            )
            return await ZipProcessor(options).bundle(ctx)

    return asyncio.run(run())


def archive(buckets: Buckets, result: Result) -> zipfile.ZipFile:
    assert result.outputs == [f"s3://{buckets.outputs}/bundles/job-1.zip"]
    return zipfile.ZipFile(io.BytesIO(buckets.read(result.outputs[0])))


def local_extra_ids(body: bytes, info: zipfile.ZipInfo) -> set[int]:
    """The header ids in the extra field of ``info``'s local file header."""
    head = body[info.header_offset : info.header_offset + 30]
    signature, *_, name_len, extra_len = struct.unpack("<4s2B4HL2L2H", head)
    assert signature == b"PK\x03\x04"
    start = info.header_offset + 30 + name_len
    extra = body[start : start + extra_len]
    ids = set()
    while len(extra) >= 4:
        header_id, size = struct.unpack("<HH", extra[:4])
        ids.add(header_id)
        extra = extra[4 + size :]
    return ids


def unzip_test(body: bytes, tmp_path: Path) -> None:
    """Info-ZIP's ``unzip -t`` accepts the archive (when the tool is installed)."""
    if shutil.which("unzip") is None:
        return
    path = tmp_path / "check.zip"
    path.write_bytes(body)
    done = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


# --- 1. inputs are stored as they are, never decompressed ---------------------------------


def test_inputs_are_stored_as_stored_never_decompressed(s3: Any) -> None:
    buckets = Buckets(s3)
    csv_gz = gzip.compress(b"x,y\n1,2\n")
    bomb = gzip.compress(b"\0" * (32 << 20), compresslevel=9)  # 32 MiB of zeros, ~32 KiB
    zst = zstd.compress(b"not meant to be decompressed\n")
    bz = bz2.compress(b"neither is this\n")
    html_gz = gzip.compress(b"<p>hi</p>\n")
    stored = {
        "data.csv.gz": csv_gz,
        "bomb.txt": bomb,  # gzip magic under a .txt name
        "payload.bin": zst,
        "notes.log": bz,
        "page.html": html_gz,  # stored with Content-Encoding: gzip
        "plain.txt": b"plain\n",
    }
    events = [
        buckets.put(
            f"uploads/u/{i}/{name}",
            body,
            **({"ContentEncoding": "gzip"} if name == "page.html" else {}),
        )
        for i, (name, body) in enumerate(stored.items())
    ]
    result = bundle(buckets, events)
    with archive(buckets, result) as zf:
        assert {n: zf.read(n) for n in zf.namelist()} == stored
    assert result.counters["files"] == len(stored)
    assert result.counters["bytes_in"] == sum(map(len, stored.values()))
    assert result.counters["bytes_out"] < 200_000  # the bomb stays its ~32 KiB


def test_the_events_version_is_read(s3: Any) -> None:
    buckets = Buckets(s3, versioned=True)
    first = buckets.put("uploads/u/0-a.txt", b"first version\n")
    buckets.put("uploads/u/0-a.txt", b"second version\n")
    result = bundle(buckets, [first])
    with archive(buckets, result) as zf:
        assert zf.read("0-a.txt") == b"first version\n"


# --- 1b. memory: the archive is built in a temporary file and streamed ---------------------


def test_archive_of_big_inputs_is_never_held_in_memory(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3 x 24 MiB of random bytes: a 72 MiB archive, past the sink's multipart threshold.
    # Built in memory (as before), the traced allocations peaked above the archive's size
    # (93 MiB for this one); from a file, at one read batch and one upload part (~30 MiB).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    buckets = Buckets(s3)
    bodies = [os.urandom(24 << 20) for _ in range(3)]
    events = [buckets.put(f"uploads/u/{i}-r.bin", body) for i, body in enumerate(bodies)]
    tracemalloc.start()
    try:
        result = bundle(buckets, events)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 44 << 20, f"peak of traced allocations: {peak / 2**20:.1f} MiB"
    with archive(buckets, result) as zf:
        assert [zf.read(n) for n in zf.namelist()] == bodies
    assert result.counters["bytes_in"] == 72 << 20
    assert result.counters["bytes_out"] > 72 << 20  # random bytes do not compress
    assert list(tmp_path.iterdir()) == []  # the temporary archive is gone


def test_a_failed_bundle_leaves_no_temporary_file(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    buckets = Buckets(s3)
    events = [
        buckets.put("uploads/u/0-a.txt", b"a\n"),
        ObjectEvent(bucket=buckets.inputs, key="uploads/u/1-gone.txt"),
    ]
    with pytest.raises(ObjectMissingError, match=r"1-gone\.txt"):
        bundle(buckets, events)
    assert list(tmp_path.iterdir()) == []


def test_a_bundle_cut_by_its_timeout_raises_the_timeout_and_leaves_no_file(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step's timeout cancels the bundle mid-archive: the cancellation comes out as
    the timeout (closing the abandoned archive must not raise over it)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    buckets = Buckets(s3)
    events = [buckets.put(f"uploads/u/{i}-r.bin", os.urandom(16 << 20)) for i in range(4)]

    async def run() -> None:
        async with open_clients(AwsSettings()) as clients:
            ctx = BundleContext(
                job_id="job-1",
                inputs=events,
                s3=clients.s3,
                sink=S3Sink(clients.s3, f"s3://{buckets.outputs}/bundles/"),
            )
            async with asyncio.timeout(0.5):
                await ZipProcessor({}).bundle(ctx)

    with pytest.raises(TimeoutError):
        asyncio.run(run())
    assert list(tmp_path.iterdir()) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=buckets.outputs)


# --- 2. members past 2 GiB: ZIP64 -----------------------------------------------------------


def test_every_entry_is_written_with_zip64_headers(s3: Any, tmp_path: Path) -> None:
    buckets = Buckets(s3)
    events = [buckets.put(f"uploads/u/{i}-f.txt", b"line\n" * (i * 1000)) for i in range(3)]
    result = bundle(buckets, events)
    body = buckets.read(result.outputs[0])
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.testzip() is None
        for info in zf.infolist():
            assert _ZIP64_EXTRA in local_extra_ids(body, info), info.filename
    unzip_test(body, tmp_path)


def test_a_member_past_the_zip64_limit_is_stored(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # zipfile compares sizes with its module's ZIP64_LIMIT (2 GiB - 1) while writing: a
    # lower limit makes a 300 KB member take the path of a member past 2 GiB.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 100_000)
    buckets = Buckets(s3)
    big = bytes(range(256)) * 1200  # 307,200 bytes, barely compressible
    events = [buckets.put("uploads/u/0-big.bin", big), buckets.put("uploads/u/1-s.txt", b"s\n")]
    result = bundle(buckets, events)
    body = buckets.read(result.outputs[0])
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.read("0-big.bin") == big
        assert zf.read("1-s.txt") == b"s\n"
        assert zf.getinfo("0-big.bin").file_size == len(big)
    unzip_test(body, tmp_path)


def test_a_zipfile_refusal_is_a_permanent_error_naming_the_file(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Any, data: Any) -> int:
        raise RuntimeError("File size too large, try using force_zip64")

    monkeypatch.setattr("zipfile._ZipWriteFile.write", refuse)
    buckets = Buckets(s3)
    events = [buckets.put("uploads/u/0-a.txt", b"a\n")]
    with pytest.raises(PermanentError) as caught:
        bundle(buckets, events)
    message = str(caught.value)
    assert f"s3://{buckets.inputs}/uploads/u/0-a.txt" in message
    assert "'0-a.txt'" in message and "job-1.zip" in message
    assert "File size too large" in message


# --- 3. entry names: unique, inside the archive root ----------------------------------------


def test_duplicate_names_get_a_free_suffix_before_the_extension(s3: Any) -> None:
    buckets = Buckets(s3)
    contents = {
        "job/a/r.txt": b"one\n",
        "job/b/r.txt": b"two\n",
        "job/r.txt-1": b"three\n",
        "job/r-1.txt": b"four\n",
        "job/c/R.TXT": b"five\n",
        "job/a/d.csv.gz": gzip.compress(b"six\n"),
        "job/b/d.csv.gz": gzip.compress(b"seven\n"),
    }
    events = [buckets.put(k, v) for k, v in contents.items()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zipfile's "Duplicate name" UserWarning fails the test
        result = bundle(buckets, events)
    with archive(buckets, result) as zf:
        names = zf.namelist()
        assert names == [
            "r.txt",
            "r-1.txt",
            "r.txt-1",
            "r-1-1.txt",
            "R-2.TXT",
            "d.csv.gz",
            "d-1.csv.gz",
        ]
        assert [zf.read(n) for n in names] == list(contents.values())


def test_entry_names_stay_inside_the_archive_root(s3: Any, tmp_path: Path) -> None:
    buckets = Buckets(s3)
    keys = [
        "job/..\\..\\evil.txt",
        "job/..",
        "job/...",
        "job/dir/",
        "job/a\\b\\c.txt",
        "job/C:evil.txt",
        "job/\\",
        "job/ünï 名.txt",
    ]
    events = [buckets.put(k, k.encode()) for k in keys]
    result = bundle(buckets, events)
    body = buckets.read(result.outputs[0])
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        names = zf.namelist()
        assert names == [
            "evil.txt",
            "file",
            "file-1",
            "file-2",
            "c.txt",
            "C_evil.txt",
            "file-3",
            "ünï 名.txt",
        ]
        for name in names:
            assert name and "/" not in name and "\\" not in name and ":" not in name
            assert name.strip(". ")
        assert [zf.read(n) for n in names] == [k.encode() for k in keys]
        out = tmp_path / "out"
        zf.extractall(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert [p for p in tmp_path.rglob("*") if not p.is_relative_to(out)] == []
    if shutil.which("unzip") is not None:
        by_unzip = tmp_path / "by-unzip"
        (tmp_path / "a.zip").write_bytes(body)
        done = subprocess.run(
            ["unzip", "-q", str(tmp_path / "a.zip"), "-d", str(by_unzip)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert len(list(by_unzip.iterdir())) == len(names)
