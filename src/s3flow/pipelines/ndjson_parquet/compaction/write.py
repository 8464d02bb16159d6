"""The output side of a compaction: Parquet parts.

In worker processes: :func:`calibrate` (stage 2) encodes a sample of the first
units as Parquet to learn how many Parquet bytes one input byte makes (plans the
parts); :func:`write_part` (stage 3) casts each unit of one part to the unified
schema, writes a Parquet file with row groups of about ``row_group_mb`` and
uploads it. In the parent, last: :func:`delete_stale_parts` removes the parts an
earlier run of the same manifest left beyond the new count. See
:mod:`s3flow.pipelines.ndjson_parquet.compaction.job` for the stages.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from s3flow.errors import RetryableError, translate_aws_error
from s3flow.pipelines.ndjson_parquet.compaction.scan import scan_units
from s3flow.pipelines.ndjson_parquet.compaction.schema import cast_table
from s3flow.pipelines.ndjson_parquet.compaction.tasks import (
    MIB,
    CalibrateTask,
    FileScan,
    FileTask,
    PartResult,
    PartTask,
    Storage,
    Target,
    UnitRef,
    WriteSettings,
    s3_client,
    scratch,
)

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"


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
        for n, _size, table in scan_units(task, scan):
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
        prefix=f"part-{task.n:05d}-", suffix=".parquet", dir=scratch(task.scratch_dir)
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


def written_parts(storage: Storage, target: Target, partition: str, manifest_id: str) -> list[str]:
    """This manifest's parts already in the target (an earlier run's), as paths or URIs."""
    return [where for where, _ in _parts(storage, target, partition, manifest_id)]


def delete_stale_parts(
    storage: Storage, target: Target, partition: str, manifest_id: str, keep: int
) -> list[str]:
    """Delete this manifest's parts numbered ``keep`` and above (left by an earlier run)."""
    stale: list[str] = []
    client = None if target.kind == "local" else s3_client(storage)
    for where, n in _parts(storage, target, partition, manifest_id):
        if n < keep:
            continue
        if client is None:
            Path(where).unlink(missing_ok=True)
        else:
            key = where.removeprefix(f"s3://{target.bucket}/")
            try:
                client.delete_object(Bucket=target.bucket, Key=key)
            except Exception as exc:
                raise translate_aws_error(exc, f"removing stale part {where}") from exc
        stale.append(where)
    return stale


def _parts(
    storage: Storage, target: Target, partition: str, manifest_id: str
) -> list[tuple[str, int]]:
    """(path or URI, part number) of each part of the manifest in the target."""
    if target.kind == "local":
        directory = Path(target.key(partition))
        if not directory.is_dir():
            return []
        return [
            (str(p), n)
            for p in sorted(directory.iterdir())
            if (n := part_number(p.name, manifest_id)) is not None
        ]
    client = s3_client(storage)
    prefix = target.key(partition) + f"part-{manifest_id}-"
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=target.bucket, Prefix=prefix
        )
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    except Exception as exc:
        raise translate_aws_error(exc, f"listing parts under {prefix}") from exc
    return [
        (f"s3://{target.bucket}/{key}", n)
        for key in keys
        if (n := part_number(key.rsplit("/", 1)[-1], manifest_id)) is not None
    ]
