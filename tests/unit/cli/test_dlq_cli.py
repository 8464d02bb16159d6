"""`s3flow dlq` against an endpoint that is down or hangs up: a clear error, not a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3flow.local.endpoint import free_port


@pytest.fixture()
def hangs_up() -> Iterator[str]:
    """An endpoint that accepts every connection and closes it unanswered."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@pytest.mark.parametrize("command", [["list"], ["redrive", "--max", "5"]])
def test_an_endpoint_that_is_down_is_a_clear_error(tmp_path: Path, command: list[str]) -> None:
    """Nothing answers at the endpoint: the clients refuse to open, naming it (not after
    the SDK's retries, not with a traceback)."""
    down = f"http://127.0.0.1:{free_port()}"
    run = _dlq(tmp_path, down, command)
    flat = " ".join(run.stderr.split())
    assert f"cannot reach the S3 and SQS endpoint {down}" in flat  # says which endpoint


@pytest.mark.parametrize("command", [["list"], ["redrive", "--max", "5"]])
def test_an_endpoint_that_hangs_up_is_a_clear_error(
    tmp_path: Path, command: list[str], hangs_up: str
) -> None:
    """Queues given as URLs skip GetQueueUrl: the first call on the wire is the receive,
    which must be translated like every other AWS call."""
    run = _dlq(tmp_path, hangs_up, command)
    assert "q-dlq" in run.stderr  # says which queue


def _dlq(tmp_path: Path, endpoint: str, command: list[str]) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "s3flow.toml"
    cfg.write_text(
        f"""
[aws]
endpoint_url = "{endpoint}"
region = "us-east-1"
max_attempts = 1
connect_timeout_s = 1

[state]
url = "none"

[[pipelines]]
name = "p"
processor = "line-count"
bucket = "b"
queue = "{endpoint}/123456789012/q"
dlq = "{endpoint}/123456789012/q-dlq"
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
    return run
