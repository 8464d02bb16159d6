"""`s3flow state prune | recount` on a SQLite store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from state_support import FakeClock, oid
from typer.testing import CliRunner

from s3flow.cli import app
from s3flow.state import FileStatus, SqliteStateStore

pytestmark = pytest.mark.integration


async def _populate(db: Path) -> None:
    async with SqliteStateStore(db, clock=FakeClock()) as store:  # records of 2023
        for i in range(3):
            c = await store.claim(oid(f"k{i}"), pipeline="p", owner="w", ttl_s=60)
            await store.complete(oid(f"k{i}"), token=c.token, outputs=[])
        await store.claim(oid("busy"), pipeline="p", owner="w", ttl_s=60)


async def _check(db: Path) -> None:
    async with SqliteStateStore(db) as store:
        counts = await store.counts("p")
        assert (counts[FileStatus.COMPLETED], counts[FileStatus.PROCESSING]) == (0, 1)
        assert (await store.recount()).consistent


def test_state_prune_and_recount(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    config = tmp_path / "s3flow.toml"
    config.write_text(f'[state]\nurl = "sqlite://{db}"\nretention_days = 15\n')
    asyncio.run(_populate(db))
    conn = sqlite3.connect(db)  # a drift, as a crash could leave on DynamoDB
    conn.execute("UPDATE file_counts SET n = n + 5 WHERE status = 'completed'")
    conn.commit()
    conn.close()
    runner = CliRunner()

    drift = runner.invoke(app, ["state", "recount", "-c", str(config), "--json"])
    assert drift.exit_code == 1, drift.output
    doc = json.loads(drift.stdout[drift.stdout.index("{") :])
    assert doc["drift"] == {"p": {"completed": 5}} and doc["items_read"] == 4
    fixed = runner.invoke(app, ["state", "recount", "-c", str(config), "--repair"])
    assert fixed.exit_code == 0 and "repaired" in fixed.output
    assert runner.invoke(app, ["state", "recount", "-c", str(config)]).exit_code == 0

    pruned = runner.invoke(app, ["state", "prune", "-c", str(config), "--json"])
    assert pruned.exit_code == 0, pruned.output
    report = json.loads(pruned.stdout)
    assert (report["files"], report["history"], report["complete"]) == (3, 7, True)
    asyncio.run(_check(db))
    vacuum = runner.invoke(app, ["state", "prune", "-c", str(config), "--vacuum"])
    assert vacuum.exit_code == 0 and "VACUUM" in vacuum.output


def test_state_commands_without_a_store(tmp_path: Path) -> None:
    config = tmp_path / "s3flow.toml"
    config.write_text('[state]\nurl = "none"\n')
    out = CliRunner().invoke(app, ["state", "prune", "-c", str(config)])
    assert out.exit_code != 0 and "no state store" in out.output
