"""`s3flow run` on an object whose bucket does not exist says so (the HEAD's 404 said
"object missing" and sent people looking for the key), against the moto server."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from s3flow.local.endpoint import LocalEndpoint

pytestmark = pytest.mark.integration


def run(
    tmp_path: Path, source: str, error_class: str, disposition: str, processor: str = "line-count"
) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "s3flow", "run", processor, source, "--output", "out/"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    assert (result["error_class"], result["disposition"]) == (error_class, disposition)
    return result


def test_a_missing_bucket_is_named_as_the_bucket(
    endpoint: LocalEndpoint, s3: Any, tmp_path: Path
) -> None:
    bucket = f"nobucket-{uuid.uuid4().hex[:8]}"
    # a mistake to correct, not an object gone (skip: "nothing to do")
    result = run(tmp_path, f"s3://{bucket}/x.txt", "ConfigError", "permanent")
    assert f"the bucket '{bucket}' does not exist" in result["error"]


def test_a_missing_key_in_a_bucket_is_still_the_object(
    endpoint: LocalEndpoint, s3: Any, tmp_path: Path
) -> None:
    bucket = f"somebucket-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    result = run(tmp_path, f"s3://{bucket}/nokey.txt", "ObjectMissingError", "skip")
    assert "does not exist" not in result["error"] and "HeadObject" in result["error"]


def test_a_misspelt_processor_is_the_error_whatever_the_object(
    endpoint: LocalEndpoint, s3: Any, tmp_path: Path
) -> None:
    """With a missing object it said ObjectMissingError, "skip": a container with a typo in
    its processor name reported deleted objects as skipped, not its own mistake."""
    bucket = f"somebucket-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    result = run(tmp_path, f"s3://{bucket}/nokey.txt", "ConfigError", "permanent", "line-cuont")
    assert "unknown processor 'line-cuont'; available: " in result["error"]
    assert "line-count" in result["error"]
