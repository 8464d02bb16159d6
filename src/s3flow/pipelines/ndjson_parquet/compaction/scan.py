"""Stage 1 of a compaction, in a worker process: scan one NDJSON input file.

:func:`scan_file` streams one input file (decompressing by magic bytes), cuts
it into line-aligned units of at most ``unit_mb``, parses each unit with
pyarrow's JSON reader, applies the malformed-line policy, and (``local``)
spills the unit's Arrow table to a scratch file. It returns each unit's
schema, row count and size. :func:`scan_units` is the same read, for
:mod:`.write` to scan a file again where no spill is at hand (``spark``).
See :mod:`s3flow.pipelines.ndjson_parquet.compaction.job` for the stages.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

try:  # not a dependency: the depth check finds long lines faster with it
    import numpy as np
except ImportError:  # pragma: no cover - the stdlib split below
    np = None  # type: ignore[assignment]

from s3flow.errors import CorruptDataError, Disposition, TooLargeError, translate_aws_error
from s3flow.objects import MAGIC_BYTES, detect_encoding, make_decoder, too_large
from s3flow.pipelines.ndjson_parquet.compaction.manifest import InputFile
from s3flow.pipelines.ndjson_parquet.compaction.schema import (
    cast_table,
    hint_fits,
    hint_schema,
    integral_as_int,
    strings_for_timestamps,
    unify_schemas,
)
from s3flow.pipelines.ndjson_parquet.compaction.tasks import (
    MIB,
    FileScan,
    FileTask,
    InputChangedError,
    MalformedDataError,
    Storage,
    UnitInfo,
    s3_client,
    scratch,
)

_READ_BYTES = 16 * MIB  # a typical 3-4 MB file arrives in one read (no copies to join)
_SAMPLES = 5  # malformed-line examples kept per file
#: Lines that may nest deeper than this are not given to pyarrow's JSON reader: its time
#: grows with the square of the depth (0.2 s for one line 1,000 levels deep, 4 s at
#: 4,000, measured) and about 20,000 levels crash the process. ``json`` reads them
#: (a RecursionError past about 1,000 levels: a malformed line).
_READER_MAX_NESTING = 500
#: Bytes kept by :func:`_may_nest_deeper`: brackets and line feeds.
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}\n")
#: Most levels of objects and arrays a field may nest. Arrow's IPC reader (the spill
#: files between the two stages) stops at 64 ("Max recursion depth reached"), so a
#: deeper record failed its whole manifest, on every retry; it is a malformed line.
MAX_NESTING = 60
#: Most levels of a field's Parquet schema: Parquet readers stop at 100 levels of a
#: schema ("Parquet schema too deeply nested", pyarrow, with the root and the value's
#: own), and Parquet stores an array as two levels (the list and its repeated group),
#: an object as one: 49 arrays in arrays, or 98 objects. A deeper record made a part
#: that its own read back refused, failing the manifest: it is a malformed line.
MAX_PARQUET_LEVELS = 98


# --- reading input --------------------------------------------------------------


def _raw_chunks(storage: Storage, f: InputFile) -> Iterator[bytes]:
    if storage.kind == "local":
        path = Path(storage.root or ".", f.bucket, f.key)
        try:
            fh = path.open("rb")
        except FileNotFoundError as exc:
            raise InputChangedError(f"input {path} does not exist") from exc
        with fh:
            while chunk := fh.read(_READ_BYTES):
                yield chunk
        return
    client = s3_client(storage)
    kwargs: dict[str, Any] = {"Bucket": f.bucket, "Key": f.key}
    if f.version_id:
        kwargs["VersionId"] = f.version_id
    elif f.etag:
        kwargs["IfMatch"] = f'"{f.etag}"'
    try:
        body = client.get_object(**kwargs)["Body"]
    except Exception as exc:
        err = translate_aws_error(exc, f"GetObject {f.uri()}")
        if err.disposition is Disposition.SKIP or getattr(err, "code", None) in (
            "PreconditionFailed",
            "412",
        ):
            raise InputChangedError(
                f"input {f.uri()} is gone or changed since the manifest was sealed: {err}"
            ) from exc
        raise err from exc
    try:
        while True:
            try:
                chunk = body.read(_READ_BYTES)
            except Exception as exc:
                raise translate_aws_error(exc, f"GetObject {f.uri()} (body)") from exc
            if not chunk:
                return
            yield chunk
    finally:
        body.close()


@dataclass
class _Unit:
    index: int
    path: Path | None  # a scratch file, or None when the unit is in ``data``
    size: int
    first_line: int  # number of lines before this unit in the file
    data: bytes = b""

    def source(self) -> Any:
        """What the JSON reader reads: the scratch file's path, or the bytes."""
        return str(self.path) if self.path is not None else self.data

    def read_bytes(self) -> bytes:
        """The unit's NDJSON."""
        return self.path.read_bytes() if self.path is not None else self.data


class _Splitter:
    """Decompress a file's chunks into line-aligned unit files of at most ``unit_bytes``.

    A unit is cut at the last newline of the piece that reaches ``unit_bytes``
    (a unit holds whole lines; one longer line makes a longer unit).
    """

    def __init__(self, task: FileTask) -> None:
        self.task = task
        self.compressed = 0
        self.uncompressed = 0
        self.encoding = "identity"
        self._decompressed = 0
        self._dir = scratch(task.scratch_dir)

    def _new_file(self, n: int) -> tuple[Path, Any]:
        fd, name = tempfile.mkstemp(
            prefix=f"in-{self.task.index:06d}-{n:04d}-", suffix=".ndjson", dir=self._dir
        )
        return Path(name), os.fdopen(fd, "wb")

    def _pieces(self) -> Iterator[bytes]:
        """The decompressed bytes, without a UTF-8 BOM at the start of the file (the
        builder ignores one too; anywhere else it makes its line malformed)."""
        pieces = self._decoded()
        head = b""
        for piece in pieces:
            head = head + piece if head else piece
            if len(head) >= len(codecs.BOM_UTF8):
                break
        if head.startswith(codecs.BOM_UTF8):
            self.uncompressed += len(codecs.BOM_UTF8)
            head = head[len(codecs.BOM_UTF8) :]
        if head:
            yield head
        yield from pieces

    def _decoded(self) -> Iterator[bytes]:
        t = self.task
        decoder = None
        head = b""
        for raw in _raw_chunks(t.storage, t.file):
            self.compressed += len(raw)
            if decoder is None:
                head += raw
                if len(head) < MAGIC_BYTES:
                    continue
                raw, head = head, b""
                self.encoding = detect_encoding(raw[:MAGIC_BYTES], None, t.file.key)
                decoder = make_decoder(self.encoding)
            yield from self._limited(decoder.feed(raw))
        if decoder is None and head:
            self.encoding = detect_encoding(head[:MAGIC_BYTES], None, t.file.key)
            decoder = make_decoder(self.encoding)
            yield from self._limited(decoder.feed(head))
        if decoder is not None:
            decoder.finish()

    def _limited(self, pieces: Iterable[bytes]) -> Iterator[bytes]:
        """``pieces``, stopped (TooLargeError) once a compressed file decompresses past
        ``max_uncompressed_bytes``, as every s3flow read is."""
        limit = self.task.max_uncompressed_bytes
        if limit is None or self.encoding == "identity":
            yield from pieces
            return
        for piece in pieces:
            self._decompressed += len(piece)
            if self._decompressed > limit:
                raise too_large(self.task.file.uri(), self.encoding, self.compressed, limit)
            yield piece

    def units(self) -> Iterator[_Unit]:
        """Yield each unit (its scratch file is deleted when the next one is produced).

        A file smaller than ``unit_bytes`` (the usual 3-4 MB) stays in memory
        and is one unit; a bigger one goes to scratch files, cut at newlines.
        """
        limit = self.task.unit_bytes
        pieces = self._pieces()
        held: list[bytes] = []
        size = 0
        for piece in pieces:
            self.uncompressed += len(piece)
            held.append(piece)
            size += len(piece)
            if size >= limit:
                yield from self._file_units(held, pieces)
                return
        if size:
            data = b"".join(held)
            held.clear()
            yield _Unit(0, None, size, 0, data)

    def _file_units(self, held: list[bytes], rest: Iterator[bytes]) -> Iterator[_Unit]:
        limit = self.task.unit_bytes
        n = 0
        newlines = 0  # in units already yielded
        unit_newlines = 0
        size = 0
        path, out = self._new_file(n)

        def more() -> Iterator[bytes]:
            yield from held
            held.clear()
            for piece in rest:
                self.uncompressed += len(piece)
                yield piece

        try:
            for piece in more():
                while size + len(piece) >= limit:
                    # Cut at the last newline that keeps the unit within the limit,
                    # else after the first line (a line longer than the limit).
                    cut = piece.rfind(b"\n", 0, max(0, limit - size))
                    if cut < 0:
                        cut = piece.find(b"\n", max(0, limit - size))
                    if cut < 0:
                        break
                    head, piece = piece[: cut + 1], piece[cut + 1 :]
                    out.write(head)
                    out.close()
                    unit_newlines += head.count(b"\n")
                    yield _Unit(n, path, size + len(head), newlines)
                    newlines += unit_newlines
                    path.unlink(missing_ok=True)
                    n += 1
                    path, out = self._new_file(n)
                    size, unit_newlines = 0, 0
                if piece:
                    out.write(piece)
                    size += len(piece)
                    unit_newlines += piece.count(b"\n")
            out.close()
            if size:
                yield _Unit(n, path, size, newlines)
        finally:
            out.close()
            path.unlink(missing_ok=True)


# --- parsing ------------------------------------------------------------------

_HINTS: dict[str, pa.Schema] = {}
_HINTS_MAX = 16
# RecursionError: pyarrow reads records nested thousands of levels deep, and the
# schema's own (recursive) checks then give up; the slow path finds those lines.
_ARROW_ERRORS = (pa.ArrowException, UnicodeDecodeError, RecursionError)


def _read_json(src: Any, schema: pa.Schema | None, block: int) -> pa.Table:
    if schema is None:
        po = pj.ParseOptions()
    else:
        po = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
    ro = pj.ReadOptions(use_threads=False, block_size=block)
    if isinstance(src, bytes):
        src = pa.BufferReader(src)
    return pj.read_json(src, read_options=ro, parse_options=po)


def _read(src: Any, schema: pa.Schema | None, block: int) -> pa.Table:
    """pyarrow's read, checked: an invalid table is read again with its own schema.

    pyarrow (26) returns an invalid table, without an error, for a list whose first
    value is null while the list's item type is not known yet (``[null, 1]``,
    ``[null, "x"]``, ``[null, null]``, ``[[null]]``): the null is dropped from the
    values and the offsets span more values than there are; writing it fails the
    manifest. ``validate()`` (not ``full``: it checks the offsets' ends, per column,
    not per value) finds that. Read with the inferred schema given, the types are
    known from the start and the nulls kept, except in a column of type null: its
    nulls are read as booleans (all null) and cast back. A table still invalid
    raises ArrowInvalid, as a read pyarrow refuses: the slow path reads the lines.
    """
    table = _read_json(src, schema, block)
    try:
        table.validate()
    except pa.ArrowInvalid:
        explicit = pa.schema([f.with_type(_no_null_type(f.type)) for f in table.schema])
        table = cast_table(_read_json(src, explicit, block), table.schema)
        table.validate()
    return table


def _no_null_type(t: pa.DataType) -> pa.DataType:
    """``t`` with type null (at any depth) as bool."""
    if pa.types.is_null(t):
        return pa.bool_()
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_no_null_type(f.type)) for f in t])
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_no_null_type(t.value_type)))
    return t


def _read_fixed(src: Any, schema: pa.Schema | None, block: int) -> pa.Table:
    """Read; if pyarrow inferred timestamps, read again keeping them as strings."""
    table = _read(src, schema, block)
    fixed = strings_for_timestamps(table.schema)
    if fixed is not None:
        table = _read(src, fixed, block)
    return table


def _block_for(size: int) -> int:
    return max(MIB, size + 1024)  # one block per unit: no line straddles a block


@dataclass
class _Parsed:
    table: pa.Table | None
    malformed: int = 0
    samples: list[str] = field(default_factory=list)
    quarantine: str | None = None


def _parse_unit(task: FileTask, unit: _Unit) -> _Parsed:
    """Read the unit in one pyarrow call, or (a line pyarrow must not or cannot read
    as it stands) take the slow path, :func:`_parse_slowly`."""
    if not _is_utf8(unit):
        # pyarrow does not validate UTF-8 inside strings: it would store the bytes
        # as they are, and one bad byte makes the whole Parquet part unreadable.
        return _parse_slowly(task, unit)
    if _may_nest_deeper(unit, _READER_MAX_NESTING):
        return _parse_slowly(task, unit)
    block = _block_for(unit.size)
    src = unit.source()
    hint = _HINTS.get(task.hint_key) if task.hint_key else None
    if hint is not None and not hint_fits(hint, _first_record(unit)):
        hint = None  # the hinted read could order (or type) columns differently
    table = None
    if hint is not None:
        try:
            table = _read_fixed(src, hint, block)
        except _ARROW_ERRORS:
            table = None
    if table is None:
        try:
            table = _read_fixed(src, None, block)
        except _ARROW_ERRORS:
            return _parse_slowly(task, unit)
    if not _one_object_per_line(unit, table.num_rows):
        return _parse_slowly(task, unit)  # finds the lines holding no or several values
    if _beyond_int64(table) and _has_big_integer(unit):
        # pyarrow read an integer beyond int64 as a double (losing digits, and
        # widening every integer of its column): such a value is kept as text.
        return _parse_slowly(task, unit)
    if any(_too_deep_type(f.type) for f in table.schema):
        return _parse_slowly(task, unit)  # finds the lines nested too deeply
    _remember_hint(task, table)
    return _Parsed(table)


# --- cheap checks of a unit's bytes (C speed; no Python objects per line) ---------

#: Bytes a check looks at at once (cut at a newline): a UTF-8 check decodes a piece
#: to a str, up to four times its size, so a 64 MiB unit is never decoded whole.
_CHECK_BYTES = MIB
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# An integer literal that may be beyond int64: 20 or more digits, or 19 starting
# with 9 (int64 ends at 9223372036854775807), not part of a fraction, exponent or
# word. pyarrow's RE2 (linear, C++) looks for one; Python's ``re`` (much slower)
# then checks the values, only where RE2 found a candidate. A match inside a
# string is possible: the slow path, which parses every line with ``json``, decides.
_BIG_INT_RE2 = r"(?:^|[^\w.+-])-?(?:\d{20,}|9\d{18})(?:$|[^\w.])"
_BIG_INT = re.compile(rb"(?<![\w.+-])-?\d{19,}(?![\w.])")


def _line_chunks(unit: _Unit) -> Iterator[bytes]:
    """The unit's bytes in pieces of about ``_CHECK_BYTES`` that end at a newline (or
    the unit's end; a longer line is one longer piece)."""
    if unit.path is None:
        data, start = unit.data, 0
        while start < len(data):
            end = start + _CHECK_BYTES
            if end < len(data):
                cut = data.rfind(b"\n", start, end)
                end = cut + 1 if cut >= start else (data.find(b"\n", end) + 1 or len(data))
            yield data[start:end]
            start = end
        return
    rest = b""
    with open(unit.path, "rb") as fh:
        while block := fh.read(_CHECK_BYTES):
            block = rest + block
            cut = block.rfind(b"\n") + 1
            rest = block[cut:]
            if cut:
                yield block[:cut]
    if rest:
        yield rest


def _blob(chunk: bytes, type: pa.DataType) -> pa.Array:
    """``chunk`` as a one-value array of ``type`` (no copy, no validation)."""
    offsets = pa.array([0, len(chunk)], pa.int64()).buffers()[1]
    return pa.Array.from_buffers(type, 1, [None, offsets, pa.py_buffer(chunk)])


def _one_object_per_line(unit: _Unit, rows: int) -> bool:
    """Whether each non-blank line of the (UTF-8) unit holds one value, given that
    pyarrow read ``rows`` values from it.

    pyarrow does not frame by line: it reads ``{"a":1}{"a":2}`` as two rows, a
    lone CR as whitespace, an object spread over lines as one row. When every
    non-blank line starts with ``{`` and ends with ``}``, no value spans lines
    (a string holds no raw newline, and inside one value ``}`` is never followed
    by ``{``), so each line holds at least one: exactly one when there are as
    many lines as rows.
    """
    lines = 0
    for chunk in _line_chunks(unit):
        split = pc.split_pattern(_blob(chunk, pa.large_string()), "\n")[0].values
        trimmed = pc.ascii_trim(split, " \t\r")
        filled = pc.filter(trimmed, pc.greater(pc.binary_length(trimmed), 0))
        ends = pc.and_(pc.starts_with(filled, "{"), pc.ends_with(filled, "}"))
        if not pc.all(ends).as_py():
            return False
        lines += len(filled)
    return lines == rows


def _is_utf8(unit: _Unit) -> bool:
    """Whether the unit's bytes are valid UTF-8 (a newline never splits a character)."""
    for chunk in _line_chunks(unit):
        if chunk.isascii():
            continue
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


def _float_arrays(arr: pa.Array) -> Iterator[pa.Array]:
    t = arr.type
    if pa.types.is_floating(t):
        yield arr
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        yield from _float_arrays(arr.flatten())
    elif pa.types.is_struct(t):
        for child in arr.flatten():
            yield from _float_arrays(child)


def _beyond_int64(table: pa.Table) -> bool:
    """Whether a double (at any depth) is outside int64's range: the only way an
    integer literal beyond int64 can show in a table pyarrow read."""
    for column in table.columns:
        for chunk in column.chunks:
            for arr in _float_arrays(chunk):
                bounds = pc.min_max(arr)
                lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
                if hi is not None and (hi >= 2**63 or lo <= _INT64_MIN):
                    return True
    return False


def _is_big(digits: bytes) -> bool:
    n = len(digits.lstrip(b"-"))
    return n > 19 or not _INT64_MIN <= int(digits) <= _INT64_MAX


def _has_big_integer(unit: _Unit) -> bool:
    """Whether the unit holds an integer literal beyond int64 (or text that looks so)."""
    for chunk in _line_chunks(unit):
        if not pc.match_substring_regex(_blob(chunk, pa.large_binary()), _BIG_INT_RE2)[0].as_py():
            continue
        if any(_is_big(m.group()) for m in _BIG_INT.finditer(chunk)):
            return True
    return False


def _first_record(unit: _Unit) -> Any:
    """The unit's first non-blank line parsed as JSON (None if it does not parse)."""
    if unit.path is None:
        head = unit.data[: 1024 * 1024]
    else:
        with open(unit.path, "rb") as fh:
            head = fh.read(1024 * 1024)
    for line in head.split(b"\n"):
        if line.strip():
            try:
                first = json.loads(line)
            except (ValueError, RecursionError):
                return None
            # too deep: its lines go the slow way (and a hint's check need not recurse)
            return first if isinstance(first, dict) and _too_deep_record(first) is None else None
    return None


def _remember_hint(task: FileTask, table: pa.Table) -> None:
    if task.hint_key is None:
        return
    _HINTS.pop(task.hint_key, None)
    _HINTS[task.hint_key] = hint_schema(table.schema)
    while len(_HINTS) > _HINTS_MAX:
        _HINTS.pop(next(iter(_HINTS)))


# --- the slow path: every line through ``json`` ---------------------------------

# A value's type as pyarrow's JSON reader infers it: a scalar kind, ("l", item)
# for a list, ("d", ((key, type), ...)) for an object (keys in order).
_Sig = Any
_NULL, _BOOL, _INT, _FLOAT, _STR = "null", "bool", "int", "float", "str"
_NUMBERS = (_INT, _FLOAT)


def _merge(a: _Sig, b: _Sig) -> _Sig | None:
    """The type pyarrow infers for values of types ``a`` and ``b`` in one column
    (or one array), or None where it refuses the mix (e.g. number and string)."""
    if a == b:
        return a
    if a == _NULL:
        return b
    if b == _NULL:
        return a
    if a in _NUMBERS and b in _NUMBERS:
        return _FLOAT
    if type(a) is not tuple or type(b) is not tuple or a[0] != b[0]:
        return None
    if a[0] == "l":
        item = _merge(a[1], b[1])
        return None if item is None else ("l", item)
    fields = dict(a[1])
    for key, t in b[1]:
        if key in fields:
            merged = _merge(fields[key], t)
            if merged is None:
                return None
            fields[key] = merged
        else:
            fields[key] = t
    return ("d", tuple(fields.items()))


def _json_text(value: Any) -> str:
    return json.dumps(integral_as_int(value), ensure_ascii=False, separators=(",", ":"))


def _shape(value: Any) -> tuple[_Sig, Any]:
    """``value``'s type, and the value pyarrow is to read (``value`` itself unless
    changed): an integer beyond int64 becomes the string of its digits, a number
    beyond the double range (``1e400``) an infinity, as ``json`` rounds it (pyarrow
    refuses it), an array whose elements pyarrow cannot read together
    (``[1, "a"]``) its JSON text."""
    t = type(value)
    if t is str:
        return _STR, value
    if t is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return _INT, value
        return _STR, str(value)
    if t is float:
        if not math.isinf(value):
            return _FLOAT, value
        # ``Infinity``, or a number beyond the double range (``1e400``), which ``json``
        # rounds to an infinity as IEEE 754 does and pyarrow refuses: a new float, so
        # that the line is written again (as ``Infinity``, which pyarrow reads).
        return _FLOAT, math.copysign(math.inf, value)
    if value is None:
        return _NULL, value
    if t is bool:
        return _BOOL, value
    if t is dict:
        fields = []
        out: dict[str, Any] | None = None
        for key, v in value.items():
            sig, shaped = _shape(v)
            fields.append((key, sig))
            if shaped is not v:
                if out is None:
                    out = dict(value)
                out[key] = shaped
        return ("d", tuple(fields)), value if out is None else out
    item: _Sig = _NULL
    items: list[Any] | None = None
    for n, v in enumerate(value):
        sig, shaped = _shape(v)
        merged = _merge(item, sig)
        if merged is None:
            return _STR, _json_text(value)
        item = merged
        if shaped is not v:
            if items is None:
                items = list(value)
            items[n] = shaped
    return ("l", item), value if items is None else items


@dataclass
class _Order:
    """The order in which keys first appear, at each depth (pyarrow's column order)."""

    fields: dict[str, _Order] = field(default_factory=dict)
    item: _Order | None = None

    def add(self, sig: _Sig) -> None:
        if type(sig) is not tuple:
            return
        if sig[0] == "l":
            if self.item is None:
                self.item = _Order()
            self.item.add(sig[1])
            return
        for key, t in sig[1]:
            child = self.fields.get(key)
            if child is None:
                child = self.fields[key] = _Order()
            child.add(t)

    def arrange(self, fields: Iterable[pa.Field]) -> list[pa.Field]:
        rank = {key: n for n, key in enumerate(self.fields)}
        ordered = sorted(fields, key=lambda f: rank.get(f.name, len(rank)))
        return [f.with_type(self.arrange_type(f.type, self.fields.get(f.name))) for f in ordered]

    @staticmethod
    def arrange_type(t: pa.DataType, order: _Order | None) -> pa.DataType:
        if order is None:
            return t
        if pa.types.is_struct(t):
            return pa.struct(order.arrange(t))
        if pa.types.is_list(t):
            value = t.value_field
            return pa.list_(value.with_type(_Order.arrange_type(value.type, order.item)))
        return t


def _parse_slowly(task: FileTask, unit: _Unit) -> _Parsed:
    """Parse every line with ``json``: find bad lines, and read the rest by type.

    A line is malformed when it is not UTF-8 JSON, or not a JSON object. The
    good lines are grouped by their types (a field that changes type inside the
    unit puts its lines in different groups); each group is read with one
    pyarrow call, and the tables are unified and put back in line order. A
    group that pyarrow still refuses is bisected until each piece reads; one
    line that pyarrow cannot read on its own (e.g. a key given twice) is
    malformed too. Integers beyond int64 and arrays mixing types are read as
    text (:func:`_shape`).
    """
    data = unit.read_bytes()
    parsed = _Parsed(None)
    lines: list[bytes] = []  # the good lines, as pyarrow is to read them
    numbers: list[int] = []  # their line numbers
    groups: list[list[int]] = []  # indexes into ``lines``, per group
    group_types: list[_Sig] = []  # the merged type of each group
    group_of: dict[_Sig, int] = {}
    order = _Order()
    line_no = unit.first_line
    for raw in data.split(b"\n"):
        line_no += 1
        line = raw.strip()
        if not line:
            continue
        value: Any = None
        reason: str | None = None
        try:
            value = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            reason = f"not UTF-8 ({exc})"
        except ValueError as exc:
            reason = f"not JSON ({exc})"
        except RecursionError:
            reason = _too_deep("more than a thousand")
        else:
            if not isinstance(value, dict):
                reason = f"a JSON {type(value).__name__}, not an object"
            else:
                reason = _too_deep_record(value)
        if reason is not None:
            if _malformed(task, parsed, line_no, reason):
                return parsed
            continue
        sig, shaped = _shape(value)
        if shaped is not value:
            # Written again from ``value``, where a key given twice kept its last
            # value: such a line is malformed, as pyarrow makes it when read as is.
            twice = _key_given_twice(line)
            if twice is not None:
                if _malformed(task, parsed, line_no, f"unreadable (key {twice!r} given twice)"):
                    return parsed
                continue
            line = json.dumps(shaped, separators=(",", ":")).encode()
        g = group_of.get(sig)
        if g is None:
            order.add(sig)
            for g, group_type in enumerate(group_types):
                merged = _merge(group_type, sig)
                if merged is not None:
                    group_types[g] = merged
                    break
            else:
                g = len(groups)
                groups.append([])
                group_types.append(sig)
            group_of[sig] = g
        groups[g].append(len(lines))
        lines.append(line)
        numbers.append(line_no)
    del data
    pieces: list[tuple[pa.Table, list[int]]] = []
    for group in groups:
        stack = [group]
        while stack:
            part = stack.pop()
            blob = b"\n".join(lines[i] for i in part) + b"\n"
            try:
                pieces.append((_read_fixed(blob, None, _block_for(len(blob))), part))
            except _ARROW_ERRORS as exc:
                if len(part) == 1:
                    msg = str(exc).splitlines()[0][:200]
                    if _malformed(task, parsed, numbers[part[0]], f"unreadable ({msg})"):
                        return parsed
                    continue
                mid = len(part) // 2
                stack.append(part[mid:])  # popped after the first half: order kept
                stack.append(part[:mid])
    if pieces:
        schema = pa.schema(order.arrange(unify_schemas(t.schema for t, _ in pieces)))
        table = pa.concat_tables([cast_table(t, schema) for t, _ in pieces])
        where = [i for _, part in pieces for i in part]
        if any(a > b for a, b in pairwise(where)):
            table = table.take(pc.sort_indices(pa.array(where)))
        parsed.table = table
    return parsed


class _KeyTwice(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> None:
    keys = set()
    for key, _ in pairs:
        if key in keys:
            raise _KeyTwice(key)
        keys.add(key)


def _key_given_twice(line: bytes) -> str | None:
    """A key some object of the (valid JSON) line gives twice, or None."""
    try:
        json.loads(line, object_pairs_hook=_unique_keys)
    except _KeyTwice as twice:
        return str(twice.args[0])
    return None


def _may_nest_deeper(unit: _Unit, limit: int) -> bool:
    """Whether a line of the unit may nest objects and arrays more than ``limit`` deep.

    Only lines longer than ``2 * limit`` bytes can; their brackets are counted (also
    those inside strings: a string of closing brackets could hide some depth, one of
    opening brackets only sends the unit the slow, exact way).
    """
    for chunk in _line_chunks(unit):
        if len(chunk) <= 2 * limit:
            continue
        for line in _lines_longer(chunk, 2 * limit):
            kept = line.translate(None, _NOT_BRACKETS)
            if len(kept) > 2 * limit and _bracket_depth(kept) > limit:
                return True
    return False


def _lines_longer(chunk: bytes, n: int) -> Iterator[bytes]:
    """The lines of ``chunk`` longer than ``n`` bytes (about 0.7 ms per MiB with numpy)."""
    if np is None:
        yield from (line for line in chunk.split(b"\n") if len(line) > n)
        return
    bounds = np.concatenate(([-1], np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)))
    bounds = np.append(bounds, len(chunk))
    for i in np.flatnonzero(np.diff(bounds) - 1 > n):
        yield chunk[int(bounds[i]) + 1 : int(bounds[i + 1])]


def _bracket_depth(brackets: bytes) -> int:
    """The deepest level of a run of ``[]{}`` (unbalanced closers count down)."""
    if np is not None:
        a = np.frombuffer(brackets, np.uint8)
        steps = ((a == 91) | (a == 123)).astype(np.int32) - ((a == 93) | (a == 125))
        return max(0, int(np.cumsum(steps).max()))
    deepest = level = 0
    for b in brackets:
        if b in b"[{":
            level += 1
            deepest = max(deepest, level)
        else:
            level -= 1
    return deepest


def _too_deep(levels: str) -> str:
    return f"objects and arrays nested {levels} levels deep (at most {MAX_NESTING})"


def _too_deep_record(record: dict[str, Any]) -> str | None:
    """Why ``record`` nests too deeply for Arrow's files or Parquet's schema, or None."""
    levels, parquet = _nesting(record)
    if levels > MAX_NESTING:
        return _too_deep(str(levels))
    if parquet > MAX_PARQUET_LEVELS:
        return (
            f"arrays and objects nested {parquet} Parquet levels deep, an array counting "
            f"two (at most {MAX_PARQUET_LEVELS}: 49 arrays in arrays)"
        )
    return None


def _nesting(record: dict[str, Any]) -> tuple[int, int]:
    """The most levels of objects and arrays inside one of ``record``'s fields, and the
    most Parquet schema levels (an array counts two, an object one)."""
    deepest = deepest_parquet = 0
    stack = [
        (v, 1, 2 if type(v) is list else 1) for v in record.values() if isinstance(v, dict | list)
    ]
    while stack:
        value, level, parquet = stack.pop()
        deepest = max(deepest, level)
        deepest_parquet = max(deepest_parquet, parquet)
        inner = value.values() if isinstance(value, dict) else value
        stack.extend(
            (v, level + 1, parquet + (2 if type(v) is list else 1))
            for v in inner
            if isinstance(v, dict | list)
        )
    return deepest, deepest_parquet


def _too_deep_type(t: pa.DataType) -> bool:
    """Whether Arrow type ``t`` nests more than :func:`_too_deep_record` allows."""
    stack = [(t, 0, 0)]
    while stack:
        t, level, parquet = stack.pop()
        if level > MAX_NESTING or parquet > MAX_PARQUET_LEVELS:
            return True
        if pa.types.is_struct(t):  # ``{}``, no fields, counts as one more level too
            kids = [t.field(i).type for i in range(t.num_fields)] or [pa.null()]
            stack.extend((kid, level + 1, parquet + 1) for kid in kids)
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            stack.append((t.value_type, level + 1, parquet + 2))
    return False


def _malformed(task: FileTask, parsed: _Parsed, line_no: int, reason: str) -> bool:
    """Record one malformed line; True when the policy stops reading the file."""
    parsed.malformed += 1
    where = f"{task.file.uri()} line {line_no}: {reason}"
    if len(parsed.samples) < _SAMPLES:
        parsed.samples.append(where)
    if task.malformed == "fail":
        raise MalformedDataError(f"malformed line in {where}")
    if task.malformed == "quarantine":
        parsed.quarantine = f"malformed line {line_no}: {reason}"
        parsed.table = None
        return True
    return False


def scan_units(task: FileTask, scan: FileScan) -> Iterator[tuple[int, int, pa.Table | None]]:
    """Yield (unit index, unit input bytes, table) for each unit; fills ``scan``."""
    splitter = _Splitter(task)
    try:
        for unit in splitter.units():
            parsed = _parse_unit(task, unit)
            scan.malformed_lines += parsed.malformed
            scan.samples.extend(parsed.samples[: _SAMPLES - len(scan.samples)])
            if parsed.quarantine is not None:
                scan.quarantine = parsed.quarantine
                return
            yield unit.index, unit.size, parsed.table
    except (CorruptDataError, TooLargeError) as exc:
        if task.malformed == "fail":
            raise
        scan.quarantine = str(exc)
    except InputChangedError as exc:
        # Overwritten or deleted since sealing: the rest of the manifest goes on (its
        # newer upload is tracked and compacted on its own; a deleted one is gone).
        scan.quarantine, scan.superseded = f"superseded: {exc}", True
    finally:
        scan.compressed_bytes = splitter.compressed
        scan.uncompressed_bytes = splitter.uncompressed
        scan.encoding = splitter.encoding


def scan_file(task: FileTask) -> FileScan:
    """Stage 1: read, parse and (with ``spill_dir``) spill one input file."""
    scan = FileScan(task.index, [])
    units: list[UnitInfo] = []
    for n, size, table in scan_units(task, scan):
        if table is None or table.num_rows == 0:
            units.append(UnitInfo(n, 0, size, pa.schema([]), None))
            continue
        spill = None
        if task.spill_dir is not None:
            spill = str(Path(task.spill_dir, f"{task.index:06d}-{n:04d}.arrow"))
            with pa.OSFile(spill, "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
                w.write_table(table)
        units.append(UnitInfo(n, table.num_rows, size, table.schema, spill))
    if scan.quarantine is None:
        scan.units = units
    else:  # held out: drop what was spilled
        for u in units:
            if u.spill:
                Path(u.spill).unlink(missing_ok=True)
    return scan
