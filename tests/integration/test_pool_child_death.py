"""A pool child killed mid-object (SIGKILL, as the OOM killer does): only its object is
charged a failure; the others in the pool are stopped and retried without one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from itest_support import Harness

from s3flow.state import open_state_store
from s3flow.state.records import FileStatus

pytestmark = pytest.mark.integration


def test_a_killed_child_fails_only_its_own_object(harness: Harness, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    harness.configure(
        processor="s3flow_testprocs:KillsItsProcess",
        options={"sleep_s": 1.5, "marker_dir": str(markers), "wait_for": ["slow.txt"]},
        routes=[{"name": "all", "executor": "pool"}],
        executors={"pool": {"processes": 2}},
        concurrency=2,
        max_receive_count=1,  # one counted failure dead-letters
    )
    harness.put("slow.txt", b"1\n2\n")
    harness.put("die.txt", b"1\n")
    m = harness.run(timeout_s=120)
    p = m.pipelines["p"]

    # die.txt's child died: its one failure dead-letters it (max_receive_count = 1).
    assert (markers / "died-die.txt").exists()
    (dead,) = harness.dlq_messages()
    assert "die.txt" in dead["Body"]
    error = dead["MessageAttributes"]["s3flow.error"]["StringValue"]
    assert "the pool process running" in error and "died" in error
    assert "killed, out of memory?" in error  # SIGKILL, as the OOM killer sends
    # slow.txt was stopped with it, then retried without a failure: processed once.
    assert p.objects_processed == 1 and p.dead_lettered == 1
    r = harness.result("slow.txt")
    assert r is not None and r["lines"] == 2
    assert len(list(markers.glob("started-slow.txt-*"))) == 2
    # Its first child was killed, not left to finish beside the retry.
    assert len(list(markers.glob("done-slow.txt-*"))) == 1
    assert harness.depth() == (0, 0)

    async def records() -> dict[str, tuple[FileStatus, int]]:
        async with open_state_store(harness.state_url) as store:
            return {
                key: ((rec := (await store.versions(harness.bucket, key))[0]).status, rec.failures)
                for key in ("slow.txt", "die.txt")
            }

    got = asyncio.run(records())
    assert got["slow.txt"] == (FileStatus.COMPLETED, 0)
    assert got["die.txt"][0] is FileStatus.DEAD
