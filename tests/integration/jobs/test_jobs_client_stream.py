"""`s3flow upload`'s event-stream reader against a real HTTP server on 127.0.0.1 that answers
what a load balancer or a briefly failing web app does (scripted responses, real sockets)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from s3flow.errors import S3flowError
from s3flow.jobs.client import read_events

pytestmark = pytest.mark.integration


@dataclass
class Reply:
    """One scripted answer: a status, headers, a body."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def sse(*events: tuple[int, str, dict[str, Any]], heartbeat: bool = False) -> Reply:
    """A 200 event stream with ``events`` (id, type, data) that then closes."""
    out = b": heartbeat\n\n" if heartbeat else b""
    for seq, type_, data in events:
        out += f"id: {seq}\nevent: {type_}\ndata: {json.dumps(data)}\n\n".encode()
    return Reply(200, out, {"Content-Type": "text/event-stream"})


def error(status: int, message: str, **headers: str) -> Reply:
    body = json.dumps({"error": message}).encode()
    return Reply(status, body, {"Content-Type": "application/json", **headers})


class Scripted:
    """A real HTTP server that answers requests with ``replies`` in turn, recording each."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = list(replies)
        self.requests: list[tuple[float, str | None]] = []  # (when, Last-Event-ID)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner.requests.append((time.monotonic(), self.headers.get("Last-Event-ID")))
                reply = owner.replies.pop(0) if owner.replies else error(500, "script ended")
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Scripted:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


@pytest.fixture()
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def test_5xx_429_and_streams_that_end_early_are_retried_with_backoff(
    http: httpx.Client,
) -> None:
    script = [
        error(503, "the service cannot answer right now: state store busy"),
        Reply(502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"}),
        error(429, "slow down", **{"Retry-After": "1"}),
        sse((1, "job.created", {}), (2, "job.queued", {})),  # ends without a terminal event
        sse(heartbeat=True),  # alive, then closed (a proxy's idle limit)
        error(504, "gateway timeout"),
        sse((2, "job.queued", {}), (3, "step.started", {"step": 0}), (4, "job.completed", {})),
    ]
    with Scripted(script) as server:
        t0 = time.monotonic()
        got = [(e.id, e.event) for e in read_events(http, server.url, "job-1", headers={})]
        took = time.monotonic() - t0
        requests = list(server.requests)
    assert got == [(1, "job.created"), (2, "job.queued"), (3, "step.started"), (4, "job.completed")]
    assert len(requests) == len(script)
    assert [h for _, h in requests] == [None, None, None, None, "2", "2", "2"]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(requests)]
    # Never a hot loop: every retry waited, the 429's Retry-After (1 s) was honoured,
    # the stream that ended early was retried after a pause too.
    assert min(gaps) >= 0.2, gaps
    assert gaps[2] >= 0.95, gaps
    assert max(gaps) <= 12, gaps  # capped (10 s)
    assert took < 30


def test_retries_are_bounded(http: httpx.Client) -> None:
    with Scripted([error(503, "down")] * 4) as server:
        with pytest.raises(S3flowError, match=r"failed 4 times in a row.*HTTP 503: down"):
            list(read_events(http, server.url, "job-1", headers={}, retries=3))
        assert len(server.requests) == 4


@pytest.mark.parametrize(
    ("status", "hint"),
    [(404, "check the job id"), (401, "--token"), (400, "will not succeed")],
)
def test_4xx_is_fatal_at_once_with_the_reason(http: httpx.Client, status: int, hint: str) -> None:
    with Scripted([error(status, "the server's reason"), sse((1, "job.completed", {}))]) as server:
        with pytest.raises(S3flowError) as info:
            list(read_events(http, server.url, "job-1", headers={}))
        assert len(server.requests) == 1
    message = str(info.value)
    assert f"HTTP {status}: the server's reason" in message and hint in message
    assert "/api/jobs/job-1/events" in message
