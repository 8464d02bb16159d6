"""`s3flow files` and `s3flow status` read a SQLite store they cannot write (a copy on a
read-only mount, a 0444 file in a directory the operator cannot write): opening it
switched it to WAL and created its tables first, so both failed with "attempt to write
a readonly database" (the state columns of `status` were missing). A command that
writes still says why it cannot.

Root ignores file modes: as root, the commands run without the capabilities that let
it (``setpriv``), so the modes hold; the file's bytes and its directory are checked
too, which no privilege can hide.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import ONE_PIPELINE

import s3flow
from s3flow.state import ObjectId, SqliteStateStore

CONFIG = (
    """\
[aws]
endpoint_url = "http://127.0.0.1:1"
connect_timeout_s = 1
max_attempts = 1
[state]
url = "sqlite:{store}"
"""
    + ONE_PIPELINE
)
#: What root may do whatever a file's mode says: the commands run without it.
_UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def s3flow_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``s3flow ARGS`` (this s3flow), as a process that file modes apply to."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file modes would not apply")
        prefix = _UNPRIVILEGED
    return subprocess.run(
        [*prefix, sys.executable, "-m", "s3flow", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={
            "PATH": "/usr/bin:/bin",
            "COLUMNS": "300",
            "PYTHONPATH": str(Path(s3flow.__file__).parents[1]),
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x",
        },
    )


async def _fill(path: Path) -> None:
    async with SqliteStateStore(path) as store:
        for key in ("a.txt", "b.txt"):
            claim = await store.claim(ObjectId("b", key, "v1"), pipeline="p", owner="w", ttl_s=60)
            assert await store.complete(ObjectId("b", key, "v1"), token=claim.token, outputs=[])


@pytest.fixture(params=["wal", "delete"])
def read_only_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A store with two completed records, 0444 in a 0555 directory: as a worker left
    it (WAL, no -wal/-shm files) or a copy in the rollback-journal mode."""
    made = tmp_path / "made.db"
    asyncio.run(_fill(made))
    if request.param == "delete":
        with sqlite3.connect(made) as conn:
            assert conn.execute("PRAGMA journal_mode = DELETE").fetchone() == ("delete",)
    ro = tmp_path / "ro"
    ro.mkdir()
    store = ro / "state.db"
    shutil.copyfile(made, store)
    store.chmod(0o444)
    ro.chmod(0o555)
    try:
        yield store
    finally:
        ro.chmod(0o755)


def _fingerprint(store: Path) -> tuple[str, list[str]]:
    return hashlib.sha256(store.read_bytes()).hexdigest(), sorted(os.listdir(store.parent))


def test_files_and_status_read_a_store_they_cannot_write(
    read_only_store: Path, tmp_path: Path
) -> None:
    config = tmp_path / "s3flow.toml"
    config.write_text(CONFIG.format(store=read_only_store))
    before = _fingerprint(read_only_store)

    listed = s3flow_cli(tmp_path, "files", "-c", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(r["key"] for r in json.loads(listed.stdout)) == ["a.txt", "b.txt"]
    table = s3flow_cli(tmp_path, "files", "-c", str(config))
    assert table.returncode == 0, table.stderr
    assert "s3flow files (2)" in table.stdout
    shown = s3flow_cli(tmp_path, "files", "show", "a.txt", "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    assert "s3://b/a.txt version v1: completed" in shown.stdout
    status = s3flow_cli(tmp_path, "status", "-c", str(config), "--json")
    (row,) = json.loads(status.stdout)  # exit 1: the queues cannot be reached here
    assert "state_error" not in row, row
    assert row["state"]["counts"]["completed"] == 2

    # Nothing was written: not the file (no switch to WAL, no schema), not its directory.
    assert _fingerprint(read_only_store) == before
    for done in (listed, table, shown, status):
        assert "Traceback" not in done.stderr
    # Read as a snapshot only where SQLite could not make its -shm file (a WAL file in
    # a directory it cannot write), and said so.
    in_wal = read_only_store.read_bytes()[18:20] == b"\x02\x02"  # the header's WAL mark
    noted = "read as a snapshot (SQLite immutable mode)" in listed.stderr
    assert noted == in_wal, listed.stderr


def test_a_command_that_writes_still_says_why_it_cannot(
    read_only_store: Path, tmp_path: Path
) -> None:
    config = tmp_path / "s3flow.toml"
    config.write_text(CONFIG.format(store=read_only_store))
    before = _fingerprint(read_only_store)
    done = s3flow_cli(tmp_path, "state", "prune", "-c", str(config))
    assert done.returncode == 2, done.stdout + done.stderr
    said = " ".join(done.stderr.split())
    assert f"state store {read_only_store} ([state] url): cannot open:" in said, said
    assert f"{read_only_store.parent} is not writable by this process" in said or (
        f"{read_only_store} is not writable by this process" in said
    ), said
    assert _fingerprint(read_only_store) == before
