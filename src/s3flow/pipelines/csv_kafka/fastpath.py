"""The vectorised path: a block of one-line CSV records -> JSON values, with pyarrow.

Python's ``csv`` module costs about 3 us per 200-byte row, more than everything else
together; pyarrow's CSV reader (C++, releases the GIL) parses the same block in a
fraction of that, and the JSON objects are assembled column-wise
(``binary_join_element_wise``). The result must equal what the exact path
(:mod:`csv` + :class:`~s3flow.pipelines.csv_kafka.rows.RowEncoder`) gives, so a block is only
taken here when that is certain; otherwise :meth:`ArrowJsonBlocks.encode` returns
``None`` and the caller uses the exact path for the block:

* valid UTF-8, one record per physical line (no blank lines, no line breaks inside
  quotes, no lone CR: the record count equals the count of line feeds), every record
  with the expected number of columns;
* no control characters in a field other than tab (escaped here as ``\\t``);
* no field longer than the ``csv`` module's field limit (``csv.field_size_limit()``,
  128 KiB): the exact path makes such a record a bad row.
"""

from __future__ import annotations

import csv
import json
from array import array
from itertools import accumulate
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from s3flow.objects import count_byte
from s3flow.pipelines.csv_kafka.blocks import UTF8_BOM, count_controls

#: The system allocator: mimalloc (pyarrow's default) kept tens of MB of freed blocks
#: per thread here, which the memory bound of a streaming pipeline cannot afford.
_POOL = pa.system_memory_pool()
_NEEDS_ESCAPE = r'[\\"\x00-\x1f]'
_CONTROL = r"[\x00-\x08\x0a-\x1f]"


class ArrowJsonBlocks:
    """Encodes blocks of a CSV object with known columns (``None`` = use the exact path).

    ``encode`` may run in several threads at once.
    """

    def __init__(
        self,
        columns: list[str],
        *,
        delimiter: str,
        quotechar: str,
        key_index: int | None,
    ) -> None:
        self.columns = list(columns)
        self.key_index = key_index
        names = [f"c{i}" for i in range(len(columns))]  # header names may repeat
        self._read = pcsv.ReadOptions(column_names=names, use_threads=False, block_size=1 << 22)
        self._delimiter, self._quotechar = delimiter, quotechar
        self._convert = pcsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            null_values=[],
            check_utf8=True,
        )
        texts = [
            ("{" if i == 0 else '",') + json.dumps(c, ensure_ascii=False) + ':"'
            for i, c in enumerate(columns)
        ]
        scalars = _string_scalars([*texts, '"}', ""])
        self._prefixes = scalars[: len(columns)]
        self._suffix, self._sep = scalars[-2], scalars[-1]
        #: The bytes a JSON object adds to its values: the prefixes and the suffix.
        self._frame_bytes = sum(len(t.encode("utf-8")) for t in texts) + 2

    def encode(self, block: bytes, lines: int) -> tuple[list[bytes], list[Any] | None] | None:
        """(values, keys) of the ``lines`` records of ``block``, or ``None`` (exact path)."""
        if not block or block.startswith(UTF8_BOM):
            return None  # pyarrow drops a BOM the exact path keeps (and the raw check counts)
        has_cr = b"\r" in block  # memchr: the usual answer (no) costs nothing
        if has_cr and block.count(b"\r") != block.count(b"\r\n"):
            return None  # a lone CR is a line break to csv: line numbers would differ
        invalid: list[Any] = []

        def on_invalid(row: Any) -> str:
            invalid.append(row)
            return "skip"

        parse = pcsv.ParseOptions(
            delimiter=self._delimiter,
            quote_char=self._quotechar,
            double_quote=True,
            escape_char=False,
            newlines_in_values=True,
            ignore_empty_lines=True,
            invalid_row_handler=on_invalid,
        )
        try:
            table = pcsv.read_csv(
                pa.py_buffer(block),
                read_options=self._read,
                parse_options=parse,
                convert_options=self._convert,
                memory_pool=_POOL,
            )
        except (pa.ArrowInvalid, pa.ArrowException):
            return None
        if invalid or table.num_rows != lines:
            return None
        columns = [table.column(i) for i in range(len(self.columns))]
        joined = None
        if not has_cr and self._clean_raw(block, table, lines):
            joined = self._join(columns)
            if not self._clean_values(block, table, lines, joined):
                joined = None  # a quote in a value: escape below
        if joined is None:
            escaped = []
            for col in columns:
                if pc.any(pc.match_substring_regex(col, _NEEDS_ESCAPE, memory_pool=_POOL)).as_py():
                    if pc.any(pc.match_substring_regex(col, _CONTROL, memory_pool=_POOL)).as_py():
                        return None
                    col = pc.replace_substring(col, "\\", "\\\\", memory_pool=_POOL)
                    col = pc.replace_substring(col, '"', '\\"', memory_pool=_POOL)
                    col = pc.replace_substring(col, "\t", "\\t", memory_pool=_POOL)
                escaped.append(col)
            joined = self._join(escaped)
        limit = csv.field_size_limit()
        if len(block) > limit and _over_limit(joined, columns, limit):
            return None  # a field the csv module refuses: a bad row, as on the exact path
        values: list[bytes] = pc.cast(joined, pa.binary(), memory_pool=_POOL).to_pylist()
        keys = columns[self.key_index].to_pylist() if self.key_index is not None else None
        return values, keys

    def _join(self, columns: list[Any]) -> Any:
        """The JSON objects of the rows: prefix, value, prefix, value, ..., suffix."""
        parts: list[Any] = []
        for prefix, col in zip(self._prefixes, columns, strict=True):
            parts.append(prefix)
            parts.append(col)
        parts.append(self._suffix)
        return pc.binary_join_element_wise(*parts, self._sep, memory_pool=_POOL)

    def _clean(self, block: bytes, table: Any, lines: int) -> bool:
        """True when no value of ``block`` holds a character JSON must escape."""
        if not self._clean_raw(block, table, lines):
            return False
        columns = [table.column(i) for i in range(table.num_columns)]
        return self._clean_values(block, table, lines, self._join(columns))

    def _clean_raw(self, block: bytes, table: Any, lines: int) -> bool:
        """False when a value of ``block`` may hold a backslash or a control character.

        Decided on the raw block: no backslash, and no control byte but the line feeds
        (and, for a TSV, the delimiters). Rows are one line each, all with every column,
        no CR: checked before; so the line feeds are the ``lines`` records, less one
        without a final one.
        """
        if self._quotechar != '"' or b"\\" in block:
            return False
        newlines = lines if block.endswith(b"\n") else lines - 1
        delimiters = (table.num_columns - 1) * table.num_rows
        controls = newlines + (delimiters if ord(self._delimiter) < 32 else 0)  # TSV: tabs
        return count_controls(block) == controls

    def _clean_values(self, block: bytes, table: Any, lines: int, joined: Any) -> bool:
        """True when no value holds a quote (after :meth:`_clean_raw`): ``joined`` is final.

        Every raw quote either delimits a quoted field (it is then not in the value) or
        yields a value character (a doubled ``""`` or a literal quote inside an unquoted
        field), so the bytes the parse dropped - the raw length less the values, the
        delimiters and the line feeds - equal the number of raw quotes exactly when no
        value holds one. The values' length is the joined objects' less their frames.
        """
        newlines = lines if block.endswith(b"\n") else lines - 1
        delimiters = (table.num_columns - 1) * table.num_rows
        values = _data_bytes(joined) - self._frame_bytes * table.num_rows
        dropped = len(block) - values - delimiters - newlines
        return bool(dropped == count_byte(block, ord(self._quotechar)))


def _string_scalars(texts: list[str]) -> list[Any]:
    """Arrow string scalars of ``texts``, built from buffers.

    ``pa.scalar`` / ``pa.array`` of Python objects make pyarrow import pandas (its check
    for pandas objects: about 0.25 s, once per process, in the middle of the first block).
    """
    data = [t.encode("utf-8") for t in texts]
    offsets = array("i", [0, *accumulate(len(d) for d in data)])
    arr = pa.Array.from_buffers(
        pa.string(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
    )
    return [arr[i] for i in range(len(data))]


def _over_limit(joined: Any, columns: list[Any], limit: int) -> bool:
    """Whether a value of ``columns`` has more than ``limit`` characters.

    The csv module counts characters; a value is never longer than its row's JSON
    object (``joined``), so one length check of the objects settles the usual block.
    """
    if (pc.max(pc.binary_length(joined)).as_py() or 0) <= limit:
        return False
    return any((pc.max(pc.utf8_length(col)).as_py() or 0) > limit for col in columns)


def _data_bytes(joined: Any) -> int:
    """The bytes of all strings of a (chunked) string array, from its offsets."""
    chunks = joined.chunks if isinstance(joined, pa.ChunkedArray) else [joined]
    total = 0
    for chunk in chunks:
        if len(chunk):
            offsets = memoryview(chunk.buffers()[1]).cast("i")
            total += offsets[chunk.offset + len(chunk)] - offsets[chunk.offset]
    return total
