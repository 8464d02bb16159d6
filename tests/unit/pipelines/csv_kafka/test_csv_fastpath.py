"""The pyarrow path gives exactly what the csv module + RowEncoder give, or declines."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from s3flow.pipelines.csv_kafka.fastpath import ArrowJsonBlocks
from s3flow.pipelines.csv_kafka.rows import RowEncoder

COLS = ["a", "b", 'c"%s']
field = st.text(alphabet=st.sampled_from(list('ab ,"\\\t\n\r\x01é€;')), max_size=6)


def exact(block: bytes) -> list[str]:
    enc = RowEncoder(COLS)
    return [enc.json(r) for r in csv.reader(io.StringIO(block.decode(), newline="")) if r]


def lines_of(block: bytes) -> int:
    return block.count(b"\n") + (0 if block.endswith(b"\n") else 1)


@contextmanager
def field_limit(limit: int | None) -> Iterator[None]:
    """The csv module's (process-wide) field limit set to ``limit`` for the block."""
    old = csv.field_size_limit()
    if limit is not None:
        csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(old)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.lists(field, min_size=3, max_size=3), min_size=1, max_size=8),
    limit=st.sampled_from([None, 1, 3, 5]),
)
def test_fast_path_equals_the_exact_path_or_declines(
    rows: list[list[str]], limit: int | None
) -> None:
    """... with fields over the csv module's field limit too (a small limit stands in for
    its 128 KiB): the exact path makes a bad row of their record, so they are declined."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    block = out.getvalue().encode()
    fast = ArrowJsonBlocks(COLS, delimiter=",", quotechar='"', key_index=1)
    with field_limit(limit):
        got = fast.encode(block, lines_of(block))
        if got is None:
            return  # declined: the exact path handles it
        values, keys = got
        # (a csv.Error here: a field the exact path refuses was taken)
        assert [v.decode() for v in values] == exact(block)
    assert keys == [r[1] for r in rows]


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.lists(field, min_size=3, max_size=3), min_size=1, max_size=8))
def test_tab_separated_fast_path_equals_the_exact_path_or_declines(
    rows: list[list[str]],
) -> None:
    out = io.StringIO()
    csv.writer(out, delimiter="\t", lineterminator="\n").writerows(rows)
    block = out.getvalue().encode()
    fast = ArrowJsonBlocks(COLS, delimiter="\t", quotechar='"', key_index=None)
    got = fast.encode(block, lines_of(block))
    if got is None:
        return
    enc = RowEncoder(COLS)
    want = [
        enc.json(r)
        for r in csv.reader(io.StringIO(block.decode(), newline=""), delimiter="\t")
        if r
    ]
    assert [v.decode() for v in got[0]] == want


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
    # a BOM inside the object (concatenated files): pyarrow would drop it, and its three
    # bytes could cancel three doubled quotes / quoted line feeds in the raw check
    assert fast.encode(b'\xef\xbb\xbf"p""q",r,1\n"s""t",u,2\nv,"w",3\n', 3) is None
    assert fast.encode(b"\xef\xbb\xbf1,2,3\n", 1) is None
    # a field over the csv module's 128 KiB field limit (in characters: 131,072 is fine)
    limit = csv.field_size_limit()
    assert fast.encode(b"1,2,%s\n" % (b"x" * (limit + 1)), 1) is None
    assert fast.encode(b'1,"%s",3\n' % ("\u20ac" * (limit + 1)).encode(), 1) is None
    ok = fast.encode(b"1,2,%s\n" % ("\u20ac" * limit).encode(), 1)
    assert ok is not None and len(ok[0]) == 1


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


def test_the_raw_block_check_spots_every_value_needing_an_escape() -> None:
    """``_clean`` (no per-column regex) is only true when no value needs escaping; the
    output equals the exact path's either way."""
    fast = ArrowJsonBlocks(COLS, delimiter=",", quotechar='"', key_index=None)
    cases = {
        b'1,x,"y, z"\n2,a,b\n': True,  # quotes only around a field
        b'1,x,"q""uote"\n': False,  # a doubled quote: a quote in the value
        b'1,ab"c,z\n': False,  # a literal quote inside an unquoted field
        b'1,"ab"cd,z\n': True,  # text after the closing quote: no quote in the value
        b"1,x,back\\slash\n": False,
        b"1,x,tab\there\n": False,
        b"1,x,y": True,  # no final line feed
    }
    for block, clean in cases.items():
        got = fast.encode(block, lines_of(block))
        assert got is not None, block
        assert [v.decode() for v in got[0]] == exact(block), block
        lines = [r for r in csv.reader(io.StringIO(block.decode(), newline="")) if r]
        table = pa.table({f"c{i}": [r[i] for r in lines] for i in range(3)})
        assert fast._clean(block, table, lines_of(block)) is clean, block
    tsv = ArrowJsonBlocks(COLS, delimiter="\t", quotechar='"', key_index=None)
    assert tsv._clean(b"1\tx\ty\n", pa.table({"a": ["1"], "b": ["x"], "c": ["y"]}), 1) is True
    block = b'1\tx\t"a\tb"\n'  # a tab inside a quoted value: escaped, so not clean
    assert tsv._clean(block, pa.table({"a": ["1"], "b": ["x"], "c": ["a\tb"]}), 1) is False
    got = tsv.encode(block, 1)
    assert got is not None and got[0] == [b'{"a":"1","b":"x","c\\"%s":"a\\tb"}']
    other_quote = ArrowJsonBlocks(COLS, delimiter=",", quotechar="'", key_index=None)
    block = b"1,x,'y, z'\n"
    assert other_quote._clean(block, pa.table({"a": ["1"], "b": ["x"], "c": ["y, z"]}), 1) is False
