"""`s3flow backfill` and `s3flow reprocess`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from s3flow.cli.common import (
    ConfigOpt,
    PipelineOpt,
    app,
    console,
    err_console,
    exit_on_error,
    one_pipeline,
    settings_from,
    with_progress,
)


@app.command()
def backfill(
    pipeline: PipelineOpt = None,
    config: ConfigOpt = None,
    prefix: Annotated[
        str | None,
        typer.Option(
            "--prefix",
            help="Only keys with this prefix; it narrows the pipeline's prefix, so it must "
            "start with it.",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only objects modified at or after this time: YYYY-MM-DD[THH:MM[:SS]], "
            "with an offset (+02:00, Z) or, without one, UTC.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Enqueue completed objects too: process them anew."),
    ] = False,
) -> None:
    """Enqueue notifications for existing objects not yet completed (safe to run twice)."""
    _run_backfill(
        config, pipeline, prefix=prefix, keys=None, since=since, force=force, command="backfill"
    )


@app.command()
def reprocess(
    keys: Annotated[
        list[str] | None, typer.Argument(help="Object keys to process again.", show_default=False)
    ] = None,
    pipeline: PipelineOpt = None,
    config: ConfigOpt = None,
    prefix: Annotated[
        str | None,
        typer.Option(
            "--prefix",
            help="Every object under this prefix (starting with the pipeline's prefix).",
        ),
    ] = None,
) -> None:
    """Process objects again on purpose, completed or not (KEY... or --prefix).

    Only keys the pipeline takes (its prefix, suffix and key_regex): a KEY it does not
    take is refused, naming why, before anything is enqueued.
    """
    if bool(keys) == (prefix is not None):
        raise typer.BadParameter("give object keys or --prefix (one of the two)")
    _run_backfill(
        config,
        pipeline,
        prefix=prefix,
        keys=keys or None,
        since=None,
        force=True,
        command="reprocess",
    )


def _run_backfill(
    config: Path | None,
    pipeline: str | None,
    *,
    prefix: str | None,
    keys: list[str] | None,
    since: str | None,
    force: bool,
    command: str,
) -> None:
    """Run a backfill for ``command`` (``backfill`` or ``reprocess``, named in its errors)."""
    from datetime import UTC, datetime

    from rich.progress import Progress

    from s3flow.app import open_store
    from s3flow.ops.backfill import backfill as do_backfill
    from s3flow.ops.backfill import listing_prefix

    since_dt = None
    if since:
        try:
            since_dt = datetime.fromisoformat(since)
        except ValueError as exc:
            raise typer.BadParameter(
                "use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS], with an offset (+02:00, Z) or, "
                "without one, UTC",
                param_hint="--since",
            ) from exc
        if since_dt.tzinfo is None:
            since_dt = since_dt.replace(tzinfo=UTC)

    # A bad configuration, pipeline or --prefix is told before any progress bar is drawn.
    with exit_on_error():
        settings = settings_from(config)
        p = one_pipeline(settings, pipeline)
        listing_prefix(p, None if keys else prefix, command)

    async def go(progress: Progress) -> Any:
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
                command=command,
                on_progress=lambda listed, enq: shown(progress, task, listed, enq),
            )

    def shown(progress: Progress, task: Any, listed: int, enq: int) -> None:
        seen.update(listed=listed, enqueued=enq)  # for the summary of an interrupted run
        progress.update(task, completed=listed, description=f"listed {listed}, enqueued {enq}")

    seen = {"listed": 0, "enqueued": 0}
    try:
        r = with_progress(go)
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: listed {seen['listed']}, enqueued at least {seen['enqueued']} "
            "(a batch being sent may have gone too); what was enqueued stays enqueued. "
            + _go_on(command, force, p.name),
            highlight=False,
        )
        raise typer.Exit(130) from None
    busy = f", being processed now {r.busy}" if r.busy else ""
    older = f", modified before --since {r.older}" if since else ""
    retry = f", failed and awaiting their retry {r.awaiting_retry}" if r.awaiting_retry else ""
    dead = f", dead-lettered {r.dead}" if r.dead else ""
    quarantined = f", quarantined {r.quarantined}" if r.quarantined else ""
    requeued = (
        f" ({r.requeued} said queued but the queue held no message: enqueued again)"
        if r.requeued
        else ""
    )
    console.print(
        f"listed {r.listed}: enqueued {r.enqueued}{requeued}, already completed "
        f"{r.already_done}, already queued {r.already_queued}{retry}{dead}{quarantined}, "
        f"filtered {r.filtered}{older}{busy}"
    )
    if r.dead or r.quarantined:
        err_console.print(
            f"{r.dead + r.quarantined} dead-lettered or quarantined file(s) were left as they "
            f"are (a plain backfill does not send them again): `s3flow dlq redrive -p {p.name}` "
            f"sends the dead-lettered ones back, `s3flow files release KEY -p {p.name}` or "
            f"`s3flow reprocess -p {p.name} KEY...` any of them.",
            highlight=False,
        )
    if r.awaiting_retry:
        err_console.print(
            f"{r.awaiting_retry} failed file(s) were left to their retry (or to the return "
            "of the message a stopped worker held): their notification comes back after its "
            "visibility timeout. If it is gone (`s3flow files --status "
            "failed` shows them still failed long after), `s3flow reprocess KEY...` sends "
            "them again.",
            highlight=False,
        )


def _go_on(command: str, force: bool, pipeline: str) -> str:
    """What to run after an interrupted ``command``: a plain backfill skips what it
    queued; a forced one (reprocess) enqueues and resets every object again."""
    if not force:
        return (
            f"Run `s3flow {command}` again to go on: what is already queued is not enqueued twice"
        )
    return (
        f"Running `s3flow {command}` again starts over: it enqueues every object again, "
        "those enqueued (or processed) since included. To go on with what is left, "
        f"name those objects (`s3flow reprocess -p {pipeline} KEY...`) or a narrower "
        "--prefix (objects are listed in key order)"
    )
