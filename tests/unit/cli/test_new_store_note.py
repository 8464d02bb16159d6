"""An operator command that opens a SQLite store that does not exist yet says so: it
created an empty one, silently, when run from another directory than the worker's
(``[state] url`` is relative to the working directory), and answered "no files"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cli_support import ONE_PIPELINE

CONFIG = ONE_PIPELINE


def files(cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return s3flow(cwd, "files", "-c", str(config), "--json")


def test_a_relative_store_opened_from_another_directory_is_noted(tmp_path: Path) -> None:
    config = tmp_path / "s3flow.toml"
    config.write_text(CONFIG)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    first = files(elsewhere, config)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "[]"
    store = elsewhere / ".s3flow" / "state.db"
    assert f"note: no state store at {store} yet: it is created now, empty." in first.stderr
    assert "'sqlite:.s3flow/state.db' is relative to the working directory" in first.stderr
    assert str(elsewhere) in first.stderr and "sqlite:///path" in first.stderr
    again = files(elsewhere, config)
    assert again.returncode == 0 and "note:" not in again.stderr


def test_an_absolute_store_that_is_new_is_noted_without_the_relative_hint(
    tmp_path: Path,
) -> None:
    config = tmp_path / "s3flow.toml"
    store = tmp_path / "db" / "state.db"
    config.write_text(CONFIG + f'[state]\nurl = "sqlite:///{store}"\n')
    done = files(tmp_path, config)
    assert done.returncode == 0, done.stderr
    assert f"note: no state store at {store} yet" in done.stderr
    assert "relative" not in done.stderr


def s3flow(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``s3flow ARGS`` run in ``cwd`` with no S3FLOW_ variable set."""
    return subprocess.run(
        [sys.executable, "-m", "s3flow", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "300"},
    )


def test_with_no_config_at_all_nothing_is_created_and_the_command_says_why(
    tmp_path: Path,
) -> None:
    """An empty store made in whatever directory the command ran in only hid the
    mistake ("no files", exit 0)."""
    for args in (["files"], ["manifests", "list"], ["state", "prune"], ["status"]):
        done = s3flow(tmp_path, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert "error: no config file (no -c/--config, no $S3FLOW_CONFIG" in done.stderr, args
        assert "Traceback" not in done.stderr
    assert not (tmp_path / ".s3flow").exists()


def test_s3flow_toml_in_the_working_directory_is_read_without_c(tmp_path: Path) -> None:
    (tmp_path / "s3flow.toml").write_text(CONFIG)
    (tmp_path / ".s3flow").mkdir()
    store = tmp_path / ".s3flow" / "state.db"
    store.touch()
    listed = s3flow(tmp_path, "files", "-p", "p", "--json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "[]"
    typo = s3flow(tmp_path, "files", "-p", "nope")
    assert typo.returncode == 2
    assert (
        "error: no pipeline named 'nope' is configured (p) and the state store has no record"
        in typo.stderr
    )


def test_dlq_commands_with_no_pipelines_say_there_are_none(tmp_path: Path) -> None:
    (tmp_path / "s3flow.toml").write_text("[worker]\nlog_level = 'INFO'\n")
    done = s3flow(tmp_path, "dlq", "list")
    assert done.returncode == 2
    assert "error: no pipelines configured" in done.stderr and "several" not in done.stderr


def test_a_config_from_environment_variables_alone_is_a_config(tmp_path: Path) -> None:
    """A container configured only by S3FLOW_* variables (docs/deploy.md) was refused as
    having "no config file"."""
    pipelines = (
        '[{"name":"p","processor":"line-count","bucket":"b","queue":"q","output":"s3://o/"}]'
    )
    done = subprocess.run(
        [sys.executable, "-m", "s3flow", "files", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "300", "S3FLOW_PIPELINES": pipelines},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]" and "note: no state store at" in done.stderr


def test_recount_without_a_store_says_only_that(tmp_path: Path) -> None:
    """It printed "counting every record..." before "no state store configured"."""
    config = tmp_path / "s3flow.toml"
    config.write_text('[state]\nurl = "none"\n' + CONFIG)
    run = s3flow(tmp_path, "state", "recount", "-c", str(config))
    assert run.returncode != 0
    assert "no state store configured" in run.stderr and "counting" not in run.stderr
