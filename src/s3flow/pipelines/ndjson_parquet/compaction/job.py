"""One compaction: a manifest's NDJSON files -> Parquet parts, on an executor.

1. **Scan** every file in parallel (:func:`~.scan.scan_file`):
   parse with pyarrow, apply the malformed-line policy, spill Arrow tables to
   scratch (local executor).
2. **Unify** the files' schemas in manifest order (:mod:`~.schema`).
3. **Plan** parts: whole units in manifest order, cut when the estimated
   Parquet size reaches ``parquet_target_mb``. The estimate is the input size
   times the Parquet/input ratio measured on the first 8 MiB of input
   (:func:`~.write.calibrate`); a manifest whose input is
   no bigger than the target is one part. The plan depends only on the
   manifest's content, so a rerun produces the same parts.
4. **Write** the parts in parallel, each uploaded once complete, as
   ``<dataset>/date=<date>/part-<manifest_id>-<nnnnn>.parquet``.
5. **Delete** this manifest's parts numbered beyond the new count (left by an
   earlier run with another plan), so no row is ever present twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from s3flow.pipelines.ndjson_parquet.compaction.executors import Executor
from s3flow.pipelines.ndjson_parquet.compaction.manifest import InputFile, Manifest
from s3flow.pipelines.ndjson_parquet.compaction.options import CompactionOptions
from s3flow.pipelines.ndjson_parquet.compaction.scan import scan_file
from s3flow.pipelines.ndjson_parquet.compaction.schema import (
    case_clashes,
    unify_schemas,
    writable_schema,
)
from s3flow.pipelines.ndjson_parquet.compaction.tasks import (
    MIB,
    CalibrateTask,
    FileScan,
    FileTask,
    InputChangedError,
    PartResult,
    PartTask,
    Storage,
    Target,
    UnitRef,
    WriteSettings,
)
from s3flow.pipelines.ndjson_parquet.compaction.write import (
    calibrate,
    delete_stale_parts,
    write_part,
    written_parts,
)

__all__ = ["CompactionReport", "compact_manifest", "plan_parts"]

log = logging.getLogger("s3flow.pipelines.ndjson_parquet.compaction")

CALIBRATION_BYTES = 8 * MIB


@dataclass
class CompactionReport:
    """What one compaction did."""

    manifest_id: str
    dataset: str
    date: str
    parts: list[PartResult]
    stale_deleted: list[str]
    schema: pa.Schema
    files: int
    rows: int
    compressed_bytes: int
    uncompressed_bytes: int
    malformed_lines: int
    malformed_samples: list[str]
    quarantined: list[tuple[InputFile, str]] = field(default_factory=list)
    #: Files held out because they changed or went since sealing (not tagged).
    superseded: list[tuple[InputFile, str]] = field(default_factory=list)
    executor: str = "local"
    seconds: float = 0.0
    ratio: float | None = None
    #: What readers of the output may trip over (column names differing only in case).
    warnings: list[str] = field(default_factory=list)

    @property
    def outputs(self) -> list[str]:
        """URIs of the parts, in order."""
        return [p.uri for p in self.parts]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "manifest_id": self.manifest_id,
            "dataset": self.dataset,
            "date": self.date,
            "executor": self.executor,
            "files": self.files,
            "rows": self.rows,
            "compressed_bytes": self.compressed_bytes,
            "uncompressed_bytes": self.uncompressed_bytes,
            "parquet_bytes": sum(p.bytes for p in self.parts),
            "parts": [
                {"uri": p.uri, "rows": p.rows, "bytes": p.bytes, "row_groups": p.row_groups}
                for p in self.parts
            ],
            "stale_parts_deleted": self.stale_deleted,
            "malformed_lines": self.malformed_lines,
            "malformed_samples": self.malformed_samples,
            "quarantined": [{"uri": f.uri(), "reason": why} for f, why in self.quarantined],
            "superseded": [{"uri": f.uri(), "reason": why} for f, why in self.superseded],
            "columns": [f"{f.name}: {f.type}" for f in self.schema],
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
        }


def plan_parts(
    units: list[UnitRef], target_bytes: float, ratio: float | None
) -> list[list[UnitRef]]:
    """Group units (in order) into parts of about ``target_bytes`` of Parquet.

    ``ratio`` = Parquet bytes per input byte; None = everything in one part.
    A part always gets at least one unit.
    """
    units = [u for u in units if u.rows]
    if not units:
        return []
    if ratio is None:
        return [units]
    parts: list[list[UnitRef]] = [[]]
    size = 0.0
    for u in units:
        est = u.input_bytes * ratio
        if parts[-1] and size + est > target_bytes:
            parts.append([])
            size = 0.0
        parts[-1].append(u)
        size += est
    return parts


#: A compaction's scratch directory: ``<tmp_dir>/s3flow-compact-<manifest>-<random>``,
#: holding an ``owner`` file (``<host> <pid>``) so that one left by a killed process
#: can be told from one in use.
_JOB_DIR_PREFIX = "s3flow-compact-"
_OWNER_FILE = "owner"

#: The scratch roots this process has swept already.
_swept: set[str] = set()


def _owner() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _left_by_dead_process(job_dir: str) -> bool:
    """Whether ``job_dir``'s owner ran on this host and is gone (SIGKILL, OOM kill, power
    loss): its ``finally`` never removed it. Another host's (a shared volume), a live
    process's or an unreadable owner: kept."""
    try:
        host, pid = Path(job_dir, _OWNER_FILE).read_text().split()
        if host != socket.gethostname() or int(pid) == os.getpid():
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


def sweep_dead_job_dirs(root: str) -> list[str]:
    """Remove the scratch directories under ``root`` that killed compactions left (their
    spilled Arrow data is about the size of their manifest); returns their paths."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            if (
                entry.name.startswith(_JOB_DIR_PREFIX)
                and entry.is_dir(follow_symlinks=False)
                and _left_by_dead_process(entry.path)
            ):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
    if removed:
        log.warning(
            "removed %d scratch director%s left by killed compactions under %s",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            root,
        )
    return removed


def _make_job_dir(tmp_dir: str | None, manifest_id: str) -> str:
    root = tmp_dir or tempfile.gettempdir()
    os.makedirs(root, exist_ok=True)
    if root not in _swept:
        _swept.add(root)
        sweep_dead_job_dirs(root)
    job_dir = tempfile.mkdtemp(prefix=f"{_JOB_DIR_PREFIX}{manifest_id[:40]}-", dir=root)
    Path(job_dir, _OWNER_FILE).write_text(_owner())
    return job_dir


async def compact_manifest(
    manifest: Manifest,
    options: CompactionOptions,
    *,
    storage: Storage,
    target: Target,
    executor: Executor,
    max_uncompressed_bytes: int | None = None,
) -> CompactionReport:
    """Compact ``manifest`` into Parquet parts under ``target``; see the module doc.

    ``max_uncompressed_bytes``: a compressed input decompressing to more is held out
    (quarantined, named with the limit), or fails the manifest under ``fail``."""
    started = time.perf_counter()
    job_dir = await asyncio.to_thread(_make_job_dir, options.tmp_dir, manifest.manifest_id)
    try:
        spill_dir = None
        if executor.shares_disk:
            spill_dir = str(Path(job_dir, "spill"))
            await asyncio.to_thread(os.mkdir, spill_dir)
        hint_key = f"{manifest.manifest_id}/{uuid.uuid4().hex}" if executor.shares_disk else None
        tasks = [
            FileTask(
                index=i,
                file=f,
                storage=storage,
                scratch_dir=job_dir,
                unit_bytes=int(options.unit_mb * MIB),
                malformed=options.malformed_lines,
                spill_dir=spill_dir,
                hint_key=hint_key,
                max_uncompressed_bytes=max_uncompressed_bytes,
            )
            for i, f in enumerate(manifest.files)
        ]
        scans: list[FileScan] = await executor.map(scan_file, tasks, priority=started)
        await _check_left_out(manifest, scans, storage, target)
        units = [
            UnitRef(s.index, u.unit, u.rows, u.input_bytes, u.spill)
            for s in scans
            if s.quarantine is None
            for u in s.units
            if u.rows
        ]
        schema = writable_schema(
            unify_schemas(
                u.schema for s in scans if s.quarantine is None for u in s.units if u.rows
            )
        )
        files = {t.index: t for t in tasks}
        ws = WriteSettings(
            compression=options.compression,
            compression_level=options.compression_level,
            row_group_bytes=int(options.row_group_mb * MIB),
        )
        target_bytes = options.parquet_target_mb * MIB
        total_in = sum(u.input_bytes for u in units)
        ratio = None
        if total_in > target_bytes:
            sample: list[UnitRef] = []
            for u in units:
                sample.append(u)
                if sum(x.input_bytes for x in sample) >= CALIBRATION_BYTES:
                    break
            cal = CalibrateTask(tuple(sample), schema, files, ws)
            ratio = (await executor.map(calibrate, [cal], priority=started))[0]
        plan = plan_parts(units, target_bytes, ratio)
        part_tasks = [
            PartTask(
                n=n,
                relative_key=manifest.partition + manifest.part_name(n),
                units=tuple(group),
                schema=schema,
                files={u.file_index: files[u.file_index] for u in group},
                writer=ws,
                target=target,
                storage=storage,
                scratch_dir=job_dir,
            )
            for n, group in enumerate(plan)
        ]
        parts: list[PartResult] = await executor.map(write_part, part_tasks, priority=started)
        stale = await asyncio.to_thread(
            delete_stale_parts,
            storage,
            target,
            manifest.partition,
            manifest.manifest_id,
            len(parts),
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, job_dir, True)
    samples = [x for s in scans for x in s.samples][:20]
    return CompactionReport(
        manifest_id=manifest.manifest_id,
        dataset=manifest.dataset,
        date=manifest.date,
        parts=parts,
        stale_deleted=stale,
        schema=schema,
        files=len(manifest.files),
        rows=sum(p.rows for p in parts),
        compressed_bytes=sum(s.compressed_bytes for s in scans),
        uncompressed_bytes=sum(s.uncompressed_bytes for s in scans),
        malformed_lines=sum(s.malformed_lines for s in scans),
        malformed_samples=samples,
        quarantined=[
            (manifest.files[s.index], s.quarantine)
            for s in scans
            if s.quarantine is not None and not s.superseded
        ],
        superseded=[
            (manifest.files[s.index], s.quarantine)
            for s in scans
            if s.quarantine is not None and s.superseded
        ],
        executor="local" if executor.shares_disk else "spark",
        seconds=time.perf_counter() - started,
        ratio=ratio,
        warnings=[
            f"columns whose names differ only in case ({names}): kept apart, but engines "
            "that ignore case (Spark, Hive, Athena) refuse the file or mix them up"
            for names in case_clashes(schema)
        ],
    )


async def _check_left_out(
    manifest: Manifest, scans: list[FileScan], storage: Storage, target: Target
) -> None:
    """Refuse (InputChangedError, permanent) to leave out inputs that changed or went
    since sealing when that would lose rows: an earlier run of this manifest wrote parts
    (the run would rewrite them without those files' rows, deleting the rest), or every
    input is gone (nothing to compact: a wrong storage root, say, not a superseded file)."""
    left = [s for s in scans if s.superseded]
    if not left:
        return
    first = manifest.files[left[0].index].uri()
    if len(left) == len(scans):
        raise InputChangedError(
            f"every input of manifest {manifest.manifest_id} is gone or changed since it was "
            f"sealed (e.g. {first}): nothing to compact"
        )
    earlier = await asyncio.to_thread(
        written_parts, storage, target, manifest.partition, manifest.manifest_id
    )
    if earlier:
        raise InputChangedError(
            f"{len(left)} input(s) of manifest {manifest.manifest_id} changed or went since it "
            f"was sealed (e.g. {first}), and an earlier run wrote its parts ({earlier[0]}...): "
            "compacting again without them would drop their rows from those parts; not done"
        )
