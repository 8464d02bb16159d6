"""``s3flow run compact MANIFEST``: compact one sealed manifest by hand.

The same code path as the worker's ``parquet-compact`` processor: the
manifest is read, its files compacted into Parquet parts under the output,
stale parts of an earlier run removed, the state store updated. Exit 0 on
success; 2 with the reason on an s3flow error (bad manifest, missing input,
S3 failure); 1 on anything unexpected.
"""

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from s3flow.errors import ConfigError
from s3flow.settings import PipelineSettings, Settings

__all__ = ["register"]

PROCESSOR = "parquet-compact"


def _split_uri(uri: str) -> tuple[str, str]:
    from s3flow.sinks.s3 import parse_s3_uri

    try:
        return parse_s3_uri(uri)
    except ConfigError as exc:
        raise ConfigError(f"MANIFEST: {exc}") from exc


def pick_pipeline(
    settings: Settings, name: str | None, bucket: str, key: str
) -> PipelineSettings | None:
    """The compaction pipeline to take the output and options from (None: none configured)."""
    if name:
        p = settings.pipeline(name)
        if p.processor != PROCESSOR:
            raise ConfigError(f"pipeline {name!r} runs {p.processor!r}, not {PROCESSOR!r}")
        return p
    mine = [p for p in settings.pipelines if p.processor == PROCESSOR]
    if len(mine) <= 1:
        return mine[0] if mine else None
    matching = [p for p in mine if p.bucket == bucket and key.startswith(p.prefix)]
    if len(matching) == 1:
        return matching[0]
    names = ", ".join(p.name for p in mine)
    raise ConfigError(f"several {PROCESSOR} pipelines ({names}): choose one with --pipeline")


async def compact_once(
    settings: Settings,
    uri: str,
    *,
    pipeline: str | None = None,
    output: str | None = None,
    option_overrides: dict[str, Any] | None = None,
) -> Any:
    """Compact the manifest at ``uri``; return the processor's Result."""
    from s3flow.app import open_store
    from s3flow.aws import open_clients
    from s3flow.events import ObjectEvent
    from s3flow.pipelines.ndjson_parquet.compact_processor import ParquetCompactProcessor
    from s3flow.processors.base import ProcessContext
    from s3flow.sinks import open_sink

    bucket, key = _split_uri(uri)
    p = pick_pipeline(settings, pipeline, bucket, key)
    out = output or (p.output if p else None)
    if not out:
        raise ConfigError(
            f"no {PROCESSOR} pipeline configured: give --output s3://bucket/prefix/ "
            "(or a directory)"
        )
    options = {**(p.options if p else {}), **(option_overrides or {})}
    processor = ParquetCompactProcessor(options)
    async with open_clients(settings.aws) as clients, open_store(settings) as store:
        ctx = ProcessContext(
            event=ObjectEvent(bucket=bucket, key=key),
            pipeline=p.name if p else "compact",
            worker_id=settings.worker.worker_id,
            s3=clients.s3,
            sink=open_sink(out, clients.s3),
            store=store,
            max_uncompressed_bytes=p.max_uncompressed_bytes if p else None,
        )
        try:
            return await processor.process(ctx)
        finally:
            await processor.stop()


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Attach ``s3flow run compact``."""
    from s3flow.cli.common import ConfigOpt

    @run_app.command("compact")
    def compact(
        manifest: Annotated[
            str, typer.Argument(help="The sealed manifest: s3://bucket/.../<manifest_id>.json")
        ],
        config: ConfigOpt = None,
        pipeline: Annotated[
            str | None,
            typer.Option(
                "--pipeline", "-p", help=f"The {PROCESSOR} pipeline (output and options)."
            ),
        ] = None,
        output: Annotated[
            str | None,
            typer.Option("--output", help="Write the parts here instead (s3://bucket/prefix/)."),
        ] = None,
        executor: Annotated[
            str | None, typer.Option("--executor", help="local or spark (overrides options).")
        ] = None,
        processes: Annotated[
            int | None, typer.Option("--processes", help="Worker processes (local executor).")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Compact one sealed manifest's NDJSON files into Parquet parts (rerunnable).

        A rerun writes the same part names and deletes this manifest's stale
        higher-numbered parts, so no row is ever present twice.
        """
        from s3flow.cli.common import console, fail, settings_from
        from s3flow.errors import S3flowError

        overrides: dict[str, Any] = {}
        if executor is not None:
            overrides["executor"] = executor
        if processes is not None:
            overrides["processes"] = processes
        try:
            settings = settings_from(Path(config) if config else None)
            result = asyncio.run(
                compact_once(
                    settings,
                    manifest,
                    pipeline=pipeline,
                    output=output,
                    option_overrides=overrides,
                )
            )
        except S3flowError as exc:
            raise fail(exc) from exc
        detail = result.detail
        if as_json:
            print(json.dumps(detail, indent=2))
            return
        console.print(
            f"compacted manifest {detail['manifest_id']} ({detail['dataset']} {detail['date']}): "
            f"{detail['files']} files, {detail['rows']} rows -> {len(detail['parts'])} parts, "
            f"{detail['parquet_bytes']} bytes in {detail['seconds']} s",
            highlight=False,
        )
        for part in detail["parts"]:
            console.print(f"  {part['uri']}  rows={part['rows']} bytes={part['bytes']}")
        if detail["malformed_lines"]:
            console.print(f"  malformed lines skipped: {detail['malformed_lines']}")
        for q in detail["quarantined"]:
            console.print(f"  quarantined {q['uri']}: {q['reason']}")
        for s in detail["stale_parts_deleted"]:
            console.print(f"  deleted stale part {s}")
        for warning in detail["warnings"]:
            console.print(f"  warning: {warning}", highlight=False)
