"""A client of the upload-jobs HTTP API (what `s3flow upload` and the demo use).

Plain httpx, synchronous: ``POST /api/uploads``, one presigned POST per file
straight to S3, then the job's server-sent events, resumed with
``Last-Event-ID`` when the connection drops.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import httpx

from s3flow.errors import S3flowError

__all__ = [
    "DEFAULT_URL",
    "MAX_BACKOFF_S",
    "RENEW_MARGIN_MAX_S",
    "TERMINAL_EXIT",
    "ExpiredUrlError",
    "SseEvent",
    "UploadUrls",
    "api_url",
    "backoff_s",
    "create_upload",
    "describe",
    "error_of",
    "parse_sse",
    "post_file",
    "read_events",
    "send_file",
]

DEFAULT_URL = "http://127.0.0.1:8080"
#: Exit code of `s3flow upload` per terminal event.
TERMINAL_EXIT = {"job.completed": 0, "job.failed": 1, "job.expired": 1}


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


#: HTTP statuses of the events request worth another try: any 5xx (the server's 503 on a
#: brief store failure, a load balancer's 502/503/504) and 429 (throttled).
_RETRY_STATUS = frozenset({429})
#: Longest wait between two tries of the event stream (and of a Retry-After honoured).
MAX_BACKOFF_S = 10.0
_FIRST_BACKOFF_S = 0.25


def _retryable(status: int) -> bool:
    return status >= 500 or status in _RETRY_STATUS


def _retry_after(resp: httpx.Response) -> float:
    """The response's ``Retry-After`` in seconds (0 when absent or not a number of seconds)."""
    try:
        return max(0.0, float(resp.headers.get("retry-after", "0")))
    except ValueError:
        return 0.0


def backoff_s(failures: int, retry_after: float = 0.0) -> float:
    """Wait before try ``failures + 1``: doubling from 0.25 s, capped at :data:`MAX_BACKOFF_S`.

    A server's ``Retry-After`` lengthens it (to the same cap).
    """
    doubled = _FIRST_BACKOFF_S * float(2 ** min(max(failures - 1, 0), 16))
    return min(MAX_BACKOFF_S, max(doubled, retry_after))


def _noting(lines: Iterator[str], seen: list[bool]) -> Iterator[str]:
    """``lines``, appending to ``seen`` once the first one arrives."""
    for line in lines:
        if not seen:
            seen.append(True)
        yield line


def _refused(url: str, job_id: str, resp: httpx.Response) -> S3flowError:
    """The error for a 4xx (or other non-retryable) answer to the events request."""
    status = resp.status_code
    hint = {
        401: "pass the API token with --token or $S3FLOW_TOKEN",
        403: "pass the API token with --token or $S3FLOW_TOKEN",
        404: f"check the job id and that {url} is the API that created the job",
    }.get(status, "this request will not succeed as it is")
    return S3flowError(
        f"GET {url}/api/jobs/{job_id}/events was refused (HTTP {status}: {error_of(resp)}); "
        f"{hint}. The job itself goes on: `s3flow jobs events {job_id} --follow` shows it "
        "from the state store"
    )


def read_events(
    client: httpx.Client, url: str, job_id: str, *, headers: dict[str, str], retries: int = 20
) -> Iterator[SseEvent]:
    """The job's events from 1 to the terminal one, resuming after a dropped connection.

    A transport error, a 5xx or 429 answer, or a stream that ends before the
    terminal event is tried again with ``Last-Event-ID`` after a capped
    exponential backoff (:func:`backoff_s`); after ``retries`` failures in a
    row (any event received resets the count) it gives up with an
    :class:`S3flowError`. A 4xx answer is that error at once.
    """
    last = 0
    failures = 0
    while True:
        h = dict(headers)
        if last:
            h["Last-Event-ID"] = str(last)
        wait_at_least = 0.0
        alive: list[bool] = []  # not empty once the stream sent a line (event or heartbeat)
        try:
            with client.stream(
                "GET",
                f"{url}/api/jobs/{job_id}/events",
                headers=h,
                timeout=httpx.Timeout(10, read=60),
            ) as resp:
                if resp.status_code != 200:
                    resp.read()
                    if not _retryable(resp.status_code):
                        raise _refused(url, job_id, resp)
                    why = f"HTTP {resp.status_code}: {error_of(resp)}"
                    wait_at_least = _retry_after(resp)
                else:
                    for ev in parse_sse(_noting(resp.iter_lines(), alive)):
                        failures = 0
                        if ev.id <= last:
                            continue
                        last = ev.id
                        yield ev
                        if ev.event in TERMINAL_EXIT:
                            return
                    why = "the stream ended before the job did"
        except httpx.TransportError as exc:
            why = f"{type(exc).__name__}: {exc}"
        # A stream that was alive and then closed (a proxy's idle limit) starts counting anew.
        failures = 1 if alive else failures + 1
        if failures > retries:
            raise S3flowError(
                f"the event stream of {job_id} at {url} failed {failures} times in a row "
                f"(last: {why}); the job goes on: `s3flow jobs events {job_id} --follow` "
                "shows it from the state store"
            )
        time.sleep(backoff_s(failures, wait_at_least))


def error_of(resp: httpx.Response) -> str:
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


def create_upload(
    client: httpx.Client,
    base: str,
    headers: dict[str, str],
    template: str,
    files: list[Path],
    content_type: Callable[[Path], str],
) -> dict[str, Any]:
    """``POST /api/uploads`` for ``files``: the 201 body, or S3flowError with the reason."""
    by_name: dict[str, Path] = {}
    for f in files:  # the server refuses one name twice; here the paths can be named
        if f.name in by_name:
            raise S3flowError(
                f"{by_name[f.name]} and {f} have the same file name {f.name!r}: the files "
                "of one upload need different names (rename one, or upload them as two jobs)"
            )
        by_name[f.name] = f
    declared = [
        {"name": f.name, "size": f.stat().st_size, "content_type": content_type(f)} for f in files
    ]
    resp = client.post(
        f"{base}/api/uploads", json={"template": template, "files": declared}, headers=headers
    )
    if resp.status_code != 201:
        hint = " (give the token with --token or $S3FLOW_TOKEN)" if resp.status_code == 401 else ""
        raise S3flowError(f"upload refused (HTTP {resp.status_code}): {error_of(resp)}{hint}")
    return dict(resp.json())


#: A file starts with fresh upload URLs when less than a quarter of their life, and at
#: most this, is left.
RENEW_MARGIN_MAX_S = 60.0


class ExpiredUrlError(S3flowError):
    """Storage refused a presigned POST as expired (ask for fresh URLs and send again)."""


class UploadUrls:
    """A job's presigned POSTs, asked for again when little of their life is left.

    They live ``expires_in_s`` from when they were asked for (this process's
    clock, so the server's clock does not matter); :meth:`post_for` gets fresh
    ones (``POST /api/jobs/{job_id}/uploads``) first when a file would start
    with less than the margin left, or when told to after storage refused one
    as expired (:class:`ExpiredUrlError`).
    """

    def __init__(
        self,
        client: httpx.Client,
        base: str,
        headers: dict[str, str],
        created: dict[str, Any],
        *,
        asked_at: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._base = base
        self._headers = headers
        self._clock = clock
        self.job_id = str(created["job_id"])
        self._take(created, asked_at)

    def _take(self, body: dict[str, Any], asked_at: float) -> None:
        self._posts: dict[str, dict[str, Any]] = {p["key"]: p for p in body["files"]}
        life_s = float(body["expires_in_s"])
        self.deadline = asked_at + life_s
        self._margin_s = min(RENEW_MARGIN_MAX_S, life_s / 4)

    def post_for(self, key: str, *, renew: bool = False) -> dict[str, Any] | None:
        """The POST for ``key`` (renewed first if due, or ``renew``); None once the job
        has the file already."""
        if renew or self._clock() > self.deadline - self._margin_s:
            try:
                self.renew()
            except S3flowError:
                if renew or self._clock() >= self.deadline:
                    raise
                # renewed early: the URLs in hand still live, so the file goes with them
        return self._posts.get(key)

    def renew(self) -> None:
        """Ask the API for fresh URLs for the files the job still waits for."""
        asked_at = self._clock()
        resp = self._client.post(
            f"{self._base}/api/jobs/{self.job_id}/uploads", headers=self._headers
        )
        if resp.status_code != 200:
            raise S3flowError(
                f"fresh upload URLs for job {self.job_id} were refused "
                f"(HTTP {resp.status_code}): {error_of(resp)}"
            )
        self._take(dict(resp.json()), asked_at)


def post_file(
    client: httpx.Client, post: dict[str, Any], path: Path, advance: Callable[[int], None]
) -> None:
    """Send one file straight to S3 with its presigned POST; ``advance`` gets bytes sent.

    A refusal is an :class:`S3flowError`; an expired URL, :class:`ExpiredUrlError`.
    """
    with path.open("rb") as fh:
        counted = cast(IO[bytes], _Counting(fh, advance))
        r = client.post(
            post["url"],
            data=post["fields"],
            files={"file": (path.name, counted, post["fields"].get("Content-Type"))},
            timeout=httpx.Timeout(30.0, write=300.0),
        )
    if r.status_code == 403 and "expired" in r.text.lower():
        raise ExpiredUrlError(f"S3 refused {path.name}: its upload URL expired ({r.text[:200]})")
    if r.status_code >= 300:
        raise S3flowError(f"S3 refused {path.name} (HTTP {r.status_code}): {r.text[:300]}")


def send_file(
    client: httpx.Client,
    urls: UploadUrls,
    key: str,
    path: Path,
    advance: Callable[[int], None],
    restart: Callable[[], None],
) -> None:
    """Send ``path`` with a live URL from ``urls`` (renewed first when due), and once more
    with fresh ones if storage refuses it as expired (``restart`` resets its progress)."""
    post = urls.post_for(key)
    if post is None:
        return  # the job has it already
    try:
        post_file(client, post, path, advance)
    except ExpiredUrlError:
        restart()
        post = urls.post_for(key, renew=True)
        if post is not None:
            post_file(client, post, path, advance)


def _ordinal(index: Any) -> Any:
    """A step's number as people count (1 for the first), as the web page and the
    template errors show it; the events' ``step`` field is its index (0 first)."""
    return index + 1 if isinstance(index, int) else index


def describe(ev: SseEvent) -> str:
    """A short human line for one event (what `s3flow upload` prints)."""
    d = ev.data
    if ev.event == "file.received":
        return f"{d.get('name')} received"
    if ev.event in ("step.started", "step.completed"):
        n = d.get("outputs")
        extra = f" ({n} output{'' if n == 1 else 's'})" if ev.event == "step.completed" else ""
        return (
            f"step {_ordinal(d.get('step'))}{' ' + str(d['name']) if d.get('name') else ''}{extra}"
        )
    if ev.event == "step.progress":
        done, total = d.get("bytes_done", 0), d.get("bytes_total", "?")
        return f"step {_ordinal(d.get('step'))}: {done}/{total} bytes"
    if ev.event == "job.completed":
        return ", ".join(str(o.get("name")) for o in d.get("outputs", []))
    if ev.event in ("job.failed", "job.expired"):
        return str(d.get("error", ""))
    return ""
