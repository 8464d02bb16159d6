"""Line framing: the fast path (one pyarrow read of a unit) and the slow path (every
line through ``json``) agree on which lines are rows and which are malformed,
whatever else the unit holds. A line ends at LF (a CR before it is whitespace); a
line holding no value or several (two objects, objects separated by a lone CR, an
object spread over lines) is malformed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3flow.pipelines.ndjson_parquet.compaction import scan
from s3flow.pipelines.ndjson_parquet.compaction.manifest import InputFile
from s3flow.pipelines.ndjson_parquet.compaction.tasks import FileTask, Storage

pytestmark = pytest.mark.timeout(120)

#: Pieces of a unit: the text of one line (``\n`` inside one makes it several).
LINES = [
    '{"id":1}',
    '{"id":2,"o":{"k":[1,2]}}',
    '  {"id":3}  \r',
    '{"id":4}\r',
    "",
    "   ",
    "\r",
    '{"id":5}{"id":6}',
    '{"id":7} {"id":8}',
    '{"id":9}\r{"id":10}',
    '{"id":\n11}',
    '{"o":{"k":1}\n,"id":12}',
    '{"id":13,\n"o":{}}',
    "[1,2]",
    "42",
    '"text"',
    '{"id":14',
    "oops",
    # numbers beyond the double range (an infinity) and beyond int64 (its digits)
    '{"id":15,"v":1e400}',
    '{"id":16,"v":-1E+400,"o":{"k":[1e999]}}',
    '{"id":17,"v":123456789012345678901234567890}',
    '{"id":18,"v":[1e400,2]}',
    '{"id":19,"v":2.5}',
]


def _task(tmp_path: Path) -> FileTask:
    return FileTask(
        index=0,
        file=InputFile("b", "f.ndjson"),
        storage=Storage(kind="local", root=str(tmp_path)),
        scratch_dir=str(tmp_path),
        unit_bytes=64 * 1024 * 1024,
        malformed="skip",
    )


def _outcome(parsed: Any) -> tuple[list[dict[str, Any]], int, list[str]]:
    rows = [] if parsed.table is None else parsed.table.to_pylist()
    return rows, parsed.malformed, parsed.samples


def _both_paths(tmp_path: Path, data: bytes) -> tuple[Any, Any]:
    scan._HINTS.clear()
    task = _task(tmp_path)
    unit = scan._Unit(0, None, len(data), 0, data)
    return _outcome(scan._parse_unit(task, unit)), _outcome(scan._parse_slowly(task, unit))


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.sampled_from(LINES), min_size=1, max_size=8), end=st.booleans())
def test_fast_and_slow_paths_agree_on_rows_and_malformed_lines(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], end: bool
) -> None:
    data = ("\n".join(lines) + ("\n" if end else "")).encode()
    fast, slow = _both_paths(tmp_path_factory.mktemp("u"), data)
    assert fast == slow
    # each line holding one object is a row (a number out of range is no reason to drop it)
    assert [r["id"] for r in fast[0]] == [
        record["id"] for line in lines if (record := _one_object(line)) is not None
    ]


def _one_object(line: str) -> Any:
    """The object one line of text holds, else None."""
    if "\n" in line:
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@pytest.mark.parametrize(
    ("data", "ids", "malformed"),
    [
        pytest.param(b'{"id":1}{"id":2}\n{"id":3}\n', [3], 1, id="two-objects-on-a-line"),
        pytest.param(b'{"id":1} {"id":2}\n{"id":3}\n', [3], 1, id="two-objects-spaced"),
        pytest.param(b'{"id":1}\r{"id":2}\r{"id":3}\r', [], 1, id="lone-cr-endings"),
        pytest.param(b'{"id":\n1}\n{"id":2}\n', [2], 2, id="an-object-over-two-lines"),
        pytest.param(b'{"id":1}\r\n\r\n  \n{"id":2}\r\n', [1, 2], 0, id="crlf-and-blank-lines"),
    ],
)
def test_line_framing_does_not_depend_on_the_other_lines(
    tmp_path: Path, data: bytes, ids: list[int], malformed: int
) -> None:
    fast, slow = _both_paths(tmp_path, data)
    assert fast == slow
    rows, count, _ = fast
    assert ([r["id"] for r in rows], count) == (ids, malformed)
