"""`s3flow provision --export cloudformation [-o FILE]`, and the table definitions it uses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from s3flow.cli import app
from s3flow.settings import AwsSettings
from s3flow.state.dynamodb import DynamoStateStore
from s3flow.state.dynamodb.tables import TTL_ATTRIBUTE, table_definitions

CONFIG = """
[state]
url = "dynamodb://acme-dev-state"

[jobs]
project = "acme"
branch = "dev"

[[pipelines]]
name = "counts"
processor = "line-count"
bucket = "incoming"
queue = "counts-events"
output = "s3://results/counts/"
"""


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "s3flow.toml"
    path.write_text(CONFIG)
    return path


def test_export_to_a_file(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "stack.json"
    result = CliRunner().invoke(
        app, ["provision", "-c", str(config), "--export", "cloudformation", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    template = json.loads(out.read_text())
    tables = [r for r in template["Resources"].values() if r["Type"] == "AWS::DynamoDB::Table"]
    assert len(tables) == len(table_definitions("acme-dev-state"))
    # [state] retention_days (default 30): every table expires records through TTL.
    ttl = {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}
    assert all(t["Properties"]["TimeToLiveSpecification"] == ttl for t in tables)
    assert f"wrote {out}" in " ".join(result.output.split())  # Rich may wrap long paths
    assert "web.tokens" in result.output  # the warning (on stderr, mixed in by CliRunner)


def test_export_to_stdout(config: Path) -> None:
    result = CliRunner().invoke(app, ["provision", "-c", str(config), "--export", "cloudformation"])
    assert result.exit_code == 0, result.output
    start = result.stdout.index("{")
    assert json.loads(result.stdout[start:])["Resources"]["QueueCountsEvents"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "x.json"], "goes with --export"),
        (["--export", "cloudformation", "--dry-run"], "leave out --dry-run"),
        (["--export", "terraform"], "terraform"),
    ],
)
def test_refused(config: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["provision", "-c", str(config), *args])
    assert result.exit_code != 0
    assert message in result.output


def test_export_refuses_overlapping_notifications(tmp_path: Path) -> None:
    """The template declares the notifications provision would set: two pipelines that
    only their key_regex keep apart would make the stack fail in S3 ("Configurations
    overlap"), so the export refuses them, naming both, and writes nothing."""
    path = tmp_path / "s3flow.toml"
    second = CONFIG.split("[[pipelines]]")[1].replace('"counts', '"refunds')
    path.write_text(
        CONFIG.replace('queue = "counts-events"', 'queue = "counts-events"\nkey_regex = "^c"')
        + "\n[[pipelines]]"
        + second.replace('queue = "refunds-events"', 'queue = "refunds-events"\nkey_regex = "^r"')
    )
    out = tmp_path / "stack.json"
    result = CliRunner().invoke(
        app, ["provision", "-c", str(path), "--export", "cloudformation", "-o", str(out)]
    )
    assert result.exit_code != 0
    text = " ".join(result.output.split())  # Rich wraps long lines
    assert "'counts' and 'refunds' on bucket 'incoming'" in text
    assert "Configurations overlap" in text and not out.exists()


NDJSON = """
[[pipelines]]
name = "events"
processor = "ndjson-manifest"
bucket = "incoming"
queue = "events-q"
output = "s3://results/unused/"
[pipelines.options]
manifest_buckt = "lake"
"""


@pytest.mark.parametrize("args", [["--export", "cloudformation"], ["--dry-run"]])
def test_an_option_the_worker_refuses_stops_provision_and_the_export(
    tmp_path: Path, args: list[str]
) -> None:
    """A typo in a processor's options: exported, it went into every task's
    environment (and the template gave the manifest writes to the source bucket), where
    each worker refused to start. Checked before anything is written or asked of AWS."""
    path = tmp_path / "s3flow.toml"
    path.write_text(NDJSON)
    out = tmp_path / "stack.json"
    extra = ["-o", str(out)] if "--export" in args else []
    result = CliRunner().invoke(app, ["provision", "-c", str(path), *args, *extra])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "pipeline 'events', route 'default'" in text, text
    assert "manifest_buckt: unknown option" in text and "manifest_bucket" in text
    assert not out.exists()


class _FakeDynamo:
    """Records CreateTable calls; every table is ACTIVE."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.schemas: dict[str, Any] = {}

    async def create_table(self, **kwargs: Any) -> dict[str, Any]:
        self.created.append(kwargs)
        self.schemas[kwargs["TableName"]] = kwargs["KeySchema"]
        return {}

    async def describe_table(self, TableName: str) -> dict[str, Any]:
        return {"Table": {"KeySchema": self.schemas[TableName], "TableStatus": "ACTIVE"}}


def test_ensure_tables_creates_exactly_the_definitions() -> None:
    store = DynamoStateStore("acme-dev-state", AwsSettings(region="us-east-1"))
    fake = _FakeDynamo()
    store._client = fake  # the store's calls go through _client (no network here)
    out = asyncio.run(store.ensure_tables())
    assert fake.created == table_definitions("acme-dev-state")
    assert [t for t, _ in out] == [d["TableName"] for d in fake.created]
    assert {a for _, a in out} == {"created"}
    # Fresh copies: changing one does not change the next call's.
    defs = table_definitions("x")
    defs[0]["KeySchema"].clear()
    assert table_definitions("x")[0]["KeySchema"]
