"""`s3flow upload`: send files as one upload job through the HTTP API and follow it live.

It is an ordinary API client: ``POST /api/uploads``, one presigned POST per
file straight to S3 (a progress bar each), then the job's event stream
(``GET /api/jobs/<id>/events``), reconnecting with ``Last-Event-ID`` when
the connection drops. Exit 0 on ``job.completed``, 1 on ``job.failed`` /
``job.expired``, 2 on a refused request or an unreachable server.
"""

from __future__ import annotations

import json
import mimetypes
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, cast

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

from s3flow.cli.common import ConfigOpt, app, console, err_console, fail, settings_from
from s3flow.errors import S3flowError

__all__ = ["SseEvent", "api_url", "read_events"]

DEFAULT_URL = "http://127.0.0.1:8080"
_TERMINAL = {"job.completed": 0, "job.failed": 1, "job.expired": 1}


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event."""

    id: int
    event: str
    data: dict[str, Any]


def api_url(flag: str | None, configured: str | None) -> str:
    """``--url``, else ``$S3FLOW_WEB_URL``, else ``[web] url``, else the default."""
    return (flag or os.environ.get("S3FLOW_WEB_URL") or configured or DEFAULT_URL).rstrip("/")


def parse_sse(lines: Iterator[str]) -> Iterator[SseEvent]:
    """Events from an SSE line stream (comments and heartbeats skipped)."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                try:
                    data = json.loads(fields["data"])
                except ValueError:
                    data = {"raw": fields["data"]}
                yield SseEvent(
                    id=int(fields.get("id", "0") or 0),
                    event=fields.get("event", "message"),
                    data=data if isinstance(data, dict) else {"value": data},
                )
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value


def read_events(
    client: httpx.Client, url: str, job_id: str, *, headers: dict[str, str], retries: int = 20
) -> Iterator[SseEvent]:
    """The job's events from 1 to the terminal one, resuming after a dropped connection."""
    last = 0
    failures = 0
    while True:
        h = dict(headers)
        if last:
            h["Last-Event-ID"] = str(last)
        try:
            with client.stream(
                "GET",
                f"{url}/api/jobs/{job_id}/events",
                headers=h,
                timeout=httpx.Timeout(10, read=60),
            ) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise S3flowError(f"GET events: HTTP {resp.status_code}: {_error_of(resp)}")
                for ev in parse_sse(resp.iter_lines()):
                    failures = 0
                    if ev.id <= last:
                        continue
                    last = ev.id
                    yield ev
                    if ev.event in _TERMINAL:
                        return
        except httpx.TransportError as exc:
            failures += 1
            if failures > retries:
                raise S3flowError(f"the event stream of {job_id} keeps failing: {exc}") from exc
            time.sleep(min(5.0, 0.2 * failures))


def _error_of(resp: httpx.Response) -> str:
    try:
        doc = resp.json()
    except ValueError:
        return resp.text[:300]
    return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)


class _Counting:
    """A file object that reports how much of it has been read (upload progress)."""

    def __init__(self, fh: IO[bytes], advance: Callable[[int], None]) -> None:
        self._fh = fh
        self._advance = advance

    def read(self, n: int = -1) -> bytes:
        chunk = self._fh.read(n)
        self._advance(len(chunk))
        return chunk

    # httpx sizes the multipart body from these (no chunked upload to S3).
    def fileno(self) -> int:
        return self._fh.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()


def _describe(ev: SseEvent) -> str:
    d = ev.data
    if ev.event == "file.received":
        return f"{d.get('name')} received"
    if ev.event in ("step.started", "step.completed"):
        extra = f" ({d.get('outputs')} outputs)" if ev.event == "step.completed" else ""
        return f"step {d.get('step')}{' ' + str(d['name']) if d.get('name') else ''}{extra}"
    if ev.event == "step.progress":
        return f"step {d.get('step')}: {d.get('bytes_done', 0)}/{d.get('bytes_total', '?')} bytes"
    if ev.event == "job.completed":
        return ", ".join(str(o.get("name")) for o in d.get("outputs", []))
    if ev.event in ("job.failed", "job.expired"):
        return str(d.get("error", ""))
    return ""


@app.command("upload")
def upload(
    files: Annotated[list[Path], typer.Argument(help="Files to upload as one job.")],
    template: Annotated[str, typer.Option("--template", "-t", help="Job template name.")],
    config: ConfigOpt = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="API base URL (default $S3FLOW_WEB_URL, [web] url, :8080)."),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="S3FLOW_TOKEN", help="API bearer token.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Upload FILES as one job run by TEMPLATE, then follow its progress to the end."""
    try:
        settings = settings_from(config) if config or os.environ.get("S3FLOW_CONFIG") else None
    except S3flowError as exc:
        raise fail(exc) from exc
    base = api_url(url, settings.web.url if settings else None)
    for f in files:
        if not f.is_file():
            raise fail(S3flowError(f"{f} is not a readable file"))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    declared = [
        {
            "name": f.name,
            "size": f.stat().st_size,
            "content_type": mimetypes.guess_type(f.name)[0] or "application/octet-stream",
        }
        for f in files
    ]
    try:
        with httpx.Client(timeout=httpx.Timeout(30.0)) as client:
            code = _run(client, base, headers, template, files, declared, quiet)
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
    declared: list[dict[str, Any]],
    quiet: bool,
) -> int:
    resp = client.post(
        f"{base}/api/uploads", json={"template": template, "files": declared}, headers=headers
    )
    if resp.status_code != 201:
        raise S3flowError(f"upload refused (HTTP {resp.status_code}): {_error_of(resp)}")
    created = resp.json()
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
            with path.open("rb") as fh:

                def advance(n: int, t: TaskID = task) -> None:
                    bars.advance(t, n)

                counted = cast(IO[bytes], _Counting(fh, advance))
                r = client.post(
                    post["url"],
                    data=post["fields"],
                    files={"file": (path.name, counted, post["fields"].get("Content-Type"))},
                    timeout=httpx.Timeout(30.0, write=300.0),
                )
            if r.status_code >= 300:
                raise S3flowError(f"S3 refused {path.name} (HTTP {r.status_code}): {r.text[:300]}")
    for ev in read_events(client, base, job_id, headers=headers):
        detail = _describe(ev)
        console.print(f"{ev.id:>4} {ev.event}{'  ' + escape(detail) if detail else ''}")
        if ev.event in _TERMINAL:
            return _TERMINAL[ev.event]
    return 1
