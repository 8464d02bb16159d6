"""`s3flow provision` and `s3flow config-reference`."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from s3flow.cli.common import (
    ConfigOpt,
    app,
    console,
    fail,
    settings_from,
)
from s3flow.errors import S3flowError


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
        settings = settings_from(config)
        changes = asyncio.run(do_provision(settings, dry_run=dry_run))
    except S3flowError as exc:
        raise fail(exc) from exc
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


@app.command("config-reference")
def config_reference() -> None:
    """Print every setting with its type, default and meaning (Markdown)."""
    from s3flow.docs import settings_reference

    print(settings_reference())
