"""`s3flow files` pages: `--json` writes the records as it reads them, a page at a time
(200,000 records took 1.2 GB: the whole list, then its dump), and `--cursor` goes on
from where a page ended, the command for it printed after a page that has a next."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cli_support import ONE_PIPELINE
from typer.testing import CliRunner, Result

from s3flow.cli import app
from s3flow.state import FileRecord, ObjectId, SqliteStateStore

N = 2_500
CONFIG = (
    """\
[state]
url = "sqlite:{store}"
"""
    + ONE_PIPELINE
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def _fill(path: Path) -> list[FileRecord]:
    """N records, seven at a time updated at one time; the listing, newest first."""
    clock = Clock()
    async with SqliteStateStore(path, clock=clock) as store:
        for i in range(N):
            oid = ObjectId("b", f"k/{i:05d}", "v1")
            claim = await store.claim(oid, pipeline="p", owner="w", ttl_s=60)
            if i % 2:
                assert await store.complete(oid, token=claim.token, outputs=[f"s3://o/{i}"])
            if i % 7 == 6:
                clock.now += 0.5
        return await store.list_files(limit=N + 1)


@pytest.fixture(scope="module")
def listing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[FileRecord]]:
    """The config of a store of N records, and its whole listing."""
    folder = tmp_path_factory.mktemp("paging")
    records = asyncio.run(_fill(folder / "state.db"))
    assert len(records) == N
    config = folder / "s3flow.toml"
    config.write_text(CONFIG.format(store=folder / "state.db"))
    return config, records


def files(config: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["files", "-c", str(config), *args], env={"COLUMNS": "300"})


def as_json(records: list[FileRecord]) -> list[dict[str, Any]]:
    return [{**r.__dict__, "status": r.status.value} for r in records]


def test_json_is_written_a_page_at_a_time_and_is_the_whole_list(
    listing: tuple[Path, list[FileRecord]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, records = listing
    asked: list[int] = []
    list_files = SqliteStateStore.list_files

    async def spy(self: SqliteStateStore, **kw: Any) -> list[FileRecord]:
        asked.append(kw["limit"])
        return await list_files(self, **kw)

    monkeypatch.setattr(SqliteStateStore, "list_files", spy)
    done = files(config, "--json", "--limit", str(N))
    assert done.exit_code == 0, done.output
    # Three reads of a page (and one record more: is there a next?), not one of N.
    assert asked == [1001, 1001, 501]
    # Byte for byte what json.dumps of the whole list printed before.
    assert done.stdout == json.dumps(as_json(records), indent=2) + "\n"
    assert "more may match" not in done.stderr


def _cursor(stderr: str) -> str | None:
    found = re.search(r"--cursor (\S+)", stderr)
    return found.group(1) if found else None


@pytest.mark.parametrize("json_out", [True, False])
def test_the_printed_cursor_pages_through_every_record_once_in_order(
    listing: tuple[Path, list[FileRecord]], json_out: bool
) -> None:
    config, records = listing
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        args = ["--limit", "1000", *(["--cursor", cursor] if cursor else [])]
        done = files(config, *args, *(["--json"] if json_out else []))
        assert done.exit_code == 0, done.output
        pages += 1
        if json_out:
            seen += [r["key"] for r in json.loads(done.stdout)]
        else:
            seen += re.findall(r"k/\d{5}", done.stdout)
        cursor = _cursor(done.stderr)
        if cursor is None:
            break
        # The command to run for the next page, as printed.
        said = " ".join(done.stderr.split())
        # (--json kept: the next page of a JSON listing is JSON too)
        more = "--limit 1000 --json --cursor" if json_out else "--limit 1000 --cursor"
        assert f"more may match: s3flow files -c {config} {more}" in said
        if not json_out:
            assert "the first 1000; more may match" in " ".join(done.stdout.split())
    assert pages == 3
    assert seen == [r.key for r in records]


def test_a_cursor_not_printed_by_s3flow_is_refused(
    listing: tuple[Path, list[FileRecord]],
) -> None:
    done = files(listing[0], "--cursor", "nonsense!")
    assert done.exit_code == 2
    assert "is not a cursor s3flow printed" in " ".join(done.output.replace("│", " ").split())
