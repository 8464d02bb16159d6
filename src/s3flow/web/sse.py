"""Server-sent events: the wire format of ``GET /api/jobs/{job_id}/events``.

Every job event is one frame::

    id: 3
    event: step.progress
    data: {"step": 0, "bytes_done": 1024, "bytes_total": 4096, "files_done": 0}

``id`` is the event's sequence number in its job (1, 2, 3… without gaps),
``event`` its type, ``data`` the event's payload as one line of JSON (its
keys depend on the type; see docs/jobs.md). Heartbeats are comment lines
(``: heartbeat``), which EventSource ignores. :func:`format_event` builds a
frame, :func:`parse_last_event_id` reads where a reconnecting client
stopped, and :class:`EventStreamResponse` sends frames over ASGI, ending
the stream promptly when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

from starlette.types import Receive, Scope, Send

from s3flow.errors import S3flowError
from s3flow.state.jobs import JobEvent

__all__ = [
    "HEARTBEAT",
    "MEDIA_TYPE",
    "EventStreamResponse",
    "LastEventIdError",
    "format_event",
    "parse_last_event_id",
]

log = logging.getLogger("s3flow.web")
MEDIA_TYPE = "text/event-stream"
#: A comment frame: keeps proxies and load balancers from closing an idle stream.
HEARTBEAT = b": heartbeat\n\n"


def format_event(event: JobEvent) -> bytes:
    """One SSE frame for ``event``: ``id``, ``event`` and a one-line JSON ``data``.

    ``json.dumps`` escapes CR, LF and every non-ASCII character inside
    strings, so the data is always a single ASCII line and cannot end the
    frame early.
    """
    data = json.dumps(event.data, separators=(",", ":"), default=str)
    return f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()


class LastEventIdError(S3flowError):
    """A ``Last-Event-ID`` that is not a sequence number."""


def parse_last_event_id(value: str | None) -> int:
    """The sequence number a client last received (0: none, replay from event 1).

    Raises :class:`LastEventIdError` for anything but a non-negative integer.
    """
    if value is None or not value.strip():
        return 0
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise LastEventIdError(
            f"Last-Event-ID {value[:40]!r} is not an event id: send the id (a whole number "
            "0, 1, 2…) of the last event you received, or leave it out to replay from the start"
        )
    return int(text)


_HEADERS = (
    (b"content-type", MEDIA_TYPE.encode() + b"; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
)


class EventStreamResponse:
    """An ASGI response streaming ``frames`` as ``text/event-stream`` (no Content-Length).

    ``frames`` is iterated in the request's own task; a small watcher task
    waits for ``http.disconnect`` and calls ``stop`` (which must make the
    iterator finish), so a stream whose client went away is released at once
    instead of at its next write (uvicorn drops writes to a closed
    connection silently). Nothing is buffered: each chunk is sent as it comes.
    """

    __slots__ = ("_frames", "_stop")

    def __init__(self, frames: AsyncGenerator[bytes, None], stop: Callable[[], None]) -> None:
        self._frames = frames
        self._stop = stop

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._stop()
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the headers, then every chunk, then the end of the body."""
        watcher = asyncio.create_task(self._watch(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            async with aclosing(self._frames) as frames:
                async for chunk in frames:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            self._stop()  # the client is gone (ASGI spec 2.4 servers raise on send)
        except Exception as exc:  # the store failed mid-stream: end it, the client resumes
            log.warning("an event stream ended early (the client will resume): %s", exc)
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
