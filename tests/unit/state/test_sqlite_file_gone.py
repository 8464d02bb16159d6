"""A SQLite store whose file is deleted or replaced while it is open says so on every
call: a worker went on writing records, claims and locks to the deleted file, and
`s3flow files` then showed a new, empty store (every object new to a backfill)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from s3flow.state import ObjectId, SqliteStateStore, StateError

OID = ObjectId("b", "k", "v1")


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@pytest.mark.parametrize("how", ["deleted", "replaced by another file"])
async def test_a_store_whose_file_is_gone_refuses_every_call(tmp_path: Path, how: str) -> None:
    path = tmp_path / "state.db"
    async with SqliteStateStore(path) as store:
        await store.claim(OID, pipeline="p", owner="w", ttl_s=60)
        assert (await store.get(OID)) is not None
        _remove(path)
        if how != "deleted":
            async with SqliteStateStore(path):
                pass  # a new store at the same path
        with pytest.raises(StateError, match=f"state store {path} was {how} while this"):
            await store.get(OID)
        with pytest.raises(StateError, match="Stop this process"):
            await store.claim(ObjectId("b", "k2", "v1"), pipeline="p", owner="w", ttl_s=60)


async def test_a_store_whose_file_stays_works_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also when opened by a relative path and the working directory changes after."""
    monkeypatch.chdir(tmp_path)
    async with SqliteStateStore(Path("state.db")) as store:
        await store.claim(OID, pipeline="p", owner="w", ttl_s=60)
        os.utime(tmp_path / "state.db")  # touched, still the same file
        monkeypatch.chdir("/")
        assert (await store.get(OID)) is not None
