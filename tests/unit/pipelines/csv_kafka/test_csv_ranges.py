"""Parallel mode's range planning (pure logic over an in-memory object)."""

from __future__ import annotations

import gzip
import itertools
from typing import Any

import pytest

from s3flow.pipelines.csv_kafka.checkpoint import Checkpoint, ObjectRef
from s3flow.pipelines.csv_kafka.errors import BadRowError
from s3flow.pipelines.csv_kafka.options import parse_options
from s3flow.pipelines.csv_kafka.ranges import (
    MIN_RANGE_BYTES,
    WINDOW_BYTES,
    first_record,
    header_columns,
    plan_ranges,
)
from s3flow.pipelines.csv_kafka.rows import RowBatches

REF = ObjectRef("b", "k.csv", "v1")


class Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, n: int) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out

    def close(self) -> None:
        pass


class FakeS3:
    """get_object with Range over bytes in memory; counts the requests."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.gets = 0

    async def get_object(self, **kw: Any) -> dict[str, Any]:
        self.gets += 1
        start, end = (int(x) for x in kw["Range"].removeprefix("bytes=").split("-"))
        return {"Body": Body(self.data[start : end + 1]), "ContentLength": end + 1 - start}


async def plan(data: bytes, n: int) -> list[tuple[int, int]] | None:
    return await plan_ranges(FakeS3(data), REF, None, len(data), n)


def lines(count: int, width: int) -> bytes:
    return b"".join(b"%0*d\n" % (width - 1, i) for i in range(count))


async def test_cuts_fall_on_line_starts_and_cover_the_object() -> None:
    data = lines(50_000, 100)  # 5 MB: four ranges of >= 1 MiB
    bounds = await plan(data, 4)
    assert bounds is not None and len(bounds) == 4
    assert bounds[0][0] == 0 and bounds[-1][1] == len(data)
    for (_, end), (start, _) in itertools.pairwise(bounds):
        assert end == start and data[start - 1 : start] == b"\n"


async def test_a_line_longer_than_the_window_moves_the_cut_past_it() -> None:
    long_line = b"x" * (3 * WINDOW_BYTES) + b"\n"
    data = lines(11_000, 100) + long_line + lines(12_000, 100)
    bounds = await plan(data, 2)
    assert bounds is not None
    cut = bounds[1][0]
    assert data[cut - 1 : cut] == b"\n" and cut >= 1_100_000


async def test_small_or_compressed_objects_stream_whole() -> None:
    assert await plan(lines(1000, 100), 4) is None  # 100 kB: under two ranges of 1 MiB
    assert await plan(gzip.compress(lines(40_000, 100)), 4) is None
    bounds = await plan(lines(25_000, 100), 8)  # 2.5 MB: at most 2 ranges of >= 1 MiB
    assert bounds is not None and len(bounds) == 2
    assert all(end - start >= MIN_RANGE_BYTES for start, end in bounds)


# 4.4 MiB: at most 4 ranges. Line feeds end before 1.5 MB, so a nominal cut after that
# finds none and is dropped: n=2 (cut near 2.3 MB) and n=3 (1.55 MB, 3.1 MB) keep no cut
# and stream whole; n=7 (4 ranges: 1.16, 2.3, 3.5 MB) keeps only the first cut.
@pytest.mark.parametrize(("n", "ranges"), [(2, None), (3, None), (7, 2)])
async def test_no_line_feed_after_the_middle_means_fewer_ranges(n: int, ranges: int | None) -> None:
    data = lines(15_000, 100) + b"y" * (3 * MIN_RANGE_BYTES)  # a last line with no end
    bounds = await plan(data, n)
    if ranges is None:
        assert bounds is None
        return
    assert bounds is not None and len(bounds) == ranges
    assert bounds[0][0] == 0 and bounds[-1][1] == len(data)
    for (_, end), (start, _) in itertools.pairwise(bounds):
        assert end == start and data[start - 1 : start] == b"\n"


# --- the object's first record (the header's names, or the column count of every range) ---


async def header_of(data: bytes, **options: Any) -> list[str]:
    opts = parse_options({"topic": "t", **options})
    return await header_columns(FakeS3(data), opts, REF, None, len(data))


def exact_path_columns(data: bytes) -> list[str] | None:
    """The columns the single-range (exact) path learns from the same object (the
    session drops a UTF-8 BOM before its blocks)."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    state = Checkpoint(object="x")
    batches = RowBatches(parse_options({"topic": "t"}), "s3://b/k.csv", state)
    for _ in batches.batches([(data, len(data), data.count(b"\n"), None)]):
        pass
    return state.columns


@pytest.mark.parametrize(
    "prefix", [b"", b"\n", b"\r\n\n", b"\r", b"\n\r\n\r\n", b"\xef\xbb\xbf\n"], ids=repr
)
async def test_blank_lines_before_the_header_are_skipped_like_the_exact_path(
    prefix: bytes,
) -> None:
    data = prefix + b"id,name\n1,a\n2,b\n"
    assert await header_of(data) == ["id", "name"] == exact_path_columns(data)


@pytest.mark.parametrize(
    "data",
    [
        b"id,name\r1,a\r2,b\r",  # a lone CR ends a line (a csv.Error before)
        b"id,name\r\n1,a\r\n",
        b'"id","na\nme"\n1,a\n',  # a quoted line break inside the header
        b'\xef\xbb\xbf"id",name\n1,a\n',
    ],
    ids=repr,
)
async def test_the_header_is_read_as_the_exact_path_reads_it(data: bytes) -> None:
    assert await header_of(data) == exact_path_columns(data)


async def test_the_first_row_gives_the_column_count_without_a_header() -> None:
    data = b"\n\n1,caf\xe9,3\n4,5\n"  # undecodable bytes: still three fields
    opts = parse_options({"topic": "t", "header": False, "encoding": "utf-8"})
    fields = await first_record(FakeS3(data), opts, REF, None, len(data))
    assert len(fields) == 3
    tsv = parse_options({"topic": "t", "header": False, "delimiter": "tab"})
    data = b"a\tb\n"
    assert await first_record(FakeS3(data), tsv, REF, None, len(data)) == ["a", "b"]


async def test_no_complete_first_record_in_the_window_is_a_clear_error() -> None:
    blank = b"\n" * (MIN_RANGE_BYTES + 10) + b"id,name\n"
    with pytest.raises(BadRowError, match=r"s3://b/k.csv: no complete record .*ranges = 1"):
        await header_of(blank)
    # a first record longer than the window: its names would be cut
    long_header = b"id" + b",x" * MIN_RANGE_BYTES + b"\n1,2\n"
    with pytest.raises(BadRowError, match="no complete record"):
        await header_of(long_header)
    # a quoted field open across the window's end (its last line ends with a line feed)
    quoted = b"\n" * (MIN_RANGE_BYTES - 10) + b'"id\nx\nyyy\n",name\n1,2\n'
    with pytest.raises(BadRowError, match="no complete record"):
        await header_of(quoted)
    assert await header_of(quoted[MIN_RANGE_BYTES // 2 :]) == ["id\nx\nyyy\n", "name"]
    huge = b'"' + b"x" * 200_000 + b'",name\n1,2\n'  # over csv's field limit
    with pytest.raises(BadRowError, match=r"line 1: the first record is not valid CSV"):
        await header_of(huge)
    opts = parse_options({"topic": "t", "header": False})
    with pytest.raises(BadRowError, match=r"or give columns"):
        await first_record(FakeS3(blank), opts, REF, None, len(blank))


async def test_a_header_ending_right_at_the_window_counts_and_bad_bytes_do_not() -> None:
    header = b"id" + b",x" * (MIN_RANGE_BYTES // 2 - 2) + b",\n"  # exactly the window
    assert len(header) == MIN_RANGE_BYTES
    data = header + b"1,2\n"
    assert (await header_of(data))[0] == "id"
    with pytest.raises(BadRowError, match="header row is not valid utf-8"):
        await header_of(b"id,caf\xe9\n1,2\n")


# --- reads of the event's upload only ------------------------------------------------------


class OverwrittenS3(FakeS3):
    """The object now holds upload ``e2``: a GetObject conditional on another eTag is
    refused (412), as S3 refuses it; every condition asked is recorded."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.conditions: list[str | None] = []

    async def get_object(self, **kw: Any) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        self.conditions.append(kw.get("IfMatch"))
        if kw.get("IfMatch") not in (None, '"e2"'):
            error = {"Code": "PreconditionFailed", "Message": "At least one of the pre-..."}
            meta = {"HTTPStatusCode": 412}
            raise ClientError({"Error": error, "ResponseMetadata": meta}, "GetObject")
        return await super().get_object(**kw)


async def test_every_read_of_a_range_plan_is_of_the_event_upload() -> None:
    """An event's upload overwritten since: planning its ranges (and reading its first
    record) reads the newer bytes under its identity no more, and says superseded."""
    from s3flow.errors import ObjectChangedError

    data = b"id,name\n" + lines(50_000, 100)
    s3 = OverwrittenS3(data)
    bounds = await plan_ranges(s3, REF, None, len(data), 4, "e2")
    assert bounds is not None and len(bounds) == 4
    opts = parse_options({"topic": "t"})
    assert await header_columns(s3, opts, REF, None, len(data), "e2") == ["id", "name"]
    assert s3.conditions and set(s3.conditions) == {'"e2"'}
    with pytest.raises(ObjectChangedError, match="upload eTag e1 is not the object now"):
        await plan_ranges(s3, REF, None, len(data), 4, "e1")
    with pytest.raises(ObjectChangedError):
        await first_record(s3, opts, REF, None, len(data), "e1")


async def test_the_stream_and_each_range_read_only_the_event_upload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from s3flow.errors import ObjectChangedError
    from s3flow.pipelines.csv_kafka import ranges

    seen: dict[str, Any] = {}

    async def one_stream(opts: Any, ref: Any, open_stream: Any, **kw: Any) -> Any:
        seen["stream"] = await open_stream()

    async def one_range(*args: Any, **kw: Any) -> Any:
        seen.setdefault("ranges", []).append(kw["if_match"])
        raise ObjectChangedError("superseded")

    monkeypatch.setattr(ranges, "run_object", one_stream)
    monkeypatch.setattr(ranges, "run_range_process", one_range)
    monkeypatch.setattr(ranges, "warm_up", lambda: None)
    small = b"id,name\n1,a\n"
    opts = parse_options({"topic": "t"})
    with pytest.raises(ObjectChangedError):
        await ranges.run_csv_object(
            opts, REF, OverwrittenS3(small), None, len(small), executor=None, if_match="e1"
        )  # type: ignore[arg-type]
    big = b"id,name\n" + lines(50_000, 100)
    wide = parse_options({"topic": "t", "ranges": 4, "topic_partitions": 4})
    with pytest.raises(ObjectChangedError):
        await ranges.run_csv_object(
            wide, REF, OverwrittenS3(big), None, len(big), executor=None, if_match="e2"
        )  # type: ignore[arg-type]
    assert seen["ranges"] and set(seen["ranges"]) == {"e2"}
