"""csv-to-kafka building blocks: pieces, record ends, decoding, row batches, checkpoints."""

from __future__ import annotations

import csv
import io
import json
from itertools import accumulate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3flow.errors import PermanentError
from s3flow.pipelines.csv_kafka.blocks import (
    BlockCutter,
    LineTooLongError,
    PieceSplitter,
    RecordEnds,
)
from s3flow.pipelines.csv_kafka.checkpoint import Checkpoint, ObjectRef, checkpoint_partition
from s3flow.pipelines.csv_kafka.errors import BadRowError
from s3flow.pipelines.csv_kafka.options import parse_options
from s3flow.pipelines.csv_kafka.rows import (
    FIELD_OVERHEAD,
    MAX_FIELDS_CHARS,
    MAX_RAW_CHARS,
    Block,
    BlockEncoder,
    RowBatch,
    RowBatches,
    RowEncoder,
    decode_piece,
    fields_excerpt,
    original_bytes,
    raw_excerpt,
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


def record_ends(text: str, escapechar: str | None) -> set[int]:
    """Character offsets where ``csv.reader`` ends a record (blank lines included)."""
    lines = io.StringIO(text, newline="").readlines()
    offsets = list(accumulate(len(line) for line in lines))
    reader = csv.reader(lines, strict=False, escapechar=escapechar)
    return {offsets[reader.line_num - 1] for _ in reader}


def tracked_ends(text: str, cuts: list[int], escapechar: str | None, encoding: str) -> set[int]:
    """Byte offsets among the line ends ``cuts`` that RecordEnds calls record ends."""
    ends = RecordEnds(encoding=encoding, escapechar=escapechar)
    data = text.encode(encoding)
    got, prev = set(), 0
    for cut in cuts:
        if ends.feed(data[prev:cut]):
            got.add(cut)
        prev = cut
    return got


csv_text = st.text(alphabet=st.sampled_from(list('ab,"\\\n\r;é')), max_size=80)


@settings(max_examples=500, deadline=None)
@given(text=csv_text, escape=st.sampled_from([None, "\\"]), every=st.integers(1, 4))
def test_record_ends_follow_the_csv_module(text: str, escape: str | None, every: int) -> None:
    """At every piece end (a line feed), RecordEnds agrees with csv.reader.

    The end of the data is left out: there csv ends an unclosed quoted field too.
    """
    text = text.rstrip("\r") + "\nz\n"  # pieces end with a line feed
    try:
        expected = record_ends(text, escape) - {len(text)}
    except csv.Error:
        return  # (not reached with strict=False; kept as a guard)
    lf = [i + 1 for i, c in enumerate(text) if c == "\n"][::every]
    if lf[-1] != len(text):
        lf.append(len(text))
    # In UTF-8 bytes: map the character offsets of the line feeds to byte offsets.
    to_bytes = {i: len(text[:i].encode()) for i in lf}
    got = tracked_ends(text, [to_bytes[i] for i in lf], escape, "utf-8") - {to_bytes[len(text)]}
    assert got == {to_bytes[i] for i in lf if i in expected}
    # The decoded-text path (another encoding) agrees too.
    if all(ord(c) < 256 for c in text):
        got_latin = tracked_ends(text, lf, escape, "latin-1") - {len(text)}
        assert got_latin == {i for i in lf if i in expected}


def test_a_quote_inside_an_unquoted_field_is_an_ordinary_character() -> None:
    # csv reads `12" pipe` as a field: the record ends at the line break.
    ends = RecordEnds()
    assert ends.feed(b'1,12" pipe\n')
    assert ends.feed(b'2,"a\n') is False  # a quoted field spanning lines
    assert ends.feed(b'b",x\n')
    assert ends.feed(b'3,"say ""hi""\n') is False  # doubled quotes stay inside
    assert ends.feed(b'"" there",y"z\n')
    assert ends.feed(b'4;"q\n')  # ";" is no delimiter here: the quote is ordinary
    semi = RecordEnds(delimiter=";")
    assert semi.feed(b'4;"q\n') is False
    assert semi.feed(b'",\n')


def test_an_escaped_line_break_continues_the_record() -> None:
    ends = RecordEnds(escapechar="\\")
    assert ends.feed(b"a,b\\\n") is False
    assert ends.feed(b'"c",d\n')  # the quote after the escaped line break is ordinary
    assert ends.feed(b'"x\\"y",z\n')


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


def as_blocks(*blocks: bytes) -> list[Block]:
    """(block, end offset, physical lines, not encoded ahead), as the session's reader gives."""
    out: list[Block] = []
    end = 0
    for b in blocks:
        end += len(b)
        out.append((b, end, b.count(b"\n") + (0 if b.endswith(b"\n") else 1), None))
    return out


def test_row_batches_header_bad_rows_then_the_vectorised_path() -> None:
    opts = parse_options({"topic": "t", "key_column": "id"})
    state = Checkpoint(object="s3://b/k@v")
    rows = RowBatches(opts, "s3://b/k", state)
    handed: list[BlockEncoder] = []
    blocks = as_blocks(b"id,name\n1,a\n\n2\n3,c\n", b"4,d\n5,e\n", b"6,f")
    first, second, third = rows.batches(blocks, handed.append)

    # The header's block: the csv module, a blank line, a row with too few columns.
    assert (state.columns, state.ncols) == (["id", "name"], 2)
    enc = RowEncoder(["id", "name"])
    assert list(first.values) == [enc.json(["1", "a"]), enc.json(["3", "c"])]
    assert (list(first.keys or []), list(first.lines)) == (["1", "3"], [2, 5])
    assert (first.rows, first.bad, first.line, first.end) == (3, 1, 5, 19)
    assert [(d.line, d.reason, d.fields) for d in first.dead] == [
        (4, "expected 2 columns, got 1", ["2"])
    ]
    # Later blocks: pyarrow, and its encoder is handed over for reading ahead.
    assert len(handed) == 1
    assert [bytes(v) for v in second.values] == [
        enc.json(["4", "d"]).encode(),
        enc.json(["5", "e"]).encode(),
    ]
    assert (list(second.keys or []), list(second.lines), second.rows) == (["4", "5"], [6, 7], 2)
    assert (list(third.lines), third.line, third.end, third.size) == ([8], 8, 30, 3)
    assert not third.dead


@pytest.mark.parametrize(("delimiter", "quotechar"), [("§", '"'), (",", "«"), (";", "'")])
def test_non_ascii_delimiters_and_quotes_take_the_exact_path(
    delimiter: str, quotechar: str
) -> None:
    """pyarrow parses ASCII delimiters and quote characters only: the blocks after the
    header (where the vectorised path would start) must not fail on one that is not."""
    opts = parse_options({"topic": "t", "delimiter": delimiter, "quotechar": quotechar})
    d, q = delimiter.encode(), quotechar.encode()
    blocks = as_blocks(b"id" + d + b"v\n1" + d + b"a\n", b"2" + d + q + b"b" + d + b"x" + q + b"\n")
    batches = list(RowBatches(opts, "s3://b/k", Checkpoint("x")).batches(blocks))
    enc = RowEncoder(["id", "v"])
    values = [v if isinstance(v, str) else v.decode() for b in batches for v in b.values]
    assert values == [enc.json(["1", "a"]), enc.json(["2", "b" + delimiter + "x"])]


def test_row_batches_follow_bad_rows_and_resume_from_a_checkpoint() -> None:
    skip = RowBatches(
        parse_options({"topic": "t", "bad_rows": "skip", "format": "raw"}),
        "s3://b/k",
        Checkpoint(object="x", offset=8, line=1, columns=["a", "b"], ncols=2),
    )
    (batch,) = skip.batches(as_blocks(b'1,2\n3\n"4",5\n'))
    assert isinstance(batch, RowBatch)
    assert (list(batch.values), list(batch.lines), batch.keys) == (["1,2", '"4",5'], [2, 4], None)
    assert (batch.rows, batch.bad, batch.dead, batch.line) == (3, 1, [], 4)

    fail = parse_options({"topic": "t", "bad_rows": "fail"})
    with pytest.raises(BadRowError, match="s3://b/k line 3: expected 2 columns, got 3"):
        list(RowBatches(fail, "s3://b/k", Checkpoint("x")).batches(as_blocks(b"a,b\n1,2\n1,2,3\n")))
    keyed = parse_options({"topic": "t", "key_column": "id"})
    with pytest.raises(BadRowError, match="key_column 'id' is not a column"):
        list(RowBatches(keyed, "s3://b/k", Checkpoint("x")).batches(as_blocks(b"a,b\n1,2\n")))


def _dead(fmt: str, data: bytes) -> list[tuple[int, str, str | None, bool]]:
    opts = parse_options({"topic": "t", "format": fmt})
    batches = RowBatches(opts, "s3://b/k", Checkpoint("x")).batches(as_blocks(data))
    return [(d.line, d.reason, d.raw, d.raw_truncated) for b in batches for d in b.dead]


@pytest.mark.parametrize("fmt", ["json", "raw"])
def test_every_dead_lettered_row_carries_its_raw_text(fmt: str) -> None:
    # The reproduction: the short row of line 3 keeps its text in any format.
    assert _dead(fmt, b"id,sku,qty\n1,A,3\n2,B\n3,C,1\n") == [
        (3, "expected 3 columns, got 2", "2,B", False)
    ]
    # Too many columns; a record over two physical lines (CRLF kept inside, final
    # line break dropped); undecodable bytes (kept as surrogates, shown as \xNN later).
    data = b'a,b\n1,2,3\r\n4,"x\r\ny",z\r\n5,caf\xe9\n6,ok\n'
    assert _dead(fmt, data) == [
        (2, "expected 2 columns, got 3", "1,2,3", False),
        (3, "expected 2 columns, got 3", '4,"x\r\ny",z', False),
        (5, "undecodable bytes (not utf-8)", "5,caf\udce9", False),
    ]


@pytest.mark.parametrize("fmt", ["json", "raw"])
def test_csv_error_carries_line_and_truncated_raw(fmt: str) -> None:
    big = b"x" * 200_000  # over csv's 128 KiB field limit
    data = b'id,v\n1,a\n2,"' + big + b'"\n3,c\n'
    [(line, reason, raw, truncated)] = _dead(fmt, data)
    assert (line, truncated) == (3, True)
    assert reason.startswith("unparseable CSV: field larger than field limit")
    assert raw == ('2,"' + "x" * 200_000)[:MAX_RAW_CHARS]


@pytest.mark.parametrize("fmt", ["json", "raw"])
@pytest.mark.parametrize("piece", [16, 64 * 1024])
def test_a_csv_error_in_a_multi_line_record_makes_the_whole_record_one_bad_row(
    fmt: str, piece: int
) -> None:
    """After the error csv.reader started again at the record's next line, inside the
    quoted field: "more, stuff" became a good row, and the quote closing the field opened
    an unclosed one that swallowed rows 2, 3 and 4."""
    big = "x" * 140_000
    data = f'id,v\n1,"{big}\nmore, stuff\n"\n2,ok\n3,ok\n4,ok\n'.encode()
    [(line, reason, raw, truncated)] = _dead(fmt, data)
    assert (line, truncated) == (2, True)
    assert reason == (
        "unparseable CSV: field larger than field limit (131072) (lines 2-4, one record)"
    )
    assert raw == f'1,"{big}'[:MAX_RAW_CHARS]
    opts = parse_options({"topic": "t", "format": fmt})
    batches = list(RowBatches(opts, "s3://b/k", Checkpoint("x")).batches(as_blocks(data)))
    values = [v if isinstance(v, str) else v.decode() for b in batches for v in b.values]
    want = [f"{i},ok" for i in (2, 3, 4)]
    if fmt == "json":
        want = [RowEncoder(["id", "v"]).json(w.split(",")) for w in want]
    assert values == want
    assert [n for b in batches for n in b.lines] == [5, 6, 7]
    assert (sum(b.rows for b in batches), sum(b.bad for b in batches)) == (4, 1)
    assert batches[-1].line == 7
    # Through the session's path (the cutter; pyarrow where it can), to the same rows.
    assert line_numbers(data, "utf-8", piece, 256)[:3] == ([5, 6, 7], [2], 7)
    assert line_numbers(data, "latin-1", piece, 256)[:3] == ([5, 6, 7], [2], 7)
    # skip mode has no raw lines to follow the record by
    opts = parse_options({"topic": "t", "bad_rows": "skip"})
    (batch,) = RowBatches(opts, "s3://b/k", Checkpoint("x")).batches(as_blocks(data))
    assert (list(batch.lines), batch.rows, batch.bad, batch.line) == ([5, 6, 7], 4, 1, 7)
    # The field crosses the limit on the record's second line: the same.
    half = "y" * 70_000
    data = f'id,v\n1,"{half}\n{half}\n"",z"\n2,ok\n'.encode()
    [(line, reason, _, _)] = _dead(fmt, data)
    assert (line, reason.endswith("(lines 2-4, one record)")) == (2, True)


@pytest.mark.parametrize("at", [0, 300])
def test_a_field_over_the_limit_is_a_bad_row_wherever_it_is(at: int) -> None:
    """After many rows (the vectorised path's blocks) it was sent as a good row; right
    after the header (the exact path's block) it was dead-lettered."""
    rows = [f"{i},v{i},{i % 7}" for i in range(at)]
    rows += [f"{at},{'x' * 200_000},1", *(f"{i},w,2" for i in range(at + 1, at + 300))]
    data = ("id,v,n\n" + "\n".join(rows) + "\n").encode()
    good = [i + 2 for i in range(at + 300) if i != at]
    for encoding in ("utf-8", "latin-1"):  # with the vectorised path, and the exact one only
        assert line_numbers(data, encoding, 64, 512)[:3] == (good, [at + 2], at + 301)
    assert line_numbers(data, "utf-8", 64, 512)[3] > 0


@pytest.mark.parametrize("fmt", ["json", "raw"])
@pytest.mark.parametrize("eol", ["\n", ""], ids=["final-newline", "no-final-newline"])
def test_an_unclosed_quote_is_a_dead_row_not_a_quiet_one(fmt: str, eol: str) -> None:
    """With as many fields as columns, the row an unclosed quote makes (every line after
    the quote inside one field) was sent as a good row and the lines after it vanished."""
    data = f'id,name\n0,x\n1,"abc\n2,def\n3,ghi{eol}'.encode()
    [(line, reason, raw, truncated)] = _dead(fmt, data)
    assert (line, raw, truncated) == (3, '1,"abc\n2,def\n3,ghi', False)
    assert reason.startswith("unclosed quote: a quoted field opened in this row is still open")
    assert "lines 3-5 were read as this one row" in reason
    opts = parse_options({"topic": "t", "format": fmt})
    batches = list(RowBatches(opts, "s3://b/k", Checkpoint("x")).batches(as_blocks(data)))
    assert [b.line for b in batches] == [5]  # the checkpoint's line: the object's lines
    assert [len(b.values) for b in batches] == [1]  # only row 0 is sent
    fail = parse_options({"topic": "t", "bad_rows": "fail"})
    with pytest.raises(BadRowError, match=r"s3://b/k line 3: unclosed quote"):
        list(RowBatches(fail, "s3://b/k", Checkpoint("x")).batches(as_blocks(data)))


@pytest.mark.parametrize("piece", [7, 64])
def test_an_unclosed_quote_after_vectorised_blocks_is_found_on_the_exact_path(
    piece: int,
) -> None:
    """Through the session's path (the cutter, pyarrow for the clean blocks): the good
    rows before the quote are sent, with their lines; the rest is one dead row."""
    rows = [f"{i},v{i}" for i in range(200)]
    rows[150] = '150,"open'
    data = ("id,v\n" + "\n".join(rows) + "\n").encode()
    good, dead, last, fast = line_numbers(data, "utf-8", piece, 256)
    assert good == list(range(2, 152)) and dead == [152] and last == 201
    assert fast > 0


def test_a_header_with_an_unclosed_quote_is_a_permanent_error() -> None:
    opts = parse_options({"topic": "t"})
    with pytest.raises(PermanentError, match="header row has a quoted field that is never"):
        list(RowBatches(opts, "s3://b/k", Checkpoint("x")).batches(as_blocks(b'id,"v\n1,2\n')))


@pytest.mark.parametrize("bad_rows", ["dead-letter", "skip", "fail"])
def test_a_header_over_the_field_limit_is_a_permanent_error(bad_rows: str) -> None:
    """The header was dead-lettered as a bad row and the first data row became the
    header: {"1": "3", "2": "4"} for the rows after it."""
    opts = parse_options({"topic": "t", "bad_rows": bad_rows})
    data = b"id," + b"h" * 140_000 + b"\n1,2\n3,4\n5,6\n"
    rows = RowBatches(opts, "s3://b/k", Checkpoint("x"))
    with pytest.raises(PermanentError, match=r"s3://b/k: the header row is not valid CSV \("):
        list(rows.batches(as_blocks(data)))


def test_balanced_quotes_across_lines_are_no_unclosed_quote() -> None:
    data = b'id,v\n1,"a\nb"\n2,"c"\n'
    assert _dead("json", data) == []
    assert line_numbers(data, "utf-8", 64, 256)[:3] == ([2, 4], [], 4)


def test_raw_excerpt_cuts_at_the_limit_without_joining_everything() -> None:
    assert raw_excerpt(["ab\n"], 2) == ("ab", False)
    assert raw_excerpt(["abc\r\n"], 2) == ("ab", True)
    assert raw_excerpt(["a\n", "b" * 10, "c" * 10**6], 5) == ("a\nbbb", True)
    assert raw_excerpt([], 5) == ("", False)


def test_fields_excerpt_keeps_the_first_fields_up_to_the_limit() -> None:
    assert fields_excerpt(None) == (None, False)
    assert fields_excerpt(["ab", "c"], 11) == (["ab", "c"], False)  # (2 + 4) + (1 + 4)
    assert fields_excerpt(["ab", "cd"], 11) == (["ab", "c"], True)
    assert fields_excerpt(["ab", "cd"], 10) == (["ab"], True)  # nothing of "cd" fits
    assert fields_excerpt(["abcdef"], 6) == (["ab"], True)
    many = [""] * 1_000_000  # a line of commas: the count is cut too
    kept, cut = fields_excerpt(many)
    assert cut and kept is not None and len(kept) == MAX_FIELDS_CHARS // FIELD_OVERHEAD


def test_a_bad_row_of_large_fields_is_dead_lettered_with_its_fields_cut() -> None:
    """`fields` was copied in full into the DLQ message (10 fields of 110 KB: over
    Kafka's 1 MB message limit, so the whole object failed)."""
    big = [str(i) * 110_000 for i in range(10)]
    data = ("a,b\n1,2\n" + ",".join(big) + "\n3,4\n").encode()
    opts = parse_options({"topic": "t"})
    (batch,) = RowBatches(opts, "s3://b/k", Checkpoint("x")).batches(as_blocks(data))
    assert list(batch.lines) == [2, 4]
    [dead] = batch.dead
    assert (dead.line, dead.reason) == (3, "expected 2 columns, got 10")
    assert (dead.raw_truncated, dead.fields_truncated) == (True, True)
    assert dead.fields is not None
    assert sum(len(f) + FIELD_OVERHEAD for f in dead.fields) == MAX_FIELDS_CHARS
    assert dead.fields == [big[0][: MAX_FIELDS_CHARS - FIELD_OVERHEAD]]
    # small fields are kept whole
    (batch,) = RowBatches(opts, "s3://b/k", Checkpoint("x")).batches(as_blocks(b"a,b\n1\n"))
    assert [(d.fields, d.fields_truncated) for d in batch.dead] == [(["1"], False)]


def test_skip_and_fail_keep_no_raw_text() -> None:
    opts = parse_options({"topic": "t", "bad_rows": "skip"})
    (batch,) = RowBatches(opts, "s3://b/k", Checkpoint("x")).batches(as_blocks(b"a,b\n1\n"))
    assert (batch.bad, list(batch.dead)) == (1, [])


# --- line numbers: the vectorised and the exact path count lines alike ---------------------

#: (lines of good rows, lines of dead-lettered rows, the lines of the object, blocks encoded
#: by the vectorised path)
Lines = tuple[list[int], list[int], int, int]


def line_numbers(data: bytes, encoding: str, piece: int, block: int) -> Lines:
    """What the session reports for ``data``: the ``s3.line`` of each message, the dlq
    ``line`` of each bad row and the checkpoint's ``line``, through the session's path
    (pieces -> BlockCutter -> RowBatches, the encoder handed to the cutter)."""
    opts = parse_options({"topic": "t", "encoding": encoding})
    cutter = BlockCutter(RecordEnds(encoding=encoding), block)
    splitter = PieceSplitter(piece)
    pieces = [*splitter.feed(data), *splitter.finish()]
    blocks = cutter.blocks(zip(pieces, accumulate(len(p) for p in pieces), strict=True))
    good: list[int] = []
    dead: list[int] = []
    last = fast = 0

    def use(encoder: BlockEncoder) -> None:
        cutter.encoder = encoder

    for batch in RowBatches(opts, "s3://b/k", Checkpoint("x")).batches(blocks, use):
        good += batch.lines
        dead += [d.line for d in batch.dead]
        last = batch.line
        fast += isinstance(batch.lines, range)  # the vectorised path's batches
    return good, dead, last, fast


def csv_module_lines(data: bytes) -> tuple[list[int], list[int], int]:
    """The same by Python's csv module over the whole text (``newline=""``: a line ends
    at LF, CRLF or a lone CR): each record's first line; the header sets the count."""
    reader = csv.reader(io.StringIO(data.decode(), newline=""), strict=False)
    good: list[int] = []
    dead: list[int] = []
    ncols, prev = None, 0
    for fields in reader:
        first, prev = prev + 1, reader.line_num
        if not fields:
            continue
        if ncols is None:
            ncols = len(fields)
        else:
            (good if len(fields) == ncols else dead).append(first)
    return good, dead, reader.line_num


line_end = st.sampled_from(["\n", "\r\n", "\r"])
record = st.sampled_from(["1,2,3", "4,5,6", '7,"a\rb",9', '"x\r\ny",8,7', "1,2", "", "q,r,s"])


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.tuples(record, line_end), min_size=1, max_size=40),
    piece=st.integers(1, 40),
    block=st.integers(1, 120),
)
def test_both_paths_number_lines_like_the_csv_module(
    rows: list[tuple[str, str]], piece: int, block: int
) -> None:
    """LF, CRLF and lone CR line ends, mixed: the vectorised path (taken where it can)
    and the exact path alone give the same s3.line / dlq line / checkpoint line, the
    csv module's (a lone CR is a line break, in or out of quotes)."""
    data = ("a,b,c\n" + "".join(r + end for r, end in rows)).encode()
    want = csv_module_lines(data)
    mixed = line_numbers(data, "utf-8", piece, block)
    exact_only = line_numbers(data, "latin-1", piece, block)  # the exact path only
    assert exact_only[3] == 0
    assert mixed[:3] == exact_only[:3] == want


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"], ids=repr)
def test_line_numbers_with_each_line_end_on_both_paths(end: str) -> None:
    rows = [f"{i},x{i},y" for i in range(300)]
    rows[150] = "short,row"
    data = end.join(["a,b,c", *rows, ""]).encode()
    good = [i + 2 for i in range(300) if i != 150]  # the header is line 1
    mixed = line_numbers(data, "utf-8", 64, 512)
    assert mixed[:3] == line_numbers(data, "latin-1", 64, 512)[:3] == (good, [152], 301)
    # LF and CRLF blocks are encoded by the vectorised path; a lone CR takes the exact one
    assert (mixed[3] > 0) == (end != "\r")


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (b"id,val,val\n", "a column name more than once ('val')"),
        (b"id,val,\n", "an empty column name (column 3)"),
    ],
)
def test_a_header_whose_names_cannot_be_json_keys_is_a_permanent_error(
    header: bytes, says: str
) -> None:
    """`id,val,val` gave {"id":"1","val":"a","val":"b"}: most JSON readers keep the last
    "val" only, so "a" was lost without a word."""
    opts = parse_options({"topic": "t"})
    rows = RowBatches(opts, "s3://b/dup.csv", Checkpoint("x"))
    with pytest.raises(PermanentError) as info:
        list(rows.batches(as_blocks(header + b"1,a,b\n")))
    message = str(info.value)
    assert message.startswith("s3://b/dup.csv: the header row has " + says)
    assert "columns option" in message


def test_raw_format_keeps_any_header() -> None:
    opts = parse_options({"topic": "t", "format": "raw"})
    batches = RowBatches(opts, "s3://b/dup.csv", Checkpoint("x")).batches(
        as_blocks(b"id,val,val\n1,a,b\n")
    )
    assert sum(b.rows for b in batches) == 1


def test_named_columns_replace_a_header_with_duplicates() -> None:
    opts = parse_options({"topic": "t", "columns": ["id", "v1", "v2"]})
    (batch,) = RowBatches(opts, "s3://b/dup.csv", Checkpoint("x")).batches(
        as_blocks(b"id,val,val\n1,a,b\n")
    )
    assert [json.loads(v) for v in batch.values] == [{"id": "1", "v1": "a", "v2": "b"}]


@pytest.mark.parametrize(
    ("version_id", "etag", "version"),
    [
        ("v1", '"e1"', "v1"),
        (None, '"e1"', "e1"),
        ("", "e1", "e1"),
        # written while versioning was off or suspended: every overwrite is "null"
        ("null", '"e2"', "e2"),
    ],
)
def test_an_object_is_its_version_id_else_its_etag(
    version_id: str | None, etag: str, version: str
) -> None:
    assert ObjectRef.of("b", "k", version_id, etag) == ObjectRef("b", "k", version)


def test_the_checkpoint_key_names_the_topic_only_in_a_shared_checkpoint_topic() -> None:
    """Keys in the default checkpoint topic are as they always were (checkpoints written
    before an upgrade are found); a shared one tells the data topics apart."""
    ref = ObjectRef("b", "k", "v1")
    assert ref.checkpoint_key("t", "t.checkpoints") == "s3://b/k@v1"
    assert ref.checkpoint_key("t", "shared") == "t <- s3://b/k@v1"
    assert ref.checkpoint_key("u", "shared") != ref.checkpoint_key("t", "shared")
