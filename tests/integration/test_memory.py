"""Bounded memory: a 1 GiB object is streamed, never held in memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from itest_support import Harness

pytestmark = pytest.mark.integration

PART = 128 * 1024 * 1024
PARTS = 8  # 1 GiB
LINE = b"%-63s\n" % b"s3flow bounded memory test line"


@pytest.mark.timeout(400)
def test_one_gib_object_keeps_worker_rss_under_200_mb(harness: Harness) -> None:
    harness.configure(concurrency=4)
    cfg = harness.write_config()
    block = LINE * (PART // len(LINE))
    assert len(block) == PART
    key = "big/one-gib.txt"
    up = harness.s3.create_multipart_upload(Bucket=harness.bucket, Key=key)
    parts = []
    for n in range(1, PARTS + 1):
        r = harness.s3.upload_part(
            Bucket=harness.bucket, Key=key, UploadId=up["UploadId"], PartNumber=n, Body=block
        )
        parts.append({"ETag": r["ETag"], "PartNumber": n})
    del block
    harness.s3.complete_multipart_upload(
        Bucket=harness.bucket, Key=key, UploadId=up["UploadId"], MultipartUpload={"Parts": parts}
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "s3flow",
            "--log-format",
            "json",
            "worker",
            "-c",
            str(cfg),
            "--burst",
        ],
        capture_output=True,
        text=True,
        timeout=360,
        env=dict(os.environ),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = next(
        json.loads(line)
        for line in run.stderr.splitlines()
        if line.startswith("{") and '"worker-summary"' in line
    )
    result = harness.result(key)
    assert result is not None
    assert result["uncompressed_bytes"] == PART * PARTS
    assert result["lines"] == PART * PARTS // len(LINE)
    assert summary["pipelines"]["p"]["objects_processed"] >= 1
    assert summary["peak_rss_mb"] < 200, summary
