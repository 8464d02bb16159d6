"""``GET /api/jobs/{job_id}/events``: the one route that stays open, served ahead of FastAPI.

A thousand viewers of one job hold a thousand requests open for minutes, so
what each holds must be small. Routed through FastAPI's middleware, router
and dependency machinery, a request keeps about 15 KB of frames and objects
for as long as the stream lives; :func:`serve_events`, called by the app
before that stack (see :class:`s3flow.web.app.WebApp`, which checks the
token first and returns this coroutine rather than awaiting it), keeps this
function's frame, its :class:`~s3flow.web.hub.EventStream` (a future while
it waits) and an entry in the app's
:class:`~s3flow.web.sse.DisconnectPoller` on top of what uvicorn holds for
any connection: no response object, no generator, no task of its own.

Without ``Last-Event-ID`` (header, or ``?last_event_id=`` for clients that
cannot set headers) the stream replays from event 1, then goes live; it ends
after ``job.completed``, ``job.failed`` or ``job.expired``, and a client
that already has the terminal event (EventSource reconnects after every
close) gets 204 No Content, which tells EventSource to stop. An unknown job
is a 404, a bad ``Last-Event-ID`` a 400, a store failure a 503, each with a
JSON ``{"error": ...}``.
"""

from __future__ import annotations

import contextlib
import logging
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from s3flow.errors import S3flowError
from s3flow.web.auth import EVENTS_PATH, send_error
from s3flow.web.hub import EventStream
from s3flow.web.runtime import WebRuntime
from s3flow.web.sse import HEADERS, DisconnectPoller, LastEventIdError, parse_last_event_id

__all__ = ["match_events", "serve_events"]

log = logging.getLogger("s3flow.web")


def _last_event_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"last-event-id":
            return bytes(value).decode("latin-1")
    query: bytes = scope.get("query_string", b"")
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name == "last_event_id":
            return value
    return None


def match_events(scope: Scope) -> str | None:
    """The job id if ``scope`` is an HTTP request for ``/api/jobs/{job_id}/events``, else None."""
    if scope["type"] != "http":
        return None
    match = EVENTS_PATH.match(scope["path"])
    return None if match is None else match["job_id"]


async def serve_events(
    runtime: WebRuntime,
    disconnects: DisconnectPoller,
    job_id: str,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Answer one events request: the stream, or a JSON error.

    The stream is sent from this coroutine itself (no response object, no
    generator, no second task): while a subscriber waits, its request holds
    this frame, its :class:`~s3flow.web.hub.EventStream` with one future,
    and an entry in ``disconnects``, which ends the stream when the client
    leaves.
    """
    stream = await _open_stream(runtime, job_id, scope, send)
    del job_id  # the stream holds its channel's copy: one string per job, not per request
    if stream is None:
        return
    disconnects.watch(stream, receive)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        while (chunk := await stream.read()) is not None:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            elif (waiter := stream.wait()) is not None:
                await waiter
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:
        pass  # the client is gone (ASGI spec 2.4 servers raise on send)
    except Exception as exc:  # the store failed mid-stream: end it, the client resumes
        log.warning("an event stream ended early (the client will resume): %s", exc)
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        disconnects.unwatch(stream)
        stream.stop()


async def _open_stream(
    runtime: WebRuntime, job_id: str, scope: Scope, send: Send
) -> EventStream | None:
    """The stream to send, or None once an error (or 204) has been answered.

    Keeps only the stream: what it looked up dies with this frame.
    """
    if scope["method"] != "GET":
        await send_error(send, 405, f"{scope['method']} is not allowed on {scope['path']}")
        return None
    try:
        after = parse_last_event_id(_last_event_id(scope))
    except LastEventIdError as exc:
        await send_error(send, 400, str(exc))
        return None
    try:
        head = await _head(runtime, job_id)
        if head is not None and after > head[0]:
            # Past this instance's channel: the store says whether the job has it.
            head = await _stored_head(runtime, job_id)
    except S3flowError as exc:
        log.warning("GET %s failed: %s", scope["path"], exc)
        await send_error(send, 503, f"the service cannot answer right now: {exc}")
        return None
    except Exception:
        log.exception("GET %s failed", scope["path"])
        await send_error(send, 500, "internal error: the server log has the details")
        return None
    if head is None:
        await send_error(
            send, 404, f"no job {job_id[:100]!r}: check the job_id POST /api/uploads returned"
        )
        return None
    last_seq, finished = head
    if after > last_seq:
        # Every event of the job would be skipped as sent, its end too, for good.
        await send_error(
            send,
            400,
            f"Last-Event-ID {after} is past the last event ({last_seq}) of job "
            f"{job_id[:100]!r}: send an id this job's stream sent, or none for the whole "
            "stream",
        )
        return None
    if finished and after >= last_seq:
        # The client has the whole log, terminal event included (EventSource reconnects
        # after every close): 204 tells it to stop.
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return None
    return runtime.hub.stream(job_id, after_seq=after, head=last_seq, finished=finished)


async def _head(runtime: WebRuntime, job_id: str) -> tuple[int, bool] | None:
    """The seq of the job's latest event and whether the job is finished; None if unknown.

    A job this instance already streams answers from its channel (no query:
    a thousand viewers opening one job cost one lookup); any other from the
    store. The channel's seq may be behind the store's, which only means the
    newest events arrive live rather than in the replay.
    """
    known = runtime.hub.head(job_id)
    if known is not None:
        return known
    return await _stored_head(runtime, job_id)


async def _stored_head(runtime: WebRuntime, job_id: str) -> tuple[int, bool] | None:
    """The store's seq of the job's latest event and whether it is finished (None:
    no such job)."""
    job = await runtime.store.get_job(job_id)
    return None if job is None else (job.last_seq, job.status.terminal)
