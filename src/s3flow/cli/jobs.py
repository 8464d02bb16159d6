"""`s3flow jobs`: upload jobs from the state store (list, show, events, retry, cancel)."""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from typing import Annotated, Any

import typer
from rich.markup import escape

from s3flow.cli.common import (
    ConfigOpt,
    JsonOpt,
    app,
    console,
    err_console,
    fail,
    new_table,
    settings_or_exit,
    status_option,
    ts,
    with_store,
)
from s3flow.errors import S3flowError
from s3flow.state.jobs import JobCursor, JobEvent, JobRecord, JobStatus, JobStore, job_page
from s3flow.web.render import job_fields

jobs_app = typer.Typer(
    help="Upload jobs: list, show one, print its events, retry or cancel it.",
    no_args_is_help=True,
)
app.add_typer(jobs_app, name="jobs")

JobIdArg = Annotated[str, typer.Argument(help="The job id.")]
_POLL_S = 0.5
#: Events read from the store per call (`jobs events` pages until the log's end).
_PAGE = 500
#: The error when no state store is configured.
_NO_STORE = "upload jobs need a state store (state.url is 'none')"


def _job_json(job: JobRecord) -> dict[str, Any]:
    return job_fields(
        job,
        files=[{"name": f.name, "key": f.key, "received": f.received} for f in job.files],
        outputs=[{"name": o.name, "bucket": o.bucket, "key": o.key} for o in job.outputs],
    )


def _event_line(ev: JobEvent) -> str:
    data = json.dumps(ev.data, ensure_ascii=False, separators=(",", ":"))
    return f"{ev.seq:>4}  {ts(ev.at)}  {ev.type:<15} {escape(data[:160])}"


@jobs_app.command("list")
def jobs_list(
    config: ConfigOpt = None,
    status_: Annotated[
        str | None,
        typer.Option("--status", help="|".join(s.value for s in JobStatus)),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="At most this many jobs (a page).")
    ] = 50,
    cursor: Annotated[
        str | None,
        typer.Option(
            "--cursor",
            help="Start after the page that printed this cursor (the API's next_cursor too).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recent jobs, newest first, a page at a time: when more follow, the command
    prints (on stderr) the --cursor that lists the next page."""
    st = status_option(JobStatus, status_)
    after = None
    if cursor is not None:
        after = JobCursor.from_token(cursor)
        if after is None:
            raise fail(
                S3flowError(
                    f"--cursor {cursor[:40]!r} is not a cursor s3flow printed: pass it as "
                    "printed, or leave it out for the newest jobs"
                )
            )
    settings = settings_or_exit(config)
    jobs, following = with_store(
        settings, lambda s: job_page(s, status=st, limit=limit, after=after), missing=_NO_STORE
    )
    if as_json:
        print(json.dumps([_job_json(j) for j in jobs], indent=2))
    else:
        _print_jobs(jobs)
    if following is not None:
        again = f"{f' -c {shlex.quote(str(config))}' if config else ''}"
        again += f" --status {st.value}" if st else ""
        again += f" --limit {limit}"
        err_console.print(
            f"more jobs: s3flow jobs list{again} --cursor {following.token()}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _print_jobs(jobs: list[JobRecord]) -> None:
    table = new_table(
        f"s3flow jobs ({len(jobs)})", ("job", "template", "status", "files", "created", "error")
    )
    # Ids in full, however narrow the terminal: they are pasted into show, cancel, retry.
    table.columns[0].no_wrap = True
    table.columns[0].min_width = max((len(j.job_id) for j in jobs), default=0)
    for j in jobs:
        got = sum(f.received for f in j.files)
        table.add_row(
            j.job_id,
            escape(j.template),
            str(j.status),
            f"{got}/{len(j.files)}",
            ts(j.created_at),
            escape((j.error or "")[:60]),
        )
    console.print(table)


@jobs_app.command("show")
def jobs_show(
    job_id: JobIdArg,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One job: its files, steps, outputs and error."""
    settings = settings_or_exit(config)
    job = with_store(settings, lambda s: s.get_job(job_id), missing=_NO_STORE)
    if job is None:
        raise fail(S3flowError(f"no job {job_id!r}"))
    if as_json:
        print(json.dumps(_job_json(job), indent=2))
        return
    console.print(
        f"[bold]{job.job_id}[/]  template {escape(job.template)}  status [bold]{job.status}[/]"
    )
    console.print(
        f"upload {job.upload_id}, created {ts(job.created_at)}, updated {ts(job.updated_at)}"
    )
    for f in job.files:
        console.print(
            f"  file  {'received' if f.received else 'waiting '}  {escape(f.name)}"
            f"  ({f.size} bytes)"
        )
    for i, s in enumerate(job.steps, start=1):  # counted from 1, as the web page does
        prog = escape(", ".join(f"{k}={v}" for k, v in s.progress.items()))
        console.print(f"  step {i} {escape(s.name)}: {s.status}{'  ' + prog if prog else ''}")
    for o in job.outputs:
        console.print(f"  output s3://{o.bucket}/{escape(o.key)}")
    if job.error:
        console.print(f"  [red]error:[/] {escape(job.error)}")


#: Exit code of `jobs events --follow` when --timeout passes before the job ends.
_FOLLOW_TIMED_OUT = 3


@jobs_app.command("events")
def jobs_events(
    job_id: JobIdArg,
    config: ConfigOpt = None,
    after: Annotated[
        int, typer.Option("--after", help="Only events after this sequence number.")
    ] = 0,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")
    ] = False,
    timeout_s: Annotated[
        float,
        typer.Option("--timeout", help="Give up following after this many seconds (exit 3)."),
    ] = 3600,
) -> None:
    """A job's event log (the same events, ids and order as its SSE stream).

    With --follow: exit 0 when the job completes, 1 when it fails or expires, 3 when
    --timeout passes first.
    """
    settings = settings_or_exit(config)

    async def go(store: JobStore) -> int:
        if await store.get_job(job_id) is None:
            raise S3flowError(f"no job {job_id!r}")
        last = after
        deadline = time.monotonic() + timeout_s
        while True:
            # Page through the whole log (the store returns at most _PAGE a call).
            while batch := await store.events(job_id, after_seq=last, limit=_PAGE):
                for ev in batch:
                    console.print(_event_line(ev), highlight=False, soft_wrap=True)
                    last = ev.seq
                    if ev.type.terminal:
                        return 0 if ev.type == "job.completed" else 1
                if len(batch) < _PAGE:
                    break
            if not follow:
                return 0
            if time.monotonic() > deadline:
                job = await store.get_job(job_id)
                status = job.status if job is not None else "gone"
                err_console.print(
                    f"job {job_id} is still {status} after {timeout_s:g} s (--timeout): "
                    "stopped following it; the job goes on",
                    highlight=False,
                    soft_wrap=True,
                )
                return _FOLLOW_TIMED_OUT
            await asyncio.sleep(_POLL_S)

    code = with_store(settings, go, missing=_NO_STORE)
    raise typer.Exit(code if follow else 0)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: JobIdArg,
    config: ConfigOpt = None,
    reason: Annotated[str, typer.Option("--reason", help="Shown in the job's error.")] = "",
) -> None:
    """End a job that has not finished: it fails with "cancelled by an operator"."""
    from s3flow.ops.jobs import cancel_job

    settings = settings_or_exit(config)
    job = with_store(settings, lambda s: cancel_job(s, job_id, reason=reason), missing=_NO_STORE)
    console.print(f"job {job.job_id}: {job.status} ({escape(job.error or '')})")


@jobs_app.command("retry")
def jobs_retry(
    job_id: Annotated[str, typer.Argument(help="The failed job's id.")],
    config: ConfigOpt = None,
) -> None:
    """Run a failed job again, as a new job over the same files (printed)."""
    from s3flow.aws import open_clients
    from s3flow.ops.jobs import retry_job

    settings = settings_or_exit(config)

    async def go(store: JobStore) -> JobRecord:
        async with open_clients(settings.aws) as clients:
            return await retry_job(settings, store, clients.sqs, job_id, s3=clients.s3)

    job = with_store(settings, go, missing=_NO_STORE)
    console.print(f"job {job_id} retried as [bold]{job.job_id}[/] ({job.status})")
