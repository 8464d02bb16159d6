"""``parquet-compact``: compact a sealed manifest's NDJSON files into Parquet.

Runs on a pipeline whose bucket/prefix is where the manifest builder writes
manifests: ``ctx.event`` is the manifest object. The parts go to the
pipeline's ``output`` as ``<prefix><dataset>/date=<YYYY-MM-DD>/part-<manifest_id>-<n>.parquet``.
See :mod:`s3flow.pipelines.ndjson_parquet.compaction` and docs/pipelines/compaction.md.

Errors: a manifest that is not a manifest, or malformed lines under
``malformed_lines = "fail"`` are permanent (the manifest is dead-lettered with
the reason), and so is pyarrow refusing the data in a worker process
(``ArrowInvalid``...); S3 and other worker-process failures are retryable. A listed file that
is gone or changed since sealing is left out (``superseded``), unless an earlier
run already wrote the manifest's parts or every file is gone: then that is
permanent too. The manifest's record in the state store (when it
has one) goes ``processing -> completed | failed`` and its files follow,
except files held out (``malformed_lines = "quarantine"``, or superseded): they
are recorded ``quarantined`` with the reason. A state-store failure other than
"no such manifest" is retryable (the compaction runs again).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from s3flow.aws import pin_endpoints
from s3flow.errors import ConfigError, RetryableError, S3flowError
from s3flow.pipelines.ndjson_parquet.compaction.manifest import (
    MAX_MANIFEST_BYTES,
    InputFile,
    Manifest,
    ManifestError,
    parse_manifest,
)
from s3flow.pipelines.ndjson_parquet.compaction.options import CompactionOptions
from s3flow.processors.base import OptionsProcessor, PipelineContext, ProcessContext, Result
from s3flow.quarantine import tag_quarantined
from s3flow.settings import AwsSettings
from s3flow.sinks.local import LocalDirSink
from s3flow.sinks.s3 import S3Sink

if TYPE_CHECKING:  # pyarrow and friends load on first use, not at import
    from s3flow.pipelines.ndjson_parquet.compaction.executors import Executor
    from s3flow.pipelines.ndjson_parquet.compaction.job import CompactionReport
    from s3flow.pipelines.ndjson_parquet.compaction.tasks import Storage, Target

log = logging.getLogger("s3flow.pipelines.ndjson_parquet.compaction")

__all__ = ["ParquetCompactProcessor", "storage_for", "target_for_sink"]


class _ManifestTracker(Protocol):
    """The part of the state store this processor uses (see StateStore)."""

    async def set_manifest_status(
        self,
        manifest_id: str,
        status: Any,
        *,
        detail: str = "",
        expect: Any = None,
        quarantined: Any = None,
    ) -> Any: ...


def storage_for(aws: AwsSettings | None) -> Storage:
    """How worker processes reach S3: the pipeline's ``[aws]`` settings, endpoints pinned.

    The endpoints are resolved here, where the environment chose them. No
    credentials are passed: each worker process resolves its own from the
    standard chain, see :class:`s3flow.pipelines.ndjson_parquet.compaction.tasks.Storage`.
    """
    from s3flow.pipelines.ndjson_parquet.compaction.tasks import Storage

    return Storage(kind="s3", aws=pin_endpoints(aws or AwsSettings()))


def target_for_sink(sink: Any) -> Target:
    """Where the parts go, from the pipeline's sink (S3 prefix or local directory)."""
    from s3flow.pipelines.ndjson_parquet.compaction.tasks import Target

    if isinstance(sink, S3Sink):
        return Target(kind="s3", bucket=sink.bucket, prefix=sink.prefix)
    if isinstance(sink, LocalDirSink):
        return Target(kind="local", directory=str(sink.directory))
    raise ConfigError(f"parquet-compact cannot write to {type(sink).__name__} outputs")


async def read_manifest(ctx: ProcessContext) -> Manifest:
    """Read and parse the event's manifest object."""
    # Not final: the compaction it lists is the work, and keeps the slot.
    reader = await ctx.open(final=False)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in reader:
            size += len(chunk)
            if size > MAX_MANIFEST_BYTES:
                raise ManifestError(f"manifest {ctx.event.uri()} is larger than the limit")
            chunks.append(chunk)
    finally:
        reader.close()
    return parse_manifest(b"".join(chunks))


class ParquetCompactProcessor(OptionsProcessor[CompactionOptions]):
    """Compacts the NDJSON files listed by a sealed manifest into Parquet parts."""

    name: ClassVar[str] = "parquet-compact"
    cpu_bound: ClassVar[bool] = True

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._executor: Executor | None = None
        self._aws: AwsSettings | None = None

    @property
    def executor(self) -> Executor:
        """The executor (created on first use, shared by concurrent manifests)."""
        if self._executor is None:
            from s3flow.pipelines.ndjson_parquet.compaction.executors import make_executor

            self._executor = make_executor(
                self.opts.executor,
                processes=self.opts.worker_processes,
                master=self.opts.spark_master,
                conf=self.opts.spark_conf,
            )
        return self._executor

    async def start(self, pipeline: PipelineContext) -> None:
        """Start the local executor's worker processes (Spark starts on first use)."""
        self._aws = pipeline.aws
        if self.opts.executor == "local":
            from s3flow.pipelines.ndjson_parquet.compaction.executors import LocalExecutor

            ex = self.executor
            if isinstance(ex, LocalExecutor):
                await ex.warm()

    async def stop(self) -> None:
        """Stop the worker processes / Spark session."""
        ex, self._executor = self._executor, None
        if ex is not None:
            await ex.close()

    async def process(self, ctx: ProcessContext) -> Result:
        """Compact the manifest ``ctx.event`` names; outputs are the Parquet parts."""
        from s3flow.pipelines.ndjson_parquet.compaction.job import compact_manifest

        manifest = await read_manifest(ctx)
        tracker = _tracker(ctx.store)
        await _set_status(tracker, manifest, "processing")
        try:
            report = await compact_manifest(
                manifest,
                self.opts,
                storage=storage_for(self._aws),
                target=target_for_sink(ctx.sink),
                executor=self.executor,
                max_uncompressed_bytes=ctx.max_uncompressed_bytes,
            )
            for f, reason in report.quarantined:
                log.warning("quarantined %s: %s", f.uri(), reason)
                await tag_quarantined(ctx.s3, f.bucket, f.key, reason, f.version_id)
        except S3flowError as exc:
            await _set_status(tracker, manifest, "failed", f"{exc.error_class}: {exc}")
            raise
        except Exception as exc:
            await _set_status(tracker, manifest, "failed", f"{type(exc).__name__}: {exc}")
            raise
        for _, reason in report.superseded:
            log.info("left out of manifest %s: %s", manifest.manifest_id, reason)
        for warning in report.warnings:
            log.warning("manifest %s: %s", manifest.manifest_id, warning)
        if report.malformed_lines and self.opts.malformed_lines == "skip":
            # The Result's detail keeps the samples, but a worker stores only its summary:
            # the log is where an operator finds which lines were dropped.
            log.warning(
                "manifest %s: %d malformed lines skipped, e.g. %s",
                manifest.manifest_id,
                report.malformed_lines,
                "; ".join(report.malformed_samples),
            )
        await _set_status(
            tracker,
            manifest,
            "completed",
            _summary(report),
            quarantined=[*report.quarantined, *report.superseded],
        )
        ctx.report_progress(report.compressed_bytes)
        return result_of(report)


def result_of(report: CompactionReport) -> Result:
    """The processor Result for a compaction report."""
    return Result(
        outputs=report.outputs,
        counters={
            "rows": report.rows,
            "files": report.files,
            "parts": len(report.parts),
            "bytes_in": report.compressed_bytes,
            "bytes_out": sum(p.bytes for p in report.parts),
            "malformed_lines": report.malformed_lines,
            "files_quarantined": len(report.quarantined),
            "files_superseded": len(report.superseded),
            "stale_parts_deleted": len(report.stale_deleted),
        },
        detail=report.as_dict(),
    )


def _summary(report: CompactionReport) -> str:
    text = f"{len(report.parts)} parts, {report.rows} rows"
    if report.malformed_lines:
        text += f", {report.malformed_lines} malformed lines skipped"
    if report.quarantined:
        text += f", {len(report.quarantined)} files quarantined"
    if report.superseded:
        text += f", {len(report.superseded)} files left out (changed or gone since sealing)"
    return text


def _tracker(store: Any) -> _ManifestTracker | None:
    if store is not None and hasattr(store, "set_manifest_status"):
        return store  # type: ignore[no-any-return]
    return None


async def _set_status(
    tracker: _ManifestTracker | None,
    manifest: Manifest,
    status: str,
    detail: str = "",
    *,
    quarantined: list[tuple[InputFile, str]] | None = None,
) -> None:
    """Move the manifest's record (and its files) to ``status``, when the store knows it.

    A manifest the store does not know (written by hand, or by another
    deployment) is compacted without state. A completed manifest compacted
    again (``s3flow run compact`` by hand) stays completed. Files held out
    (``quarantined``) are recorded quarantined with their reason. Any other
    state-store failure is logged and raised as retryable: the message comes
    back and the compaction (idempotent) runs again, so the record is not
    left behind.
    """
    if tracker is None:
        return
    from s3flow.state.records import (
        ManifestStatus,
        ObjectId,
        StateError,
        TransitionError,
        UnknownManifestError,
    )

    held = {
        ObjectId(f.bucket, f.key, f.version_id or (f.etag or "").strip('"')): reason
        for f, reason in quarantined or []
    }
    try:
        await tracker.set_manifest_status(
            manifest.manifest_id,
            ManifestStatus(status),
            detail=detail[:1000],
            **({"quarantined": held} if held else {}),
        )
    except TransitionError as exc:
        log.info("manifest %s: state not moved to %s: %s", manifest.manifest_id, status, exc)
    except UnknownManifestError as exc:
        log.info("manifest %s: not tracked in the state store (%s)", manifest.manifest_id, exc)
    except StateError as exc:
        log.warning(
            "manifest %s: the state store could not record %s: %s",
            manifest.manifest_id,
            status,
            exc,
        )
        raise RetryableError(
            f"manifest {manifest.manifest_id}: state store could not record {status}: {exc}"
        ) from exc
