"""`s3flow state`: maintenance of the state store (prune, recount).

Neither is a routine command: ``prune`` does now what a running worker does
in the background (SQLite) or what TTL does (DynamoDB), and ``recount`` reads
every record.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from s3flow.cli.common import (
    ConfigOpt,
    JsonOpt,
    app,
    console,
    err_console,
    settings_or_exit,
    with_store,
)
from s3flow.errors import S3flowError
from s3flow.state.base import StateStore
from s3flow.state.records import FileStatus, RecountReport

state_app = typer.Typer(
    help=(
        "State store maintenance: prune what outlived \\[state] retention_days, "
        "recount the status counters (a full scan)."
    ),
    no_args_is_help=True,
)
app.add_typer(state_app, name="state")


@state_app.command("prune")
def state_prune(
    config: ConfigOpt = None,
    max_rows: Annotated[
        int | None,
        typer.Option("--max-rows", min=1, help="Stop after deleting this many rows (SQLite)."),
    ] = None,
    vacuum: Annotated[
        bool,
        typer.Option(
            "--vacuum",
            help=(
                "SQLite: rewrite the whole file afterwards (VACUUM) in incremental auto-vacuum "
                "mode: once for a database created before retention existed. Needs the file "
                "to itself (stop the workers) and free disk space of about its size."
            ),
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete now what outlived \\[state] retention_days (a worker does it in the background).

    SQLite: terminal file records, history lines, checkpoints, free locks,
    completed manifests and finished jobs, in short transactions, then an
    incremental vacuum. DynamoDB deletes expired items itself (TTL): this only
    says whether TTL is on.
    """
    from s3flow.state import SqliteStateStore

    settings = settings_or_exit(config)

    async def go(store: StateStore) -> tuple[dict[str, object], tuple[int, int] | None]:
        report = await store.prune(max_rows=max_rows)
        sizes = None
        if vacuum:
            if not isinstance(store, SqliteStateStore):
                raise S3flowError("--vacuum is for a SQLite state store")
            sizes = await store.vacuum()
        return {**asdict(report), "removed": report.removed}, sizes

    doc, sizes = with_store(settings, go, prune=False)  # no background prune alongside
    if sizes is not None:
        doc["size_before_vacuum"], doc["size_after_vacuum"] = sizes
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    days = settings.state.retention_days
    table = Table(title=f"s3flow state prune (retention {days:g} days)")
    table.add_column("what")
    table.add_column("removed", justify="right")
    for name in (
        "files",
        "history",
        "checkpoints",
        "locks",
        "manifests",
        "manifest_files",
        "jobs",
        "job_events",
        "vacuumed_pages",
    ):
        table.add_row(name.replace("_", " "), str(doc[name]))
    console.print(table)
    if not doc["complete"]:
        console.print(f"stopped at --max-rows {max_rows}: more is left to prune")
    if doc["note"]:
        console.print(str(doc["note"]), highlight=False)
    if sizes is not None:
        console.print(f"VACUUM: {sizes[0]:,} -> {sizes[1]:,} bytes")


@state_app.command("recount")
def state_recount(
    config: ConfigOpt = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Set the counters to what the records say.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Count every record and compare with the status counters `s3flow status` shows.

    A maintenance command: it reads the whole files table (a DynamoDB Scan).
    Counters drift only when a worker died between a record's write and its
    counters' (DynamoDB) or after a failed counter update; `--repair` corrects
    them (and, on DynamoDB, indexes records an older s3flow wrote). Run it when
    the pipelines are quiet: transitions during the scan may be seen on one side
    only. Exits 1 when the counters drift and `--repair` was not given.
    """
    settings = settings_or_exit(config)

    async def recount(store: StateStore) -> RecountReport:
        err_console.print("counting every record (a full read of the files table)...")
        return await store.recount(repair=repair)

    # a maintenance read: no background prune alongside
    report: RecountReport = with_store(settings, recount, prune=False)
    if as_json:
        print(
            json.dumps(
                {
                    "items_read": report.items_read,
                    "consistent": report.consistent,
                    "repaired": report.repaired,
                    "counted": report.counted,
                    "counters": report.counters,
                    "drift": report.drift,
                },
                indent=2,
            )
        )
    else:
        table = Table(title=f"s3flow state recount ({report.items_read:,} records read)")
        table.add_column("pipeline")
        for s in FileStatus:
            table.add_column(s.value, justify="right")
        for p in sorted(set(report.counted) | set(report.counters)):
            row = [p]
            for s in FileStatus:
                want = report.counted.get(p, {}).get(s.value, 0)
                have = report.counters.get(p, {}).get(s.value, 0)
                row.append(str(want) if want == have else f"[red]{have} (records: {want})[/]")
            table.add_row(*row)
        console.print(table)
        if report.consistent:
            console.print("the counters agree with the records")
        elif report.repaired:
            console.print("the counters drifted: repaired")
        else:
            console.print("the counters drift: run `s3flow state recount --repair`")
    if not report.consistent and not report.repaired:
        raise typer.Exit(1)
