"""``scratch_file``: an output built in a temporary file leaves nothing in the temporary
directory when its process is killed outright (a pool run past its timeout is killed
with SIGKILL; a named temporary file stayed behind, one per kill)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from s3flow.sinks.base import scratch_file

_CHILD = """
import sys, time
from s3flow.sinks.base import scratch_file
with scratch_file(prefix="s3flow-test-", suffix=".pdf") as (fh, path):
    fh.write(b"x" * 100_000)
    fh.flush()
    print(path, flush=True)
    time.sleep(60)
"""


def test_the_path_reads_what_was_written_and_the_directory_stays_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with scratch_file(prefix="s3flow-test-") as (fh, path):
        fh.write(b"%PDF-1.4 body")
        fh.flush()
        assert Path(path).read_bytes() == b"%PDF-1.4 body"
        assert os.path.getsize(path) == 13
        assert list(tmp_path.iterdir()) == []


def test_a_killed_process_leaves_no_file_behind(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().strip()
        assert path.startswith("/proc/self/fd/"), path
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(tmp_path.iterdir()) == []
