"""`s3flow dlq`: inspect and redrive the dead-letter queue."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from s3flow.cli.common import (
    ConfigOpt,
    JsonOpt,
    PipelineOpt,
    app,
    console,
    err_console,
    exit_on_error,
    fail,
    new_table,
    one_pipeline,
    settings_from,
    with_progress,
)
from s3flow.errors import S3flowError
from s3flow.settings import PipelineSettings, Settings, processing_pipeline

if TYPE_CHECKING:
    from s3flow.ops.dlq import DlqSearch

dlq_app = typer.Typer(
    help="Inspect dead-lettered messages and move them back.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")


def _at_least_one(ctx: typer.Context, value: int | None) -> int | None:
    """``--max``: a count of messages, 1 or more (left out: the command's default)."""
    if value is not None and value < 1:
        default = "to move them all" if ctx.info_name == "redrive" else "for the default (50)"
        raise typer.BadParameter(
            f"must be at least 1 (got {value}): it is how many DLQ messages "
            f"`s3flow dlq {ctx.info_name}` takes; leave --max out {default}"
        )
    return value


def dlq_pipeline(settings: Settings, name: str | None) -> PipelineSettings:
    """The pipeline whose DLQ ``-p`` names: a configured one, or with ``[jobs]`` the
    job worker's ``jobs-processing`` (the processing FIFO queue and its DLQ)."""
    jobs = settings.jobs
    processing = processing_pipeline(jobs) if jobs is not None else None
    if processing is not None and name == processing.name:
        return processing
    if processing is not None and not name:
        # The only configured pipeline is not the only DLQ: say so instead of picking it.
        names = ", ".join([*(p.name for p in settings.pipelines), processing.name])
        raise S3flowError(
            f"several queues have a DLQ ({names}): choose one with --pipeline "
            f"(`-p {processing.name}` for the jobs processing queue {processing.queue!r})"
        )
    try:
        return one_pipeline(settings, name)
    except S3flowError as exc:
        if processing is None:
            raise
        raise S3flowError(
            f"{exc}; `-p {processing.name}` names the jobs processing queue "
            f"{processing.queue!r} (its DLQ {processing.dlq!r})"
        ) from exc


async def _list_dlq(settings: Settings, p: PipelineSettings, max_n: int) -> list[Any]:
    from s3flow.app import open_store
    from s3flow.ops.dlq import list_dlq

    async with open_store(settings) as store:
        return await list_dlq(settings, p, max_n=max_n, store=store)


async def _find_dlq_message(
    settings: Settings, p: PipelineSettings, message_id: str, max_scan: int
) -> DlqSearch:
    from s3flow.app import open_store
    from s3flow.ops.dlq import find_dlq_message

    async with open_store(settings) as store:
        return await find_dlq_message(settings, p, message_id, max_scan=max_scan, store=store)


@dlq_app.command("list")
def dlq_list(
    config: ConfigOpt = None,
    pipeline: PipelineOpt = None,
    max_n: Annotated[
        int,
        typer.Option(
            "--max", callback=_at_least_one, help="At most this many messages (1 or more)."
        ),
    ] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List dead-lettered messages with their error class and reason.

    `-p jobs-processing` lists the jobs processing queue's DLQ.
    """
    with exit_on_error():
        settings = settings_from(config)
        msgs = asyncio.run(_list_dlq(settings, dlq_pipeline(settings, pipeline), max_n))
    if as_json:
        print(json.dumps([m.__dict__ for m in msgs], indent=2))
        return
    table = new_table(
        f"DLQ messages ({len(msgs)})", ("message id", "objects", "error class", "error", "sent")
    )
    for column in table.columns:  # folded, not cut with "…": ids are copied into `dlq show`
        column.overflow = "fold"
    for m in msgs:
        # Keys, bodies and reasons are data: "[/data/x]" is no Rich markup.
        table.add_row(
            escape(m.message_id),
            escape("\n".join(m.keys) or m.body[:60]),
            escape(m.error_class or "-"),
            # Long enough for a state note's last error (`dlq show` has it all).
            escape((m.error or m.state_note or "-")[:300]),
            escape(m.sent_at or "-"),
        )
    console.print(table)
    if len(msgs) >= max_n:
        err_console.print(
            f"the first {max_n} shown: the DLQ may hold more (raise --max; "
            "`s3flow status` gives its depth)",
            highlight=False,
        )


@dlq_app.command("show")
def dlq_show(
    message_id: Annotated[str, typer.Argument(help="The DLQ message id.")],
    config: ConfigOpt = None,
    pipeline: PipelineOpt = None,
    max_scan: Annotated[
        int,
        typer.Option(
            "--max-scan",
            min=1,
            help="Look at up to this many DLQ messages for it (each is hidden from other "
            "readers until the search ends, 30 s at most).",
        ),
    ] = 10_000,
) -> None:
    """Show one dead-lettered message: body and error attributes.

    The DLQ is peeked until the message comes up (or `--max-scan` messages were
    looked at); the messages peeked are made visible again when it ends.
    """
    with exit_on_error():
        settings = settings_from(config)
        p = dlq_pipeline(settings, pipeline)
        search = asyncio.run(_find_dlq_message(settings, p, message_id, max_scan))
    if search.found is not None:
        print(json.dumps(search.found.__dict__, indent=2))
        return
    if search.looked_at >= max_scan:
        scope = (
            f"among the first {search.looked_at}; the DLQ may hold more: raise --max-scan "
            f"(now {max_scan})"
        )
    elif search.incomplete:
        scope = (
            f"among {search.looked_at}; the search outlasted the 30 s each message is held "
            "and came round to messages already seen, so the DLQ may hold more: run it again"
        )
    else:
        scope = f"looked at all {search.looked_at} it gave"
    # Not found is exit 1 (an s3flow error would be 2), said as the other errors are.
    raise fail(
        LookupError(
            f"message {message_id} is not on the DLQ of pipeline {p.name!r} ({scope}; "
            f"`s3flow dlq list -p {p.name}` lists them)"
        )
    )


@dlq_app.command("redrive")
def dlq_redrive(
    config: ConfigOpt = None,
    pipeline: PipelineOpt = None,
    max_n: Annotated[
        int | None,
        typer.Option(
            "--max", callback=_at_least_one, help="Move at most this many (1 or more; default all)."
        ),
    ] = None,
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
    A message that cannot be moved stays on the DLQ: the command says which and
    why, and exits 2. A moved copy that a worker fails again while it runs is left on
    the DLQ and counted. `-p jobs-processing` redrives the jobs
    processing queue's DLQ.
    """
    from rich.progress import Progress

    from s3flow.app import open_store
    from s3flow.ops.dlq import RedriveError, RedriveReport, redrive

    async def go(progress: Progress) -> RedriveReport | RedriveError:
        settings = settings_from(config)
        p = dlq_pipeline(settings, pipeline)
        task = progress.add_task("redriving", total=max_n)
        async with open_store(settings) as store:
            try:
                return await redrive(
                    settings,
                    p,
                    max_n=max_n,
                    store=store,
                    lease_s=lease_s,
                    on_moved=lambda n: advance(progress, task, n),
                    on_wait=lambda n, secs: err_console.print(
                        f"{n} DLQ message(s) are held by an earlier, interrupted redrive or "
                        f"a `dlq list`; waiting up to {secs:.0f}s for them to come back",
                        highlight=False,
                    ),
                )
            except RedriveError as exc:
                return exc  # what was moved is printed before the error

    moved: list[int] = []

    def advance(progress: Progress, task: Any, n: int) -> None:
        moved.append(n)  # for the summary of an interrupted run
        progress.advance(task, n)

    try:
        result = with_progress(go)
    except KeyboardInterrupt:
        # The batch in hand was settled first (sent copies deleted from the DLQ, the
        # rest made visible): nothing is lost, the next run moves what is left.
        err_console.print(
            f"interrupted: moved at least {sum(moved)} message(s) back to the source queue "
            "(and the batch in hand, if it was sent); none is lost: run `s3flow dlq "
            "redrive` again to move the rest",
            highlight=False,
        )
        raise typer.Exit(130) from None
    report = result.report if isinstance(result, RedriveError) else result
    if report.method == "message-move-task":
        console.print("started an SQS message move task (DLQ -> source queue)")
    else:
        if report.note:
            err_console.print(escape(report.note), highlight=False)
        extra = f" ({report.waited_for} left by an interrupted run)" if report.waited_for else ""
        console.print(f"moved {report.moved} message(s) back to the source queue{extra}")
        if report.arrived:
            err_console.print(
                f"{report.arrived} message(s) this redrive moved came back to the DLQ (a "
                "worker failed them again) and were left there: see why with "
                f"`s3flow dlq list{f' -p {pipeline}' if pipeline else ''}` before you "
                "redrive them",
                highlight=False,
            )
    if isinstance(result, RedriveError):
        raise fail(result)
