"""``job_timeout_s`` stops a run that goes on too long, wherever it runs: the worker's slot
comes back, the object's failure is counted (dead-lettered at ``max_receive_count`` with
the reason), and no other object pays for it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from itest_support import Harness, wait_for

from s3flow.state.records import FileStatus

pytestmark = pytest.mark.integration


def _error(msg: dict[str, object]) -> str:
    attrs = msg["MessageAttributes"]
    assert isinstance(attrs, dict)
    return str(attrs["s3flow.error"]["StringValue"])


def test_a_hung_inline_run_gives_its_slot_back(harness: Harness, tmp_path: Path) -> None:
    """One slot: the hung object is stopped at job_timeout_s (not after its 600 s), its
    one counted failure dead-letters it, and the other object is processed."""
    markers = tmp_path / "m"
    markers.mkdir()
    harness.configure(
        processor="s3flow_testprocs:SlowProcessor",
        options={"sleep_s": 0.1, "marker_dir": str(markers), "hang_prefix": "hang"},
        concurrency=1,
        job_timeout_s=3,
        max_receive_count=1,
    )
    harness.put("hang.txt", b"1\n")
    harness.put("ok.txt", b"1\n2\n")
    t0 = time.monotonic()
    m = harness.run(timeout_s=90)
    assert time.monotonic() - t0 < 60
    p = m.pipelines["p"]
    assert p.objects_processed == 1 and p.dead_lettered == 1
    r = harness.result("ok.txt")
    assert r is not None and r["lines"] == 2
    (dead,) = harness.dlq_messages()
    assert "hang.txt" in str(dead["Body"])
    error = _error(dead)
    assert "job_timeout_s" in error and "cancelled" in error, error
    assert not list(markers.glob("done-hang.txt-*"))
    assert harness.depth() == (0, 0)
    recs = {r.key: r for r in harness.records()}
    assert recs["hang.txt"].status is FileStatus.DEAD and recs["hang.txt"].failures == 1
    assert recs["ok.txt"].status is FileStatus.COMPLETED and recs["ok.txt"].failures == 0


def test_a_hung_pool_run_is_killed_and_only_it_is_charged(harness: Harness, tmp_path: Path) -> None:
    """Pool of two: the hung object's child is killed at job_timeout_s; the object running
    in the other child then is stopped with the broken pool and retried without a
    failure; the hung one is dead-lettered with the reason."""
    markers = tmp_path / "m"
    markers.mkdir()
    harness.configure(
        processor="s3flow_testprocs:SlowProcessor",
        # ok.txt runs until hang.txt's child is gone: it is running when that is killed.
        options={
            "sleep_s": 0.1,
            "marker_dir": str(markers),
            "hang_prefix": "hang",
            "wait_for_hang": True,
        },
        routes=[{"name": "all", "executor": "pool"}],
        executors={"pool": {"processes": 2}},
        concurrency=2,
        job_timeout_s=8,
        max_receive_count=1,
    )
    harness.put("hang.txt", b"1\n")

    def put_ok_once_hang_runs() -> None:
        # Later than hang.txt, so that hang.txt's job_timeout_s ends first.
        wait_for(lambda: list(markers.glob("started-hang.txt-*")), 60, "hang.txt started")
        harness.put("ok.txt", b"1\n2\n")

    putter = threading.Thread(target=put_ok_once_hang_runs)
    putter.start()
    try:
        m = harness.run(timeout_s=120)
    finally:
        putter.join()
    p = m.pipelines["p"]
    (dead,) = harness.dlq_messages()
    assert "hang.txt" in str(dead["Body"])
    error = _error(dead)
    assert "job_timeout_s" in error and "killed (pid" in error, error
    assert p.objects_processed == 1 and p.dead_lettered == 1
    r = harness.result("ok.txt")
    assert r is not None and r["lines"] == 2
    assert not list(markers.glob("done-hang.txt-*"))
    # ok.txt was stopped with the pool (in its child, or before one took it), then ran
    # again and finished once.
    assert len(list(markers.glob("done-ok.txt-*"))) == 1, sorted(markers.iterdir())
    assert harness.depth() == (0, 0)
    recs = {r.key: r for r in harness.records()}
    assert recs["hang.txt"].status is FileStatus.DEAD and recs["hang.txt"].failures == 1
    assert recs["ok.txt"].status is FileStatus.COMPLETED and recs["ok.txt"].failures == 0
