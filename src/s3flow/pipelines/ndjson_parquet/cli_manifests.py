"""CLI commands of the ``ndjson-to-parquet`` pipeline (attached through the processor registry).

``s3flow manifests list | show | pending | seal | retry``.
"""

import asyncio
import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from s3flow.errors import ConfigError, S3flowError
from s3flow.settings import PipelineSettings, Settings
from s3flow.state.base import StateStore
from s3flow.state.records import ManifestRecord, ManifestStatus

if TYPE_CHECKING:
    from s3flow.pipelines.ndjson_parquet.manifest_processor import NdjsonManifestProcessor

manifests_app = typer.Typer(
    help="Manifests of ndjson-to-parquet pipelines: list, show, pending, seal, retry.",
    no_args_is_help=True,
)
BuilderPipelineOpt = Annotated[str, typer.Option("--pipeline", "-p", help="The builder pipeline.")]


def _builder(settings: Settings, name: str) -> "tuple[PipelineSettings, NdjsonManifestProcessor]":
    """The named pipeline and its ndjson-manifest processor (errors: a clean exit)."""
    from s3flow.cli.common import exit_on_error
    from s3flow.pipelines.ndjson_parquet.manifest_processor import NdjsonManifestProcessor
    from s3flow.processors import create_processor

    with exit_on_error():
        p = settings.pipeline(name)
        proc = create_processor(p.processor, p.options)
        if not isinstance(proc, NdjsonManifestProcessor):
            raise ConfigError(
                f"pipeline {name!r} runs {p.processor!r}, not the ndjson-manifest builder"
            )
    return p, proc


async def retry_manifest(store: StateStore, s3: Any, manifest_id: str) -> ManifestRecord:
    """Move a failed manifest back to sealed and publish it again (``manifests retry``).

    The status moves first (compare-and-set: of two racing retries one wins),
    then the JSON is written with ``republish`` = attempts + 1, so the object
    gets a new eTag and the compaction pipeline a new event. A manifest found
    sealed is published again without a status change: a retry whose publish
    failed (or crashed) can always be retried, and compacting a manifest twice
    is harmless (same parts, replaced).
    """
    from s3flow.pipelines.ndjson_parquet.manifests import publish
    from s3flow.sinks.s3 import parse_s3_uri

    m = await store.get_manifest(manifest_id)
    if m is None:
        raise S3flowError(f"no manifest {manifest_id!r}")
    if m.location is None:
        raise S3flowError(f"manifest {manifest_id} was never published")
    if m.status not in (ManifestStatus.FAILED, ManifestStatus.SEALED):
        raise S3flowError(
            f"manifest {manifest_id} is {m.status.value}: only a failed (or sealed) "
            "manifest can be retried"
        )
    bucket, key = parse_s3_uri(m.location)
    suffix = f"{m.dataset}/date={m.date}/{m.manifest_id}.json"
    if not key.endswith(suffix):
        raise S3flowError(f"manifest {manifest_id}: unexpected location {m.location}")
    prefix = key[: -len(suffix)]
    if m.status is ManifestStatus.FAILED:
        m = await store.set_manifest_status(
            manifest_id,
            ManifestStatus.SEALED,
            detail="retry requested",
            expect=ManifestStatus.FAILED,
        )
    await publish(s3, bucket, prefix, m, republish=m.attempts + 1)
    return m


def _doc(m: ManifestRecord) -> dict[str, Any]:
    return {
        "manifest_id": m.manifest_id,
        "dataset": m.dataset,
        "date": m.date,
        "status": m.status.value,
        "trigger": m.trigger,
        "total_files": m.total_files,
        "total_bytes": m.total_bytes,
        "fencing_token": m.fencing_token,
        "sealed_by": m.sealed_by,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
        "location": m.location,
        "attempts": m.attempts,
        "detail": m.detail,
        "files": [f.to_json() for f in m.files],
    }


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Attach this pipeline's commands to the ``s3flow`` app and its ``run`` group."""
    from s3flow.cli.common import (
        ConfigOpt,
        JsonOpt,
        LimitOpt,
        console,
        err_console,
        fail,
        new_table,
        settings_or_exit,
        status_option,
        ts,
        with_store,
    )

    @manifests_app.command("list")
    def manifests_list(
        config: ConfigOpt = None,
        dataset: Annotated[
            str | None, typer.Option("--dataset", "-d", help="Only this dataset.")
        ] = None,
        status_: Annotated[
            str | None,
            typer.Option("--status", help="sealing|sealed|processing|completed|failed"),
        ] = None,
        limit: LimitOpt = 100,
        as_json: JsonOpt = False,
    ) -> None:
        """List manifests, newest first."""
        st = status_option(ManifestStatus, status_)
        settings = settings_or_exit(config)
        rows = with_store(
            settings, lambda s: s.list_manifests(dataset=dataset, status=st, limit=limit)
        )
        if as_json:
            print(json.dumps([{**_doc(m), "files": len(m.files)} for m in rows], indent=2))
            return
        table = new_table(
            f"manifests ({len(rows)})",
            ("id", "date", "status", "trigger", "files", "bytes", "created", "detail"),
        )
        for m in rows:
            table.add_row(
                m.manifest_id,
                m.date,
                m.status.value,
                m.trigger,
                str(m.total_files),
                str(m.total_bytes),
                ts(m.created_at),
                m.detail[:60],
            )
        console.print(table)

    @manifests_app.command("show")
    def manifests_show(
        manifest_id: Annotated[str, typer.Argument(help="The manifest id.")],
        config: ConfigOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """One manifest: status, location and its files with their statuses."""
        settings = settings_or_exit(config)

        async def go(
            store: StateStore,
        ) -> tuple[ManifestRecord | None, list[tuple[str, str]]]:
            m = await store.get_manifest(manifest_id)
            if m is None:
                return None, []
            states = []
            for f in m.files:
                t = await store.get_tracked(m.dataset, m.date, f.id)
                states.append((t.status.value, t.detail) if t is not None else ("?", ""))
            return m, states

        m, states = with_store(settings, go)
        if m is None:
            console.print(f"no manifest {manifest_id!r}", highlight=False)
            raise typer.Exit(1)
        if as_json:
            doc = _doc(m)
            for f, (st, detail) in zip(doc["files"], states, strict=True):
                f["status"], f["detail"] = st, detail
            print(json.dumps(doc, indent=2))
            return
        console.print(
            f"[bold]{m.manifest_id}[/]: [bold]{m.status.value}[/] ({m.trigger}), dataset "
            f"{m.dataset}, date {m.date}, {m.total_files} files, {m.total_bytes} bytes",
            highlight=False,
        )
        console.print(
            f"  sealed by {m.sealed_by} (token {m.fencing_token}) at {ts(m.created_at)}; "
            f"attempts {m.attempts}; location {m.location or '(not published yet)'}",
            highlight=False,
        )
        if m.detail:
            console.print(f"  detail: {m.detail}", highlight=False)
        table = new_table("files", ("bucket", "key", "size", "etag", "status", "detail"))
        for f, (st, detail) in zip(m.files, states, strict=True):
            table.add_row(f.bucket, escape(f.key), str(f.size), f.etag[:12], st, escape(detail))
        console.print(table)

    @manifests_app.command("pending")
    def manifests_pending(
        pipeline: BuilderPipelineOpt,
        config: ConfigOpt = None,
    ) -> None:
        """Pending (not yet manifested) files per date, and which trigger is due."""
        settings = settings_or_exit(config)
        p, proc = _builder(settings, pipeline)
        dataset = proc.opts.dataset or p.name
        rows = with_store(settings, lambda s: s.pending_dates(dataset))
        now = time.time()
        table = new_table(
            f"pending files of {dataset}", ("date", "files", "bytes", "oldest", "due")
        )
        for r in rows:
            table.add_row(
                r.date,
                str(r.count),
                str(r.bytes),
                ts(r.oldest_at),
                proc.triggers.due(r, now) or "-",
            )
        console.print(table)

    @manifests_app.command("seal")
    def manifests_seal(
        pipeline: BuilderPipelineOpt,
        config: ConfigOpt = None,
        all_: Annotated[
            bool,
            typer.Option("--all", help="Seal every pending file, not only the due batches."),
        ] = False,
    ) -> None:
        """Seal due batches now (`--all`: everything pending), e.g. after a burst run."""
        from s3flow.aws import open_clients

        settings = settings_or_exit(config)
        p, proc = _builder(settings, pipeline)

        async def go(store: StateStore) -> list[ManifestRecord]:
            async with open_clients(settings.aws) as clients:
                sealer = proc.make_sealer(
                    store,
                    clients.s3,
                    pipeline=p.name,
                    owner=f"{settings.worker.worker_id}-cli",
                    bucket=p.bucket,
                )
                # Another builder holds the lock: a running worker for a moment, one that
                # died until the lock's TTL. Waited for, as long as that TTL (and a bit).
                deadline = time.monotonic() + sealer.lock_ttl_s + 5
                out: list[ManifestRecord] = await sealer.seal_due(force=all_)
                if sealer.lock_busy:
                    err_console.print(
                        f"another builder holds the sealing lock of {p.name!r} (a running "
                        "worker, or one that died: its lock lasts lock_ttl_s = "
                        f"{sealer.lock_ttl_s:g}s); waiting for it",
                        highlight=False,
                    )
                while sealer.lock_busy and time.monotonic() < deadline:
                    await asyncio.sleep(1.0)
                    out = await sealer.seal_due(force=all_)
                busy[0] = sealer.lock_busy
                return out

        busy = [False]
        sealed = with_store(settings, go)
        for m in sealed:
            console.print(
                f"sealed {m.manifest_id} ({m.trigger}): {m.total_files} files -> {m.location}",
                highlight=False,
            )
        if busy[0]:
            raise fail(
                S3flowError(
                    "another builder still holds the sealing lock: nothing was sealed; "
                    "run the command again later"
                )
            )
        if not sealed:
            hint = "" if all_ else " (no batch is due; --all seals every pending file)"
            console.print(f"nothing to seal{hint}", highlight=False)

    @manifests_app.command("retry")
    def manifests_retry(
        manifest_id: Annotated[str, typer.Argument(help="The failed manifest's id.")],
        config: ConfigOpt = None,
    ) -> None:
        """Retry a failed manifest: mark it sealed and publish it again (new eTag).

        A manifest already sealed (a retry whose publish failed, or one whose
        notification was lost) is published again as it is.
        """
        from s3flow.aws import open_clients

        settings = settings_or_exit(config)

        async def go(store: StateStore) -> ManifestRecord:
            async with open_clients(settings.aws) as clients:
                return await retry_manifest(store, clients.s3, manifest_id)

        m = with_store(settings, go)
        console.print(
            f"{m.manifest_id} is sealed again and republished to {m.location}", highlight=False
        )

    app.add_typer(manifests_app, name="manifests")
