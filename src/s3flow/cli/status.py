"""`s3flow status`: queues and state store per pipeline."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from s3flow.cli.common import (
    ConfigOpt,
    app,
    console,
    err_console,
    fail,
    settings_from,
)
from s3flow.errors import S3flowError


@app.command()
def status(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per pipeline: messages visible / in flight / delayed, and DLQ depth."""
    from s3flow.ops.status import queue_status, state_summary

    try:
        settings = settings_from(config)
        rows = asyncio.run(queue_status(settings))
        states = {s.pipeline: s for s in asyncio.run(state_summary(settings))}
    except S3flowError as exc:
        raise fail(exc) from exc
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
