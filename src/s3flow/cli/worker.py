"""`s3flow worker`: run the pipelines."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError

from s3flow.cli.common import ConfigOpt, app, err_console, exit_on_error, log, settings_from
from s3flow.errors import ConfigError
from s3flow.metrics import peak_rss_mb as peak_rss_mb_now
from s3flow.settings import PipelineSettings, Settings


@app.command()
def worker(
    config: ConfigOpt = None,
    burst: Annotated[
        bool,
        typer.Option(
            "--burst",
            help=(
                "Exit 0 once the queues are drained and nothing is in flight; exit 2 with "
                "the reason if a queue cannot be read (4 failed receives in a row, 12 once "
                "it has been read)."
            ),
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

    SIGTERM/SIGINT stop polling (a receive on the wire is waited for, up to wait_time_s,
    and what it brings put back), give in-flight objects shutdown_grace_s to finish,
    release the rest (visibility 0), flush acks and exit 0; a second signal stops the
    waits at once.
    """
    from s3flow.app import run_worker

    with exit_on_error():
        settings = settings_from(config, _worker_overrides(shutdown_grace_s))
        if concurrency is not None:
            _override_concurrency(settings, concurrency)
        metrics = asyncio.run(
            run_worker(settings, burst=burst, pipelines=pipeline or None, handle_signals=True)
        )
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


def _override_concurrency(settings: Settings, value: int) -> None:
    """``--concurrency``: every pipeline's ``concurrency`` (ConfigError naming the flag)."""
    low, high = _field_bounds(PipelineSettings, "concurrency")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(
            f"--concurrency {value}: must be between {low} and {high} "
            "(objects processed at once by each pipeline)"
        )
    for p in settings.pipelines:
        try:
            p.concurrency = value
        except ValidationError as exc:
            problems = "; ".join(str(e["msg"]) for e in exc.errors())
            raise ConfigError(
                f"--concurrency {value}: not valid for pipeline {p.name!r}: {problems}"
            ) from exc


def _field_bounds(model: type[BaseModel], name: str) -> tuple[int | None, int | None]:
    """The inclusive (``ge``, ``le``) bounds of ``model``'s integer field ``name``."""
    low = high = None
    for item in model.model_fields[name].metadata:
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
    return low, high


def _worker_overrides(grace: float | None) -> dict[str, Any]:
    return {"worker": {"shutdown_grace_s": grace}} if grace is not None else {}
