"""`s3flow status`: queues and state store per pipeline."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from s3flow.cli.common import (
    ConfigOpt,
    app,
    console,
    err_console,
    exit_on_error,
    new_table,
    note_new_store,
    settings_from,
)
from s3flow.errors import S3flowError
from s3flow.settings import Settings

#: The state store's status counts, in the order ``status`` shows them.
_COUNTS = ("completed", "processing", "failed", "dead", "quarantined", "received")


def _count(n: int | None) -> str:
    """A queue count ('?' when SQS did not say)."""
    return "?" if n is None else str(n)


def _drifted(counts: dict[str, int]) -> bool:
    """True when a status counter is negative: it no longer matches the records."""
    return any(n < 0 for n in counts.values())


def _age(seconds: float | None) -> str:
    """The age of the oldest record in flight ('-' when none is)."""
    return f"{seconds:.0f}s" if seconds is not None else "-"


def _rate(delta: int, dt_s: float) -> str:
    """Records per second that reached a status between two refreshes.

    The counts are how many records are in each status now, so the difference also
    drops when records leave it without a new one coming: retried (failed ->
    processing), or expired and pruned. A drop is shown as '-' (unknown), not as a
    negative rate.
    """
    return "-" if delta < 0 else f"{delta / max(dt_s, 1e-6):.1f}"


@app.command()
def status(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    watch: Annotated[
        bool,
        typer.Option("--watch", "-w", help="A live view: rates, in flight, depths (Ctrl-C ends)."),
    ] = False,
    interval_s: Annotated[
        float | None,
        typer.Option("--interval", min=0.5, help="Seconds between refreshes (--watch; 2)."),
    ] = None,
    rounds: Annotated[int, typer.Option("--rounds", hidden=True)] = 0,
) -> None:
    """Per pipeline: messages visible / in flight / delayed, and DLQ depth."""
    from s3flow.ops.status import queue_status, state_summary

    if watch and as_json:
        raise typer.BadParameter("--watch is a live table: leave out --json", param_hint="--json")
    if interval_s is not None and not watch:
        raise typer.BadParameter("only with --watch", param_hint="--interval")

    with exit_on_error():
        settings = settings_from(config)
        note_new_store(settings)
        if watch:
            _watch(settings, 2.0 if interval_s is None else interval_s, rounds)
            return
        rows = asyncio.run(queue_status(settings))
    store_error: str | None = None
    try:  # the queues' rows are shown whatever the store does
        states = {s.pipeline: s for s in asyncio.run(state_summary(settings))}
    except S3flowError as exc:
        states, store_error = {}, f"state store: {exc}"
    if as_json:
        print(
            json.dumps(
                [
                    {
                        **r.__dict__,
                        "state": states[r.pipeline].__dict__ if r.pipeline in states else None,
                        **({"state_error": store_error} if store_error else {}),
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        if store_error:
            err_console.print(f"[red]error:[/] {escape(store_error)}", highlight=False)
        if store_error or any(r.error for r in rows):
            raise typer.Exit(1)
        return
    table = new_table(
        "s3flow status",
        ("pipeline", "queue", "visible", "in flight", "delayed", "DLQ", "DLQ depth"),
    )
    for r in rows:
        table.add_row(
            r.pipeline,
            r.queue,
            _count(r.visible),
            _count(r.in_flight),
            _count(r.delayed),
            r.dlq,
            ("[red]" if r.dlq_depth else "") + _count(r.dlq_depth),
        )
    console.print(table)
    if states:
        st = new_table("state store", ("pipeline", *_COUNTS, "duplicates", "oldest in flight"))
        for s_ in states.values():
            st.add_row(
                s_.pipeline,
                *(str(s_.counts.get(k, 0)) for k in _COUNTS),
                str(s_.duplicates),
                _age(s_.oldest_in_flight_s),
            )
        console.print(st)
        drifted = sorted(s_.pipeline for s_ in states.values() if _drifted(s_.counts))
        if drifted:
            # A worker killed between a record's write and its counters' (DynamoDB): the
            # counts are off, never the records.
            err_console.print(
                f"[yellow]note:[/] negative counts for {', '.join(drifted)}: the status "
                "counters drifted from the records (a worker killed mid-update); run "
                "`s3flow state recount --repair`",
                highlight=False,
            )
    for r in rows:
        if r.error:
            err_console.print(f"[red]{r.pipeline}:[/] {escape(str(r.error))}", highlight=False)
    if store_error:
        err_console.print(f"[red]error:[/] {escape(store_error)}", highlight=False)
    if store_error or any(r.error for r in rows):
        raise typer.Exit(1)


def _watch(settings: Settings, interval_s: float, rounds: int) -> None:
    """Refresh a live table until Ctrl-C (or ``rounds`` refreshes, for tests)."""
    import time

    from rich.live import Live

    from s3flow.ops.status import queue_status, state_summary

    def snapshot() -> tuple[float, list[Any], dict[str, Any]]:
        rows = asyncio.run(queue_status(settings))
        try:  # a store that does not answer for a moment: its columns show "-"
            states = {s.pipeline: s for s in asyncio.run(state_summary(settings))}
        except S3flowError:
            states = {}
        return time.monotonic(), rows, states

    def render(
        prev: tuple[float, dict[str, Any]] | None,
        now: float,
        rows: list[Any],
        states: dict[str, Any],
    ) -> Table:
        table = Table(title=f"s3flow status --watch (every {interval_s:g}s, Ctrl-C to stop)")
        for col in (
            "pipeline",
            "done/s",
            "failed/s",
            "in flight",
            "visible",
            "oldest in flight",
            "DLQ",
        ):
            table.add_column(col, justify="right" if col != "pipeline" else "left")
        for r in rows:
            st = states.get(r.pipeline)
            rate = fail_rate = "-"
            if st is not None and prev is not None and r.pipeline in prev[1]:
                dt = now - prev[0]
                before = prev[1][r.pipeline].counts
                rate = _rate(st.counts.get("completed", 0) - before.get("completed", 0), dt)
                failed = sum(st.counts.get(k, 0) - before.get(k, 0) for k in ("failed", "dead"))
                fail_rate = _rate(failed, dt)
            table.add_row(
                r.pipeline,
                rate,
                fail_rate,
                _count(r.in_flight),
                _count(r.visible),
                _age(st.oldest_in_flight_s if st is not None else None),
                ("[red]" if r.dlq_depth else "") + _count(r.dlq_depth),
            )
        return table

    prev: tuple[float, dict[str, Any]] | None = None
    n = 0
    try:
        with Live(console=console, auto_refresh=False) as live:
            while True:
                now, rows, states = snapshot()
                live.update(render(prev, now, rows, states), refresh=True)
                prev = (now, states)
                n += 1
                if rounds and n >= rounds:
                    return
                time.sleep(interval_s)
    except KeyboardInterrupt:
        return
