"""`s3flow status --watch`: the live view refreshes with rates, in flight, depths."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from itest_support import Harness

pytestmark = pytest.mark.integration


def test_watch_refreshes_with_rates_and_depths(harness: Harness) -> None:
    harness.configure()
    cfg = harness.write_config()
    for i in range(3):
        harness.put(f"w/{i}.txt", b"a\n")
    harness.run()
    run = subprocess.run(
        [sys.executable, "-m", "s3flow", "status", "-c", str(cfg), "--watch", "--interval", "0.5",
         "--rounds", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "s3flow status --watch" in out
    for col in ("done/s", "failed/s", "in flight", "visible", "oldest in flight", "DLQ"):
        assert col in out
    # Two refreshes: the second has rates (0.0: the queue is drained), the DLQ is empty.
    row = [ln for ln in out.splitlines() if ln.strip("│ ").startswith("p ")][-1]
    cells = [c.strip() for c in row.strip("│").split("│")]
    assert cells[0] == "p" and cells[1] == "0.0" and cells[-1] == "0", cells
