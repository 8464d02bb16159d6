"""Compaction: schema rules, manifests, options, part planning, file scanning (no servers)."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from compaction_support import InlineExecutor

from s3flow.errors import ConfigError, Disposition
from s3flow.pipelines.ndjson_parquet.compaction.job import (
    compact_manifest,
    plan_parts,
    sweep_dead_job_dirs,
)
from s3flow.pipelines.ndjson_parquet.compaction.manifest import (
    InputFile,
    ManifestError,
    parse_manifest,
)
from s3flow.pipelines.ndjson_parquet.compaction.options import parse_options
from s3flow.pipelines.ndjson_parquet.compaction.scan import scan_file
from s3flow.pipelines.ndjson_parquet.compaction.schema import (
    cast_table,
    strings_for_timestamps,
    unify_schemas,
    unify_types,
)
from s3flow.pipelines.ndjson_parquet.compaction.tasks import (
    FileTask,
    MalformedDataError,
    Storage,
    Target,
    UnitRef,
)
from s3flow.pipelines.ndjson_parquet.compaction.write import part_number

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")
R = TypeVar("R")


# --- schema rules ---------------------------------------------------------------

S = pa.string()
I64 = pa.int64()
F64 = pa.float64()


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        (I64, I64, I64),
        (pa.null(), I64, I64),
        (S, pa.null(), S),
        (I64, F64, F64),
        (F64, I64, F64),
        (pa.bool_(), I64, S),
        (S, F64, S),
        (pa.struct([("x", I64)]), S, S),
        (pa.list_(I64), pa.list_(F64), pa.list_(F64)),
        (pa.list_(I64), pa.list_(S), pa.list_(S)),
        (pa.list_(I64), I64, S),
        (
            pa.struct([("x", I64), ("y", S)]),
            pa.struct([("x", F64), ("z", pa.bool_())]),
            pa.struct([("x", F64), ("y", S), ("z", pa.bool_())]),
        ),
    ],
)
def test_unify_types(a: pa.DataType, b: pa.DataType, want: pa.DataType) -> None:
    assert unify_types(a, b).equals(want)
    reverse = unify_types(b, a)
    if pa.types.is_struct(want):
        # The same fields and types, in order of first appearance: ``b``'s fields lead.
        order = list(dict.fromkeys([f.name for f in b] + [f.name for f in a]))
        assert reverse.equals(pa.struct([want.field(name) for name in order]))
    else:
        assert reverse.equals(want)


def test_unify_schemas_keeps_first_appearance_order_and_makes_new_fields_nullable() -> None:
    s = unify_schemas([pa.schema([("b", I64), ("a", S)]), pa.schema([("c", F64), ("b", F64)])])
    assert s.names == ["b", "a", "c"]
    assert s.field("b").type == F64
    assert all(f.nullable for f in s)


def test_cast_table_fills_widens_and_stringifies() -> None:
    t = pa.table(
        {
            "n": pa.array([1, None, 3], I64),
            "mixed": pa.array([1, 2, None], I64),
            "obj": pa.array([{"k": 1}, None, {"k": 2}], pa.struct([("k", I64)])),
            "nested": pa.array([{"a": 1}, {"a": None}, None], pa.struct([("a", I64)])),
            "tags": pa.array([[1], [], None], pa.list_(I64)),
            "flag": pa.array([True, False, None]),
            "f": pa.array([1.5, 3.0, 1e20]),
        }
    ).slice(0)
    target = pa.schema(
        [
            ("n", F64),
            ("mixed", S),
            ("obj", S),
            ("nested", pa.struct([("a", F64), ("b", S)])),
            ("tags", pa.list_(S)),
            ("flag", S),
            ("f", S),
            ("missing", I64),
        ]
    )
    out = cast_table(t, target)
    assert out.schema.equals(target)
    assert out.to_pydict() == {
        "n": [1.0, None, 3.0],
        "mixed": ["1", "2", None],
        "obj": ['{"k":1}', None, '{"k":2}'],
        "nested": [{"a": 1.0, "b": None}, {"a": None, "b": None}, None],
        "tags": [["1"], [], None],
        "flag": ["true", "false", None],
        "f": ["1.5", "3", "1e+20"],
        "missing": [None, None, None],
    }


def test_cast_table_on_sliced_nested_arrays() -> None:
    t = pa.table(
        {
            "s": pa.array([{"a": 1}, None, {"a": 3}, {"a": 4}], pa.struct([("a", I64)])),
            "l": pa.array([[1], [2, 3], None, [4]], pa.list_(I64)),
        }
    ).slice(1, 3)
    target = pa.schema([("s", pa.struct([("a", F64), ("z", S)])), ("l", pa.list_(F64))])
    assert cast_table(t, target).to_pydict() == {
        "s": [None, {"a": 3.0, "z": None}, {"a": 4.0, "z": None}],
        "l": [[2.0, 3.0], None, [4.0]],
    }


def test_strings_for_timestamps_nested() -> None:
    schema = pa.schema(
        [
            ("ts", pa.timestamp("s")),
            ("s", pa.struct([("t", pa.timestamp("s")), ("n", I64)])),
            ("l", pa.list_(pa.timestamp("s"))),
        ]
    )
    fixed = strings_for_timestamps(schema)
    assert fixed is not None
    assert fixed.field("ts").type == S
    assert fixed.field("s").type == pa.struct([("t", S), ("n", I64)])
    assert fixed.field("l").type == pa.list_(S)
    assert strings_for_timestamps(pa.schema([("a", I64)])) is None


# --- manifests and options ------------------------------------------------------------


def _manifest_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1,
        "manifest_id": "m-1",
        "dataset": "events",
        "date": "2026-11-23",
        "created_at": "2026-11-23T10:00:00Z",
        "sealed_by": "w1",
        "fencing_token": 3,
        "trigger": "count",
        "files": [{"bucket": "b", "key": "k.ndjson", "size": 5, "etag": '"e"', "version_id": None}],
        "total_files": 1,
        "total_bytes": 5,
    }
    doc.update(over)
    return doc


def test_parse_manifest() -> None:
    m = parse_manifest(json.dumps(_manifest_doc()).encode())
    assert m.files == (InputFile("b", "k.ndjson", 5, "e", None),)
    assert m.partition == "events/date=2026-11-23/"
    assert m.part_name(3) == "part-m-1-00003.parquet"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps(_manifest_doc(version=2)).encode(), "unsupported version"),
        (json.dumps(_manifest_doc(date="2026-13-01")).encode(), "not YYYY-MM-DD"),
        (json.dumps(_manifest_doc(dataset="../etc")).encode(), "safe path"),
        (json.dumps(_manifest_doc(manifest_id="a/b")).encode(), "manifest_id"),
        (json.dumps(_manifest_doc(total_files=2)).encode(), "total_files"),
        (json.dumps(_manifest_doc(files=[{"bucket": "b"}])).encode(), "files[0]"),
        (json.dumps({"version": 1}).encode(), "missing field"),
    ],
)
def test_parse_manifest_rejects(data: bytes, needle: str) -> None:
    with pytest.raises(ManifestError, match=None) as info:
        parse_manifest(data)
    assert needle in str(info.value)
    assert info.value.disposition is Disposition.PERMANENT


def test_options_unknown_key_and_bad_value() -> None:
    with pytest.raises(ConfigError, match="parquet_target_megabytes: unknown option"):
        parse_options({"parquet_target_megabytes": 64})
    with pytest.raises(ConfigError, match="compression"):
        parse_options({"compression": "lzma"})
    opts = parse_options({"executor": "spark", "compression": "zstd"})
    assert opts.executor == "spark"
    assert opts.parquet_target_mb == 128


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"processes": -1}, "processes: Input should be greater than or equal to 0"),
        ({"processes": 257}, "processes: Input should be less than or equal to 256"),
        ({"parquet_target_mb": 0}, "parquet_target_mb: Input should be greater than 0"),
        ({"row_group_mb": -1}, "row_group_mb: Input should be greater than 0"),
        ({"unit_mb": 0}, "unit_mb: Input should be greater than 0"),
    ],
)
def test_options_out_of_bounds_name_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_options(options)


def test_plan_parts() -> None:
    units = [UnitRef(i, 0, 10, 100, None) for i in range(10)] + [UnitRef(10, 0, 0, 5, None)]
    assert plan_parts(units, 1000, None) == [units[:10]]
    plan = plan_parts(units, 250, 1.0)
    assert [len(p) for p in plan] == [2, 2, 2, 2, 2]
    assert plan_parts(units, 50, 1.0) == [[u] for u in units[:10]]  # a part is never empty
    assert plan_parts([], 50, 1.0) == []


def test_part_number_only_matches_this_manifest() -> None:
    assert part_number("part-abc-00012.parquet", "abc") == 12
    assert part_number("part-abc-def-00012.parquet", "abc") is None
    assert part_number("part-abc-00012.parquet.tmp", "abc") is None


# --- scanning files ------------------------------------------------------------------


def _task(tmp_path: Path, name: str, data: bytes, **over: Any) -> FileTask:
    root = tmp_path / "in"
    (root / "b").mkdir(parents=True, exist_ok=True)
    (root / "b" / name).write_bytes(data)
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    kw: dict[str, Any] = {
        "index": 0,
        "file": InputFile("b", name),
        "storage": Storage(kind="local", root=str(root)),
        "scratch_dir": str(scratch),
        "unit_bytes": 64 * 1024 * 1024,
        "malformed": "skip",
        "spill_dir": None,
    }
    kw.update(over)
    return FileTask(**kw)


def _lines(rows: list[Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_scan_keeps_timestamp_like_strings(tmp_path: Path) -> None:
    data = _lines([{"ts": "2026-11-23T10:00:00Z", "d": "2026-11-23"}])
    scan = scan_file(_task(tmp_path, "a.ndjson", data))
    assert scan.units[0].schema == pa.schema([("ts", S), ("d", S)])


def test_scan_skips_malformed_lines_with_count_and_line_numbers(tmp_path: Path) -> None:
    data = (
        _lines([{"a": 1}, {"a": 2}])
        + b'{"a": 3\n'
        + b"[1, 2]\n"
        + b"\n"
        + _lines([{"a": 4}])
        + b'{"a": 5}}\n'
    )
    scan = scan_file(_task(tmp_path, "a.ndjson", data))
    assert scan.malformed_lines == 3
    assert scan.quarantine is None
    assert scan.units[0].rows == 3
    assert [s.split(": ", 1)[0] for s in scan.samples] == [
        "s3://b/a.ndjson line 3",
        "s3://b/a.ndjson line 4",
        "s3://b/a.ndjson line 7",
    ]


def test_scan_quarantine_policy_holds_the_file_out(tmp_path: Path) -> None:
    data = _lines([{"a": 1}]) + b"oops\n"
    scan = scan_file(_task(tmp_path, "a.ndjson", data, malformed="quarantine"))
    assert scan.quarantine is not None and "line 2" in scan.quarantine
    assert scan.units == []


def test_scan_fail_policy_raises_permanent(tmp_path: Path) -> None:
    data = _lines([{"a": 1}]) + b"oops\n"
    with pytest.raises(MalformedDataError, match="line 2"):
        scan_file(_task(tmp_path, "a.ndjson", data, malformed="fail"))


def test_scan_type_drift_inside_one_file(tmp_path: Path) -> None:
    rows = [{"v": i} for i in range(50)] + [{"v": "x"}] + [{"v": i} for i in range(50)]
    spill = tmp_path / "spill"
    spill.mkdir()
    scan = scan_file(_task(tmp_path, "a.ndjson", _lines(rows), spill_dir=str(spill)))
    assert scan.malformed_lines == 0
    unit = scan.units[0]
    assert unit.schema == pa.schema([("v", S)])
    with pa.memory_map(unit.spill or "", "r") as src:
        got = pa.ipc.open_file(src).read_all().column("v").to_pylist()
    assert got == [str(r["v"]) for r in rows]


def test_scan_gzip_and_line_aligned_units(tmp_path: Path) -> None:
    rows = [{"i": i, "pad": "x" * 50} for i in range(2000)]
    data = gzip.compress(_lines(rows))
    scan = scan_file(_task(tmp_path, "a.ndjson.gz", data, unit_bytes=16 * 1024))
    assert scan.encoding == "gzip"
    assert len(scan.units) > 5
    assert sum(u.rows for u in scan.units) == 2000
    assert scan.uncompressed_bytes == sum(u.input_bytes for u in scan.units)


def test_scan_corrupt_gzip_is_quarantined(tmp_path: Path) -> None:
    data = gzip.compress(_lines([{"i": i} for i in range(1000)]))[:-40]
    scan = scan_file(_task(tmp_path, "a.gz", data))
    assert scan.quarantine is not None and "gzip" in scan.quarantine


# --- a whole compaction, in this process -------------------------------------------


def test_compact_manifest_parts_drift_and_rerun(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "b").mkdir(parents=True)
    files = []
    expected: list[dict[str, Any]] = []
    for i in range(12):
        rows: list[dict[str, Any]] = [
            {"id": i * 1000 + j, "v": j, "name": f"n{j}" * 20} for j in range(300)
        ]
        if i == 5:
            for r in rows:
                r["v"] = r["v"] + 0.5  # int -> float
                r["extra"] = True  # new field
        expected += rows
        (root / "b" / f"f{i}.ndjson").write_bytes(_lines(rows))
        files.append({"bucket": "b", "key": f"f{i}.ndjson", "size": 1, "etag": "e"})
    manifest = parse_manifest(
        json.dumps(_manifest_doc(files=files, total_files=len(files))).encode()
    )
    out = tmp_path / "out"
    opts = parse_options({"parquet_target_mb": 0.02, "row_group_mb": 0.01})
    storage = Storage(kind="local", root=str(root))
    target = Target(kind="local", directory=str(out))
    part_dir = out / "events" / "date=2026-11-23"
    part_dir.mkdir(parents=True)
    (part_dir / "part-m-1-00099.parquet").write_bytes(b"stale")
    (part_dir / "part-m-1-x-00099.parquet").write_bytes(b"another manifest")

    report = asyncio.run(
        compact_manifest(manifest, opts, storage=storage, target=target, executor=InlineExecutor())
    )
    assert len(report.parts) > 2
    assert report.rows == len(expected)
    assert any(s.endswith("part-m-1-00099.parquet") for s in report.stale_deleted)
    names = sorted(p.name for p in part_dir.iterdir())
    assert names == [f"part-m-1-{n:05d}.parquet" for n in range(len(report.parts))] + [
        "part-m-1-x-00099.parquet"
    ]
    table = pa.concat_tables(
        [pq.read_table(part_dir / f"part-m-1-{n:05d}.parquet") for n in range(len(report.parts))]
    )
    assert table.schema.names == ["id", "v", "name", "extra"]
    assert table.schema.field("v").type == F64
    got = table.to_pylist()
    want = [{**r, "v": float(r["v"]), "extra": r.get("extra")} for r in expected]
    assert got == want
    assert pq.ParquetFile(part_dir / "part-m-1-00000.parquet").metadata.num_row_groups > 1

    # A rerun with a bigger target makes fewer parts and deletes the now stale ones.
    opts2 = parse_options({"parquet_target_mb": 100})
    report2 = asyncio.run(
        compact_manifest(manifest, opts2, storage=storage, target=target, executor=InlineExecutor())
    )
    assert len(report2.parts) == 1
    assert len(report2.stale_deleted) == len(report.parts) - 1
    assert pq.read_table(part_dir / "part-m-1-00000.parquet").to_pylist() == want


_HOLD_IN_SCRATCH = """
import sys, time
from pathlib import Path
from s3flow.pipelines.ndjson_parquet.compaction import job
path = job._make_job_dir(sys.argv[1], "m-1")
Path(path, "spill").mkdir()
Path(path, "spill", "000000-0000.arrow").write_bytes(b"x" * 4096)
print(path, flush=True)
time.sleep(120)
"""


def test_scratch_left_by_a_killed_compaction_is_removed_by_the_next(tmp_path: Path) -> None:
    """A compaction SIGKILLed mid-work never runs its cleanup: its spilled data (about its
    manifest's size) stayed for good. The next compaction on the host removes it, but not
    a live process's scratch, nor another host's (a shared volume)."""
    scratch = tmp_path / "scratch"
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_IN_SCRATCH, str(scratch)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    left = Path(child.stdout.readline().strip())
    assert (left / "spill" / "000000-0000.arrow").exists()
    elsewhere = scratch / "s3flow-compact-m-2-abc"
    elsewhere.mkdir()
    (elsewhere / "owner").write_text(f"not-{socket.gethostname()} 1")
    assert sweep_dead_job_dirs(str(scratch)) == []  # the child still runs
    child.kill()
    child.wait()

    root = tmp_path / "in"
    (root / "b").mkdir(parents=True)
    (root / "b" / "f.ndjson").write_bytes(_lines([{"id": 1}]))
    files = [{"bucket": "b", "key": "f.ndjson", "size": 1, "etag": "e"}]
    manifest = parse_manifest(json.dumps(_manifest_doc(files=files, total_files=1)).encode())
    report = asyncio.run(
        compact_manifest(
            manifest,
            parse_options({"tmp_dir": str(scratch)}),
            storage=Storage(kind="local", root=str(root)),
            target=Target(kind="local", directory=str(tmp_path / "out")),
            executor=InlineExecutor(),
        )
    )
    assert report.rows == 1
    assert sorted(p.name for p in scratch.iterdir()) == [elsewhere.name]


def test_fields_that_are_empty_objects_everywhere_are_written_as_json_text(
    tmp_path: Path,
) -> None:
    """Parquet cannot store a struct without fields: a field that is ``{}`` in every
    file (or a list of them) becomes ``"{}"`` text, and the manifest is written; one
    that is ``{}`` in one file and ``{"x": 1}`` in another stays a struct."""
    root = tmp_path / "in"
    (root / "b").mkdir(parents=True)
    contents = [
        [{"id": 1, "meta": {}, "tags": [{}], "o": {}}, {"id": 2, "meta": None, "tags": []}],
        [{"id": 3, "meta": {}, "tags": [{}, {}], "o": {"x": 1}}],
    ]
    files = []
    for i, rows in enumerate(contents):
        (root / "b" / f"e{i}.ndjson").write_bytes(_lines(rows))
        files.append({"bucket": "b", "key": f"e{i}.ndjson", "size": 1, "etag": "e"})
    manifest = parse_manifest(
        json.dumps(_manifest_doc(files=files, total_files=len(files))).encode()
    )
    out = tmp_path / "out"
    report = asyncio.run(
        compact_manifest(
            manifest,
            parse_options({}),
            storage=Storage(kind="local", root=str(root)),
            target=Target(kind="local", directory=str(out)),
            executor=InlineExecutor(),
        )
    )
    assert report.rows == 3
    table = pq.read_table(out / "events" / "date=2026-11-23" / "part-m-1-00000.parquet")
    assert [str(f.type) for f in table.schema] == [
        "int64",
        "string",
        "list<element: string>",
        "struct<x: int64>",
    ]
    assert table.to_pylist() == [
        {"id": 1, "meta": "{}", "tags": ["{}"], "o": {"x": None}},
        {"id": 2, "meta": None, "tags": [], "o": None},
        {"id": 3, "meta": "{}", "tags": ["{}", "{}"], "o": {"x": 1}},
    ]


class ReversedExecutor(InlineExecutor):
    """Runs the tasks last first: another worker scheduling of the same manifest."""

    async def map(
        self, fn: Callable[[T], R], tasks: Sequence[T], *, priority: float = 0.0
    ) -> list[R]:
        return [fn(t) for t in reversed(tasks)][::-1]


def test_column_order_and_types_do_not_depend_on_scheduling(tmp_path: Path) -> None:
    """The schema hint a worker remembers from its previous file never reorders columns."""
    root = tmp_path / "in"
    (root / "b").mkdir(parents=True)
    contents: list[list[dict[str, Any]]] = [
        [{"x": 1, "y": "a", "s": {"p": 1, "q": 2}}] * 3,
        [{"z": 1.5, "x": 2, "s": {"q": 3, "p": 4, "r": "t"}}] * 3,
        [{"x": 3, "y": "b", "s": {"p": 5, "q": 6}, "w": 7}] * 3,
        [{"w": 8.5, "x": 4, "y": None, "s": None}] * 3,
    ]
    files = []
    for i, rows in enumerate(contents):
        (root / "b" / f"f{i}.ndjson").write_bytes(_lines(rows))
        files.append({"bucket": "b", "key": f"f{i}.ndjson", "size": 1, "etag": "e"})
    manifest = parse_manifest(
        json.dumps(_manifest_doc(files=files, total_files=len(files))).encode()
    )
    storage = Storage(kind="local", root=str(root))
    schemas = []
    for n, executor in enumerate([InlineExecutor(), ReversedExecutor(), InlineExecutor()]):
        target = Target(kind="local", directory=str(tmp_path / f"out{n}"))
        report = asyncio.run(
            compact_manifest(
                manifest, parse_options({}), storage=storage, target=target, executor=executor
            )
        )
        schemas.append(report.schema)
    assert schemas[0].names == ["x", "y", "s", "z", "w"]
    assert schemas[0].field("s").type == pa.struct([("p", I64), ("q", I64), ("r", S)])
    assert schemas[0].field("w").type == F64
    assert schemas[1].equals(schemas[0]) and schemas[2].equals(schemas[0])


# --- the processor's state-store bookkeeping ----------------------------------------


class FakeTracker:
    """Records set_manifest_status calls; raises ``error`` if set."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[str, str, str, Any]] = []

    async def set_manifest_status(
        self,
        manifest_id: str,
        status: Any,
        *,
        detail: str = "",
        expect: Any = None,
        quarantined: Any = None,
    ) -> Any:
        self.calls.append((manifest_id, str(status), detail, quarantined))
        if self.error is not None:
            raise self.error
        return None


def _one_file_manifest() -> Any:
    files = [{"bucket": "b", "key": "f.ndjson", "size": 1, "etag": '"e1"'}]
    return parse_manifest(
        json.dumps(_manifest_doc(files=files, total_files=1, total_bytes=1)).encode()
    )


def test_set_status_records_quarantined_files_by_identity() -> None:
    from s3flow.pipelines.ndjson_parquet.compact_processor import _set_status
    from s3flow.state import ObjectId

    manifest = _one_file_manifest()
    tracker = FakeTracker()
    held = [(manifest.files[0], "malformed line 2: not JSON")]
    asyncio.run(_set_status(tracker, manifest, "completed", "1 parts", quarantined=held))
    assert tracker.calls == [
        ("m-1", "completed", "1 parts", {ObjectId("b", "f.ndjson", "e1"): held[0][1]})
    ]


def test_set_status_unknown_manifest_and_refused_transitions_are_not_errors() -> None:
    from s3flow.pipelines.ndjson_parquet.compact_processor import _set_status
    from s3flow.state import TransitionError, UnknownManifestError

    manifest = _one_file_manifest()
    for error in [UnknownManifestError("no manifest 'm-1'"), TransitionError("completed")]:
        tracker = FakeTracker(error)
        asyncio.run(_set_status(tracker, manifest, "processing"))
        assert len(tracker.calls) == 1


def test_set_status_store_failures_are_retryable(caplog: pytest.LogCaptureFixture) -> None:
    from s3flow.errors import RetryableError
    from s3flow.pipelines.ndjson_parquet.compact_processor import _set_status
    from s3flow.state import StateError

    manifest = _one_file_manifest()
    tracker = FakeTracker(StateError("gave up on manifest m-1 after 8 conflicting writes"))
    with (
        caplog.at_level("WARNING", "s3flow.pipelines.ndjson_parquet.compaction"),
        pytest.raises(RetryableError) as info,
    ):
        asyncio.run(_set_status(tracker, manifest, "completed"))
    assert "conflicting writes" in str(info.value)
    assert info.value.disposition is Disposition.RETRYABLE
    assert any(r.levelname == "WARNING" and "m-1" in r.getMessage() for r in caplog.records)


# --- how worker processes reach S3 ------------------------------------------------


async def test_workers_get_the_settings_with_endpoints_pinned_not_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dataclasses
    import pickle

    from s3flow.aws import pin_endpoints
    from s3flow.pipelines.ndjson_parquet.compact_processor import storage_for
    from s3flow.settings import AwsSettings

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDPARENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:7001")
    aws = AwsSettings(region="eu-west-1", max_attempts=8, read_timeout_s=90.0, profile=None)
    storage = storage_for(aws)
    assert [f.name for f in dataclasses.fields(Storage)] == ["kind", "root", "aws"]
    assert storage.kind == "s3"
    assert storage.aws == pin_endpoints(aws)
    assert storage.aws is not None and storage.aws.endpoint_url_s3 == "http://127.0.0.1:7001"
    assert "AKIDPARENT" not in repr(storage) and b"AKIDPARENT" not in pickle.dumps(storage)
    assert pickle.loads(pickle.dumps(storage)) == storage


def test_worker_client_is_built_by_the_factory_once_per_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from s3flow.aws import sync_client_config
    from s3flow.pipelines.ndjson_parquet.compaction.tasks import s3_client
    from s3flow.settings import AwsSettings

    aws = AwsSettings(region="sa-east-1", endpoint_url_s3="http://127.0.0.1:7002", max_attempts=11)
    client = s3_client(Storage(aws=aws))
    assert s3_client(Storage(aws=aws.model_copy())) is client
    assert s3_client(Storage(aws=aws.model_copy(update={"max_attempts": 2}))) is not client
    assert client.meta.endpoint_url == "http://127.0.0.1:7002"
    assert client.meta.region_name == "sa-east-1"
    expected = sync_client_config(aws, "s3", 16)
    for name in ("connect_timeout", "read_timeout", "s3", "max_pool_connections"):
        assert getattr(client.meta.config, name) == getattr(expected, name)
    assert client.meta.config.retries["total_max_attempts"] == 12
    default = s3_client(Storage())
    assert default.meta.config.retries["total_max_attempts"] == AwsSettings().max_attempts + 1
