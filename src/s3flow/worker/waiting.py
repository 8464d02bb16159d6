"""Waiting for a busy key lock or claim with the message still leased.

A claim held by another worker never spends the message's retry budget: the
handler waits with the message leased (the heartbeat keeps it invisible), looking
again after 0.5 s, doubling up to 5 s, or as soon as the holder's hold expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from s3flow.events import ObjectEvent
from s3flow.settings import PipelineSettings
from s3flow.worker.outcomes import Release, Retry, backoff_s
from s3flow.worker.source import ReceivedMessage

log = logging.getLogger("s3flow.worker")
T = TypeVar("T")

_WAIT_FIRST_S = 0.5  # first look again at a busy claim; doubles up to _WAIT_MAX_S
_WAIT_MAX_S = 5.0


async def until_free(
    attempt: Callable[[], Awaitable[tuple[T | None, float | None]]],
    *,
    msg: ReceivedMessage,
    event: ObjectEvent,
    settings: PipelineSettings,
    stop: asyncio.Event,
    error_class: str,
    what: str,
    wake: Callable[[], asyncio.Event] | None = None,
) -> T | Retry | Release:
    """Call ``attempt`` until it gets something, waiting between tries with the message
    leased (its heartbeat keeps it invisible: no receive is spent).

    ``attempt`` returns (the thing, None) or (None, seconds until the holder's hold
    expires, if known). Gives up at shutdown (release) or after ``job_timeout_s``
    (a retry with ``error_class``); ``what`` names the holder in messages. ``wake``
    gives an event set when the holder in this process lets go: the wait ends then,
    not at the next look (up to 5 s later, each waiter in turn).
    """
    p = settings
    wait_s = _WAIT_FIRST_S
    logged = False
    while True:
        freed = wake() if wake is not None else None  # before the attempt: no wake missed
        got, expires_in = await attempt()
        if got is not None:
            return got
        if stop.is_set():
            return Release(f"shutdown while waiting for {what}")
        if time.monotonic() - (msg.started_at or msg.received_at) > p.job_timeout_s:
            delay = backoff_s(msg.receive_count, p.retry_base_s, p.retry_max_s)
            return Retry(
                delay,
                error_class,
                f"{event.uri()}: waited for {what} for longer than job_timeout_s "
                f"({p.job_timeout_s}s)",
            )
        if not logged:
            logged = True
            log.info(
                "%s (message %s): waiting for %s with the message leased",
                event.uri(),
                msg.message_id,
                what,
            )
        timeout = wait_s if expires_in is None else min(wait_s, max(0.05, expires_in + 0.05))
        await first_set(stop, *([freed] if freed is not None else []), wait_for_s=timeout)
        wait_s = min(wait_s * 2, _WAIT_MAX_S)


async def first_set(*events: asyncio.Event, wait_for_s: float | None = None) -> None:
    """Wait until one of ``events`` is set (at most ``wait_for_s`` seconds, if given)."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=wait_for_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
