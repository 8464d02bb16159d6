"""``s3flow status --watch``: its rates from two snapshots of the status counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s3flow.cli.status import _rate


@pytest.mark.parametrize(
    ("delta", "dt_s", "shown"),
    [(10, 2.0, "5.0"), (0, 2.0, "0.0"), (3, 0.0, "3000000.0"), (-4, 2.0, "-")],
)
def test_a_rate_is_per_second_and_a_drop_is_unknown_not_negative(
    delta: int, dt_s: float, shown: str
) -> None:
    # A drop: records left the status (retried, or expired and pruned) faster than
    # others came; the counts cannot tell how many came, so no figure is made up.
    assert _rate(delta, dt_s) == shown


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--watch", "--json"], "Invalid value for --json: --watch is a live table"),
        (["--interval", "3"], "Invalid value for --interval: only with --watch"),
    ],
)
def test_flags_that_would_be_ignored_are_refused(args: list[str], said: str) -> None:
    """`status --watch --json` printed the table; `--interval` alone did nothing."""
    from typer.testing import CliRunner

    from s3flow.cli import app

    result = CliRunner().invoke(app, ["status", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert said in " ".join(result.output.replace("│", " ").split())


def test_a_bad_manifest_status_names_the_valid_ones() -> None:
    """`manifests list --status bogus` said "'bogus' is not a valid ManifestStatus"."""
    from typer.testing import CliRunner

    from s3flow.cli import app

    result = CliRunner().invoke(
        app, ["manifests", "list", "--status", "bogus"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert "'bogus' is not a manifest status: use one of sealing, sealed, processing" in said


@pytest.mark.parametrize("store", ["sqlite", "dynamodb"])
def test_an_unreachable_endpoint_is_a_row_per_queue_and_exit_1(tmp_path: Path, store: str) -> None:
    """As docs/operations.md says for a queue that cannot be read: exit 1 and --json rows
    naming why. The local endpoint check failed before the rows (exit 2, no JSON), so
    a script's answer depended on the kind of endpoint; a DynamoDB store on the same
    endpoint then failed the command the same way."""
    from typer.testing import CliRunner

    from s3flow.cli import app

    cfg = tmp_path / "s3flow.toml"
    cfg.write_text(
        '[aws]\nendpoint_url = "http://127.0.0.1:1"\nconnect_timeout_s = 1\nmax_attempts = 1\n'
        + (f'[state]\nurl = "sqlite:{tmp_path}/state.db"\n' if store == "sqlite" else "")
        + ('[state]\nurl = "dynamodb://rv"\n' if store == "dynamodb" else "")
        + '[[pipelines]]\nname = "counts"\nprocessor = "line-count"\nbucket = "incoming"\n'
        'queue = "counts-q"\noutput = "s3://results/counts/"\n'
    )
    env = {"COLUMNS": "200", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    result = CliRunner().invoke(app, ["status", "-c", str(cfg), "--json"], env=env)
    assert result.exit_code == 1, result.output
    (row,) = json.loads(result.stdout)
    assert row["pipeline"] == "counts" and row["visible"] is None
    assert "cannot reach the S3 and SQS endpoint http://127.0.0.1:1" in row["error"]
    assert ("state_error" in row) == (store == "dynamodb"), row


def test_a_negative_count_is_drift() -> None:
    """`status` showed `processing -1` after SIGKILLs (DynamoDB counters) with no hint;
    a negative count now points to `s3flow state recount --repair`."""
    from s3flow.cli.status import _drifted

    assert _drifted({"completed": 366, "processing": -1})
    assert not _drifted({"completed": 366, "processing": 0})
    assert not _drifted({})
