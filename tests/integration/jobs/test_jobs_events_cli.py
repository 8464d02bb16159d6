"""`s3flow jobs events` on a real SQLite store: the whole log, however long it is."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from jobs_support import waiting_job

from s3flow.state.jobs import EventType
from s3flow.state.sqlite import SqliteStateStore

pytestmark = pytest.mark.integration


async def _long_log(db: Path, job_id: str, progress_events: int) -> None:
    job = waiting_job(job_id)
    async with SqliteStateStore(db) as store:
        await store.create_job(job, event_id=f"{job_id}:created", data={})
        for i in range(progress_events):
            await store.append_event(
                job_id,
                event_id=f"{job_id}:p{i}",
                type=EventType.STEP_PROGRESS,
                data={"step": 0, "bytes_done": i},
            )


def test_events_prints_a_log_longer_than_one_page(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    cfg = tmp_path / "s3flow.toml"
    cfg.write_text(f'[state]\nurl = "sqlite:///{db}"\n')
    job_id = f"job-{uuid.uuid4().hex}"
    asyncio.run(_long_log(db, job_id, 1204))  # 1205 events: more than the store's 1000 a call
    out = subprocess.run(
        [sys.executable, "-m", "s3flow", "jobs", "events", job_id, "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr
    seqs = [int(ln.split()[0]) for ln in out.stdout.splitlines() if ln.strip()[:1].isdigit()]
    assert seqs == list(range(1, 1206)), (len(seqs), seqs[-3:])
    # --after starts past it, and still reaches the end.
    after = subprocess.run(
        [sys.executable, "-m", "s3flow", "jobs", "events", job_id, "-c", str(cfg), "--after", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert after.returncode == 0, after.stderr
    seqs = [int(ln.split()[0]) for ln in after.stdout.splitlines() if ln.strip()[:1].isdigit()]
    assert seqs == list(range(4, 1206))


def test_follow_past_its_timeout_exits_3_saying_so_and_list_shows_whole_ids(
    tmp_path: Path,
) -> None:
    """--follow --timeout exited 0 on a job still waiting, as on a completed one; and
    `jobs list` at 80 columns cut ids to `job-ca56cc387…`, which cannot be pasted."""
    db = tmp_path / "state.db"
    cfg = tmp_path / "s3flow.toml"
    cfg.write_text(f'[state]\nurl = "sqlite:///{db}"\n')
    job_id = f"job-{uuid.uuid4().hex}"
    asyncio.run(_long_log(db, job_id, 1))
    narrow = {**os.environ, "COLUMNS": "80"}
    base = [sys.executable, "-m", "s3flow", "jobs"]
    out = subprocess.run(
        [*base, "events", job_id, "-c", str(cfg), "--follow", "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=narrow,
    )
    assert out.returncode == 3, (out.returncode, out.stderr)
    assert f"job {job_id} is still waiting_for_files after 1 s (--timeout)" in out.stderr
    listed = subprocess.run(
        [*base, "list", "-c", str(cfg)], capture_output=True, text=True, timeout=120, env=narrow
    )
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout, listed.stdout
