"""The store factory, the SQLite file and the DynamoDB tables."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from state_support import oid

from s3flow.errors import ConfigError
from s3flow.settings import AwsSettings
from s3flow.state import (
    DynamoStateStore,
    FileStatus,
    SqliteStateStore,
    StateError,
    open_state_store,
)

pytestmark = pytest.mark.integration


# --- the factory and the SQLite file ---------------------------------------------------------


async def test_open_state_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = open_state_store(f"sqlite://{tmp_path}/abs/s.db")
    assert isinstance(absolute, SqliteStateStore) and absolute.path == f"{tmp_path}/abs/s.db"
    rel = open_state_store("sqlite:.s3flow/state.db")
    assert isinstance(rel, SqliteStateStore) and rel.path == ".s3flow/state.db"
    single = open_state_store(f"sqlite:{tmp_path}/x.db")
    assert isinstance(single, SqliteStateStore) and single.path == f"{tmp_path}/x.db"
    plain = open_state_store("data/files.sqlite")
    assert isinstance(plain, SqliteStateStore) and plain.path == "data/files.sqlite"
    dyn = open_state_store("dynamodb://my-app.prod", AwsSettings(region="eu-west-1"))
    assert isinstance(dyn, DynamoStateStore)
    assert (dyn.files_table, dyn.history_table, dyn.meta_table) == (
        "my-app.prod-files",
        "my-app.prod-history",
        "my-app.prod-meta",
    )
    for bad in ("redis://x", "dynamodb://", "dynamodb://bad name", "sqlite:", "sqlite://host/x.db"):
        with pytest.raises(ConfigError):
            open_state_store(bad)
    async with rel as s:  # relative to the working directory; directory created
        await s.incr("n")
    assert (tmp_path / ".s3flow" / "state.db").exists()


async def test_sqlite_persists_and_reports_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    async with SqliteStateStore(path) as s:
        await s.claim(oid(), pipeline="p", owner="w", ttl_s=60)
        await s.put_checkpoint("c", "1")
    async with SqliteStateStore(path) as s:
        rec = await s.get(oid())
        assert rec is not None and rec.status is FileStatus.PROCESSING
        assert await s.get_checkpoint("c") == "1"
    closed = SqliteStateStore(path)
    with pytest.raises(StateError, match="not open"):
        await closed.get(oid())
    (tmp_path / "garbage.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match=r"garbage\.db"):
        async with SqliteStateStore(tmp_path / "garbage.db"):
            pass
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match="file"):
        async with SqliteStateStore(tmp_path / "file" / "sub" / "s.db"):
            pass


async def test_dynamodb_tables(endpoint: object) -> None:
    aws = AwsSettings(endpoint_url=endpoint.url)  # type: ignore[attr-defined]
    prefix = f"tables-{uuid.uuid4().hex[:8]}"
    async with DynamoStateStore(prefix, aws) as s:
        with pytest.raises(StateError, match=r"-files does not exist.*provision"):
            await s.get(oid())
        assert await s.ensure_tables() == [
            (f"{prefix}-files", "created"),
            (f"{prefix}-history", "created"),
            (f"{prefix}-meta", "created"),
            (f"{prefix}-manifests", "created"),
            (f"{prefix}-jobs", "created"),
            (f"{prefix}-job-events", "created"),
        ]
        assert await s.get(oid()) is None
    # Idempotent, and usable on a store that is not open.
    again = await DynamoStateStore(prefix, aws).ensure_tables()
    assert [c for _, c in again] == ["unchanged"] * 6
    wrong = DynamoStateStore(f"{prefix}-x", aws)
    async with wrong:
        await wrong._client.create_table(  # a table of that name with another key schema
            TableName=wrong.meta_table,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        with pytest.raises(StateError, match=r"-x-meta exists with key schema"):
            await wrong.ensure_tables()
