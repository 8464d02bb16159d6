"""`s3flow worker` flags that override settings after they are loaded: checked like settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import s3flow.app
from s3flow.cli import app
from s3flow.metrics import WorkerMetrics
from s3flow.settings import Settings

CONFIG = """
[[pipelines]]
name = "a"
bucket = "in"
queue = "a-events"
output = "s3://out/a/"

[[pipelines]]
name = "b"
bucket = "in-b"
queue = "b-events"
output = "s3://out/b/"
concurrency = 4
"""


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "s3flow.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture()
def runs(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The settings ``run_worker`` is called with (it runs nothing: no servers here)."""
    seen: list[Settings] = []

    async def fake_run_worker(settings: Settings, **kw: Any) -> WorkerMetrics:
        seen.append(settings)
        return WorkerMetrics()

    monkeypatch.setattr(s3flow.app, "run_worker", fake_run_worker)
    return seen


@pytest.mark.parametrize("value", ["0", "-3", "1001", "5000"])
def test_an_out_of_range_concurrency_is_a_one_line_config_error(
    config: Path, runs: list[Settings], value: str
) -> None:
    result = CliRunner().invoke(app, ["worker", "-c", str(config), "--concurrency", value])
    # exit 2 like every other configuration error, the message naming the flag and range
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.output.strip() == (
        f"error: --concurrency {value}: must be between 1 and 1000 "
        "(objects processed at once by each pipeline)"
    )
    assert runs == []  # refused before anything starts


def test_a_valid_concurrency_overrides_every_pipeline(config: Path, runs: list[Settings]) -> None:
    result = CliRunner().invoke(app, ["worker", "-c", str(config), "--concurrency", "1000"])
    assert result.exit_code == 0, result.output
    (settings,) = runs
    assert [p.concurrency for p in settings.pipelines] == [1000, 1000]
