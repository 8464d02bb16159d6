"""`s3flow upload`: send files as one upload job through the HTTP API and follow it live.

It is an ordinary API client (:mod:`s3flow.jobs.client`): ``POST /api/uploads``,
one presigned POST per file straight to S3 (a progress bar each), then the
job's event stream (``GET /api/jobs/<id>/events``), reconnecting with
``Last-Event-ID`` when the connection drops. Exit 0 on ``job.completed``, 1 on
``job.failed`` / ``job.expired``, 2 on a refused request or an unreachable server.
"""

from __future__ import annotations

import contextlib
import logging
import mimetypes
import os
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

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

from s3flow.cli.common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    app,
    console,
    err_console,
    fail,
    settings_or_exit,
    state,
)
from s3flow.errors import S3flowError
from s3flow.jobs.client import (
    TERMINAL_EXIT,
    UploadUrls,
    api_url,
    create_upload,
    describe,
    read_events,
    send_file,
)
from s3flow.local.endpoint import connect_host, host_url
from s3flow.settings import CONFIG_ENV, WebSettings


def _content_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _check_api_answer(base: str) -> Callable[[httpx.Response], None]:
    """A response hook: an answer to ``POST /api/uploads`` that is not JSON comes from a
    server other than the s3flow API (``--url`` wrong): an S3flowError saying so, with a
    short excerpt of the page instead of all of it."""

    def check(resp: httpx.Response) -> None:
        request = resp.request
        if request.method != "POST" or not request.url.path.endswith("/api/uploads"):
            return
        ctype = resp.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() == "application/json":
            return
        resp.read()
        text = " ".join(resp.text.split())
        excerpt = text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else "")
        raise S3flowError(
            f"the server at {base} did not answer as the s3flow API (POST /api/uploads: "
            f"HTTP {resp.status_code}, {ctype or 'no content type'}; it began {excerpt!r}). "
            "Point --url (or $S3FLOW_WEB_URL, [web] url) at the server `s3flow web` runs"
        )

    return check


#: How much of a page that is not the API's answer is shown.
_EXCERPT = 80

T = TypeVar("T")

#: How long `s3flow upload` waits by default for an API nothing listens at yet.
API_WAIT_S = 15.0


@app.command("upload")
def upload(
    files: Annotated[list[Path], typer.Argument(help="Files to upload as one job.")],
    template: Annotated[str, typer.Option("--template", "-t", help="Job template name.")],
    config: ConfigOpt = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="API base URL (default $S3FLOW_WEB_URL, else \\[web] url, else "
            "http://\\[web] host:port, 127.0.0.1:8080 by default).",
        ),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="S3FLOW_TOKEN", help="API bearer token.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    api_wait_s: Annotated[
        float,
        typer.Option(
            "--api-wait-s",
            min=0,
            help="How long to wait for an API that nothing listens at yet (`s3flow web &` "
            "just started).",
        ),
    ] = API_WAIT_S,
) -> None:
    """Upload FILES as one job run by TEMPLATE, then follow its progress to the end."""
    configured = config or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG.is_file()
    settings = settings_or_exit(config) if configured else None
    base = api_url(url, _served_at(settings.web) if settings else None)
    if "://" not in base:
        raise fail(
            S3flowError(
                f"API URL {base!r} has no scheme: write 'http://{base}' (or https://) in "
                "--url, $S3FLOW_WEB_URL or [web] url"
            )
        )
    for f in files:
        if f.is_dir():
            raise fail(
                S3flowError(f"{f} is a directory: give its files (e.g. {shlex.quote(str(f))}/*)")
            )
        if not f.is_file():
            raise fail(S3flowError(f"{f} is not a readable file"))
    if state["log_level"] != "DEBUG":  # httpx logs every request at INFO
        logging.getLogger("httpx").setLevel(logging.WARNING)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    hooks = {"response": [_check_api_answer(base)]}
    try:
        with httpx.Client(timeout=httpx.Timeout(30.0), event_hooks=hooks) as client:
            code = _run(client, base, headers, template, files, quiet, api_wait_s)
    except httpx.TransportError as exc:
        raise fail(_unreachable(base, exc, config)) from exc
    except S3flowError as exc:
        raise fail(exc) from exc
    raise typer.Exit(code)


def _served_at(web: WebSettings) -> str:
    """Where ``s3flow web`` with these settings answers: ``[web] url``, else its host and
    port (a wildcard bind address is reached on loopback)."""
    if web.url:
        return web.url
    return host_url(connect_host(web.host), web.port)


def _unreachable(base: str, exc: httpx.TransportError, config: Path | None) -> S3flowError:
    """The error for a request that got no answer: the API's (with how to start it), or
    the storage's a file was being sent to."""
    api = httpx.URL(base)
    try:
        url = exc.request.url
    except RuntimeError:  # no request attached: the first one, to the API
        url = api
    if (url.scheme, url.host, url.port) != (api.scheme, api.host, api.port):
        return S3flowError(f"cannot reach {url.copy_with(query=None)} to send a file: {exc}")
    cfg = shlex.quote(str(config)) if config else "<config>"
    return S3flowError(
        f"cannot reach the s3flow API at {base}: {exc}. Is it running? Start it with "
        f"`s3flow web -c {cfg}`, or point --url (or $S3FLOW_WEB_URL, [web] url) at it"
    )


def _when_listening(call: Callable[[], T], base: str, wait_s: float) -> T:
    """``call()`` (the first request to the API), again while nothing listens at
    ``base`` yet, up to ``wait_s``: a ``s3flow web &`` started just before takes a few
    seconds to listen. A refused connection sent nothing, so trying again is safe;
    still refused at the end, the last ``ConnectError`` is raised."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            return call()
        except httpx.ConnectError:
            if time.monotonic() >= deadline:
                raise
            if not said:
                said = True
                err_console.print(
                    f"waiting up to {wait_s:.0f} s for the s3flow API at {base} "
                    "(nothing listens there yet)",
                    highlight=False,
                    markup=False,
                )
            time.sleep(0.5)


def _run(
    client: httpx.Client,
    base: str,
    headers: dict[str, str],
    template: str,
    files: list[Path],
    quiet: bool,
    api_wait_s: float = API_WAIT_S,
) -> int:
    asked_at = time.monotonic()
    created = _when_listening(
        lambda: create_upload(client, base, headers, template, files, _content_type),
        base,
        api_wait_s,
    )
    urls = UploadUrls(client, base, headers, created, asked_at=asked_at)
    job_id = str(created["job_id"])
    console.print(f"job [bold]{job_id}[/] (upload {created['upload_id']}, template {template})")
    cancel = f"`s3flow jobs cancel {job_id}`"
    with _said_on_interrupt(
        f"interrupted: job {job_id} waits for its other files until it expires ([jobs] "
        f"job_timeout_s); cancel it with {cancel}, or upload the files again as a new job"
    ):
        _send_files(client, urls, created, files, quiet)
    with _said_on_interrupt(
        f"interrupted: job {job_id} goes on; follow it with "
        f"`s3flow jobs events --follow {job_id}`, or cancel it with {cancel}"
    ):
        return _follow(client, base, headers, job_id)


@contextlib.contextmanager
def _said_on_interrupt(text: str) -> Iterator[None]:
    """Ctrl-C in the block: ``text`` (what became of the job) and exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        err_console.print(text, highlight=False, markup=False)
        raise typer.Exit(130) from None


def _send_files(
    client: httpx.Client,
    urls: UploadUrls,
    created: dict[str, Any],
    files: list[Path],
    quiet: bool,
) -> None:
    """Post each file to its upload URL, with a progress bar each."""
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

            def restart(t: TaskID = task) -> None:
                bars.reset(t)

            send_file(client, urls, post["key"], path, advance, restart)


def _follow(client: httpx.Client, base: str, headers: dict[str, str], job_id: str) -> int:
    """Print the job's events until it ends; the exit code of how it ended."""
    # Files are recorded, and jobs run, by `s3flow worker`: without one the job waits in
    # silence, so say so once if nothing happens for a while.
    hint = threading.Timer(NO_WORKER_HINT_S, _no_worker_hint, (job_id,))
    hint.daemon = True
    hint.start()
    try:
        for ev in read_events(client, base, job_id, headers=headers):
            if ev.event != "job.created":
                hint.cancel()
            detail = describe(ev)
            console.print(f"{ev.id:>4} {ev.event}{'  ' + escape(detail) if detail else ''}")
            if ev.event in TERMINAL_EXIT:
                return TERMINAL_EXIT[ev.event]
    finally:
        hint.cancel()
    return 1


#: Seconds without any event after ``job.created`` before the "is a worker running?" hint.
NO_WORKER_HINT_S = 30.0


def _no_worker_hint(job_id: str) -> None:
    err_console.print(
        f"no event of job {job_id} for {NO_WORKER_HINT_S:.0f} s after its files were "
        "sent: `s3flow worker` records their arrival and runs the job; is one running "
        "against this configuration? (still waiting; Ctrl-C stops waiting, the job "
        "goes on)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
