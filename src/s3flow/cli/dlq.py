"""`s3flow dlq`: inspect and redrive the dead-letter queue."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from s3flow.cli.common import (
    ConfigOpt,
    JsonOpt,
    PipelineOpt,
    app,
    console,
    err_console,
    exit_on_error,
    new_table,
    one_pipeline,
    settings_from,
    with_progress,
)
from s3flow.settings import PipelineSettings, Settings

dlq_app = typer.Typer(
    help="Inspect dead-lettered messages and move them back.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")


async def _list_dlq(settings: Settings, p: PipelineSettings, max_n: int) -> list[Any]:
    from s3flow.app import open_store
    from s3flow.ops.dlq import list_dlq

    async with open_store(settings) as store:
        return await list_dlq(settings, p, max_n=max_n, store=store)


@dlq_app.command("list")
def dlq_list(
    config: ConfigOpt = None,
    pipeline: PipelineOpt = None,
    max_n: Annotated[int, typer.Option("--max", help="At most this many messages.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List dead-lettered messages with their error class and reason."""
    with exit_on_error():
        settings = settings_from(config)
        msgs = asyncio.run(_list_dlq(settings, one_pipeline(settings, pipeline), max_n))
    if as_json:
        print(json.dumps([m.__dict__ for m in msgs], indent=2))
        return
    table = new_table(
        f"DLQ messages ({len(msgs)})", ("message id", "objects", "error class", "error", "sent")
    )
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
    with exit_on_error():
        settings = settings_from(config)
        msgs = asyncio.run(_list_dlq(settings, one_pipeline(settings, pipeline), 1000))
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
    from s3flow.ops.dlq import redrive

    async def go(progress: Progress) -> Any:
        settings = settings_from(config)
        p = one_pipeline(settings, pipeline)
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

    report = with_progress(go)
    if report.method == "message-move-task":
        console.print("started an SQS message move task (DLQ -> source queue)")
    else:
        if report.note:
            err_console.print(report.note, highlight=False)
        extra = f" ({report.waited_for} left by an interrupted run)" if report.waited_for else ""
        console.print(f"moved {report.moved} message(s) back to the source queue{extra}")
