"""A worker that stalls past its claim's TTL must not write over the newer upload's result.

Worker A (a real ``s3flow worker``) reads upload 1 of a key and is frozen (SIGSTOP, as a
VM pause or a long GC would) before it writes. Meanwhile upload 2 lands and worker B,
once A's key lock and claim have expired, processes it. Then A wakes up (SIGCONT): it
wrote upload 1's result over upload 2's, and said both "write the same keys". It must
find out that its lock and claim were taken over, write nothing, and release its
message; what a user checks afterwards: the result is upload 2's, the DLQ is empty,
every record of the key is final, nothing is left invisible.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from itest_support import Harness, spawn_worker, wait_for

from s3flow.state.records import FileStatus

pytestmark = pytest.mark.integration

TTL_S = 6


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_worker_frozen_past_its_claim_writes_nothing_over_the_newer_upload(
    harness: Harness, tmp_path: Path
) -> None:
    harness.configure(
        processor="s3flow_testprocs:SlowWhenContentStartsWith",
        visibility_timeout_s=TTL_S,
        concurrency=2,
        options={"prefix": "A", "sleep_s": 2, "marker_dir": str(tmp_path)},
    )
    cfg = harness.write_config()
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = spawn_worker(cfg, log_a)
    b: subprocess.Popen[bytes] | None = None
    try:
        harness.put("k.txt", b"A\nA\n")
        wait_for(lambda: list(tmp_path.glob("read-*")), 60, "worker A to read upload 1")
        a.send_signal(signal.SIGSTOP)  # read, not written: frozen before its write
        assert harness.result("k.txt") is None
        harness.put("k.txt", b"B\nB\nB\n")
        b = spawn_worker(cfg, log_b)
        wait_for(
            lambda: (harness.result("k.txt") or {}).get("lines") == 3,
            60,
            "worker B to process upload 2 (after A's lock and claim expired)",
        )
        a.send_signal(signal.SIGCONT)
        lost = "its key lock or claim expired"
        wait_for(
            lambda: lost in log_a.read_text() or (harness.result("k.txt") or {}).get("lines") != 3,
            30,
            "worker A to go on (finding its lock or claim lost, or writing)",
        )
        # Both messages settled: nothing visible, nothing in flight, nothing dead.
        wait_for(lambda: harness.depth() == (0, 0), 60, "the queue to empty")
        result = harness.result("k.txt")
        assert result is not None and result["lines"] == 3, (result, log_a.read_text()[-3000:])
        assert lost in log_a.read_text()
        assert harness.depth(harness.dlq_url) == (0, 0)
        records = harness.records("k.txt")
        assert records and all(r.status is FileStatus.COMPLETED for r in records), records
    finally:
        _stop(a)
        if b is not None:
            _stop(b)
    assert harness.result("k.txt") == result
