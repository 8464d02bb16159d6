"""From decompressed bytes to CSV records to message values.

The path of one object::

    chunks (any size) --PieceSplitter--> pieces (~256 KB, each ending with b"\\n")
      --decode_piece--> text --LineFeed--> lines --csv.reader--> records --RowEncoder--> values

Pieces end at line breaks, so a piece decodes on its own in any ASCII-compatible
encoding, and the byte offset of a piece's end is a safe place to resume *when a
record ends there too*. The session groups pieces into blocks that end outside quotes
(record boundaries) and checkpoints at block ends; :class:`LineFeed` also reports
whether a record ended a piece (``at_piece_end``) for readers spanning several pieces.
"""

from __future__ import annotations

import io
import json
import json.encoder
from collections.abc import Callable, Iterator
from itertools import islice

from s3flow.errors import PermanentError

PIECE_BYTES = 256 * 1024
#: Pieces are grouped into blocks of about this size (ending outside quotes): the unit of
#: parsing and of checkpoints.
BLOCK_BYTES = 1024 * 1024
#: A block closes here even inside an (unbalanced) quote.
MAX_BLOCK_BYTES = 32 * 1024 * 1024
#: A "line" (bytes without a line break) longer than this is refused: memory stays bounded.
MAX_LINE_BYTES = 64 * 1024 * 1024
UTF8_BOM = b"\xef\xbb\xbf"


class LineTooLongError(PermanentError):
    """A single line is longer than :data:`MAX_LINE_BYTES`."""


class PieceSplitter:
    """Cuts a byte stream into pieces of about ``piece_bytes`` that end with ``b"\\n"``.

    The last piece (from :meth:`finish`) may lack the final line break.
    """

    def __init__(self, piece_bytes: int = PIECE_BYTES, max_line_bytes: int = MAX_LINE_BYTES):
        self._size = piece_bytes
        self._max_line = max_line_bytes
        self._rest = b""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """Yield the complete pieces ``chunk`` finishes (the remainder is kept)."""
        data = self._rest + chunk if self._rest else chunk
        size, start, n = self._size, 0, len(data)
        while n - start > size:
            cut = data.find(b"\n", start + size - 1)
            if cut < 0:
                break
            yield data[start : cut + 1]
            start = cut + 1
        last = data.rfind(b"\n", start)
        if last >= 0:
            yield data[start : last + 1]
            start = last + 1
        self._rest = data[start:]
        if len(self._rest) > self._max_line:
            raise LineTooLongError(
                f"a line longer than {self._max_line // (1024 * 1024)} MB (no line break)"
            )

    def finish(self) -> Iterator[bytes]:
        """Yield what is left (a last line without a line break)."""
        if self._rest:
            rest, self._rest = self._rest, b""
            yield rest


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


class LineFeed:
    """The line source of the one ``csv.reader`` of an object.

    ``next_piece()`` returns ``(text, end_offset, bad_line_indexes)`` or ``None`` at the
    end. After the reader returns a record, ``at_piece_end`` is true when that record's
    last line was the last line of a piece: then ``piece_end_offset`` (the byte offset
    right after the piece) is where the next record starts. ``lines_read`` counts the
    lines handed out (what ``csv.reader.line_num`` counts); ``bad_lines`` holds the
    1-based numbers of undecodable lines not yet handled.
    With ``keep_raw`` the lines of the current record are collected in ``raw``.
    """

    def __init__(
        self,
        next_piece: Callable[[], tuple[str, int, list[int]] | None],
        *,
        keep_raw: bool = False,
        start_offset: int = 0,
        start_line: int = 0,
    ) -> None:
        self._next_piece = next_piece
        self.keep_raw = keep_raw
        self.at_piece_end = False
        self.piece_end_offset = start_offset
        self.lines_read = start_line
        self.bad_lines: set[int] = set()
        self.raw: list[str] = []

    def __iter__(self) -> Iterator[str]:
        return self._raw_lines() if self.keep_raw else self._lines()

    def _pieces(self) -> Iterator[tuple[list[str], int]]:
        while True:
            item = self._next_piece()
            if item is None:
                return
            text, end_offset, bad = item
            lines = io.StringIO(text, newline="").readlines()
            if not lines:
                continue
            if bad:
                self.bad_lines.update(self.lines_read + i + 1 for i in bad)
            yield lines, end_offset

    def _lines(self) -> Iterator[str]:
        for lines, end_offset in self._pieces():
            n = len(lines)
            self.at_piece_end = False
            if n > 1:
                yield from islice(lines, n - 1)
            self.lines_read += n
            self.piece_end_offset = end_offset
            self.at_piece_end = True
            yield lines[-1]
        self.at_piece_end = True

    def _raw_lines(self) -> Iterator[str]:
        raw = self.raw
        for lines, end_offset in self._pieces():
            n = len(lines)
            self.at_piece_end = False
            for line in islice(lines, n - 1):
                raw.append(line)
                yield line
            self.lines_read += n
            self.piece_end_offset = end_offset
            self.at_piece_end = True
            raw.append(lines[-1])
            yield lines[-1]
        self.at_piece_end = True


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
