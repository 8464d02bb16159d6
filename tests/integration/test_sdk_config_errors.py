"""The AWS SDK's own configuration errors (a profile that does not exist) are clear
configuration errors in every command, not tracebacks: exit status 2, ``error: ...``.

They come up before any request is sent, so the endpoint is one nothing listens on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3flow.local.endpoint import LocalEndpoint

pytestmark = pytest.mark.integration

CONFIG = """\
[aws]
profile = "nosuchprofile"
endpoint_url = "http://127.0.0.1:9"
[state]
url = "sqlite:{tmp}/state.db"
[[pipelines]]
name = "p"
processor = "line-count"
bucket = "b"
queue = "q"
output = "s3://o/r/"
"""


def s3flow(
    tmp_path: Path, *args: str, credentials: bool = False
) -> subprocess.CompletedProcess[str]:
    """s3flow with no AWS_* variables (a config file naming the region only; with
    ``credentials``, test ones too) and no instance metadata service to ask."""
    aws_config = tmp_path / "aws-config"
    keys = "aws_access_key_id = x\naws_secret_access_key = x\n" if credentials else ""
    aws_config.write_text(f"[default]\nregion = us-east-1\n{keys}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(aws_config), AWS_SHARED_CREDENTIALS_FILE=str(aws_config))
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "s3flow", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )


@pytest.mark.parametrize(
    "command",
    [["status"], ["worker", "--burst"], ["provision", "--dry-run"], ["dlq", "list"]],
    ids=" ".join,
)
def test_a_profile_that_does_not_exist_is_a_configuration_error(
    tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "s3flow.toml").write_text(CONFIG.format(tmp=tmp_path))
    done = s3flow(tmp_path, *command, "-c", "s3flow.toml")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "AWS profile 'nosuchprofile' not found" in done.stderr
    assert "set [aws] profile (or AWS_PROFILE) to a profile that exists" in done.stderr


def test_run_reports_it_as_a_permanent_error(tmp_path: Path) -> None:
    """`s3flow run` exit 1 means "retry" to the container contract: a profile error
    (once a traceback, exit 1) is permanent, exit 2, with its JSON line."""
    (tmp_path / "s3flow.toml").write_text(CONFIG.format(tmp=tmp_path))
    done = s3flow(
        tmp_path, "run", "line-count", "s3://b/x.txt", "--output", "out/", "-c", "s3flow.toml"
    )
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stdout.splitlines()
    result = json.loads(line)
    assert result["status"] == "error" and result["disposition"] == "permanent"
    assert result["error_class"] == "ConfigError"
    assert "AWS profile 'nosuchprofile' not found" in result["error"]


#: CONFIG with no profile, at a real endpoint (``url``).
NO_CREDENTIALS = CONFIG.replace('profile = "nosuchprofile"\n', "").replace(
    "http://127.0.0.1:9", "{url}"
)


def test_no_credentials_and_https_to_a_plain_http_endpoint_say_what_to_do(
    tmp_path: Path, endpoint: LocalEndpoint
) -> None:
    """ "Unable to locate credentials" and an SSL "wrong version number" named nothing a
    new user could act on."""
    (tmp_path / "s3flow.toml").write_text(NO_CREDENTIALS.format(url=endpoint.url, tmp=tmp_path))
    done = s3flow(tmp_path, "provision", "--dry-run", "-c", "s3flow.toml")
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "Unable to locate credentials" in said and "set AWS_ACCESS_KEY_ID" in said, said
    https = endpoint.url.replace("http://", "https://")
    (tmp_path / "s3flow.toml").write_text(NO_CREDENTIALS.format(url=https, tmp=tmp_path))
    done = s3flow(tmp_path, "provision", "--dry-run", "-c", "s3flow.toml", credentials=True)
    said = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "write its URL with http://, not https://" in said, said
