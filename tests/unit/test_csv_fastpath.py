"""The pyarrow path gives exactly what the csv module + RowEncoder give, or declines."""

from __future__ import annotations

import csv
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from s3flow.csvkafka.fastpath import ArrowJsonBlocks
from s3flow.csvkafka.rows import RowEncoder

COLS = ["a", "b", 'c"%s']
field = st.text(alphabet=st.sampled_from(list('ab ,"\\\t\n\r\x01é€;')), max_size=6)


def exact(block: bytes) -> list[str]:
    enc = RowEncoder(COLS)
    return [enc.json(r) for r in csv.reader(io.StringIO(block.decode(), newline="")) if r]


def lines_of(block: bytes) -> int:
    return block.count(b"\n") + (0 if block.endswith(b"\n") else 1)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.lists(field, min_size=3, max_size=3), min_size=1, max_size=8))
def test_fast_path_equals_the_exact_path_or_declines(rows: list[list[str]]) -> None:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    block = out.getvalue().encode()
    fast = ArrowJsonBlocks(COLS, delimiter=",", quotechar='"', key_index=1)
    got = fast.encode(block, lines_of(block))
    if got is None:
        return  # declined: the exact path handles it
    values, keys = got
    assert [v.decode() for v in values] == exact(block)
    assert keys == [r[1] for r in rows]


def test_simple_block_takes_the_fast_path() -> None:
    block = b'1,x,"y, z"\n2,"q""uote",\\back\t\n'
    got = ArrowJsonBlocks(COLS, delimiter=",", quotechar='"', key_index=None).encode(block, 2)
    assert got is not None
    assert [v.decode() for v in got[0]] == exact(block)


def test_declines_what_it_cannot_do_exactly() -> None:
    fast = ArrowJsonBlocks(COLS, delimiter=",", quotechar='"', key_index=None)
    assert fast.encode(b'1,"two\nlines",3\n', 2) is None  # a record over two lines
    assert fast.encode(b"1,2,3\n\n4,5,6\n", 3) is None  # a blank line
    assert fast.encode(b"1,2\n", 1) is None  # wrong column count
    assert fast.encode(b"1,2,caf\xe9\n", 1) is None  # not UTF-8
    assert fast.encode(b"1,2,\x01\n", 1) is None  # a control character
    assert fast.encode(b"\r1,2,3\n", 1) is None  # a lone CR (a line break to csv)


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(
        st.text(alphabet=st.sampled_from(list('ab,"\\ \té')), min_size=1, max_size=12),
        min_size=1,
        max_size=6,
    )
)
def test_malformed_quoting_is_never_parsed_differently(lines: list[str]) -> None:
    block = ("\n".join(lines) + "\n").encode()
    got = ArrowJsonBlocks(COLS, delimiter=",", quotechar='"', key_index=None).encode(
        block, lines_of(block)
    )
    if got is not None:
        assert [v.decode() for v in got[0]] == exact(block)
