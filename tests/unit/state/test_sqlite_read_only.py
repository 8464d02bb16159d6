"""A SQLite store opened read-only (what `s3flow files` and `s3flow status` do): reads
work, nothing is written to the file (SQLite's ``mode=ro``, which holds for root too),
and a schema it would have to change is an error saying what to do."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from s3flow.state import ObjectId, SqliteStateStore, StateError, open_state_store

OID = ObjectId("b", "k", "v1")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def _store_in_delete_mode(path: Path) -> str:
    """A store with one completed record, its file in the rollback-journal mode (as a
    copy made by ``sqlite3 .backup`` may be); the file's sha256."""
    async with SqliteStateStore(path) as store:
        claim = await store.claim(OID, pipeline="p", owner="w", ttl_s=60)
        assert await store.complete(OID, token=claim.token, outputs=["s3://o/k"])
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
    return _digest(path)


async def test_a_read_only_store_reads_and_refuses_writes_changing_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    digest = await _store_in_delete_mode(path)
    async with SqliteStateStore(path, read_only=True) as store:
        (rec,) = await store.list_files()
        assert rec.key == "k" and rec.outputs == ["s3://o/k"]
        assert (await store.counts("p"))["completed"] == 1
        with pytest.raises(StateError, match=r"\(opened read-only\).*readonly database"):
            await store.claim(ObjectId("b", "new", "v1"), pipeline="p", owner="w", ttl_s=60)
    # No switch to WAL (the file's mode is part of its bytes), no schema written.
    assert _digest(path) == digest
    assert _names(tmp_path) == ["state.db"]


async def test_a_schema_that_needs_an_upgrade_is_refused_not_changed(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await _store_in_delete_mode(path)
    with sqlite3.connect(path) as conn:  # as an older s3flow left it: no upload jobs yet
        conn.execute("DROP TABLE job_events")
    digest = _digest(path)
    with pytest.raises(StateError, match=r"written by an older s3flow .* open it once where"):
        async with SqliteStateStore(path, read_only=True):
            pass
    assert _digest(path) == digest
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StateError, match=r"has schema version 99; .* \(upgrade s3flow\)"):
        async with SqliteStateStore(path, read_only=True):
            pass


async def test_a_missing_store_is_not_made_by_a_read_only_open(tmp_path: Path) -> None:
    path = tmp_path / "none" / "state.db"
    with pytest.raises(StateError, match="does not exist"):
        async with SqliteStateStore(path, read_only=True):
            pass
    assert not path.parent.exists()
    # A command that reads asks for read_only: a store not made yet is made, empty, as
    # by any command (it says so: cli.common.note_new_store).
    async with open_state_store(f"sqlite:{path}", read_only=True) as store:
        assert await store.list_files() == []
    assert path.exists()


async def test_a_reading_command_upgrades_a_store_it_can_write(tmp_path: Path) -> None:
    """Reading commands opened every store read-only: after an s3flow upgrade `files` and
    `status` refused a writable store ("written by an older s3flow") until a worker ran."""
    path = tmp_path / "state.db"
    await _store_in_delete_mode(path)
    with sqlite3.connect(path) as conn:  # as an older s3flow left it: no upload jobs yet
        conn.execute("DROP TABLE job_events")
    async with open_state_store(f"sqlite:///{path}", read_only=True) as store:
        assert isinstance(store, SqliteStateStore) and not store.read_only
        assert (await store.get(OID)) is not None
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'job_events'").fetchone()
