"""`s3flow upload` against a real web server with no worker: the job waits, and the
command says once that a worker records arrivals and runs jobs (it waited in silence)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import pytest
from web_support import JobsEnv, WebThread, wait_until

from s3flow.cli import upload as upload_cli
from s3flow.ops.jobs import cancel_job
from s3flow.state.sqlite import SqliteStateStore

pytestmark = pytest.mark.integration


def test_a_job_no_worker_runs_gets_the_hint_once(
    jobs_env: JobsEnv,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(upload_cli, "NO_WORKER_HINT_S", 0.5)
    file = tmp_path / "a.txt"
    file.write_text("one\n")
    codes: list[int] = []
    errors: list[BaseException] = []
    seen: list[str] = []

    def said() -> str:
        seen.append(capsys.readouterr().err)
        assert not errors, errors
        return "".join(seen)

    with WebThread(jobs_env.settings()) as web, httpx.Client(timeout=30) as client:

        def upload() -> None:
            try:
                codes.append(upload_cli._run(client, web.url, {}, "count", [file], quiet=True))
            except BaseException as exc:
                errors.append(exc)

        runner = threading.Thread(target=upload, daemon=True)
        runner.start()
        wait_until(lambda: "is one running" in said(), what="the hint")

        async def cancel() -> None:
            async with SqliteStateStore(jobs_env.db) as store:
                (job,) = await store.list_jobs()
                await cancel_job(store, job.job_id, reason="test over")

        asyncio.run(cancel())  # a terminal event: the command ends
        runner.join(timeout=30)
    assert not errors and codes and codes[0] != 0  # the job failed (cancelled)
    assert said().count("is one running") == 1
