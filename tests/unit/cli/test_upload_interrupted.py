"""Ctrl-C in `s3flow upload` says what became of the job (it exited 130 in silence,
leaving a job waiting an hour for its files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from s3flow.cli import upload as cli_upload


def _interrupt(*args: Any, **kw: Any) -> Any:
    raise KeyboardInterrupt


@pytest.mark.parametrize("when", ["sending", "following"])
def test_an_interrupted_upload_says_what_to_do_with_its_job(
    when: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    created = {"job_id": "job-1", "upload_id": "u-1", "files": []}
    monkeypatch.setattr(cli_upload, "create_upload", lambda *a, **kw: created)
    monkeypatch.setattr(cli_upload, "UploadUrls", lambda *a, **kw: None)
    if when == "sending":
        monkeypatch.setattr(cli_upload, "_send_files", _interrupt)
    else:
        monkeypatch.setattr(cli_upload, "_send_files", lambda *a, **kw: None)
        monkeypatch.setattr(cli_upload, "read_events", _interrupt)
    with pytest.raises(typer.Exit) as info:
        cli_upload._run(None, "http://api", {}, "count", [], quiet=True)  # type: ignore[arg-type]
    assert info.value.exit_code == 130
    err = " ".join(capsys.readouterr().err.split())
    assert "`s3flow jobs cancel job-1`" in err
    if when == "sending":
        assert "interrupted: job job-1 waits for its other files until it expires" in err
    else:
        assert "interrupted: job job-1 goes on; follow it with" in err
        assert "`s3flow jobs events --follow job-1`" in err
