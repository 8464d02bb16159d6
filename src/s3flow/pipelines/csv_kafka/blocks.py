"""From decompressed bytes to blocks: runs of lines that end where a CSV record ends.

The path of one object::

    chunks (any size) --PieceSplitter--> pieces (~64 KB, each ending with b"\\n")
      --BlockCutter--> blocks (~512 KiB, ending where a record ends)

Pieces end at line breaks, so a piece decodes on its own in any ASCII-compatible
encoding. :class:`BlockCutter` groups pieces into blocks that end where a record ends
(:class:`RecordEnds` follows the quote state of ``csv.reader`` across pieces, or the
vectorised encoder vouches for a block): blocks are parsed on their own (:mod:`.rows`)
and a block's end is a safe place to resume.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, TypeVar

try:  # not a dependency: faster counts when it is installed (pandas, pyspark bring it)
    import numpy as np
except ImportError:  # pragma: no cover - the stdlib counts below
    np = None  # type: ignore[assignment]

from s3flow.errors import PermanentError
from s3flow.objects import count_byte

#: Pieces of about this size, each ending with a line break: what :class:`RecordEnds` reads.
#: 64 KiB: a block then ends within 64 KiB after BLOCK_BYTES (the session hands over
#: runs of >= 256 KiB of reads; the pieces keep the blocks, and so the transactions,
#: as they were with one 64 KiB read per piece).
PIECE_BYTES = 64 * 1024
#: Pieces are grouped into blocks of about this size (ending outside quotes): the unit of
#: parsing and of checkpoints. Below 1 MiB on purpose: the block, its numpy masks and
#: most of its Arrow buffers then stay under the 1 MiB mmap threshold the CLI and the
#: worker fix (``[worker] malloc_mmap_threshold_bytes``) and come from malloc's heap,
#: reused, instead of a fresh ``mmap`` each (page faults on every page: 1 MiB blocks
#: cost 1.6 instead of 0.95 us of prefetch-thread CPU per row under that setting,
#: 0.77 without it; measured 2026-11-30 on 300k benchmark rows).
BLOCK_BYTES = 512 * 1024
#: A block closes here even inside an (unbalanced) quote.
MAX_BLOCK_BYTES = 32 * 1024 * 1024
#: A "line" (bytes without a line break) longer than this is refused: memory stays bounded.
MAX_LINE_BYTES = 64 * 1024 * 1024
UTF8_BOM = b"\xef\xbb\xbf"

_S = TypeVar("_S", str, bytes)

log = logging.getLogger("s3flow.pipelines.csv_kafka")

#: (values, keys) of a block's records, as the vectorised encoder gives them.
Encoded = tuple[list[bytes], list[Any] | None]
#: Encodes a block of ``lines`` physical lines, or declines (``None``: the exact path).
#: An encoder used by :class:`BlockCutter` accepts a block only when each of its lines
#: is one whole record (so the block ends where a record ends).
BlockEncoder = Callable[[bytes, int], Encoded | None]
#: A block as the session's reader hands it on: (block, end offset, lines, encoded).
Block = tuple[bytes, int, int, Encoded | None]


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


_CONTROL = bytes(range(32))


def count_lines(block: bytes) -> int:
    """The physical lines of ``block`` (the last one may lack its line feed)."""
    return count_byte(block, 10) + (0 if block.endswith(b"\n") else 1)


def count_controls(data: bytes) -> int:
    """How many bytes of ``data`` are control characters (below 32)."""
    if np is not None:
        return int(np.count_nonzero(np.frombuffer(data, np.uint8) < 32))
    return len(data) - len(data.translate(None, _CONTROL))


#: Quote states of :class:`RecordEnds` (what ``csv`` is doing at a position).
_FIELD_START, _IN_FIELD, _QUOTED, _QUOTE_IN_QUOTED = 0, 1, 2, 3


class RecordEnds:
    """Tells whether a piece ends where ``csv.reader`` ends a record (a safe block end).

    Follows the quote rules of ``csv.reader`` (``doublequote=True``, ``strict=False``):
    a quote opens a quoted field only at the start of a field (start of a line or right
    after the delimiter) - elsewhere it is an ordinary character (``1,12" pipe``); inside
    a quoted field a doubled quote is a quote and a single one closes the field; the
    escape character, if any, makes the next character ordinary (an escaped line break
    continues the record). Feed the pieces of an object in order, each ending with a
    line break (except the last).

    The common case (UTF-8, no escape character) works on bytes: ``split`` at the quotes
    and one step per quote, about 0.1 us per quoted field. Other encodings (whose
    multi-byte characters may contain ASCII bytes) and escape characters work on the
    decoded text.
    """

    def __init__(
        self,
        *,
        delimiter: str = ",",
        quotechar: str = '"',
        escapechar: str | None = None,
        encoding: str = "utf-8",
    ) -> None:
        self._encoding = encoding
        self._escape = escapechar
        self._bytes = (
            encoding == "utf-8" and escapechar is None and (delimiter + quotechar).isascii()
        )
        seps = (delimiter, "\n", "\r")
        self._seps_s = frozenset(seps)
        self._quote_s = quotechar
        self._seps_b = frozenset(ord(c) for c in seps if c.isascii())
        self._quote_b = quotechar.encode("utf-8")
        self._special = re.compile("[" + re.escape(quotechar + (escapechar or "")) + "]")
        self._state = _FIELD_START

    @property
    def inside(self) -> bool:
        """Whether the last piece ended inside a record (not a record boundary)."""
        return self._state != _FIELD_START

    def reset(self) -> None:
        """Back to the start of a record (where a resumed object starts)."""
        self._state = _FIELD_START

    def feed(self, piece: bytes) -> bool:
        """Advance over ``piece``; true when a record ends at its end."""
        if self._bytes:
            if self._quote_b in piece:
                self._state = _scan_quotes(piece, self._state, self._quote_b, self._seps_b)
            elif self._state != _QUOTED:
                self._state = _after_plain(piece, self._seps_b)
        else:
            text = piece.decode(self._encoding, "surrogateescape")
            if self._escape is None:
                self._state = _scan_quotes(text, self._state, self._quote_s, self._seps_s)
            else:
                self._state = _scan_escaped(
                    text, self._state, self._special, self._quote_s, self._escape, self._seps_s
                )
        return self._state == _FIELD_START


def _after_plain(piece: bytes, seps: frozenset[int]) -> int:
    """The state after a piece without quotes, read outside a quoted field."""
    return _FIELD_START if piece and piece[-1] in seps else _IN_FIELD


def _scan_quotes(piece: _S, state: int, quote: _S, seps: frozenset[Any]) -> int:
    """The state after ``piece`` (no escape character): one step per quote character."""
    parts = piece.split(quote)
    first = parts[0]
    if first and state != _QUOTED:
        state = _FIELD_START if first[-1] in seps else _IN_FIELD
    for part in islice(parts, 1, None):
        # the quote before ``part``
        if state == _FIELD_START:
            state = _QUOTED  # opens a quoted field
        elif state == _QUOTED:
            state = _QUOTE_IN_QUOTED  # closes it, or the first of a doubled quote
        elif state == _QUOTE_IN_QUOTED:
            state = _QUOTED  # the second of a doubled quote
        # (in an unquoted field a quote is an ordinary character)
        if part and state != _QUOTED:
            state = _FIELD_START if part[-1] in seps else _IN_FIELD
    return _IN_FIELD if state == _QUOTE_IN_QUOTED else state


def _scan_escaped(
    text: str, state: int, special: re.Pattern[str], quote: str, escape: str, seps: frozenset[str]
) -> int:
    """The state after ``text`` with an escape character: one step per quote or escape."""
    pos, n = 0, len(text)
    while True:
        m = special.search(text, pos)
        if m is None:
            break
        j = m.start()
        c = text[j]
        if state == _QUOTED:
            if c == escape:
                pos = j + 2  # an escaped character, whatever it is
            elif text[j + 1 : j + 2] == quote:
                pos = j + 2  # a doubled quote
            elif j + 1 < n and text[j + 1] not in seps:
                state, pos = _IN_FIELD, j + 2  # closed; the next character is ordinary
            else:
                state, pos = _IN_FIELD, j + 1  # closed before a delimiter or line break
            continue
        at_start = state == _FIELD_START if j == pos else text[j - 1] in seps
        if c == quote and at_start:
            state, pos = _QUOTED, j + 1
        elif c == escape:
            state, pos = _IN_FIELD, j + 2  # an escaped line break continues the record
        else:
            state, pos = _IN_FIELD, j + 1  # a quote inside an unquoted field
    if state == _QUOTED:
        return state
    if pos < n:
        return _FIELD_START if text[n - 1] in seps else _IN_FIELD
    return state if pos == n else _IN_FIELD


class BlockCutter:
    """Groups line-aligned pieces into blocks of about ``block_bytes`` ending at record ends.

    Records then never span blocks, and a block's end is a safe checkpoint. A block
    closes at the first piece end after ``block_bytes`` where a record ends, found in
    one of two ways:

    * **vouched for by the encoder**: while :attr:`encoder` is set (the vectorised path,
      from the block after the header on), the block is cut at the first piece end after
      ``block_bytes`` without a quote scan and encoded at once. The encoder accepts a
      block only when each of its lines is one whole record
      (:class:`~s3flow.pipelines.csv_kafka.fastpath.ArrowJsonBlocks`: as many records as
      lines, no line feed inside a value), so an accepted block ends where a record ends
      - the same cut the scan would have made. A declined block is scanned; if it does
      not end at a record end (a quoted line break crosses the cut), it grows piece by
      piece, scanned, like below, and takes the exact path.
    * **scanned**: :class:`RecordEnds` follows ``csv.reader``'s quote state over every
      piece (about 0.4 us per row with a quoted field, in Python). A block also closes
      at :data:`MAX_BLOCK_BYTES` inside a record (a quoted field left open to the end of
      the object cannot make memory grow without bound); that record is then split.
    """

    def __init__(self, ends: RecordEnds, block_bytes: int = BLOCK_BYTES, label: str = "") -> None:
        self.ends = ends
        self.target = max(block_bytes, 1)
        self.label = label
        #: The vectorised encoder (set from another thread once the columns are known).
        self.encoder: BlockEncoder | None = None

    def blocks(self, pieces: Iterable[tuple[bytes, int]]) -> Iterator[Block]:
        """The blocks of ``pieces`` ((piece, object offset after it) pairs), encoded when
        the encoder took them."""
        ends, target = self.ends, self.target
        buf: list[bytes] = []
        size = pos = 0
        trusted = declined = False
        for piece, pos in pieces:
            if not buf:
                # A block starts at a record start: the encoder may vouch for its end.
                trusted, declined = self.encoder is not None, False
            buf.append(piece)
            size += len(piece)
            if trusted:
                if size < target:
                    continue
                block = b"".join(buf)
                lines = count_lines(block)
                encoder = self.encoder
                encoded = encoder(block, lines) if encoder is not None else None
                if encoded is None:
                    at_end = True
                    for part in buf:
                        at_end = ends.feed(part)
                    if not at_end:  # a record goes on after the cut: scan from here
                        trusted, declined = False, True
                        continue
                yield block, pos, lines, encoded
                buf, size = [], 0
                continue
            at_end = ends.feed(piece)
            if (size >= target and at_end) or size >= MAX_BLOCK_BYTES:
                if not at_end:
                    log.warning(
                        "%s: a record longer than %d MiB (an unclosed quote?) is split at byte %d",
                        self.label,
                        MAX_BLOCK_BYTES // (1024 * 1024),
                        pos,
                    )
                    ends.reset()
                yield self._close(buf, pos, declined)
                buf, size = [], 0
        if buf:
            yield self._close(buf, pos, declined)

    def _close(self, buf: list[bytes], pos: int, declined: bool) -> Block:
        block = b"".join(buf)
        lines = count_lines(block)
        encoder = None if declined else self.encoder
        return block, pos, lines, encoder(block, lines) if encoder is not None else None
