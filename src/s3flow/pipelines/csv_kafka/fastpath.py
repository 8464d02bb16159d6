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
* no control characters in a field other than tab (escaped here as ``\\t``).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

#: The system allocator: mimalloc (pyarrow's default) kept tens of MB of freed blocks
#: per thread here, which the memory bound of a streaming pipeline cannot afford.
_POOL = pa.system_memory_pool()
_NEEDS_ESCAPE = r'[\\"\x00-\x1f]'
_CONTROL = r"[\x00-\x08\x0a-\x1f]"
_CONTROL_BYTES = bytes(range(32))


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
        self._prefixes = [
            pa.scalar(("{" if i == 0 else '",') + json.dumps(c, ensure_ascii=False) + ':"')
            for i, c in enumerate(columns)
        ]
        self._suffix = pa.scalar('"}')

    def encode(self, block: bytes, lines: int) -> tuple[list[bytes], list[Any] | None] | None:
        """(values, keys) of the ``lines`` records of ``block``, or ``None`` (exact path)."""
        if not block:
            return None
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
        clean = not has_cr and self._clean(block, table, lines)
        parts: list[Any] = []
        for i in range(len(self.columns)):
            col = table.column(i)
            if clean:
                pass  # no value holds a character JSON escapes: nothing to check
            elif pc.any(pc.match_substring_regex(col, _NEEDS_ESCAPE, memory_pool=_POOL)).as_py():
                if pc.any(pc.match_substring_regex(col, _CONTROL, memory_pool=_POOL)).as_py():
                    return None
                col = pc.replace_substring(col, "\\", "\\\\", memory_pool=_POOL)
                col = pc.replace_substring(col, '"', '\\"', memory_pool=_POOL)
                col = pc.replace_substring(col, "\t", "\\t", memory_pool=_POOL)
            parts.append(self._prefixes[i])
            parts.append(col)
        parts.append(self._suffix)
        joined = pc.binary_join_element_wise(*parts, "", memory_pool=_POOL)
        values: list[bytes] = pc.cast(joined, pa.binary(), memory_pool=_POOL).to_pylist()
        keys = table.column(self.key_index).to_pylist() if self.key_index is not None else None
        return values, keys

    def _clean(self, block: bytes, table: Any, lines: int) -> bool:
        """True when no value of ``block`` holds a character JSON must escape.

        Decided on the raw block, which is much cheaper than a regex per column:
        no backslash; no control byte but the line feeds; and no quote character
        inside a value. For the last: every raw quote either delimits a quoted
        field (it is then not in the value) or yields a value character (a doubled
        ``""`` or a literal quote inside an unquoted field), so the bytes the parse
        dropped - the raw length less the values, the delimiters and the line
        feeds - equal the number of raw quotes exactly when no value holds one.
        (Rows are one line each, all with every column, no CR: checked before; so
        the line feeds are the ``lines`` records, less one without a final one.)
        """
        if self._quotechar != '"' or b"\\" in block:
            return False
        newlines = lines if block.endswith(b"\n") else lines - 1
        delimiters = (table.num_columns - 1) * table.num_rows
        controls = newlines + (delimiters if ord(self._delimiter) < 32 else 0)  # TSV: tabs
        if len(block) - len(block.translate(None, _CONTROL_BYTES)) != controls:
            return False  # a tab or another control character in a value
        values = sum(
            pc.sum(pc.binary_length(table.column(i), memory_pool=_POOL)).as_py() or 0
            for i in range(table.num_columns)
        )
        dropped = len(block) - values - delimiters - newlines
        return bool(dropped == block.count(b'"'))
