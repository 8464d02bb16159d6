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
stopped, and :class:`DisconnectPoller` tells a stream that its client went
away.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import Any, Protocol, cast

from starlette.types import Message, Receive

from s3flow.errors import S3flowError
from s3flow.state.jobs import JobEvent

__all__ = [
    "HEADERS",
    "HEARTBEAT",
    "MEDIA_TYPE",
    "DisconnectPoller",
    "LastEventIdError",
    "Stoppable",
    "client_gone",
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


#: The response headers of every event stream (no Content-Length: the body ends with the stream).
HEADERS = (
    (b"content-type", MEDIA_TYPE.encode() + b"; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
)


def client_gone(receive: Receive) -> bool:
    """Whether ``receive()`` says ``http.disconnect`` right now, without waiting for it.

    Starts ``receive()`` and runs it up to its first wait: a client that is
    gone is answered at once (ASGI servers return ``http.disconnect`` from
    then on), one still there is not, and the pending ``receive()`` is closed
    again (as when a task awaiting it is cancelled). Request body messages
    are read past.
    """
    for _ in range(_MAX_BODY_MESSAGES):
        awaitable = receive()
        running = (
            cast(Coroutine[Any, None, Message], awaitable)
            if isinstance(awaitable, Coroutine)
            else awaitable.__await__()
        )
        try:
            running.send(None)
        except StopIteration as stop:
            message: Message = stop.value
            if message["type"] == "http.disconnect":
                return True
            continue  # the request body: read on
        running.close()
        return False
    return False


#: Request body messages :func:`client_gone` reads past in one look (a GET has one, empty).
_MAX_BODY_MESSAGES = 8


class Stoppable(Protocol):
    """What :class:`DisconnectPoller` watches: something to stop when its client leaves."""

    def stop(self) -> None:
        """End (the client went away)."""


class DisconnectPoller:
    """Notices every ``every_s`` which event streams' clients went away, from one task.

    A stream must end when its client leaves (uvicorn drops writes to a
    closed connection silently), and only ``receive()`` says so. Awaiting
    it for each stream would keep a waiting ``receive()`` (two coroutines, a
    future, and a task to run them) per subscriber; instead one task looks
    at every watched stream with :func:`client_gone` every ``every_s`` and
    calls the stream's ``stop()``. A watched stream costs one dict entry
    here. The task runs only while something is watched.
    """

    __slots__ = ("_task", "_watched", "every_s")

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self._watched: dict[Stoppable, Receive] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._watched)

    @property
    def running(self) -> bool:
        """True while the polling task runs (only while something is watched)."""
        return self._task is not None and not self._task.done()

    def watch(self, stream: Stoppable, receive: Receive) -> None:
        """Call ``stream.stop()`` (once) when the client of ``receive`` is gone; until unwatched."""
        self._watched[stream] = receive
        task = self._task
        loop = asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not loop:
            self._task = loop.create_task(self._run(), name="s3flow-sse-disconnects")

    def unwatch(self, stream: Stoppable) -> None:
        """Stop watching ``stream`` (it ended)."""
        self._watched.pop(stream, None)

    async def _run(self) -> None:
        try:
            while self._watched:
                await asyncio.sleep(self.every_s)
                for stream, receive in list(self._watched.items()):
                    try:
                        gone = client_gone(receive)
                    except Exception as exc:  # the server's receive() failed: the stream is over
                        log.debug("receive() failed while looking for a disconnect: %r", exc)
                        gone = True
                    if gone and self._watched.pop(stream, None) is not None:
                        stream.stop()
        finally:
            if self._task is asyncio.current_task():
                self._task = None
