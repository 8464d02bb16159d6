"""`s3flow dlq` against an endpoint that is down: a clear error, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3flow.local.endpoint import free_port


@pytest.mark.parametrize("command", [["list"], ["redrive", "--max", "5"]])
def test_an_endpoint_that_is_down_is_a_clear_error(tmp_path: Path, command: list[str]) -> None:
    """Queues given as URLs skip GetQueueUrl: the first call on the wire would be the
    receive. Nothing answers at the endpoint, so the clients refuse to open, at once,
    naming it (not after the SDK's retries, not with a traceback)."""
    down = f"http://127.0.0.1:{free_port()}"
    cfg = tmp_path / "s3flow.toml"
    cfg.write_text(
        f"""
[aws]
endpoint_url = "{down}"
region = "us-east-1"
max_attempts = 1
connect_timeout_s = 1

[state]
url = "none"

[[pipelines]]
name = "p"
processor = "line-count"
bucket = "b"
queue = "{down}/123456789012/q"
dlq = "{down}/123456789012/q-dlq"
output = "s3://o/res/"
"""
    )
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "COLUMNS": "200"}
    run = subprocess.run(
        [sys.executable, "-m", "s3flow", "dlq", *command, "-c", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and "error:" in run.stderr
    flat = " ".join(run.stderr.split())
    assert f"cannot reach the S3 and SQS endpoint {down}" in flat  # says which endpoint
