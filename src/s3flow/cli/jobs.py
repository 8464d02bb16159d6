"""`s3flow jobs`: upload jobs from the state store (list, show, events, retry, cancel)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from s3flow.cli.common import ConfigOpt, app, console, fail, settings_from, ts
from s3flow.errors import S3flowError
from s3flow.settings import Settings
from s3flow.state.jobs import JobEvent, JobRecord, JobStatus, JobStore

jobs_app = typer.Typer(
    help="Upload jobs: list, show one, print its events, retry or cancel it.",
    no_args_is_help=True,
)
app.add_typer(jobs_app, name="jobs")

T = TypeVar("T")
_POLL_S = 0.5


def _with_store(settings: Settings, fn: Callable[[JobStore], Awaitable[T]]) -> T:
    from s3flow.app import open_store

    async def go() -> T:
        async with open_store(settings) as store:
            if store is None:
                raise S3flowError("upload jobs need a state store (state.url is 'none')")
            return await fn(store)

    return asyncio.run(go())


def _job_json(job: JobRecord) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "upload_id": job.upload_id,
        "template": job.template,
        "status": str(job.status),
        "files": [{"name": f.name, "key": f.key, "received": f.received} for f in job.files],
        "steps": [
            {"name": s.name, "status": str(s.status), "progress": s.progress} for s in job.steps
        ],
        "outputs": [{"name": o.name, "bucket": o.bucket, "key": o.key} for o in job.outputs],
        "error": job.error,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }


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
    limit: Annotated[int, typer.Option("--limit", help="At most this many jobs.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Recent jobs, newest first."""
    try:
        st = JobStatus(status_) if status_ else None
    except ValueError as exc:
        allowed = ", ".join(s.value for s in JobStatus)
        raise typer.BadParameter(f"must be one of {allowed}", param_hint="--status") from exc
    try:
        settings = settings_from(config)
        jobs = _with_store(settings, lambda s: s.list_jobs(status=st, limit=limit))
    except S3flowError as exc:
        raise fail(exc) from exc
    if as_json:
        print(json.dumps([_job_json(j) for j in jobs], indent=2))
        return
    table = Table(title=f"s3flow jobs ({len(jobs)})")
    for col in ("job", "template", "status", "files", "created", "error"):
        table.add_column(col)
    for j in jobs:
        got = sum(f.received for f in j.files)
        table.add_row(
            j.job_id,
            j.template,
            str(j.status),
            f"{got}/{len(j.files)}",
            ts(j.created_at),
            (j.error or "")[:60],
        )
    console.print(table)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One job: its files, steps, outputs and error."""
    try:
        settings = settings_from(config)
        job = _with_store(settings, lambda s: s.get_job(job_id))
    except S3flowError as exc:
        raise fail(exc) from exc
    if job is None:
        raise fail(S3flowError(f"no job {job_id!r}"))
    if as_json:
        print(json.dumps(_job_json(job), indent=2))
        return
    console.print(f"[bold]{job.job_id}[/]  template {job.template}  status [bold]{job.status}[/]")
    console.print(
        f"upload {job.upload_id}, created {ts(job.created_at)}, updated {ts(job.updated_at)}"
    )
    for f in job.files:
        console.print(
            f"  file  {'received' if f.received else 'waiting '}  {escape(f.name)}"
            f"  ({f.size} bytes)"
        )
    for i, s in enumerate(job.steps):
        prog = ", ".join(f"{k}={v}" for k, v in s.progress.items())
        console.print(f"  step {i} {s.name}: {s.status}{'  ' + prog if prog else ''}")
    for o in job.outputs:
        console.print(f"  output s3://{o.bucket}/{escape(o.key)}")
    if job.error:
        console.print(f"  [red]error:[/] {escape(job.error)}")


@jobs_app.command("events")
def jobs_events(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    config: ConfigOpt = None,
    after: Annotated[
        int, typer.Option("--after", help="Only events after this sequence number.")
    ] = 0,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")
    ] = False,
    timeout_s: Annotated[
        float, typer.Option("--timeout", help="Give up following after this long.")
    ] = 3600,
) -> None:
    """A job's event log (the same events, ids and order as its SSE stream)."""
    try:
        settings = settings_from(config)
    except S3flowError as exc:
        raise fail(exc) from exc

    async def go(store: JobStore) -> int:
        if await store.get_job(job_id) is None:
            raise S3flowError(f"no job {job_id!r}")
        last = after
        deadline = time.monotonic() + timeout_s
        while True:
            for ev in await store.events(job_id, after_seq=last):
                console.print(_event_line(ev), highlight=False, soft_wrap=True)
                last = ev.seq
                if ev.type.terminal:
                    return 0 if ev.type == "job.completed" else 1
            if not follow or time.monotonic() > deadline:
                return 0
            await asyncio.sleep(_POLL_S)

    try:
        code = _with_store(settings, go)
    except S3flowError as exc:
        raise fail(exc) from exc
    raise typer.Exit(code if follow else 0)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    config: ConfigOpt = None,
    reason: Annotated[str, typer.Option("--reason", help="Shown in the job's error.")] = "",
) -> None:
    """End a job that has not finished: it fails with "cancelled by an operator"."""
    from s3flow.ops.jobs import cancel_job

    try:
        settings = settings_from(config)
        job = _with_store(settings, lambda s: cancel_job(s, job_id, reason=reason))
    except S3flowError as exc:
        raise fail(exc) from exc
    console.print(f"job {job.job_id}: {job.status} ({escape(job.error or '')})")


@jobs_app.command("retry")
def jobs_retry(
    job_id: Annotated[str, typer.Argument(help="The failed job's id.")],
    config: ConfigOpt = None,
) -> None:
    """Run a failed job again, as a new job over the same files (printed)."""
    from s3flow.aws import open_clients
    from s3flow.ops.jobs import retry_job

    try:
        settings = settings_from(config)

        async def go(store: JobStore) -> JobRecord:
            async with open_clients(settings.aws) as clients:
                return await retry_job(settings, store, clients.sqs, job_id)

        job = _with_store(settings, go)
    except S3flowError as exc:
        raise fail(exc) from exc
    console.print(f"job {job_id} retried as [bold]{job.job_id}[/] ({job.status})")
