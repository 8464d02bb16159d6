"""Parallel mode's range planning (pure logic over an in-memory object)."""

from __future__ import annotations

import gzip
import itertools
from typing import Any

import pytest

from s3flow.pipelines.csv_kafka.checkpoint import ObjectRef
from s3flow.pipelines.csv_kafka.ranges import MIN_RANGE_BYTES, WINDOW_BYTES, plan_ranges

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
