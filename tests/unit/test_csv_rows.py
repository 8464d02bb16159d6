"""csv-to-kafka building blocks: pieces, line feed, decoding, row encoding, checkpoints."""

from __future__ import annotations

import csv
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3flow.csvkafka.checkpoint import Checkpoint, ObjectRef, checkpoint_partition
from s3flow.csvkafka.rows import (
    LineFeed,
    LineTooLongError,
    PieceSplitter,
    RowEncoder,
    decode_piece,
    original_bytes,
)


def split_all(data: bytes, chunk: int, piece: int) -> list[bytes]:
    s = PieceSplitter(piece)
    out: list[bytes] = []
    for i in range(0, len(data), chunk):
        out.extend(s.feed(data[i : i + chunk]))
    out.extend(s.finish())
    return out


@given(
    lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=60),
    chunk=st.integers(1, 50),
    piece=st.integers(1, 64),
    eol=st.booleans(),
)
def test_pieces_cover_the_stream_and_end_at_line_breaks(
    lines: list[bytes], chunk: int, piece: int, eol: bool
) -> None:
    data = b"\n".join(lines) + (b"\n" if eol and lines else b"")
    pieces = split_all(data, chunk, piece)
    assert b"".join(pieces) == data
    assert all(p.endswith(b"\n") for p in pieces[:-1])
    assert all(p for p in pieces)


def test_pieces_are_about_the_target_size() -> None:
    data = b"".join(b"%05d\n" % i for i in range(10_000))  # 6 bytes a line
    pieces = split_all(data, 4096, 1000)
    assert all(len(p) <= 1006 for p in pieces)
    # Only a chunk's tail (what is left after its last full piece) is shorter.
    assert sum(len(p) >= 1000 for p in pieces) >= len(pieces) * 3 // 4 - 1


def test_a_line_longer_than_the_limit_is_refused() -> None:
    s = PieceSplitter(16, max_line_bytes=100)
    with pytest.raises(LineTooLongError):
        list(s.feed(b"x" * 101))


def records(pieces: list[bytes], **fmt: str) -> list[tuple[list[str], bool, int, int]]:
    """(fields, at_piece_end, piece_end_offset, line_num) per record."""
    queue = list(pieces)
    pos = 0

    def next_piece() -> tuple[str, int, list[int]] | None:
        nonlocal pos
        if not queue:
            return None
        p = queue.pop(0)
        pos += len(p)
        text, bad = decode_piece(p, "utf-8")
        return text, pos, bad

    feed = LineFeed(next_piece)
    reader = csv.reader(feed, **fmt)  # type: ignore[arg-type]
    return [(r, feed.at_piece_end, feed.piece_end_offset, reader.line_num) for r in reader]


def test_line_feed_marks_records_that_end_a_piece() -> None:
    pieces = [b'a,b\n1,"x\n', b'y"\n2,z\n', b"3,w\n"]
    got = records(pieces)
    assert [r[0] for r in got] == [["a", "b"], ["1", "x\ny"], ["2", "z"], ["3", "w"]]
    # "1,x\ny" spans pieces 1-2 and does not end piece 1; "2,z" ends piece 2 (offset 16).
    assert [(r[1], r[2]) for r in got] == [(False, 0), (False, 9), (True, 16), (True, 20)]
    assert [r[3] for r in got] == [1, 3, 4, 5]


def test_resume_at_a_piece_end_gives_the_same_records() -> None:
    data = b"".join(b'%d,"v\n%d"\r\n' % (i, i) for i in range(500))
    pieces = split_all(data, 333, 97)
    full = records(pieces)
    for i, rec in enumerate(full):
        if rec[1]:  # a checkpoint could be taken here
            rest = records(split_all(data[rec[2] :], 333, 97))
            assert [r[0] for r in rest] == [r[0] for r in full[i + 1 :]]


def test_decode_piece_reports_undecodable_lines() -> None:
    piece = "ok\ncaf\xe9\nfine\n".encode("latin-1")
    text, bad = decode_piece(piece, "utf-8")
    assert bad == [1]
    assert original_bytes(text, "utf-8") == piece
    assert decode_piece(b"a\nb\n", "utf-8") == ("a\nb\n", [])


def test_row_encoder_json_and_raw() -> None:
    enc = RowEncoder(["id", 'we"ird %s', "ünï"])
    value = enc.json(["1", 'q"uote\n', "ç"])
    assert json.loads(value) == {"id": "1", 'we"ird %s': 'q"uote\n', "ünï": "ç"}
    assert json.loads(RowEncoder(None).json(["a", "b"])) == ["a", "b"]
    assert RowEncoder.raw(['1,"x\n', 'y"\r\n']) == '1,"x\ny"'
    assert RowEncoder.raw(["last"]) == "last"


@given(st.lists(st.text(), min_size=1, max_size=8))
def test_row_encoder_json_is_valid(fields: list[str]) -> None:
    fields = [f.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for f in fields]
    columns = [f"c{i}" for i in range(len(fields))]
    assert json.loads(RowEncoder(columns).json(fields)) == dict(zip(columns, fields, strict=True))


def test_checkpoint_round_trip_and_identity() -> None:
    c = Checkpoint(object="s3://b/k@v", offset=10, row=3, line=4, sent=2, bad=1, columns=["a"])
    assert Checkpoint.decode(c.encode()) == c
    assert Checkpoint.decode(b'{"object": "x", "future_field": 1}').object == "x"
    ref = ObjectRef("b", "k", "v1")
    assert ref.name == "s3://b/k@v1"
    tid = ref.transactional_id("s3flow-csv", "t")
    assert tid == ref.transactional_id("s3flow-csv", "t")
    assert tid != ObjectRef("b", "k", "v2").transactional_id("s3flow-csv", "t")
    assert tid != ref.transactional_id("s3flow-csv", "other-topic")
    assert 0 <= checkpoint_partition(ref.name, 6) < 6
