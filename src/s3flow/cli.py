"""The ``s3flow`` command line (Typer + Rich)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from s3flow import __version__
from s3flow.errors import S3flowError
from s3flow.events import content_part
from s3flow.logs import setup_logging
from s3flow.metrics import peak_rss_mb as peak_rss_mb_now
from s3flow.settings import CONFIG_ENV, PipelineSettings, Settings, load_settings

app = typer.Typer(
    name="s3flow",
    help="Turn files landing in S3 into processed outputs: S3 -> SQS -> s3flow worker -> outputs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("s3flow.cli")

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar=CONFIG_ENV,
        help=f"Path to s3flow.toml (or ${CONFIG_ENV}).",
        show_default=False,
    ),
]
_state: dict[str, Any] = {"log_format": None, "log_level": None}


def _version(value: bool) -> None:
    if value:
        console.print(f"s3flow {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format", help="Log format: text or json (default from settings: text)."
        ),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """s3flow: reliable, fast S3 -> SQS file processing."""
    if log_format is not None and log_format not in ("text", "json"):
        raise typer.BadParameter("must be 'text' or 'json'", param_hint="--log-format")
    if log_level is not None and log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter("must be DEBUG, INFO, WARNING or ERROR", param_hint="--log-level")
    _state["log_format"] = log_format
    _state["log_level"] = log_level.upper() if log_level else None


def _settings(config: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    worker_over: dict[str, Any] = {}
    if _state["log_format"]:
        worker_over["log_format"] = _state["log_format"]
    if _state["log_level"]:
        worker_over["log_level"] = _state["log_level"]
    over = dict(overrides or {})
    if worker_over:
        over["worker"] = {**over.get("worker", {}), **worker_over}
    settings = load_settings(config, over)
    setup_logging(settings.worker.log_format, settings.worker.log_level)
    return settings


def _fail(exc: BaseException) -> typer.Exit:
    # Escaped: messages quote config keys like [pipelines.options], which Rich
    # would take for markup; not wrapped, so they stay greppable.
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2 if isinstance(exc, S3flowError) else 1)


@app.command()
def worker(
    config: ConfigOpt = None,
    burst: Annotated[
        bool,
        typer.Option(
            "--burst", help="Exit 0 once the queues are drained and nothing is in flight."
        ),
    ] = False,
    pipeline: Annotated[
        list[str] | None,
        typer.Option("--pipeline", "-p", help="Run only this pipeline (repeatable)."),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", help="Override every pipeline's concurrency.")
    ] = None,
    shutdown_grace_s: Annotated[
        float | None, typer.Option("--shutdown-grace-s", help="Override worker.shutdown_grace_s.")
    ] = None,
) -> None:
    """Run the worker: consume S3 notifications from SQS and process each object.

    SIGTERM/SIGINT stop polling at once, give in-flight objects shutdown_grace_s to
    finish, release the rest (visibility 0), flush acks and exit 0.
    """
    from s3flow.app import run_worker

    try:
        settings = _settings(config, _worker_overrides(shutdown_grace_s))
        if concurrency is not None:
            for p in settings.pipelines:
                p.concurrency = concurrency
        metrics = asyncio.run(
            run_worker(settings, burst=burst, pipelines=pipeline or None, handle_signals=True)
        )
    except S3flowError as exc:
        raise _fail(exc) from exc
    summary = {name: m.as_dict() for name, m in metrics.pipelines.items()}
    peak_rss_mb = peak_rss_mb_now()
    if settings.worker.log_format == "json":
        log.info(
            "worker summary",
            extra={"event": "worker-summary", "pipelines": summary, "peak_rss_mb": peak_rss_mb},
        )
    else:
        for name, m in metrics.pipelines.items():
            err_console.print(
                f"[bold]{name}[/]: processed {m.objects_processed}, "
                f"duplicates {m.duplicates}, skipped {m.objects_skipped}, "
                f"quarantined {m.quarantined}, dead-lettered {m.dead_lettered}, "
                f"retried {m.retried}, released {m.released}, ack failures {m.ack_failures}",
                highlight=False,
            )
        err_console.print(f"peak RSS {peak_rss_mb} MB", highlight=False)


def _worker_overrides(grace: float | None) -> dict[str, Any]:
    return {"worker": {"shutdown_grace_s": grace}} if grace is not None else {}


@app.command()
def provision(
    config: ConfigOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan; change nothing.")
    ] = False,
) -> None:
    """Create or verify buckets (encrypted, no public access), queues + DLQs, notifications.

    Idempotent: a second run changes nothing and says so.
    """
    from s3flow.app import provision_all as do_provision

    try:
        settings = _settings(config)
        changes = asyncio.run(do_provision(settings, dry_run=dry_run))
    except S3flowError as exc:
        raise _fail(exc) from exc
    table = Table(title="provision (dry run)" if dry_run else "provision")
    table.add_column("resource")
    table.add_column("name")
    table.add_column("action")
    table.add_column("detail")
    for c in changes:
        style = "green" if c.action == "unchanged" else "yellow"
        table.add_row(c.kind, c.name, f"[{style}]{c.action}[/]", c.detail)
    console.print(table)
    if all(c.action == "unchanged" for c in changes):
        console.print("everything already in place: nothing changed")


@app.command()
def status(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per pipeline: messages visible / in flight / delayed, and DLQ depth."""
    from s3flow.app import queue_status, state_summary

    try:
        settings = _settings(config)
        rows = asyncio.run(queue_status(settings))
        states = {s.pipeline: s for s in asyncio.run(state_summary(settings))}
    except S3flowError as exc:
        raise _fail(exc) from exc
    if as_json:
        print(
            json.dumps(
                [
                    {
                        **r.__dict__,
                        "state": states[r.pipeline].__dict__ if r.pipeline in states else None,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        if any(r.error for r in rows):
            raise typer.Exit(1)
        return
    table = Table(title="s3flow status")
    for col in ("pipeline", "queue", "visible", "in flight", "delayed", "DLQ", "DLQ depth"):
        table.add_column(col)
    for r in rows:

        def n(v: int | None) -> str:
            return "?" if v is None else str(v)

        table.add_row(
            r.pipeline,
            r.queue,
            n(r.visible),
            n(r.in_flight),
            n(r.delayed),
            r.dlq,
            ("[red]" if r.dlq_depth else "") + n(r.dlq_depth),
        )
    console.print(table)
    if states:
        st = Table(title="state store")
        for col in (
            "pipeline",
            "completed",
            "processing",
            "failed",
            "dead",
            "quarantined",
            "received",
            "duplicates",
            "oldest in flight",
        ):
            st.add_column(col)
        for s_ in states.values():
            c = s_.counts
            st.add_row(
                s_.pipeline,
                *(
                    str(c.get(k, 0))
                    for k in (
                        "completed",
                        "processing",
                        "failed",
                        "dead",
                        "quarantined",
                        "received",
                    )
                ),
                str(s_.duplicates),
                f"{s_.oldest_in_flight_s:.0f}s" if s_.oldest_in_flight_s is not None else "-",
            )
        console.print(st)
    for r in rows:
        if r.error:
            err_console.print(f"[red]{r.pipeline}:[/] {escape(str(r.error))}", highlight=False)
    if any(r.error for r in rows):
        raise typer.Exit(1)


files_app = typer.Typer(
    help="Per-object lifecycles from the state store (list, show history, release quarantine).",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(files_app, name="files")


def _ts(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


@files_app.callback()
def files_list(
    ctx: typer.Context,
    config: ConfigOpt = None,
    status_: Annotated[
        str | None,
        typer.Option("--status", help="received|processing|completed|failed|dead|quarantined"),
    ] = None,
    pipeline: Annotated[
        str | None, typer.Option("--pipeline", "-p", help="Only this pipeline.")
    ] = None,
    key_prefix: Annotated[
        str | None, typer.Option("--key-prefix", help="Only keys with this prefix.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many rows.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List object lifecycles (most recently updated first)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"config": config}
        return
    from s3flow.app import open_store
    from s3flow.state.base import FileStatus

    try:
        settings = _settings(config)
        st = FileStatus(status_) if status_ else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--status") from exc
    except S3flowError as exc:
        raise _fail(exc) from exc

    async def go() -> list[Any]:
        async with open_store(settings) as store:
            if store is None:
                raise S3flowError("no state store configured (state.url = 'none')")
            return await store.list_files(
                status=st, pipeline=pipeline, key_prefix=key_prefix, limit=limit
            )

    try:
        rows = asyncio.run(go())
    except S3flowError as exc:
        raise _fail(exc) from exc
    if as_json:
        print(json.dumps([{**r.__dict__, "status": r.status.value} for r in rows], indent=2))
        return
    table = Table(title=f"s3flow files ({len(rows)})")
    for col in ("pipeline", "bucket", "key", "version", "status", "attempts", "updated", "error"):
        table.add_column(col)
    for r in rows:
        err = f"{r.last_error_class}: {r.last_error}" if r.last_error_class else ""
        table.add_row(
            r.pipeline,
            r.bucket,
            r.key,
            r.version[:12],
            r.status.value,
            str(r.attempts),
            _ts(r.updated_at),
            err[:80],
        )
    console.print(table)


@files_app.command("show")
def files_show(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The object key.")],
    config: ConfigOpt = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help="Bucket (default: any).")] = None,
) -> None:
    """One object's full history: every version, every transition."""
    from s3flow.app import open_store
    from s3flow.state.base import ObjectId

    config = config or (ctx.obj or {}).get("config")
    try:
        settings = _settings(config)
    except S3flowError as exc:
        raise _fail(exc) from exc

    async def go() -> tuple[list[Any], list[Any], dict[int, str], dict[int, Any]]:
        async with open_store(settings) as store:
            if store is None:
                raise S3flowError("no state store configured (state.url = 'none')")
            recs = [
                r
                for r in await store.list_files(key_prefix=key, limit=10000)
                if r.key == key and (bucket is None or r.bucket == bucket)
            ]
            hist = []
            for b in sorted({r.bucket for r in recs}):
                hist += [(b, h) for h in await store.history(b, key)]
            checkpoints = {}
            for i, r in enumerate(recs):
                name = _checkpoint_name(settings, r)
                value = await store.get_checkpoint(name) if name else None
                if value:
                    checkpoints[i] = value
            tracked = {}
            for i, r in enumerate(recs):
                where = _manifest_tracking(settings, r)
                if where is not None:
                    t = await store.get_tracked(
                        *where, ObjectId(r.bucket, r.key, content_part(r.version))
                    )
                    if t is not None:
                        tracked[i] = t
            return recs, hist, checkpoints, tracked

    try:
        recs, hist, checkpoints, tracked = asyncio.run(go())
    except S3flowError as exc:
        raise _fail(exc) from exc
    if not recs:
        err_console.print(f"no record of {key!r} in the state store")
        raise typer.Exit(1)
    for i, r in enumerate(recs):
        console.print(
            f"[bold]s3://{r.bucket}/{r.key}[/] version {r.version or '-'}: "
            f"[bold]{r.status.value}[/], attempts {r.attempts}, pipeline {r.pipeline}",
            highlight=False,
        )
        if r.last_error_class:
            console.print(f"  last error: {r.last_error_class}: {r.last_error}", highlight=False)
        for o in r.outputs:
            console.print(f"  output: {o}", highlight=False)
        if i in checkpoints:
            console.print(f"  checkpoint: {checkpoints[i]}", highlight=False, soft_wrap=True)
        if i in tracked:
            # The builder's record says only that it tracked the file; what the
            # compaction did with it (completed, quarantined...) is here.
            t = tracked[i]
            console.print(
                f"  in manifest {t.manifest_id or '(none yet)'} ({t.dataset} {t.date}): "
                f"[bold]{t.status.value}[/]" + (f": {escape(t.detail)}" if t.detail else ""),
                highlight=False,
                soft_wrap=True,
            )
    table = Table(title="history")
    for col in ("at", "bucket", "version", "from", "to", "worker", "detail"):
        table.add_column(col)
    for b, h in hist:
        table.add_row(
            _ts(h.at),
            b,
            h.version[:12],
            h.old.value if h.old else "-",
            h.new.value,
            h.worker_id or "-",
            h.detail[:80],
        )
    console.print(table)


def _pipeline_of(settings: Settings, record: Any, processor: str) -> PipelineSettings | None:
    """The configured pipeline a record belongs to, if it runs ``processor`` (else None)."""
    p = next((p for p in settings.pipelines if p.name == record.pipeline), None)
    return p if p is not None and p.processor == processor else None


def _manifest_tracking(settings: Settings, record: Any) -> tuple[str, str] | None:
    """(dataset, date) an ndjson-manifest pipeline tracks a record's file under, if known.

    Known when the date comes from the key (the default); a date read from the
    file's first record is not kept, so such files are not looked up.
    """
    pipeline = _pipeline_of(settings, record, "ndjson-manifest")
    if pipeline is None:
        return None
    from s3flow.manifests import date_from_key
    from s3flow.processors.ndjson_manifest import NdjsonManifestOptions

    opts = NdjsonManifestOptions.model_validate(pipeline.options)
    if opts.date_source != "key":
        return None
    day = date_from_key(record.key, re.compile(opts.date_pattern))
    return None if day is None else (opts.dataset or pipeline.name, day)


def _checkpoint_name(settings: Settings, record: Any) -> str | None:
    """The state-store checkpoint a record's pipeline mirrors (csv-to-kafka), if any."""
    pipeline = _pipeline_of(settings, record, "csv-to-kafka")
    if pipeline is None or "topic" not in pipeline.options:
        return None
    from s3flow.csvkafka.checkpoint import ObjectRef, mirror_name

    ref = ObjectRef(record.bucket, record.key, content_part(record.version))
    return mirror_name(str(pipeline.options["topic"]), ref)


@files_app.command("release")
def files_release(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The object key.")],
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="The pipeline.")],
    config: ConfigOpt = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Only this recorded version.")
    ] = None,
) -> None:
    """Release an object whatever its state (quarantined, dead, failed, completed).

    Removes the quarantine tags, resets its records to 'received' and enqueues
    it again, so its current upload is processed anew.
    """
    from s3flow.app import open_store
    from s3flow.ops import release

    config = config or (ctx.obj or {}).get("config")

    async def go() -> list[Any]:
        settings = _settings(config)
        async with open_store(settings) as store:
            if store is None:
                raise S3flowError("no state store configured (state.url = 'none')")
            return await release(settings, settings.pipeline(pipeline), store, key, version)

    try:
        released = asyncio.run(go())
    except S3flowError as exc:
        raise _fail(exc) from exc
    for oid in released:
        console.print(f"released s3://{oid.bucket}/{oid.key} ({oid.version}): enqueued again")


dlq_app = typer.Typer(
    help="Inspect dead-lettered messages and move them back.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")
PipelineOpt = Annotated[
    str | None, typer.Option("--pipeline", "-p", help="Pipeline (default: the only one).")
]


def _one_pipeline(settings: Settings, name: str | None) -> Any:
    if name:
        return settings.pipeline(name)
    if len(settings.pipelines) != 1:
        raise S3flowError("several pipelines are configured: choose one with --pipeline")
    return settings.pipelines[0]


async def _list_dlq(settings: Settings, p: Any, max_n: int) -> list[Any]:
    from s3flow.app import open_store
    from s3flow.ops import list_dlq

    async with open_store(settings) as store:
        return await list_dlq(settings, p, max_n=max_n, store=store)


@dlq_app.command("list")
def dlq_list(
    config: ConfigOpt = None,
    pipeline: PipelineOpt = None,
    max_n: Annotated[int, typer.Option("--max", help="At most this many messages.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List dead-lettered messages with their error class and reason."""
    try:
        settings = _settings(config)
        msgs = asyncio.run(_list_dlq(settings, _one_pipeline(settings, pipeline), max_n))
    except S3flowError as exc:
        raise _fail(exc) from exc
    if as_json:
        print(json.dumps([m.__dict__ for m in msgs], indent=2))
        return
    table = Table(title=f"DLQ messages ({len(msgs)})")
    for col in ("message id", "objects", "error class", "error", "sent"):
        table.add_column(col)
    for m in msgs:
        table.add_row(
            m.message_id,
            "\n".join(m.keys) or m.body[:60],
            m.error_class or "-",
            (m.error or m.state_note or "-")[:160],
            m.sent_at or "-",
        )
    console.print(table)


@dlq_app.command("show")
def dlq_show(
    message_id: Annotated[str, typer.Argument(help="The DLQ message id.")],
    config: ConfigOpt = None,
    pipeline: PipelineOpt = None,
) -> None:
    """Show one dead-lettered message: body and error attributes."""
    try:
        settings = _settings(config)
        msgs = asyncio.run(_list_dlq(settings, _one_pipeline(settings, pipeline), 1000))
    except S3flowError as exc:
        raise _fail(exc) from exc
    for m in msgs:
        if m.message_id == message_id:
            print(json.dumps(m.__dict__, indent=2))
            return
    err_console.print(f"message {message_id} is not on the DLQ")
    raise typer.Exit(1)


@dlq_app.command("redrive")
def dlq_redrive(
    config: ConfigOpt = None,
    pipeline: PipelineOpt = None,
    max_n: Annotated[int | None, typer.Option("--max", help="Move at most this many.")] = None,
    lease_s: Annotated[
        int,
        typer.Option(
            "--lease-s",
            min=1,
            max=43200,
            help="How long a message being moved stays hidden (an interrupted run's "
            "messages come back after it; the next run waits for them).",
        ),
    ] = 30,
) -> None:
    """Move dead-lettered messages back to the source queue (never losing one).

    Restartable: stop it (Ctrl-C) or kill it at any moment and run it again;
    every message ends up on the source queue, none stays behind on the DLQ.
    """
    from rich.progress import Progress

    from s3flow.app import open_store
    from s3flow.ops import redrive

    async def go(progress: Progress) -> Any:
        settings = _settings(config)
        p = _one_pipeline(settings, pipeline)
        task = progress.add_task("redriving", total=max_n)
        async with open_store(settings) as store:
            return await redrive(
                settings,
                p,
                max_n=max_n,
                store=store,
                lease_s=lease_s,
                on_moved=lambda n: progress.advance(task, n),
                on_wait=lambda n, secs: err_console.print(
                    f"{n} DLQ message(s) are held by an earlier, interrupted redrive or a "
                    f"`dlq list`; waiting up to {secs:.0f}s for them to come back",
                    highlight=False,
                ),
            )

    try:
        with Progress(console=err_console) as progress:
            report = asyncio.run(go(progress))
    except S3flowError as exc:
        raise _fail(exc) from exc
    if report.method == "message-move-task":
        console.print("started an SQS message move task (DLQ -> source queue)")
    else:
        if report.note:
            err_console.print(report.note, highlight=False)
        extra = f" ({report.waited_for} left by an interrupted run)" if report.waited_for else ""
        console.print(f"moved {report.moved} message(s) back to the source queue{extra}")


@app.command()
def backfill(
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="The pipeline to backfill.")],
    config: ConfigOpt = None,
    prefix: Annotated[
        str | None, typer.Option("--prefix", help="Only keys with this prefix.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only objects modified at/after (YYYY-MM-DD[THH:MM])."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Enqueue completed objects too: process them anew."),
    ] = False,
) -> None:
    """Enqueue notifications for existing objects not yet completed (safe to run twice)."""
    _run_backfill(config, pipeline, prefix=prefix, keys=None, since=since, force=force)


@app.command()
def reprocess(
    keys: Annotated[
        list[str] | None, typer.Argument(help="Object keys to process again.", show_default=False)
    ] = None,
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="The pipeline.")] = "",
    config: ConfigOpt = None,
    prefix: Annotated[
        str | None, typer.Option("--prefix", help="Every object under this prefix.")
    ] = None,
) -> None:
    """Process objects again on purpose, completed or not (KEY... or --prefix)."""
    if not pipeline:
        raise typer.BadParameter("name the pipeline", param_hint="--pipeline/-p")
    if bool(keys) == (prefix is not None):
        raise typer.BadParameter("give object keys or --prefix (one of the two)")
    _run_backfill(config, pipeline, prefix=prefix, keys=keys or None, since=None, force=True)


def _run_backfill(
    config: Path | None,
    pipeline: str,
    *,
    prefix: str | None,
    keys: list[str] | None,
    since: str | None,
    force: bool,
) -> None:
    from datetime import UTC, datetime

    from rich.progress import Progress

    from s3flow.app import open_store
    from s3flow.ops import backfill as do_backfill

    since_dt = None
    if since:
        try:
            since_dt = datetime.fromisoformat(since)
        except ValueError as exc:
            raise typer.BadParameter(
                "use YYYY-MM-DD or YYYY-MM-DDTHH:MM", param_hint="--since"
            ) from exc
        if since_dt.tzinfo is None:
            since_dt = since_dt.replace(tzinfo=UTC)

    async def go(progress: Progress) -> Any:
        settings = _settings(config)
        p = settings.pipeline(pipeline)
        task = progress.add_task("listing and enqueueing", total=None)
        async with open_store(settings) as store:
            return await do_backfill(
                settings,
                p,
                prefix=prefix,
                keys=keys,
                since=since_dt,
                store=store,
                force=force,
                on_progress=lambda listed, enq: progress.update(
                    task, completed=listed, description=f"listed {listed}, enqueued {enq}"
                ),
            )

    try:
        with Progress(console=err_console) as progress:
            r = asyncio.run(go(progress))
    except S3flowError as exc:
        raise _fail(exc) from exc
    busy = f", being processed now {r.busy}" if r.busy else ""
    console.print(
        f"listed {r.listed}: enqueued {r.enqueued}, already completed {r.already_done}, "
        f"already queued {r.already_queued}, filtered {r.filtered}{busy}"
    )


@app.command()
def local(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0 = a free one).")] = 4566,
    host: Annotated[
        str, typer.Option("--host", help="Bind address; keep it on loopback.")
    ] = "127.0.0.1",
) -> None:
    """Run the embedded AWS endpoint (moto server: S3, SQS, DynamoDB) until Ctrl-C or SIGTERM."""
    from s3flow.local import LocalEndpoint, interrupt_on_signals

    # SIGTERM and SIGINT: stop the server, wait for it, exit 0. If this process dies
    # without cleaning up (SIGKILL) the server notices and exits by itself.
    with interrupt_on_signals():
        endpoint = LocalEndpoint(host, port)
        try:
            endpoint.start()
        except KeyboardInterrupt:  # start() has stopped the server already
            console.print("stopped")
            return
        except S3flowError as exc:
            raise _fail(exc) from exc
        try:
            console.print(f"local AWS endpoint running at [bold]{endpoint.url}[/]")
            console.print(f"  export AWS_ENDPOINT_URL={endpoint.url}")
            for k, v in endpoint.env().items():
                if k != "AWS_ENDPOINT_URL":
                    console.print(f"  export {k}={v}")
            console.print("press Ctrl-C to stop")
            while endpoint.pid is not None:
                time.sleep(0.5)
            raise _fail(RuntimeError("the local AWS endpoint exited unexpectedly"))
        except KeyboardInterrupt:
            pass
        finally:
            endpoint.stop()
        console.print("stopped")


@app.command()
def demo(
    endpoint_url: Annotated[
        str | None,
        typer.Option(
            "--endpoint-url", help="Use this endpoint instead of starting an embedded one."
        ),
    ] = None,
) -> None:
    """Zero-setup end to end: embedded endpoint, provision, upload samples, process, summary."""
    from s3flow.demo import run_demo

    setup_logging("text", _state["log_level"] or "WARNING")
    try:
        code = run_demo(console, endpoint_url=endpoint_url)
    except S3flowError as exc:
        raise _fail(exc) from exc
    raise typer.Exit(code)


@app.command("config-reference")
def config_reference() -> None:
    """Print every setting with its type, default and meaning (Markdown)."""
    from s3flow.docs import settings_reference

    print(settings_reference())


run_app = typer.Typer(
    help="Run one job to completion (batch mode): exit 0 on success, non-zero with the reason.",
    no_args_is_help=True,
)
app.add_typer(run_app, name="run")


def _register_pipeline_commands() -> None:
    # Pipeline-specific commands live next to their pipelines' faces; they are
    # attached here, after every shared helper above is defined.
    from s3flow.cli_compact import register as register_compact
    from s3flow.cli_kafka import register as register_kafka
    from s3flow.cli_parquet import register as register_parquet

    register_kafka(app, run_app)
    register_parquet(app, run_app)
    register_compact(app, run_app)


_register_pipeline_commands()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
