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

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pj

from s3flow.errors import CorruptDataError, Disposition, translate_aws_error
from s3flow.objects import detect_encoding, make_decoder
from s3flow.pipelines.ndjson_parquet.compaction.manifest import InputFile
from s3flow.pipelines.ndjson_parquet.compaction.schema import (
    cast_table,
    hint_fits,
    hint_schema,
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
        self._dir = scratch(task.scratch_dir)

    def _new_file(self, n: int) -> tuple[Path, Any]:
        fd, name = tempfile.mkstemp(
            prefix=f"in-{self.task.index:06d}-{n:04d}-", suffix=".ndjson", dir=self._dir
        )
        return Path(name), os.fdopen(fd, "wb")

    def _pieces(self) -> Iterator[bytes]:
        t = self.task
        decoder = None
        head = b""
        for raw in _raw_chunks(t.storage, t.file):
            self.compressed += len(raw)
            if decoder is None:
                head += raw
                if len(head) < 8:
                    continue
                raw, head = head, b""
                self.encoding = detect_encoding(raw[:8], None, t.file.key)
                decoder = make_decoder(self.encoding)
            yield from decoder.feed(raw)
        if decoder is None and head:
            self.encoding = detect_encoding(head[:8], None, t.file.key)
            decoder = make_decoder(self.encoding)
            yield from decoder.feed(head)
        if decoder is not None:
            decoder.finish()

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
_ARROW_ERRORS = (pa.ArrowException, UnicodeDecodeError)


def _read(src: Any, schema: pa.Schema | None, block: int) -> pa.Table:
    if schema is None:
        po = pj.ParseOptions()
    else:
        po = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
    ro = pj.ReadOptions(use_threads=False, block_size=block)
    if isinstance(src, bytes):
        src = pa.BufferReader(src)
    return pj.read_json(src, read_options=ro, parse_options=po)


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
    block = _block_for(unit.size)
    src = unit.source()
    hint = _HINTS.get(task.hint_key) if task.hint_key else None
    if hint is not None and not hint_fits(hint, _first_record(unit)):
        hint = None  # the hinted read could order (or type) columns differently
    if hint is not None:
        try:
            table = _read_fixed(src, hint, block)
        except _ARROW_ERRORS:
            table = None
        if table is not None:
            _remember_hint(task, table)
            return _Parsed(table)
    try:
        table = _read_fixed(src, None, block)
    except _ARROW_ERRORS:
        return _parse_slowly(task, unit)
    _remember_hint(task, table)
    return _Parsed(table)


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
                return json.loads(line)
            except ValueError:
                return None
    return None


def _remember_hint(task: FileTask, table: pa.Table) -> None:
    if task.hint_key is None:
        return
    _HINTS.pop(task.hint_key, None)
    _HINTS[task.hint_key] = hint_schema(table.schema)
    while len(_HINTS) > _HINTS_MAX:
        _HINTS.pop(next(iter(_HINTS)))


def _parse_slowly(task: FileTask, unit: _Unit) -> _Parsed:
    """The unit failed to parse as a whole: find bad lines, and read the rest in pieces.

    A line is malformed when it is not UTF-8 JSON, or not a JSON object. Pieces
    of good lines that still fail together (a field that changes type inside
    the file) are bisected until each piece reads; one line that pyarrow
    cannot read on its own (e.g. a key given twice) is malformed too.
    """
    data = unit.read_bytes()
    good: list[tuple[int, bytes]] = []
    parsed = _Parsed(None)
    line_no = unit.first_line
    for raw in data.split(b"\n"):
        line_no += 1
        line = raw.strip()
        if not line:
            continue
        reason = None
        try:
            value = json.loads(line)
        except ValueError as exc:
            reason = f"not JSON ({exc})"
        else:
            if not isinstance(value, dict):
                reason = f"a JSON {type(value).__name__}, not an object"
        if reason is None:
            good.append((line_no, line))
        elif _malformed(task, parsed, line_no, reason):
            return parsed
    del data
    tables: list[pa.Table] = []
    stack = [good]
    while stack:
        lines = stack.pop()
        if not lines:
            continue
        blob = b"\n".join(line for _, line in lines) + b"\n"
        try:
            tables.append(_read_fixed(blob, None, _block_for(len(blob))))
        except _ARROW_ERRORS as exc:
            if len(lines) == 1:
                msg = str(exc).splitlines()[0][:200]
                if _malformed(task, parsed, lines[0][0], f"unreadable ({msg})"):
                    return parsed
                continue
            mid = len(lines) // 2
            stack.append(lines[mid:])  # popped after the first half: order kept
            stack.append(lines[:mid])
    if tables:
        schema = unify_schemas(t.schema for t in tables)
        parsed.table = pa.concat_tables([cast_table(t, schema) for t in tables])
    return parsed


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
    except CorruptDataError as exc:
        if task.malformed == "fail":
            raise
        scan.quarantine = str(exc)
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
