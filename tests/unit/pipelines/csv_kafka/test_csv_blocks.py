"""BlockCutter: blocks end where csv.reader ends a record, with or without the quote scan."""

from __future__ import annotations

import csv
import io
from itertools import accumulate

from hypothesis import given, settings
from hypothesis import strategies as st

from s3flow.pipelines.csv_kafka.blocks import Block, BlockCutter, PieceSplitter, RecordEnds
from s3flow.pipelines.csv_kafka.fastpath import ArrowJsonBlocks
from s3flow.pipelines.csv_kafka.rows import RowEncoder

COLS = ["a", "b"]


def pieces_of(data: bytes, piece: int) -> list[tuple[bytes, int]]:
    splitter = PieceSplitter(piece)
    pieces = [*splitter.feed(data), *splitter.finish()]
    return list(zip(pieces, accumulate(len(p) for p in pieces), strict=True))


def cut(data: bytes, *, piece: int, block: int, encoder: bool) -> list[Block]:
    cutter = BlockCutter(RecordEnds(), block, "s3://b/k")
    if encoder:
        cutter.encoder = ArrowJsonBlocks(COLS, delimiter=",", quotechar='"', key_index=None).encode
    return list(cutter.blocks(pieces_of(data, piece)))


def record_ends(data: bytes) -> set[int]:
    """Byte offsets where csv.reader ends a record (and the end of the data)."""
    lines = io.StringIO(data.decode(), newline="").readlines()
    offsets = [0, *accumulate(len(line.encode()) for line in lines)]
    reader = csv.reader(lines, strict=False)
    return {offsets[reader.line_num] for _ in reader} | {len(data)}


def exact(block: bytes) -> list[str]:
    enc = RowEncoder(COLS)
    return [enc.json(r) for r in csv.reader(io.StringIO(block.decode(), newline="")) if r]


line = st.sampled_from(
    ["1,2", "3,4", '5,"x,y"', '6,"open', 'close",7', '8,a"b', "", "9", '"p""q",r', "t,u,v"]
)


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(line, min_size=1, max_size=30),
    piece=st.integers(1, 24),
    block=st.integers(1, 64),
    final=st.sampled_from([b"\n", b""]),
)
def test_blocks_end_at_record_ends_with_and_without_the_encoder(
    lines: list[str], piece: int, block: int, final: bytes
) -> None:
    """Trusting the encoder cuts where the scan cuts, and encoded blocks match csv."""
    data = "\n".join(lines).encode() + final
    ends = record_ends(data)
    scanned = cut(data, piece=piece, block=block, encoder=False)
    trusted = cut(data, piece=piece, block=block, encoder=True)
    for blocks in (scanned, trusted):
        assert b"".join(b for b, _, _, _ in blocks) == data
        assert {end for _, end, _, _ in blocks} <= ends
        for b, _, n, encoded in blocks:
            assert n == b.count(b"\n") + (0 if b.endswith(b"\n") else 1)
            if encoded is not None:
                assert [v.decode() for v in encoded[0]] == exact(b)
    assert [end for _, end, _, _ in trusted] == [end for _, end, _, _ in scanned]


def test_a_quoted_line_break_across_the_cut_grows_the_block() -> None:
    """pyarrow takes `6,"open` at a block's end as a record; the cutter scans and goes on."""
    data = b'1,2\n6,"open\nclose",7\n3,4\n'
    blocks = cut(data, piece=1, block=8, encoder=True)
    assert [(b, encoded) for b, _, _, encoded in blocks] == [
        (b'1,2\n6,"open\nclose",7\n', None),  # the exact path
        (b"3,4\n", ([b'{"a":"3","b":"4"}'], None)),
    ]


def test_without_an_encoder_every_piece_is_scanned() -> None:
    data = b'1,"a\nb"\n2,c\n'
    assert [b for b, _, _, _ in cut(data, piece=1, block=1, encoder=False)] == [
        b'1,"a\nb"\n',
        b"2,c\n",
    ]
