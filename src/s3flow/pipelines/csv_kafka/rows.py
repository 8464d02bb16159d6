"""From blocks of CSV to message values, one batch per block.

The path of one block (blocks: :mod:`.blocks`)::

    block --RowBatches--> a RowBatch of message values, either
      --ArrowJsonBlocks--> values (one-line records, vectorised: :mod:`.fastpath`) or
      --decode_piece--> text --LineFeed--> lines --csv.reader--> records
      --RowEncoder--> values (any other block, record by record)

A block ends where a record ends, so it is parsed on its own.
"""

from __future__ import annotations

import csv
import io
import json
import json.encoder
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from s3flow.errors import PermanentError, UndecodableContentError
from s3flow.pipelines.csv_kafka.blocks import MAX_BLOCK_BYTES, Block, BlockEncoder, RecordEnds
from s3flow.pipelines.csv_kafka.checkpoint import Checkpoint
from s3flow.pipelines.csv_kafka.errors import BadRowError
from s3flow.pipelines.csv_kafka.options import CsvKafkaOptions, column_names_problem

try:
    from s3flow.pipelines.csv_kafka.fastpath import ArrowJsonBlocks

    _FAST = True
except ImportError:  # pragma: no cover - pyarrow is a dependency; the exact path still works
    _FAST = False

log = logging.getLogger("s3flow.pipelines.csv_kafka")

#: A dead-lettered record's ``raw`` text is cut after this many characters (then
#: ``raw_truncated`` is true): a DLQ message stays far below Kafka's 1 MB default limit
#: even for a field over the ``csv`` module's 128 KiB field limit.
MAX_RAW_CHARS = 16 * 1024
#: A dead-lettered record's ``fields`` keep this many characters in all, each field
#: counted with :data:`FIELD_OVERHEAD` more (then ``fields_truncated`` is true): with
#: ``raw`` the message stays far below Kafka's 1 MB default limit, whatever the row.
MAX_FIELDS_CHARS = 16 * 1024
#: What a field adds to the JSON list besides its text (its quotes and ``", "``): a row
#: of a million empty fields must be cut too.
FIELD_OVERHEAD = 4


def decode_piece(piece: bytes, encoding: str) -> tuple[str, list[int]]:
    """Decode one piece; also return the indexes of lines that did not decode.

    Undecodable bytes are kept as surrogates (``surrogateescape``), so the line
    structure - and so the CSV parse - is the same as for clean input; the caller
    turns the rows touching the returned lines into bad rows.
    """
    try:
        return piece.decode(encoding), []
    except UnicodeDecodeError:
        pass
    text = piece.decode(encoding, "surrogateescape")
    bad = []
    for i, line in enumerate(io.StringIO(text, newline="")):
        try:
            line.encode(encoding)
        except UnicodeEncodeError:
            bad.append(i)
    return text, bad


def original_bytes(text: str, encoding: str) -> bytes:
    """The bytes a (possibly surrogate-escaped) decoded text came from."""
    return text.encode(encoding, "surrogateescape")


#: A last line after a block's own (private-use characters, no newline): the csv module
#: reads it as a record of its own when the block ends at a record end, as blocks do;
#: a quoted field still open at the block's end swallows it instead (an unclosed quote).
END_MARK = "\ue000\ue001\ue002\ue003"


class LineFeed:
    """The lines of one decoded block, then :data:`END_MARK`, for a ``csv.reader``.

    ``bad_lines`` holds the 1-based numbers (counted from ``start_line``) of the
    undecodable lines not yet handled. With ``keep_raw`` the lines of the current record
    are collected in ``raw`` (the caller clears it after each record; the mark is not
    one of them). :meth:`skip_record` takes lines out of the reader's way.
    """

    def __init__(
        self, text: str, bad: list[int], *, keep_raw: bool = False, start_line: int = 0
    ) -> None:
        self._lines = io.StringIO(text, newline="").readlines()
        # One iterator shared by the reader's feed and skip_record.
        self._next = iter(self._lines)
        self.keep_raw = keep_raw
        self.bad_lines: set[int] = {start_line + i + 1 for i in bad}
        self.raw: list[str] = []

    def __iter__(self) -> Iterator[str]:
        if self.keep_raw:
            yield from self._raw_lines()
        else:
            yield from self._next
        yield END_MARK

    def _raw_lines(self) -> Iterator[str]:
        raw = self.raw
        for line in self._next:
            raw.append(line)
            yield line

    def skip_record(self, first: int, taken: int, ends: RecordEnds, encoding: str) -> int:
        """Skip the rest of the record on lines ``first``... (0-based) that the reader gave
        up on after ``taken`` lines (a ``csv.Error``); return how many lines were skipped.

        The reader starts again at the next line, which is still inside the record when a
        quoted field spans lines: it would read the inside of the field as records. Where
        the record ends is found by ``ends`` (the block cutter's quote rules); the block
        ends at a record end, so at most its last line is skipped (never the end mark).
        """
        ends.reset()
        at_end = True
        for line in self._lines[first:taken]:
            at_end = ends.feed(original_bytes(line, encoding))
        skipped = 0
        while not at_end:
            line = next(self._next, "")
            if not line:
                break  # the block's end (a split record or an unclosed quote)
            if self.keep_raw:
                self.raw.append(line)
            skipped += 1
            at_end = ends.feed(original_bytes(line, encoding))
        return skipped


_encode_str = json.encoder.c_encode_basestring or json.encoder.py_encode_basestring  # type: ignore[attr-defined]


class RowEncoder:
    """Turns a record (list of fields) into a message value (``str``, sent as UTF-8).

    JSON objects are built from a template with the column names pre-encoded, so a
    row costs one ``%`` format and one C string escape per field.
    """

    def __init__(self, columns: list[str] | None) -> None:
        self.columns = list(columns) if columns else None
        if self.columns:
            keys = (json.dumps(c, ensure_ascii=False).replace("%", "%%") for c in self.columns)
            self._template = "{" + ",".join(f"{k}:%s" for k in keys) + "}"

    def json(self, fields: list[str]) -> str:
        """The JSON value of a record (an object with column names, else an array)."""
        if self.columns:
            return self._template % tuple(map(_encode_str, fields))
        return "[" + ",".join(map(_encode_str, fields)) + "]"

    @staticmethod
    def raw(lines: list[str]) -> str:
        """The record's original text without its final line break."""
        text = "".join(lines)
        if text.endswith("\n"):
            text = text[:-2] if text.endswith("\r\n") else text[:-1]
        elif text.endswith("\r"):
            text = text[:-1]
        return text


def raw_excerpt(lines: list[str], limit: int = MAX_RAW_CHARS) -> tuple[str, bool]:
    """A bad record's text for the dead-letter topic: (text, whether it was truncated).

    The physical lines the record spans (without the final line break), cut after
    ``limit`` characters. Only the first ``limit + 2`` characters are joined, so a
    record of many MiB costs no more than a short one.
    """
    size = 0
    for i, line in enumerate(lines):
        size += len(line)
        if size > limit + 2:
            text = RowEncoder.raw(lines[: i + 1])
            return (text[:limit], True) if len(text) > limit else (text, False)
    text = RowEncoder.raw(lines)
    return (text[:limit], True) if len(text) > limit else (text, False)


def fields_excerpt(
    fields: list[str] | None, limit: int = MAX_FIELDS_CHARS
) -> tuple[list[str] | None, bool]:
    """A bad record's fields for the dead-letter topic: (fields, whether they were cut).

    The fields are kept in order while their characters, plus :data:`FIELD_OVERHEAD`
    each, stay within ``limit``: the field that crosses it is cut there (left out when
    nothing of it fits), and the fields after it are left out.
    """
    if fields is None:
        return None, False
    total = 0
    for i, field in enumerate(fields):
        total += len(field) + FIELD_OVERHEAD
        if total > limit:
            room = limit - (total - len(field))  # for this field's text
            return [*fields[:i], field[:room]] if room > 0 else fields[:i], True
    return fields, False


# --- blocks to messages ----------------------------------------------------------------


class BadRow(NamedTuple):
    """A record for the dead-letter topic: its first line, why, its fields and raw text.

    ``fields`` is cut as :func:`fields_excerpt` does (``fields_truncated``); ``raw`` is
    the text of the physical lines the record spans (for a CSV error too: up to where
    the quote rules end the record), cut at :data:`MAX_RAW_CHARS` characters
    (``raw_truncated``).
    """

    line: int
    reason: str
    fields: list[str] | None  # None: the record did not parse
    raw: str | None  # None only for rows built without their text (never by RowBatches)
    raw_truncated: bool = False
    fields_truncated: bool = False


@dataclass(slots=True)
class RowBatch:
    """One block's records as messages ready to produce, and where the block ends.

    ``values[i]`` (key ``keys[i]``; no keys: ``keys`` is None) is the record that starts
    at physical line ``lines[i]`` of the object. ``rows`` counts the block's records,
    good and bad; ``bad`` the bad ones, of which ``dead`` are to be dead-lettered.
    """

    values: Sequence[str | bytes]
    keys: Sequence[Any] | None
    lines: Sequence[int]
    end: int  # object offset after the block
    line: int  # physical lines of the object up to ``end``
    size: int  # the block's bytes
    rows: int
    bad: int = 0
    dead: Sequence[BadRow] = ()


class RowBatches:
    """The records of one object (from ``state``'s position on) as one batch per block.

    A block of one-line records in UTF-8 (``format = "json"``, known columns) is parsed
    and encoded by pyarrow (:class:`ArrowJsonBlocks`: no Python call per record); any
    other block record by record with ``csv.reader`` (header, bad rows, multi-line
    records, other encodings). The columns and their count are learned from the header
    row or the first record, and set in ``state`` (``columns``, ``ncols``) at once;
    a count already in ``state`` is kept (a resumed object, or a range of one in
    parallel mode: its object's first record's, not the range's own first row's).
    Bad records follow ``bad_rows``: ``fail`` raises :class:`BadRowError`.
    """

    def __init__(self, opts: CsvKafkaOptions, uri: str, state: Checkpoint) -> None:
        self._opts = opts
        self._uri = uri
        self._state = state
        columns = list(opts.columns) if opts.columns else state.columns
        #: Whether the header row is still to come (it is the first record of the object).
        self.header_pending = opts.header and state.offset == 0
        self._columns = columns
        self._encoder = RowEncoder(columns)
        # The expected column count: the columns', else the one a previous run of this
        # object learned from its first data row (kept in the checkpoint), or the one
        # parallel mode read from the object's first row for this range.
        self._ncols = len(columns) if columns else state.ncols
        self._key_idx = self._key_index(columns) if columns is not None else None
        if columns is not None:
            state.columns = columns
        state.ncols = self._ncols
        self._fast_ok = (
            opts.format == "json"
            and opts.encoding == "utf-8"
            and opts.escapechar is None
            and (opts.delimiter + opts.quotechar).isascii()  # pyarrow parses ASCII ones only
            and _FAST
        )
        self._fast: ArrowJsonBlocks | None = None
        self._offset = state.offset
        self._line = state.line

    def batches(
        self, blocks: Iterable[Block], use_encoder: Callable[[BlockEncoder], None] | None = None
    ) -> Iterator[RowBatch]:
        """One :class:`RowBatch` per block of ``blocks``, in order.

        A block arrives encoded when the reader of ``blocks`` encoded it ahead: once the
        vectorised path can take the blocks, its encoder is handed to ``use_encoder``.
        """
        opts = self._opts
        for block, end, nlines, encoded in blocks:
            if (
                encoded is None
                and self._fast_ok
                and self._columns is not None
                and not self.header_pending
            ):
                if self._fast is None:
                    self._fast = ArrowJsonBlocks(
                        self._columns,
                        delimiter=opts.delimiter,
                        quotechar=opts.quotechar,
                        key_index=self._key_idx,
                    )
                    if use_encoder is not None:
                        use_encoder(self._fast.encode)  # later blocks are encoded ahead
                encoded = self._fast.encode(block, nlines)
            if encoded is not None:
                values, keys = encoded
                first = self._line + 1
                n = len(values)
                batch = RowBatch(
                    values, keys, range(first, first + n), end, self._line + nlines, len(block), n
                )
            else:
                batch = self._exact(block, end)
            self._offset, self._line = end, batch.line
            yield batch
        if self.header_pending and opts.header:
            log.info("%s: empty object (no header row)", self._uri)

    def _exact(self, block: bytes, end: int) -> RowBatch:
        """The records of ``block`` by the ``csv`` module, one by one."""
        opts, state = self._opts, self._state
        raw_mode = opts.format == "raw"
        # The lines of each record are kept for ``format = "raw"`` and for the text of
        # dead-lettered records (any format).
        keep_raw = raw_mode or opts.bad_rows == "dead-letter"
        encoding = opts.encoding
        lines_done = self._line
        header_pending, encoder = self.header_pending, self._encoder
        ncols, key_idx = self._ncols, self._key_idx
        text, bad_idx = decode_piece(block, encoding)
        feed = LineFeed(text, bad_idx, keep_raw=keep_raw, start_line=lines_done)
        raw_lines = feed.raw
        bad_lines = feed.bad_lines
        reader = csv.reader(
            feed,
            delimiter=opts.delimiter,
            quotechar=opts.quotechar,
            escapechar=opts.escapechar,
            doublequote=True,
            strict=False,
        )
        values: list[str | bytes] = []
        keys: list[Any] = []
        lines: list[int] = []
        dead: list[BadRow] = []
        rows = bad = 0
        prev_end = lines_done
        # ``base + reader.line_num``: the object's lines read, with those skip_record
        # took past the reader after a CSV error.
        base = lines_done
        ends: RecordEnds | None = None
        while True:
            try:
                for fields in reader:
                    if fields and fields[-1].endswith(END_MARK):
                        if fields == [END_MARK]:
                            break  # the block ended at a record end
                        # A quoted field open at the block's end took in every line
                        # after its opening quote, and the mark.
                        fields[-1] = fields[-1][: -len(END_MARK)]
                        line_start = prev_end + 1
                        prev_end = base + reader.line_num - 1
                        if header_pending:
                            raise PermanentError(
                                f"{self._uri}: the header row has a quoted field that is "
                                "never closed (an unclosed quote?): fix the header row"
                            )
                        reason = (
                            "unclosed quote: a quoted field opened in this row is still "
                            "open where the data read ends (the end of the object, of its "
                            "range in parallel mode, or of a "
                            f"{MAX_BLOCK_BYTES // (1024 * 1024)} MiB block), so lines "
                            f"{line_start}-{prev_end} were read as this one row"
                        )
                        bad += self._bad(dead, line_start, reason, fields, raw_lines)
                        rows += 1
                        break
                    line_end = base + reader.line_num
                    line_start = prev_end + 1
                    prev_end = line_end
                    if not fields:
                        pass  # a blank line: no record
                    elif header_pending:
                        header_pending = self.header_pending = False
                        if bad_lines and _touches(bad_lines, line_start, line_end):
                            raise _bad_header(self._uri, encoding, text, block, self._offset, end)
                        if self._columns is None:
                            if not raw_mode and (problem := column_names_problem(fields)):
                                raise PermanentError(
                                    f"{self._uri}: the header row has {problem}: each row's "
                                    "JSON would hold one value per name and lose the others. "
                                    "Rename the columns in the file, or name them with the "
                                    "columns option (the header row is then skipped)"
                                )
                            columns = self._columns = state.columns = fields
                            encoder = self._encoder = RowEncoder(columns)
                            ncols = self._ncols = state.ncols = len(columns)
                            key_idx = self._key_idx = self._key_index(columns)
                    else:
                        if ncols is None:
                            ncols = self._ncols = state.ncols = len(fields)
                        if len(fields) != ncols:
                            reason = f"expected {ncols} columns, got {len(fields)}"
                            bad += self._bad(dead, line_start, reason, fields, raw_lines)
                        elif bad_lines and _touches(bad_lines, line_start, line_end):
                            reason = f"undecodable bytes (not {encoding})"
                            bad += self._bad(dead, line_start, reason, fields, raw_lines)
                        else:
                            values.append(
                                RowEncoder.raw(raw_lines) if raw_mode else encoder.json(fields)
                            )
                            if key_idx is not None:
                                keys.append(fields[key_idx])
                            lines.append(line_start)
                        rows += 1
                    if keep_raw:
                        raw_lines.clear()
                break
            except csv.Error as exc:
                if header_pending:
                    # Like an unclosed quote in it: dead-lettering the header would make
                    # the first data row the header (its values the column names).
                    raise PermanentError(
                        f"{self._uri}: the header row is not valid CSV ({exc}): fix the header row"
                    ) from exc
                if ends is None:
                    ends = RecordEnds(
                        delimiter=opts.delimiter,
                        quotechar=opts.quotechar,
                        escapechar=opts.escapechar,
                        encoding=encoding,
                    )
                taken = base - lines_done + reader.line_num
                base += feed.skip_record(prev_end - lines_done, taken, ends, encoding)
                line_end = base + reader.line_num
                line_start = prev_end + 1
                prev_end = line_end
                reason = f"unparseable CSV: {exc}"
                if line_end > line_start:
                    reason += f" (lines {line_start}-{line_end}, one record)"
                bad += self._bad(dead, line_start, reason, None, raw_lines)
                rows += 1
                if keep_raw:
                    raw_lines.clear()
        return RowBatch(
            values,
            keys if key_idx is not None else None,
            lines,
            end,
            base + reader.line_num - 1,  # not the end mark's line
            len(block),
            rows,
            bad,
            dead,
        )

    def unsendable(
        self, line: int, value: str | bytes, max_bytes: int, topic_limit: str | None = None
    ) -> list[BadRow]:
        """A row whose message the producer refused as over ``message.max.bytes``: a bad
        row (``bad_rows`` applies; ``fail`` raises), its ``raw`` the message's start.

        ``topic_limit``: the topic setting that lowered ``message.max.bytes`` to
        ``max_bytes`` (e.g. ``"topic 'orders' max.message.bytes"``), if one did."""
        text = value if isinstance(value, str) else value.decode("utf-8", "replace")
        size = len(value if isinstance(value, bytes) else value.encode("utf-8", "replace"))
        dead: list[BadRow] = []
        if topic_limit is not None:
            reason = (
                f"its message of {size} bytes is over the {topic_limit} ({max_bytes}), "
                "which the broker would refuse: raise it (and message.max.bytes in "
                "producer_config when it is over 1000000)"
            )
        else:
            reason = (
                f"its message of {size} bytes is over the producer's message.max.bytes "
                f"({max_bytes}): raise it in producer_config (and the topic's "
                "max.message.bytes)"
            )
        self._bad(dead, line, reason, None, [text])
        return dead

    def _bad(
        self,
        dead: list[BadRow],
        line: int,
        reason: str,
        fields: list[str] | None,
        raw_lines: list[str],
    ) -> int:
        """Apply ``bad_rows`` to one bad record (``fail``: raise); 1, the bad rows it makes.

        ``raw_lines``: the physical lines of the record, kept when the record is
        dead-lettered.
        """
        if self._opts.bad_rows == "fail":
            raise BadRowError(f"{self._uri} line {line}: {reason} (bad_rows = 'fail')")
        if self._opts.bad_rows == "dead-letter":
            raw, truncated = raw_excerpt(raw_lines)
            # The fields too: a row of large fields made a DLQ message over Kafka's
            # limit, and that failed the whole object.
            kept, cut = fields_excerpt(fields)
            dead.append(BadRow(line, reason, kept, raw, truncated, cut))
        return 1

    def _key_index(self, columns: list[str]) -> int | None:
        name = self._opts.key_column
        if not name:
            return None
        if name not in columns:
            raise BadRowError(
                f"{self._uri}: key_column {name!r} is not a column (columns: {columns})"
            )
        return columns.index(name)


def _touches(bad_lines: set[int], first: int, last: int) -> bool:
    """Whether any undecodable line lies in [first, last] (and forget the older ones)."""
    hit = False
    for n in list(bad_lines):
        if n <= last:
            bad_lines.discard(n)
            hit = hit or n >= first
    return hit


def _bad_header(
    uri: str, encoding: str, text: str, block: bytes, block_start: int, block_end: int
) -> UndecodableContentError:
    """The error for a header row with undecodable bytes (column names must be text)."""
    first = next((i for i, c in enumerate(text) if "\udc80" <= c <= "\udcff"), 0)
    skipped = block_end - block_start - len(block)  # a UTF-8 BOM dropped from the block
    at = block_start + skipped + len(original_bytes(text[:first], encoding))
    return UndecodableContentError(f"{uri}: header row is not valid {encoding} at byte {at}")
