"""`s3flow local --port/--host`: a port outside 0-65535 is a usage error (it was an
OverflowError traceback), and a bind beyond loopback warns that the endpoint has no
authentication. No server is started: the refused port never binds, and the warned
host is one of TEST-NET-1 (192.0.2.0/24), which no interface here has."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def local(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s3flow", "local", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )


@pytest.mark.parametrize(("port", "says"), [("70000", "65535"), ("-1", "greater than or equal")])
def test_a_port_outside_0_to_65535_is_a_usage_error(tmp_path: Path, port: str, says: str) -> None:
    done = local(tmp_path, "--port", port)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "Invalid value for '--port'" in done.stderr and says in done.stderr


def test_a_host_beyond_loopback_is_warned_about(tmp_path: Path) -> None:
    done = local(tmp_path, "--host", "192.0.2.1", "--port", "0")
    assert "warning: the endpoint listens on 192.0.2.1: it has no authentication" in done.stderr
    assert "Keep it on 127.0.0.1" in done.stderr
    assert done.returncode != 0 and "Traceback" not in done.stderr  # cannot bind it here


def test_loopback_is_not_warned_about(tmp_path: Path) -> None:
    done = local(tmp_path, "--host", "127.0.0.1", "--port", "70000")
    assert "warning" not in done.stderr
