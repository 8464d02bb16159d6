"""Compaction of awkward values, in this process with local storage: bytes that are not
UTF-8, integers beyond int64, arrays mixing types, and a field whose type changes on
every line (the slow path must read such a unit by type group, not line by line)."""

from __future__ import annotations

import asyncio
import codecs
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from compaction_support import InlineExecutor

from s3flow.errors import TooLargeError
from s3flow.pipelines.ndjson_parquet.compaction import scan
from s3flow.pipelines.ndjson_parquet.compaction.job import CompactionReport, compact_manifest
from s3flow.pipelines.ndjson_parquet.compaction.manifest import parse_manifest
from s3flow.pipelines.ndjson_parquet.compaction.options import parse_options
from s3flow.pipelines.ndjson_parquet.compaction.tasks import MalformedDataError, Storage, Target

pytestmark = pytest.mark.timeout(60)

TINY_UNITS = 0.0002  # unit_mb: ~200-byte units, kept in scratch files (not in memory)


def _lines(rows: list[Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _compact(
    tmp_path: Path,
    contents: list[bytes],
    options: dict[str, Any] | None = None,
    max_uncompressed_bytes: int | None = None,
) -> tuple[CompactionReport, pa.Table | None]:
    """Compact one manifest of ``contents`` (one file each); the report and the
    output read back (validated in full: what a query engine would refuse fails)."""
    scan._HINTS.clear()  # each test starts as a fresh worker process would
    root = tmp_path / "in"
    (root / "b").mkdir(parents=True)
    files = []
    for i, data in enumerate(contents):
        (root / "b" / f"f{i}.ndjson").write_bytes(data)
        files.append({"bucket": "b", "key": f"f{i}.ndjson", "size": len(data), "etag": "e"})
    doc = {
        "version": 1,
        "manifest_id": "m-1",
        "dataset": "events",
        "date": "2026-11-23",
        "files": files,
        "total_files": len(files),
    }
    report = asyncio.run(
        compact_manifest(
            parse_manifest(json.dumps(doc).encode()),
            parse_options(options or {}),
            storage=Storage(kind="local", root=str(root)),
            target=Target(kind="local", directory=str(tmp_path / "out")),
            executor=InlineExecutor(),
            max_uncompressed_bytes=max_uncompressed_bytes,
        )
    )
    if not report.outputs:
        return report, None
    table = pa.concat_tables([pq.read_table(p) for p in report.outputs])
    table.validate(full=True)
    return report, table


# --- bytes that are not UTF-8 ----------------------------------------------------------

NOT_UTF8 = [
    pytest.param(b"caf\xe9 au lait", id="latin-1"),
    pytest.param(b"\xed\xa0\x80", id="encoded-surrogate"),
    pytest.param(b"ab\xc3", id="truncated"),
]


@pytest.mark.parametrize("unit_mb", [64, TINY_UNITS], ids=["in-memory", "scratch-units"])
@pytest.mark.parametrize("bad", NOT_UTF8)
def test_a_string_that_is_not_utf8_is_a_malformed_line(
    tmp_path: Path, bad: bytes, unit_mb: float
) -> None:
    data = b'{"a":"ok"}\n{"a":"' + bad + b'"}\n{"a":"z"}\n'
    report, table = _compact(tmp_path, [data], {"unit_mb": unit_mb})
    assert report.rows == 2
    assert report.malformed_lines == 1
    assert report.malformed_samples[0].startswith("s3://b/f0.ndjson line 2: not UTF-8")
    assert table is not None and table.to_pydict() == {"a": ["ok", "z"]}


def test_a_string_that_is_not_utf8_quarantines_the_file(tmp_path: Path) -> None:
    bad = b'{"a":"ok"}\n{"a":"caf\xe9 au lait"}\n{"a":"z"}\n'
    report, table = _compact(
        tmp_path, [bad, _lines([{"a": "kept"}])], {"malformed_lines": "quarantine"}
    )
    assert [(f.key, why.split(":")[0]) for f, why in report.quarantined] == [
        ("f0.ndjson", "malformed line 2")
    ]
    assert "not UTF-8" in report.quarantined[0][1]
    assert table is not None and table.to_pydict() == {"a": ["kept"]}


def test_a_string_that_is_not_utf8_fails_the_manifest_naming_the_line(tmp_path: Path) -> None:
    bad = b'{"a":"ok"}\n{"a":"caf\xe9 au lait"}\n{"a":"z"}\n'
    with pytest.raises(MalformedDataError, match=r"s3://b/f0\.ndjson line 2: not UTF-8"):
        _compact(tmp_path, [bad], {"malformed_lines": "fail"})


# --- integers beyond int64 -------------------------------------------------------------


@pytest.mark.parametrize("unit_mb", [64, TINY_UNITS], ids=["in-memory", "scratch-units"])
def test_integers_beyond_int64_are_kept_as_their_exact_digits(
    tmp_path: Path, unit_mb: float
) -> None:
    """pyarrow would read 18446744073709551615 as a double, and the column's other
    integers with it (9007199254740993 -> 9007199254740992.0): the field is a type
    conflict instead, a string of the exact digits, in every file of the manifest."""
    first = (
        b'{"id":9007199254740993,"s":{"h":1},"hs":[1]}\n'
        b'{"id":18446744073709551615,"s":{"h":-9223372036854775809},"hs":[18446744073709551616,2]}\n'
        b'{"id":-9223372036854775808,"s":{"h":3},"hs":[]}\n'
    )
    second = _lines([{"id": 5, "s": {"h": 2}, "hs": [4]}])
    report, table = _compact(tmp_path, [first, second], {"unit_mb": unit_mb})
    assert report.malformed_lines == 0
    assert table is not None
    assert [str(f.type) for f in table.schema] == ["string", "struct<h: string>", "string"]
    assert table.to_pydict() == {
        "id": ["9007199254740993", "18446744073709551615", "-9223372036854775808", "5"],
        "s": [{"h": "1"}, {"h": "-9223372036854775809"}, {"h": "3"}, {"h": "2"}],
        # an array mixing a number with an integer read as text is JSON text
        "hs": ["[1]", "[18446744073709551616,2]", "[]", "[4]"],
    }


def test_large_doubles_and_int64_extremes_keep_their_types(tmp_path: Path) -> None:
    """Only integer literals beyond int64 become text: 1e19, Infinity and the int64
    limits do not."""
    data = (
        b'{"x":1e19,"y":1.5,"n":9223372036854775807}\n'
        b'{"x":Infinity,"y":-1e300,"n":-9223372036854775808}\n'
    )
    report, table = _compact(tmp_path, [data])
    assert report.malformed_lines == 0
    assert table is not None
    assert [str(f.type) for f in table.schema] == ["double", "double", "int64"]
    assert table.to_pydict() == {
        "x": [1e19, float("inf")],
        "y": [1.5, -1e300],
        "n": [2**63 - 1, -(2**63)],
    }


@pytest.mark.parametrize("unit_mb", [64, TINY_UNITS], ids=["in-memory", "scratch-units"])
def test_numbers_beyond_the_double_range_are_infinities(tmp_path: Path, unit_mb: float) -> None:
    """RFC 8259 leaves a number's range to the reader: 1e400 is rounded to the nearest
    double, Infinity (as 1e-400 is 0), not a malformed line (pyarrow refuses it)."""
    data = (
        b'{"x":1e400,"s":{"h":[1E+999]},"y":1}\n'
        b'{"x":-1e400,"s":{"h":[2.5]},"y":1e-400}\n'
        b'{"x":1.5,"s":{"h":[]},"y":3}\n'
    )
    report, table = _compact(tmp_path, [data], {"unit_mb": unit_mb})
    assert report.malformed_lines == 0
    assert table is not None
    assert [str(f.type) for f in table.schema] == [
        "double",
        "struct<h: list<element: double>>",
        "double",
    ]
    inf = float("inf")
    assert table.to_pydict() == {
        "x": [inf, -inf, 1.5],
        "s": [{"h": [inf]}, {"h": [2.5]}, {"h": []}],
        "y": [1.0, 0.0, 3.0],
    }


# --- arrays mixing types, and lines that really are unreadable ---------------------------


@pytest.mark.parametrize("policy", ["skip", "quarantine", "fail"])
def test_an_array_mixing_types_becomes_json_text(tmp_path: Path, policy: str) -> None:
    data = _lines([{"id": 1, "tags": [1, "a"]}, {"id": 2, "tags": [2]}])
    report, table = _compact(tmp_path, [data], {"malformed_lines": policy})
    assert report.malformed_lines == 0
    assert report.quarantined == []
    assert report.rows == 2
    assert table is not None
    assert table.schema.field("tags").type == pa.string()
    assert table.to_pydict() == {"id": [1, 2], "tags": ['[1,"a"]', "[2]"]}


def test_nested_arrays_mixing_types_become_json_text_where_they_are(tmp_path: Path) -> None:
    data = _lines(
        [
            {"s": {"l": [{"x": 1}, {"x": "a"}], "k": 1}},
            {"s": {"l": [[1], [2.5]], "k": 2}},
            {"s": {"l": [True, None], "k": 3}},
        ]
    )
    report, table = _compact(tmp_path, [data])
    assert report.malformed_lines == 0
    assert table is not None
    assert table.column("s").to_pylist() == [
        {"l": '[{"x":1},{"x":"a"}]', "k": 1},
        {"l": "[[1],[2.5]]", "k": 2},
        {"l": "[true,null]", "k": 3},
    ]


def test_a_key_given_twice_is_still_unreadable(tmp_path: Path) -> None:
    data = b'{"a":1}\n{"a":2,"a":3}\n{"a":4}\n'
    report, table = _compact(tmp_path, [data])
    assert report.malformed_lines == 1
    assert report.malformed_samples[0].startswith("s3://b/f0.ndjson line 2: unreadable")
    assert table is not None and table.to_pydict() == {"a": [1, 4]}


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b'{"a":2,"a":3,"n":18446744073709551616}', id="beyond-int64"),
        pytest.param(b'{"a":2,"a":3,"n":1e400}', id="beyond-double"),
        pytest.param(b'{"a":2,"n":{"m":[1,"x"],"k":1,"k":2}}', id="nested-mixed-array"),
    ],
)
def test_a_key_given_twice_is_unreadable_also_beside_a_value_read_as_text(
    tmp_path: Path, line: bytes
) -> None:
    """Such a line is written again for pyarrow (a value changed): it must not lose
    the key given twice on the way (its last value was kept silently)."""
    data = b'{"a":1}\n' + line + b'\n{"a":4}\n'
    report, table = _compact(tmp_path, [data])
    assert report.malformed_lines == 1
    assert report.malformed_samples[0].startswith("s3://b/f0.ndjson line 2: unreadable (key")
    assert table is not None and table.column("a").to_pylist() == [1, 4]


# --- a field whose type changes on every line -----------------------------------------


def test_a_type_that_alternates_line_by_line_is_read_by_group_not_by_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    read = scan._read

    def counting(src: Any, schema: pa.Schema | None, block: int) -> pa.Table:
        nonlocal reads
        reads += 1
        return read(src, schema, block)

    monkeypatch.setattr(scan, "_read", counting)
    rows: list[dict[str, Any]] = [
        {"id": i, "v": i} if i % 2 == 0 else {"id": i, "v": f"s{i}", "late": i} for i in range(2000)
    ]
    rows[10]["z"] = 1  # first seen after "late" (line 2), though in the first type group
    report, table = _compact(tmp_path, [_lines(rows)])
    assert reads <= 4  # the whole unit (fails), then one read per type group
    assert report.malformed_lines == 0
    assert table is not None
    assert table.column_names == ["id", "v", "late", "z"]
    assert table.column("id").to_pylist() == list(range(2000))
    assert table.column("v").to_pylist() == [str(r["v"]) for r in rows]
    assert table.column("late").to_pylist() == [r.get("late") for r in rows]
    assert table.column("z").to_pylist() == [r.get("z") for r in rows]


def test_slow_path_keeps_the_order_of_first_appearance(tmp_path: Path) -> None:
    """Type groups are read apart, yet columns (and struct fields) keep the order in
    which they first appear in the file, as pyarrow's own read would give them."""
    rows: list[dict[str, Any]] = [
        {"a": 1, "s": {"p": 1}},
        {"c": "x", "a": "t", "s": {"q": 2, "p": 3}},
        {"a": 2, "b": 1, "s": {"r": 1, "p": 4}},
    ]
    report, table = _compact(tmp_path, [_lines(rows)])
    assert report.malformed_lines == 0
    assert table is not None
    assert table.column_names == ["a", "s", "c", "b"]
    assert table.schema.field("s").type == pa.struct(
        [("p", pa.int64()), ("q", pa.int64()), ("r", pa.int64())]
    )
    assert table.column("a").to_pylist() == ["1", "t", "2"]


# --- lists whose first value is null ------------------------------------------------------

NULL_FIRST = [
    pytest.param([{"a": [None, 1]}], id="int"),
    pytest.param([{"a": [None, "x"]}], id="string"),
    pytest.param([{"a": [None, None]}], id="null"),
    pytest.param([{"a": [[None, None]]}], id="list-of-null"),
    pytest.param([{"b": {"a": [None, 1]}}], id="in-object"),
    pytest.param([{"a": [None, {"x": 1}]}], id="object-item"),
    pytest.param([{"a": []}, {"a": [None, 1]}, {"a": None}, {"a": [None, None, 3]}], id="rows"),
]


@pytest.mark.parametrize("unit_mb", [64, TINY_UNITS], ids=["in-memory", "scratch-units"])
@pytest.mark.parametrize("slow", [False, True], ids=["fast-path", "slow-path"])
@pytest.mark.parametrize("rows", NULL_FIRST)
def test_a_list_whose_first_value_is_null_keeps_its_values(
    tmp_path: Path, rows: list[Any], slow: bool, unit_mb: float
) -> None:
    """pyarrow's JSON reader returned an invalid table for such a list (no error; the
    null dropped, the offsets past the values): the whole manifest then failed, on
    every retry, naming no file. The rows are kept, read back as they were written."""
    data = _lines(rows) + (_lines([{"id": 1}, {"id": "two"}]) if slow else b"")
    report, table = _compact(tmp_path, [data], {"unit_mb": unit_mb})
    assert report.malformed_lines == 0
    assert table is not None
    kept = [{k: v for k, v in r.items() if k in rows[0]} for r in table.to_pylist()]
    assert kept[: len(rows)] == [{**{k: None for k in rows[0]}, **r} for r in rows]


# --- a decompression bomb --------------------------------------------------------------


@pytest.mark.parametrize("policy", ["skip", "quarantine", "fail"])
def test_a_file_decompressing_past_the_limit_is_held_out_naming_the_limit(
    tmp_path: Path, policy: str
) -> None:
    """parquet-compact read a compressed file whatever it decompressed to (the pipeline's
    max_uncompressed_bytes was ignored). Such a file is quarantined with the limit in
    its reason, as corrupt compressed data is; the manifest's other files are compacted
    (under ``fail`` the manifest fails, permanently)."""
    import gzip

    bomb = gzip.compress(_lines([{"id": i} for i in range(50_000)]))
    plain = _lines([{"id": -1}] * 20_000)  # not compressed: never limited
    gz = gzip.compress(_lines([{"id": -2}]))
    if policy == "fail":
        with pytest.raises(TooLargeError, match="max_uncompressed_bytes = 200,000"):
            _compact(tmp_path, [plain, bomb, gz], {"malformed_lines": policy}, 200_000)
        return
    report, table = _compact(tmp_path, [plain, bomb, gz], {"malformed_lines": policy}, 200_000)
    assert [f.key for f, _ in report.quarantined] == ["f1.ndjson"]
    assert "decompresses to more than max_uncompressed_bytes = 200,000" in report.quarantined[0][1]
    assert table is not None and table.column("id").to_pylist() == [-1] * 20_000 + [-2]


# --- nesting deeper than Arrow's IPC files hold -------------------------------------------


def _nested(levels: int) -> Any:
    value: Any = 1
    for i in range(levels):
        value = {"a": value} if i % 2 else [value]
    return value


@pytest.mark.parametrize("unit_mb", [64, TINY_UNITS], ids=["in-memory", "scratch-units"])
@pytest.mark.parametrize("levels", [61, 300, 5000, 30000])
def test_a_record_nested_too_deeply_is_a_malformed_line(
    tmp_path: Path, levels: int, unit_mb: float
) -> None:
    """Arrow's IPC reader (the spill between the stages) stops at 64 levels: such a
    record failed its whole manifest on every retry, naming no file. It is now a
    malformed line; the other lines and files are compacted. pyarrow's JSON reader is
    not given a line that may be deeper than 500 levels (30,000 crashed the process)."""
    if levels < 500:
        deep = json.dumps({"id": 2, "x": _nested(levels)}).encode() + b"\n"
    else:  # beyond what json (and Python's recursion limit) write or read
        deep = b'{"id": 2, "x": ' + b"[" * levels + b"1" + b"]" * levels + b"}\n"
    data = _lines([{"id": 1, "x": _nested(60)}]) + deep + _lines([{"id": 3}])
    report, table = _compact(tmp_path, [data, _lines([{"id": 4}])], {"unit_mb": unit_mb})
    assert report.malformed_lines == 1
    assert report.malformed_samples[0].startswith("s3://b/f0.ndjson line 2: objects and arrays")
    assert "(at most 60)" in report.malformed_samples[0]
    assert table is not None and table.column("id").to_pylist() == [1, 3, 4]


def test_a_record_nested_too_deeply_quarantines_the_file_when_asked(tmp_path: Path) -> None:
    deep = _lines([{"id": 1, "x": _nested(64)}])
    report, table = _compact(
        tmp_path, [deep, _lines([{"id": 2}])], {"malformed_lines": "quarantine"}
    )
    assert [(f.key, why) for f, why in report.quarantined] == [
        ("f0.ndjson", "malformed line 1: objects and arrays nested 64 levels deep (at most 60)")
    ]
    assert table is not None and table.column("id").to_pylist() == [2]


@pytest.mark.parametrize("unit_mb", [64, TINY_UNITS], ids=["in-memory", "scratch-units"])
@pytest.mark.parametrize(
    ("leaf", "most"), [("1", 49), ("null", 49), ("[]", 48), ("{}", 48), ('{"k":[1]}', 47)]
)
def test_arrays_nested_past_parquets_schema_depth_are_a_malformed_line(
    tmp_path: Path, leaf: str, most: int, unit_mb: float
) -> None:
    """Parquet stores an array as two schema levels (an object as one) and its readers
    stop at 100: 50 arrays in arrays (within the 60 levels allowed) made a part its own
    read refused, failing the whole manifest. As many as fit are compacted; one more
    array is a malformed line."""

    def deep(n: int, i: int) -> bytes:
        return f'{{"id":{i},"x":{"[" * n}{leaf}{"]" * n}}}\n'.encode()

    data = deep(most, 1) + deep(most + 1, 2) + deep(55, 3)
    report, table = _compact(tmp_path, [data + _lines([{"id": 4}])], {"unit_mb": unit_mb})
    assert report.malformed_lines == 2, report.malformed_samples
    assert report.malformed_samples[0].startswith("s3://b/f0.ndjson line 2: arrays and objects")
    assert "(at most 98" in report.malformed_samples[0]
    assert table is not None and table.column("id").to_pylist() == [1, 4]


# --- a UTF-8 BOM -------------------------------------------------------------------------

# The second file's type change sends its unit the slow way (every line through ``json``).
BOM_FILES = [
    pytest.param(b'{"id":1}\n{"id":2}\n', ["1", "2"], id="fast-path"),
    pytest.param(b'{"id":1}\n{"id":"two"}\n', ["1", "two"], id="slow-path"),
]


@pytest.mark.parametrize("unit_mb", [64, TINY_UNITS], ids=["in-memory", "scratch-units"])
@pytest.mark.parametrize("policy", ["skip", "quarantine", "fail"])
@pytest.mark.parametrize(("body", "ids"), BOM_FILES)
def test_a_bom_at_the_start_of_a_file_is_dropped_whatever_the_rest_of_the_file(
    tmp_path: Path, body: bytes, ids: list[str], policy: str, unit_mb: float
) -> None:
    report, table = _compact(
        tmp_path, [codecs.BOM_UTF8 + body], {"malformed_lines": policy, "unit_mb": unit_mb}
    )
    assert (report.rows, report.malformed_lines, report.quarantined) == (2, 0, [])
    assert table is not None
    assert [str(v) for v in table.column("id").to_pylist()] == ids


@pytest.mark.parametrize("unit_mb", [64, TINY_UNITS], ids=["in-memory", "scratch-units"])
def test_a_bom_after_the_first_line_is_a_malformed_line(tmp_path: Path, unit_mb: float) -> None:
    data = b'{"id":1}\n' + codecs.BOM_UTF8 + b'{"id":2}\n{"id":3}\n'
    report, table = _compact(tmp_path, [data], {"unit_mb": unit_mb})
    assert (report.rows, report.malformed_lines) == (2, 1)
    assert report.malformed_samples[0].startswith("s3://b/f0.ndjson line 2: not JSON")
    assert table is not None and table.column("id").to_pylist() == [1, 3]


# --- values widened to text keep their JSON meaning --------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(b"NaN", "NaN", id="nan"),
        pytest.param(b"Infinity", "Infinity", id="infinity"),
        pytest.param(b"-Infinity", "-Infinity", id="minus-infinity"),
        pytest.param(b"3.0", "3", id="integral-double"),
        pytest.param(b"1.5", "1.5", id="double"),
        pytest.param(b'{"x":NaN,"y":2.0}', '{"x":NaN,"y":2}', id="nested-nan"),
        pytest.param(b"[1,2.5]", "[1,2.5]", id="int-and-double-array"),
        pytest.param(b"[[1.0],[1e300]]", "[[1],[1e+300]]", id="nested-arrays"),
        pytest.param(b"1e400", "Infinity", id="beyond-double"),
        pytest.param(b'{"x":[-1E+400]}', '{"x":[-Infinity]}', id="nested-beyond-double"),
        pytest.param(
            b"123456789012345678901234567890",
            "123456789012345678901234567890",
            id="beyond-int64",
        ),
        pytest.param(
            b"[123456789012345678901234567890,1e400]",
            "[123456789012345678901234567890,Infinity]",
            id="array-beyond-int64-and-double",
        ),
    ],
)
@pytest.mark.parametrize("same_file", [True, False], ids=["one-file", "two-files"])
def test_values_widened_to_text_keep_their_json_meaning(
    tmp_path: Path, value: bytes, text: str, same_file: bool
) -> None:
    first, other = b'{"a":' + value + b"}\n", b'{"a":"s"}\n'
    contents = [first + other] if same_file else [first, other]
    report, table = _compact(tmp_path, contents)
    assert report.malformed_lines == 0
    assert table is not None and table.column("a").to_pylist() == [text, "s"]


def test_an_array_mixing_types_prints_integral_doubles_without_a_fraction(
    tmp_path: Path,
) -> None:
    _, table = _compact(tmp_path, [b'{"a":[1.0,"x",2.5]}\n'])
    assert table is not None and table.column("a").to_pylist() == ['[1,"x",2.5]']


# --- names that differ only in case --------------------------------------------------------


def test_names_differing_only_in_case_stay_apart_with_a_warning(tmp_path: Path) -> None:
    data = b'{"Key":1,"key":2,"KEY":3,"s":[{"A":1,"a":2}],"id":4}\n'
    report, table = _compact(tmp_path, [data])
    assert table is not None and table.column_names == ["Key", "key", "KEY", "s", "id"]
    assert [w.split(")")[0] for w in report.warnings] == [
        "columns whose names differ only in case (Key, key, KEY",
        "columns whose names differ only in case (s.A, s.a",
    ]
    assert report.as_dict()["warnings"] == report.warnings
    clean, _ = _compact(tmp_path / "clean", [b'{"id":1,"Other":2}\n'])
    assert clean.warnings == []
