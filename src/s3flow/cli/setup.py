"""`s3flow provision` and `s3flow config-reference`."""

from __future__ import annotations

import asyncio
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from s3flow.cli.common import (
    ConfigOpt,
    app,
    console,
    err_console,
    exit_on_error,
    fail,
    new_table,
    settings_from,
)
from s3flow.errors import ConfigError

if TYPE_CHECKING:
    from s3flow.settings import Settings


class ExportFormat(StrEnum):
    """What ``provision --export`` writes."""

    cloudformation = "cloudformation"


@app.command()
def provision(
    config: ConfigOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan; change nothing.")
    ] = False,
    export: Annotated[
        ExportFormat | None,
        typer.Option(
            "--export",
            help="Write a template instead of provisioning (nothing is created): "
            "'cloudformation' (JSON; see docs/deploy.md).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="With --export: write the template to this file."),
    ] = None,
) -> None:
    """Create or verify buckets (encrypted, no public access), queues + DLQs, notifications.

    Idempotent: a second run changes nothing and says so. With --export cloudformation,
    print one CloudFormation template for all of it plus the IAM roles, ECS services,
    autoscaling and alarms of a deployment instead (no AWS calls).
    """
    if export is not None:
        _export(config, output, dry_run)
        return
    if output is not None:
        raise fail(ConfigError("-o/--output goes with --export (there is nothing to write)"))
    from s3flow.app import check_options
    from s3flow.app import provision_all as do_provision

    with exit_on_error():
        settings = settings_from(config)
        check_options(settings)
        changes = asyncio.run(do_provision(settings, dry_run=dry_run))
    table = new_table(
        "provision (dry run)" if dry_run else "provision", ("resource", "name", "action", "detail")
    )
    for c in changes:
        style = "green" if c.action == "unchanged" else "yellow"
        table.add_row(c.kind, c.name, f"[{style}]{c.action}[/]", c.detail)
    console.print(table)
    if all(c.action == "unchanged" for c in changes):
        console.print("everything already in place: nothing changed")


def _store_tables(settings: Settings) -> list[dict[str, Any]] | None:
    """The DynamoDB state store's table definitions (None for another store)."""
    from s3flow.deploy import dynamodb_table_prefix

    prefix = dynamodb_table_prefix(settings)
    if prefix is None:
        return None
    from s3flow.state.dynamodb.tables import table_definitions

    return table_definitions(prefix)


def _ttl_attribute(settings: Settings) -> str | None:
    """The DynamoDB store's TTL attribute when it expires records, else None."""
    from s3flow.deploy import dynamodb_table_prefix

    if dynamodb_table_prefix(settings) is None or not settings.state.retention_days:
        return None
    from s3flow.state.dynamodb.tables import TTL_ATTRIBUTE

    return TTL_ATTRIBUTE


def _export(config: Path | None, output: Path | None, dry_run: bool) -> None:
    """``provision --export cloudformation``: the template to stdout or ``output``."""
    from s3flow.app import check_options
    from s3flow.deploy import TEMPLATE_BODY_LIMIT, export_cloudformation, render_template

    with exit_on_error():
        if dry_run:
            raise ConfigError("--export changes nothing already: leave out --dry-run")
        settings = settings_from(config)
        check_options(settings)
        result = export_cloudformation(
            settings, tables=_store_tables(settings), ttl_attribute=_ttl_attribute(settings)
        )
    text = render_template(result.template)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    size = len(text.encode())
    if size > TEMPLATE_BODY_LIMIT:
        err_console.print(
            f"[yellow]warning:[/] the template is {size} bytes, over CloudFormation's "
            f"{TEMPLATE_BODY_LIMIT}-byte inline limit: deploy it from S3 "
            "(aws cloudformation deploy --s3-bucket ...)",
            highlight=False,
            soft_wrap=True,
        )
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(ConfigError(f"cannot write {output}: {exc}")) from exc
    n = len(result.template.get("Resources", {}))
    err_console.print(f"wrote {output}: {n} resources, {size} bytes", highlight=False)


@app.command("config-reference")
def config_reference() -> None:
    """Print every setting with its type, default and meaning (Markdown)."""
    from s3flow.docs import settings_reference

    print(settings_reference())
