"""`s3flow run --output`: the same check as a pipeline's ``output`` setting, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("output", "says"),
    [
        ("s3:/results/x/", "looks like a URL"),
        ("S3://results/x/", "looks like a URL"),
        ("file:///tmp/x/", "looks like a URL"),
        ("s3://", "needs a bucket"),
    ],
)
def test_an_output_typo_is_a_permanent_error_and_writes_nothing(
    tmp_path: Path, output: str, says: str
) -> None:
    """`--output s3:/results/x/` wrote ./s3:/results/x/... and exited 0; `s3://` was a
    retryable error (exit 1)."""
    done = subprocess.run(
        [sys.executable, "-m", "s3flow", "run", "line-count", "s3://b/x.txt", "--output", output],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["disposition"] == "permanent" and result["error_class"] == "ConfigError"
    assert result["error"].startswith("output: ") and says in result["error"]
    assert list(tmp_path.iterdir()) == []
