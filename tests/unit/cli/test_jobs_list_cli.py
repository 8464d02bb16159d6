"""``s3flow jobs list`` pages with ``--cursor`` over a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from s3flow.cli import app
from s3flow.state import JobFile, JobRecord, JobStatus, JobStep, SqliteStateStore

T0 = 1_764_547_200.0


def _job(n: int) -> JobRecord:
    return JobRecord(
        job_id=f"job-{n}",
        upload_id=f"u{n}",
        template="count",
        status=JobStatus.WAITING_FOR_FILES,
        files=(JobFile("a.txt", f"uploads/u{n}/0-a.txt", 3, "text/plain"),),
        steps=(JobStep("line-count"),),
        created_at=T0 + n // 2,  # pairs share created_at: the job id breaks the tie
        updated_at=T0,
        expires_at=T0 + 3600,
    )


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    db = tmp_path / "state.db"

    async def fill() -> None:
        async with SqliteStateStore(db) as store:
            for n in range(5):
                await store.create_job(_job(n), event_id=f"job-{n}:created", data={})

    asyncio.run(fill())
    cfg = tmp_path / "my [project]" / "s3flow.toml"  # the hint quotes it for a shell
    cfg.parent.mkdir()
    cfg.write_text(
        f'[state]\nurl = "sqlite:///{db}"\n'
        '[jobs]\nproject = "acme"\nbranch = "dev"\n'
        '[[templates]]\nname = "count"\nsteps = [{processor = "line-count"}]\n'
    )
    return cfg


def _list(config: Path, *args: str) -> Result:
    return CliRunner().invoke(
        app, ["jobs", "list", "-c", str(config), "--json", *args], env={"COLUMNS": "400"}
    )


def test_pages_follow_the_printed_cursor_until_none_is_printed(config: Path) -> None:
    seen: list[str] = []
    args = ["--limit", "2"]
    for _ in range(5):  # 3 pages; a cursor ignored would loop
        result = _list(config, *args)
        assert result.exit_code == 0, result.output
        seen += [j["job_id"] for j in json.loads(result.stdout)]
        more = re.search(r"more jobs: s3flow jobs list (.*) --cursor (\S+)", result.stderr)
        if more is None:
            break
        assert more.group(1) == f"-c {shlex.quote(str(config))} --limit 2"
        args = ["--limit", "2", "--cursor", more.group(2)]
    else:
        pytest.fail(f"paging did not end: {seen}")
    assert seen == ["job-4", "job-3", "job-2", "job-1", "job-0"]
    exact = _list(config, "--limit", "5")  # the whole rest in one page: no cursor
    assert len(json.loads(exact.stdout)) == 5 and "more jobs" not in exact.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--cursor", "nope"], "not a cursor s3flow printed"),
        (["--limit", "0"], "Invalid value for '--limit'"),
    ],
)
def test_a_bad_cursor_or_limit_is_refused_with_the_reason(
    config: Path, args: list[str], says: str
) -> None:
    result = _list(config, *args)
    assert result.exit_code != 0
    assert says in " ".join(result.output.replace("│", " ").split()), result.output
