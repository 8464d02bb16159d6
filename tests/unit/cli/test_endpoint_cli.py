"""An endpoint URL the SDK cannot take ends a command with the setting named, not a traceback.

Without a check, every command that opens a client fails deep in botocore with
``ValueError: Invalid endpoint: localhost:45661``. The commands run as real
subprocesses: the check must hold where a user meets it. No AWS call is made (the
URL is refused before any client exists).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PIPELINE = """
[[pipelines]]
name = "counts"
bucket = "incoming"
queue = "counts-events"
output = "s3://results/counts/"
"""


def s3flow(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    clean.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "s3flow", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**clean, **(env or {})},
    )


@pytest.mark.parametrize(
    ("env", "aws", "name", "advice"),
    [
        ({"AWS_ENDPOINT_URL": "localhost:45661"}, "", "AWS_ENDPOINT_URL", "http://localhost:45661"),
        (
            {"AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:99999"},
            "",
            "AWS_ENDPOINT_URL_SQS",
            "1 to 65535",
        ),
        ({}, 'endpoint_url = "localhost:45661"', "aws.endpoint_url", "http://localhost:45661"),
        ({}, 'endpoint_url_s3 = "ftp://127.0.0.1:1"', "aws.endpoint_url_s3", "http or https"),
        (
            {"S3FLOW_AWS__ENDPOINT_URL_SQS": "http://127.0.0.1:0"},
            "",
            "S3FLOW_AWS__ENDPOINT_URL_SQS",
            "1 to 65535",
        ),
    ],
    ids=["env-no-scheme", "env-port-out-of-range", "file-no-scheme", "file-scheme", "s3flow-env"],
)
@pytest.mark.parametrize("command", [["status"], ["worker", "--burst"]], ids=["status", "worker"])
def test_a_bad_endpoint_url_is_a_config_error(
    tmp_path: Path, env: dict[str, str], aws: str, name: str, advice: str, command: list[str]
) -> None:
    config = tmp_path / "s3flow.toml"
    config.write_text(f'[aws]\nregion = "us-east-1"\n{aws}\n{PIPELINE}', encoding="utf-8")
    run = s3flow(tmp_path, *command, "-c", str(config), env=env)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert name in run.stderr and advice in run.stderr, run.stderr
    assert "not an endpoint URL" in run.stderr, run.stderr
