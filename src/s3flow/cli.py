"""The ``s3flow`` command line (Typer + Rich)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from s3flow import __version__
from s3flow.errors import S3flowError
from s3flow.logs import setup_logging
from s3flow.metrics import peak_rss_mb as peak_rss_mb_now
from s3flow.settings import CONFIG_ENV, Settings, load_settings

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
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
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
                f"[bold]{name}[/]: processed {m.objects_processed}, skipped {m.objects_skipped}, "
                f"dead-lettered {m.dead_lettered}, retried {m.retried}, released {m.released}, "
                f"ack failures {m.ack_failures}",
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
    from s3flow.provision import provision as do_provision

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
    from s3flow.app import queue_status

    try:
        settings = _settings(config)
        rows = asyncio.run(queue_status(settings))
    except S3flowError as exc:
        raise _fail(exc) from exc
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
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
    for r in rows:
        if r.error:
            err_console.print(f"[red]{r.pipeline}:[/] {r.error}", highlight=False)


@app.command()
def local(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0 = a free one).")] = 4566,
    host: Annotated[
        str, typer.Option("--host", help="Bind address; keep it on loopback.")
    ] = "127.0.0.1",
) -> None:
    """Run the embedded AWS endpoint (moto server: S3, SQS, DynamoDB) until Ctrl-C."""
    from s3flow.local import LocalEndpoint

    try:
        endpoint = LocalEndpoint(host, port).start()
    except S3flowError as exc:
        raise _fail(exc) from exc
    console.print(f"local AWS endpoint running at [bold]{endpoint.url}[/]")
    console.print(f"  export AWS_ENDPOINT_URL={endpoint.url}")
    for k, v in endpoint.env().items():
        if k != "AWS_ENDPOINT_URL":
            console.print(f"  export {k}={v}")
    console.print("press Ctrl-C to stop")
    try:
        while endpoint.pid is not None:
            time.sleep(0.5)
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
