"""`s3flow upload`: send files as one upload job through the HTTP API and follow it live.

It is an ordinary API client (:mod:`s3flow.jobs.client`): ``POST /api/uploads``,
one presigned POST per file straight to S3 (a progress bar each), then the
job's event stream (``GET /api/jobs/<id>/events``), reconnecting with
``Last-Event-ID`` when the connection drops. Exit 0 on ``job.completed``, 1 on
``job.failed`` / ``job.expired``, 2 on a refused request or an unreachable server.
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)

from s3flow.cli.common import ConfigOpt, app, console, err_console, fail, settings_or_exit
from s3flow.errors import S3flowError
from s3flow.jobs.client import (
    TERMINAL_EXIT,
    api_url,
    create_upload,
    describe,
    post_file,
    read_events,
)


def _content_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


@app.command("upload")
def upload(
    files: Annotated[list[Path], typer.Argument(help="Files to upload as one job.")],
    template: Annotated[str, typer.Option("--template", "-t", help="Job template name.")],
    config: ConfigOpt = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="API base URL (default $S3FLOW_WEB_URL, \\[web] url, :8080)."),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="S3FLOW_TOKEN", help="API bearer token.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Upload FILES as one job run by TEMPLATE, then follow its progress to the end."""
    settings = settings_or_exit(config) if config or os.environ.get("S3FLOW_CONFIG") else None
    base = api_url(url, settings.web.url if settings else None)
    for f in files:
        if not f.is_file():
            raise fail(S3flowError(f"{f} is not a readable file"))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(timeout=httpx.Timeout(30.0)) as client:
            code = _run(client, base, headers, template, files, quiet)
    except httpx.TransportError as exc:
        raise fail(S3flowError(f"cannot reach the s3flow API at {base}: {exc}")) from exc
    except S3flowError as exc:
        raise fail(exc) from exc
    raise typer.Exit(code)


def _run(
    client: httpx.Client,
    base: str,
    headers: dict[str, str],
    template: str,
    files: list[Path],
    quiet: bool,
) -> int:
    created = create_upload(client, base, headers, template, files, _content_type)
    job_id = str(created["job_id"])
    console.print(f"job [bold]{job_id}[/] (upload {created['upload_id']}, template {template})")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        disable=quiet,
    ) as bars:
        for path, post in zip(files, created["files"], strict=True):
            task = bars.add_task(escape(path.name), total=path.stat().st_size)

            def advance(n: int, t: TaskID = task) -> None:
                bars.advance(t, n)

            post_file(client, post, path, advance)
    for ev in read_events(client, base, job_id, headers=headers):
        detail = describe(ev)
        console.print(f"{ev.id:>4} {ev.event}{'  ' + escape(detail) if detail else ''}")
        if ev.event in TERMINAL_EXIT:
            return TERMINAL_EXIT[ev.event]
    return 1
