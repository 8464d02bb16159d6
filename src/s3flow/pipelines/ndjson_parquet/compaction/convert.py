"""The CPU work of a compaction, as plain functions that run in worker processes.

Everything here is synchronous and picklable: the ``local`` executor runs these
functions in a process pool, the ``spark`` executor in Spark tasks. Each
worker reaches S3 itself (a boto3 client built from the ``[aws]`` settings in
a :class:`Storage`, credentials from the worker's own credential chain), so no
data passes through the parent process.

Stages (see :mod:`s3flow.pipelines.ndjson_parquet.compaction.job`):

1. :func:`scan_file` - stream one input file (decompressing by magic bytes),
   cut it into line-aligned units of at most ``unit_mb``, parse each unit with
   pyarrow's JSON reader, apply the malformed-line policy, and (``local``)
   spill the unit's Arrow table to a scratch file. Returns each unit's schema,
   row count and size.
2. :func:`calibrate` - encode a sample of the first units as Parquet to learn
   how many Parquet bytes one input byte makes (plans the parts).
3. :func:`write_part` - cast each unit of one part to the unified schema,
   write a Parquet file with row groups of about ``row_group_mb``, upload it.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

from s3flow.errors import (
    CorruptDataError,
    Disposition,
    PermanentError,
    RetryableError,
    S3flowError,
    translate_aws_error,
)
from s3flow.objects import detect_encoding, make_decoder
from s3flow.pipelines.ndjson_parquet.compaction.manifest import InputFile
from s3flow.pipelines.ndjson_parquet.compaction.schema import (
    cast_table,
    hint_schema,
    strings_for_timestamps,
    unify_schemas,
)
from s3flow.settings import AwsSettings

MIB = 1024 * 1024
_READ_BYTES = 16 * MIB  # a typical 3-4 MB file arrives in one read (no copies to join)
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
_SAMPLES = 5  # malformed-line examples kept per file


class MalformedDataError(PermanentError):
    """An input file has lines that are not JSON objects (policy ``fail``)."""


class InputChangedError(PermanentError):
    """An input file is missing or differs from the version the manifest lists."""


# --- where data lives ----------------------------------------------------------


@dataclass(frozen=True)
class Storage:
    """How worker processes read inputs and write outputs.

    ``kind="s3"``: each worker process builds one boto3 client with
    :func:`s3flow.aws.sync_client` from ``aws`` (the worker's ``[aws]``
    settings, endpoints pinned with :func:`s3flow.aws.pin_endpoints`): the
    same endpoint, region, profile, retries, timeouts and addressing style as
    the worker's own clients. Credentials are not passed: the worker process
    resolves them from the standard chain (environment inherited from the
    parent, profile, container/instance role) and the SDK refreshes temporary
    ones, so long compactions outlive them. ``aws=None``: default settings.
    ``kind="local"``: input ``bucket/key`` is the file ``<root>/<bucket>/<key>``
    (benchmarks and tests of the conversion alone).
    """

    kind: Literal["s3", "local"] = "s3"
    root: str | None = None
    aws: AwsSettings | None = field(default=None, hash=False)


@dataclass(frozen=True)
class Target:
    """Where parts go: ``s3://bucket/prefix`` or a local directory."""

    kind: Literal["s3", "local"]
    bucket: str = ""
    prefix: str = ""
    directory: str = ""

    def key(self, relative: str) -> str:
        """The full key (S3) or path (local) of ``relative``."""
        if self.kind == "s3":
            return self.prefix + relative
        return str(Path(self.directory, relative))

    def uri(self, relative: str) -> str:
        """``s3://bucket/key`` or the local path."""
        if self.kind == "s3":
            return f"s3://{self.bucket}/{self.prefix}{relative}"
        return self.key(relative)


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()
_POOL = 16  # HTTP connections per worker-process client (parallel multipart uploads)


def s3_client(storage: Storage) -> Any:
    """The boto3 S3 client for ``storage`` (one per process and settings)."""
    from s3flow.aws import sync_client

    aws = storage.aws if storage.aws is not None else AwsSettings()
    key = aws.model_dump_json()
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = sync_client(aws, "s3", pool=_POOL)
        return client


# --- tasks and results ---------------------------------------------------------


@dataclass(frozen=True)
class FileTask:
    """Scan one input file."""

    index: int
    file: InputFile
    storage: Storage
    scratch_dir: str
    unit_bytes: int
    malformed: Literal["skip", "quarantine", "fail"]
    spill_dir: str | None = None  # None: do not keep the tables (spark stage 1)
    hint_key: str | None = None  # reuse the previous file's schema as a parse hint


@dataclass(frozen=True)
class UnitInfo:
    """One line-aligned piece of an input file, parsed."""

    unit: int
    rows: int
    input_bytes: int  # uncompressed NDJSON bytes
    schema: pa.Schema
    spill: str | None


@dataclass
class FileScan:
    """What scanning one input file found."""

    index: int
    units: list[UnitInfo]
    compressed_bytes: int = 0
    uncompressed_bytes: int = 0
    encoding: str = "identity"
    malformed_lines: int = 0
    samples: list[str] = field(default_factory=list)
    quarantine: str | None = None  # reason, when the whole file is held out


@dataclass(frozen=True)
class UnitRef:
    """A unit placed in a part."""

    file_index: int
    unit: int
    rows: int
    input_bytes: int
    spill: str | None


@dataclass(frozen=True)
class WriteSettings:
    """Parquet writer settings shared by calibration and parts."""

    compression: str
    compression_level: int | None
    row_group_bytes: int


@dataclass(frozen=True)
class PartTask:
    """Write one Parquet part."""

    n: int
    relative_key: str
    units: tuple[UnitRef, ...]
    schema: pa.Schema
    files: dict[int, FileTask]  # to scan again when a unit has no spill (spark)
    writer: WriteSettings
    target: Target
    storage: Storage
    scratch_dir: str


@dataclass(frozen=True)
class CalibrateTask:
    """Measure Parquet bytes per input byte on the first units."""

    units: tuple[UnitRef, ...]
    schema: pa.Schema
    files: dict[int, FileTask]
    writer: WriteSettings


@dataclass(frozen=True)
class PartResult:
    """One written part."""

    n: int
    relative_key: str
    uri: str
    rows: int
    bytes: int
    row_groups: int


# --- error capture (results cross process boundaries as plain data) -----------


@dataclass(frozen=True)
class TaskError:
    """An exception raised in a worker, as data (exception pickling is not reliable)."""

    error_class: str
    message: str
    disposition: str


def capture(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap ``fn`` so it returns a :class:`TaskError` instead of raising."""
    return _Captured(fn)


class _Captured:
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, task: Any) -> Any:
        try:
            return self.fn(task)
        except S3flowError as exc:
            return TaskError(exc.error_class, str(exc), exc.disposition.value)
        except Exception as exc:  # anything else: retryable, with its type in the message
            return TaskError(
                "ProcessorError", f"{type(exc).__name__}: {exc}", Disposition.RETRYABLE.value
            )


class RemoteError(S3flowError):
    """A worker's error, re-raised in the parent with the worker's class name and reason."""

    def __init__(self, err: TaskError) -> None:
        super().__init__(err.message)
        self.disposition = Disposition(err.disposition)
        self._class = err.error_class

    @property
    def error_class(self) -> str:
        """The class name of the error in the worker."""
        return self._class


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


def _scratch(directory: str) -> str:
    """``directory`` when it exists here (it may not on a Spark executor), else the temp dir."""
    return directory if os.path.isdir(directory) else tempfile.gettempdir()


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
        self._dir = _scratch(task.scratch_dir)

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
    if hint is not None and not _hint_fits(hint, _first_record(unit)):
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


def _value_fits(value: Any, t: pa.DataType) -> bool:
    if pa.types.is_struct(t):
        return (
            isinstance(value, dict)
            and list(value) == [f.name for f in t]
            and all(_value_fits(value[f.name], f.type) for f in t)
        )
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        if not isinstance(value, list):
            return False
        if not value:  # an empty list says nothing about nested element order
            return not (pa.types.is_struct(t.value_type) or pa.types.is_list(t.value_type))
        return _value_fits(value[0], t.value_type)
    if pa.types.is_floating(t):  # an int64 column would be read as double
        return isinstance(value, float)
    return True


def _hint_fits(hint: pa.Schema, first: Any) -> bool:
    """Whether reading with ``hint`` gives the columns (and order) of a read without it.

    A hint is another unit's schema: used as the explicit schema, its fields
    come first, in its order, and fields the unit lacks are added as nulls.
    That is only the same as the unit's own inferred schema when the unit's
    first record has exactly the hint's fields, in the hint's order (nested
    objects too); pyarrow then appends later fields in order of appearance,
    as it does without a hint, and a type it accepts under the hint is the
    unit's own type or its widening (``int64`` read as ``double``), which
    unification reaches anyway. Otherwise the unit is read without the hint,
    so the manifest's column order never depends on which file a worker
    process happened to read before (the hint is a parsing speed-up only).
    """
    if not isinstance(first, dict) or list(first) != hint.names:
        return False
    return all(_value_fits(first[f.name], f.type) for f in hint)


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


def _scan_units(task: FileTask, scan: FileScan) -> Iterator[tuple[int, int, pa.Table | None]]:
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
    for n, size, table in _scan_units(task, scan):
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


# --- writing ------------------------------------------------------------------


def _unit_tables(
    units: tuple[UnitRef, ...], files: dict[int, FileTask], schema: pa.Schema
) -> Iterator[pa.Table]:
    """The units' tables cast to ``schema``: from the spill, or by scanning again."""
    i = 0
    while i < len(units):
        ref = units[i]
        if ref.spill is not None:
            with pa.memory_map(ref.spill, "r") as source:
                table = pa.ipc.open_file(source).read_all()
            yield cast_table(table, schema)
            i += 1
            continue
        # Scan the file again (spark: executors do not share a disk) for its units here.
        wanted = {}
        while i < len(units) and units[i].file_index == ref.file_index and units[i].spill is None:
            wanted[units[i].unit] = units[i]
            i += 1
        task = files[ref.file_index]
        scan = FileScan(task.index, [])
        for n, _size, table in _scan_units(task, scan):
            if n in wanted and table is not None and table.num_rows:
                if table.num_rows != wanted[n].rows:
                    raise RetryableError(
                        f"{task.file.uri()} unit {n}: {table.num_rows} rows now, "
                        f"{wanted[n].rows} before"
                    )
                yield cast_table(table, schema)
        if scan.quarantine is not None:
            raise RetryableError(f"{task.file.uri()}: {scan.quarantine} (it read cleanly before)")


def _writer(where: Any, schema: pa.Schema, ws: WriteSettings) -> pq.ParquetWriter:
    kwargs: dict[str, Any] = {"compression": ws.compression}
    if ws.compression_level is not None:
        kwargs["compression_level"] = ws.compression_level
    return pq.ParquetWriter(where, schema, **kwargs)


def _write_tables(writer: pq.ParquetWriter, tables: Iterator[pa.Table], ws: WriteSettings) -> int:
    """Write ``tables`` in row groups of about ``row_group_bytes``; return rows written."""
    rows = 0
    buf: list[pa.Table] = []
    buf_bytes = 0

    def flush() -> None:
        nonlocal buf, buf_bytes
        if buf:
            table = pa.concat_tables(buf)
            writer.write_table(table, row_group_size=max(1, table.num_rows))
            buf, buf_bytes = [], 0

    for table in tables:
        buf.append(table)
        buf_bytes += table.nbytes
        rows += table.num_rows
        if buf_bytes >= ws.row_group_bytes:
            flush()
    flush()
    return rows


def calibrate(task: CalibrateTask) -> float:
    """Stage 2: Parquet bytes per input byte, measured on ``task.units``."""
    sink = io.BytesIO()
    writer = _writer(sink, task.schema, task.writer)
    try:
        _write_tables(writer, _unit_tables(task.units, task.files, task.schema), task.writer)
    finally:
        writer.close()
    total = sum(u.input_bytes for u in task.units)
    return len(sink.getvalue()) / total if total else 1.0


def write_part(task: PartTask) -> PartResult:
    """Stage 3: write one part locally, then upload it (or move it into place)."""
    fd, tmp = tempfile.mkstemp(
        prefix=f"part-{task.n:05d}-", suffix=".parquet", dir=_scratch(task.scratch_dir)
    )
    os.close(fd)
    try:
        writer = _writer(tmp, task.schema, task.writer)
        try:
            rows = _write_tables(
                writer, _unit_tables(task.units, task.files, task.schema), task.writer
            )
        finally:
            writer.close()
        meta = pq.read_metadata(tmp)
        size = os.path.getsize(tmp)
        _publish(task.storage, task.target, tmp, task.relative_key)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return PartResult(
        n=task.n,
        relative_key=task.relative_key,
        uri=task.target.uri(task.relative_key),
        rows=rows,
        bytes=size,
        row_groups=meta.num_row_groups,
    )


def _publish(storage: Storage, target: Target, path: str, relative: str) -> None:
    if target.kind == "local":
        dest = Path(target.key(relative))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        shutil.copyfile(path, tmp)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        return
    from boto3.s3.transfer import TransferConfig

    key = target.key(relative)
    cfg = TransferConfig(multipart_threshold=64 * MIB, multipart_chunksize=64 * MIB)
    try:
        s3_client(storage).upload_file(
            path, target.bucket, key, ExtraArgs={"ContentType": PARQUET_CONTENT_TYPE}, Config=cfg
        )
    except Exception as exc:
        cause = getattr(exc, "last_exception", None) or exc.__context__ or exc
        raise translate_aws_error(cause, f"upload s3://{target.bucket}/{key}") from exc


# --- stale parts ----------------------------------------------------------------


def part_number(name: str, manifest_id: str) -> int | None:
    """n of ``part-<manifest_id>-<n>.parquet`` (exactly that manifest), else None."""
    m = re.fullmatch(rf"part-{re.escape(manifest_id)}-(\d{{5,}})\.parquet", name)
    return int(m.group(1)) if m else None


def delete_stale_parts(
    storage: Storage, target: Target, partition: str, manifest_id: str, keep: int
) -> list[str]:
    """Delete this manifest's parts numbered ``keep`` and above (left by an earlier run)."""
    stale: list[str] = []
    if target.kind == "local":
        directory = Path(target.key(partition))
        if not directory.is_dir():
            return []
        for p in sorted(directory.iterdir()):
            n = part_number(p.name, manifest_id)
            if n is not None and n >= keep:
                p.unlink(missing_ok=True)
                stale.append(str(p))
        return stale
    client = s3_client(storage)
    prefix = target.key(partition) + f"part-{manifest_id}-"
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=target.bucket, Prefix=prefix
        )
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        for key in keys:
            n = part_number(key.rsplit("/", 1)[-1], manifest_id)
            if n is not None and n >= keep:
                client.delete_object(Bucket=target.bucket, Key=key)
                stale.append(f"s3://{target.bucket}/{key}")
    except Exception as exc:
        raise translate_aws_error(exc, f"removing stale parts under {prefix}") from exc
    return stale
