"""`s3flow files`: per-object lifecycles (list, show, release)."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

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
    settings_or_exit,
    status_option,
    ts,
    with_store,
)
from s3flow.errors import ConfigError
from s3flow.processors.registry import processor_class
from s3flow.settings import Settings
from s3flow.state.base import StateStore, file_page
from s3flow.state.records import FileCursor, FileRecord, FileStatus

files_app = typer.Typer(
    help=(
        "Per-object lifecycles from the state store: `s3flow files [--status ...]` lists "
        "them; `files show KEY` gives one's history, `files release KEY` queues it again."
    ),
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(files_app, name="files")

#: A page of records and the cursor of the next (None: the last page).
Page = tuple[list[FileRecord], FileCursor | None]
ObjectKeyArg = Annotated[str, typer.Argument(help="The object key.")]
_DEFAULT_LIMIT = 100


def _at_least_one(value: int) -> int:
    """``--limit``: a count of rows, 1 or more."""
    if value < 1:
        raise typer.BadParameter(
            f"must be at least 1 (got {value}): it is how many object lifecycles "
            f"`s3flow files` lists; leave --limit out for the default ({_DEFAULT_LIMIT})"
        )
    return value


@files_app.callback()
def files_list(
    ctx: typer.Context,
    config: ConfigOpt = None,
    status_: Annotated[
        str | None,
        typer.Option("--status", help="|".join(s.value for s in FileStatus)),
    ] = None,
    pipeline: Annotated[
        str | None, typer.Option("--pipeline", "-p", help="Only this pipeline.")
    ] = None,
    key_prefix: Annotated[
        str | None, typer.Option("--key-prefix", help="Only keys with this prefix.")
    ] = None,
    limit: Annotated[
        int,
        typer.Option("--limit", callback=_at_least_one, help="At most this many rows (1 or more)."),
    ] = _DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        typer.Option(
            "--cursor",
            help="Start after the page that printed this cursor (with the same filters).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List object lifecycles (most recently updated first), a page at a time: when
    more follow, the command prints (on stderr) the one that lists the next page.
    --json writes the records as it reads them (a JSON array), however many."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"config": config}
        return
    st = status_option(FileStatus, status_)
    after = None
    if cursor is not None:
        after = FileCursor.from_token(cursor)
        if after is None:
            raise typer.BadParameter(
                f"{cursor[:40]!r} is not a cursor s3flow printed: pass it as printed, or "
                "leave it out for the newest records",
                param_hint="--cursor",
            )
    settings = settings_or_exit(config)
    known = {p.name for p in settings.pipelines}

    def check(rows: list[FileRecord]) -> None:
        # A pipeline since removed from the config still lists its records; a typo not.
        if pipeline and not rows and pipeline not in known and after is None:
            raise ConfigError(
                f"no pipeline named {pipeline!r} is configured"
                + (f" ({', '.join(sorted(known))})" if known else "")
                + " and the state store has no record of one"
            )

    def page(store: StateStore, size: int, start: FileCursor | None) -> Awaitable[Page]:
        return file_page(
            store, status=st, pipeline=pipeline, key_prefix=key_prefix, limit=size, after=start
        )

    if as_json:
        following = with_store(
            settings, lambda store: _stream_json(page, store, limit, after, check), read_only=True
        )
        _next_page(config, st, pipeline, key_prefix, limit, following, as_json=True)
        return
    rows, following = with_store(settings, lambda store: page(store, limit, after), read_only=True)
    with exit_on_error():
        check(rows)
    shown = f"{len(rows)}"
    if following is not None:  # a full page: more may match
        shown = f"the first {limit}; more may match: the next page's command is below"
    table = new_table(
        f"s3flow files ({shown})",
        ("pipeline", "bucket", "key", "version", "status", "attempts", "updated", "error"),
    )
    for column in table.columns:  # folded, not cut with "…": keys are copied into commands
        column.overflow = "fold"
    for r in rows:
        err = f"{r.last_error_class}: {r.last_error}" if r.last_error_class else ""
        table.add_row(
            r.pipeline,
            r.bucket,
            escape(r.key),
            escape(r.version[:12]),
            r.status.value,
            str(r.attempts),
            ts(r.updated_at),
            escape(err[:80]),
        )
    console.print(table)
    _next_page(config, st, pipeline, key_prefix, limit, following)


#: Records read per request while ``--json`` writes a long listing.
JSON_PAGE = 1000


async def _stream_json(
    page: Callable[[StateStore, int, FileCursor | None], Awaitable[Page]],
    store: StateStore,
    limit: int,
    after: FileCursor | None,
    check: Callable[[list[FileRecord]], None],
) -> FileCursor | None:
    """Write up to ``limit`` records as a JSON array (``json.dumps(records, indent=2)``
    to the byte), a page of :data:`JSON_PAGE` at a time, as they are read: memory
    follows the page, not the listing. The cursor past the last record written when
    more follow."""
    out = sys.stdout
    written = 0
    while True:
        rows, following = await page(store, min(JSON_PAGE, limit - written), after)
        if not written:
            check(rows)  # before anything is written: an error leaves no half array
            if not rows:
                out.write("[]\n")
                return None
            out.write("[\n")
        for r in rows:
            # One element as json.dumps indents it inside a list: "  {\n    ...\n  }".
            text = json.dumps([{**r.__dict__, "status": r.status.value}], indent=2)[2:-2]
            out.write((",\n" if written else "") + text)
            written += 1
        out.flush()
        if following is None or written >= limit:
            out.write("\n]\n")
            out.flush()
            return following
        after = following


def _next_page(
    config: Path | None,
    status: FileStatus | None,
    pipeline: str | None,
    key_prefix: str | None,
    limit: int,
    following: FileCursor | None,
    *,
    as_json: bool = False,
) -> None:
    """Print (on stderr) the command that lists the page after this one, if any (with
    ``--json`` when this page was JSON)."""
    if following is None:
        return
    again = f" -c {shlex.quote(str(config))}" if config else ""
    again += f" --status {status.value}" if status else ""
    again += f" --pipeline {shlex.quote(pipeline)}" if pipeline else ""
    again += f" --key-prefix {shlex.quote(key_prefix)}" if key_prefix else ""
    again += f" --limit {limit}" if limit != _DEFAULT_LIMIT else ""
    again += " --json" if as_json else ""
    err_console.print(
        f"more may match: s3flow files{again} --cursor {following.token()}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@files_app.command("show")
def files_show(
    ctx: typer.Context,
    key: ObjectKeyArg,
    config: ConfigOpt = None,
    bucket: Annotated[
        str | None, typer.Option("--bucket", help="Bucket (default: every pipeline's).")
    ] = None,
) -> None:
    """One object's full history: every version, every transition."""
    settings = _subcommand_settings(ctx, config)
    buckets = _buckets(settings, bucket)

    async def go(store: StateStore) -> tuple[list[Any], list[Any], dict[int, list[str]]]:
        recs = [r for b in buckets for r in await store.versions(b, key)]
        hist = []
        for b in sorted({r.bucket for r in recs}):
            hist += [(b, h) for h in await store.history(b, key)]
        details = {i: await _pipeline_details(settings, r, store) for i, r in enumerate(recs)}
        return recs, hist, details

    recs, hist, details = with_store(settings, go, read_only=True)
    if not recs:
        # Not found is exit 1 (an s3flow error would be 2), said as the other errors are.
        folder = key.rpartition("/")[0]
        listing = (
            f"s3flow files --key-prefix {shlex.quote(folder + '/')}" if folder else "s3flow files"
        )
        where = f"bucket{'s' if len(buckets) > 1 else ''} {', '.join(buckets)}"
        raise fail(
            LookupError(
                f"no record of {key!r} in the state store (looked in "
                f"{where if buckets else 'no bucket: name one with --bucket'}); "
                f"`{listing}` lists the keys it has records of"
            )
        )
    for i, r in enumerate(recs):
        console.print(
            f"[bold]s3://{r.bucket}/{escape(r.key)}[/] version {escape(r.version or '-')}: "
            f"[bold]{r.status.value}[/], attempts {r.attempts}, pipeline {r.pipeline}"
            + (f", failures {r.failures}" if r.failures else ""),
            highlight=False,
        )
        if r.last_error_class:
            console.print(
                f"  last error: {r.last_error_class}: {escape(r.last_error or '')}", highlight=False
            )
        for o in r.outputs:
            console.print(f"  output: {escape(o)}", highlight=False)
        for line in details[i]:
            console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
    table = new_table("history", ("at", "bucket", "version", "from", "to", "worker", "detail"))
    for b, h in hist:
        table.add_row(
            ts(h.at),
            b,
            escape(h.version[:12]),
            h.old.value if h.old else "-",
            h.new.value,
            escape(h.worker_id or "-"),
            escape(h.detail[:80]),
        )
    console.print(table)


@files_app.command("release")
def files_release(
    ctx: typer.Context,
    key: ObjectKeyArg,
    pipeline: PipelineOpt = None,
    config: ConfigOpt = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Only this recorded version.")
    ] = None,
) -> None:
    """Release an object whatever its state (quarantined, dead, failed, completed).

    Removes the quarantine tags, resets its records to 'received' and enqueues
    each again with its own identity, so the worker processes that very upload: the
    current one, or in a versioned bucket the version named (--version). A record of
    an earlier upload whose bytes were replaced is left as it is. A key the pipeline does not
    take (prefix, suffix, key_regex) is refused before anything changes, and so is a
    record its pipeline says a release would not change (a file the manifest builder
    already tracks); if the notification cannot be sent, the error names the command
    to run again.
    """
    from s3flow.ops.files import release

    settings = _subcommand_settings(ctx, config)
    released = with_store(
        settings,
        lambda store: release(settings, one_pipeline(settings, pipeline), store, key, version),
    )
    for oid in released:
        console.print(
            f"released s3://{oid.bucket}/{escape(oid.key)} ({escape(oid.version)}): enqueued again",
            highlight=False,
        )


def _subcommand_settings(ctx: typer.Context, config: Path | None) -> Settings:
    """The settings of a ``files`` subcommand: its ``--config``, else the one given to
    ``s3flow files`` before the subcommand's name."""
    return settings_or_exit(config or (ctx.obj or {}).get("config"))


def _buckets(settings: Settings, bucket: str | None) -> list[str]:
    """The buckets ``files show`` looks in: ``--bucket``, else every pipeline's (no scan)."""
    if bucket is not None:
        return [bucket]
    found = [p.bucket for p in settings.pipelines]
    if settings.jobs is not None:  # the uploads bucket (the jobs bridge's records)
        found.append(settings.jobs.bucket)
    return sorted(set(found))


async def _pipeline_details(settings: Settings, record: FileRecord, store: StateStore) -> list[str]:
    """What the record's pipeline keeps about the file beyond the lifecycle (its hook)."""
    pipeline = next((p for p in settings.pipelines if p.name == record.pipeline), None)
    if pipeline is None:
        return []
    try:
        cls = processor_class(pipeline.processor)
    except ConfigError:
        return []
    describe = getattr(cls, "describe_file", None)
    if describe is None:
        return []
    lines: list[str] = await describe(pipeline, record, store)
    return lines
