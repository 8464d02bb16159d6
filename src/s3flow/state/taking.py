"""Taking (and giving back) a lock or a claim in the state store, safe to cancel.

A call cancelled while it waits may still reach the store: the request is on the
wire (DynamoDB), or the store's thread has started it (SQLite). The store then
grants the lock or the claim to a caller that is gone, and nobody releases it: it
stays taken until its TTL runs out, and whoever needs it meanwhile waits or skips
its work (a builder stopping at that moment skips its last sealing pass). These
helpers let the call finish when their caller is cancelled, give back whatever it
took, then let the cancellation go on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from s3flow.state.base import StateStore
from s3flow.state.records import Claim, ClaimOutcome, ObjectId

T = TypeVar("T")


async def _finished(work: asyncio.Future[T]) -> None:
    """Wait until ``work`` is done, whatever cancellations reach the caller meanwhile
    (a second Ctrl-C or a shutdown cutting every wait short must not cut it either)."""
    while not work.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({work})  # a cancelled wait leaves ``work`` running


async def _undone_if_cancelled(call: Awaitable[T], undo: Callable[[T], Awaitable[object]]) -> T:
    """``await call``; cancelled meanwhile, wait for it to finish, ``undo`` its result
    (errors of either are dropped: the caller is going away) and re-raise. Further
    cancellations while that goes on wait for it too."""
    asking = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(asking)
    except asyncio.CancelledError:
        await _finished(asking)
        if not asking.cancelled() and asking.exception() is None:
            undoing = asyncio.ensure_future(undo(asking.result()))
            await _finished(undoing)
            if not undoing.cancelled():
                undoing.exception()  # retrieved: its error is dropped
        elif not asking.cancelled():
            asking.exception()
        raise


async def _nothing(_: object) -> None:
    return None


async def give_back_lock(store: StateStore, name: str, *, owner: str, token: int) -> bool:
    """:meth:`~s3flow.state.base.MetaStore.release_lock`, finished even when the caller
    is cancelled meanwhile (the cancellation goes on once the lock is free): a
    release cut short would leave the lock held until its TTL."""
    return await _undone_if_cancelled(store.release_lock(name, owner=owner, token=token), _nothing)


async def give_back_claim(store: StateStore, oid: ObjectId, *, token: int) -> bool:
    """:meth:`~s3flow.state.base.FileStore.release` (the record back to ``received``),
    finished even when the caller is cancelled meanwhile: a release cut short would
    leave the claim held until its TTL."""
    return await _undone_if_cancelled(store.release(oid, token=token), _nothing)


async def take_lock(store: StateStore, name: str, *, owner: str, ttl_s: float) -> int | None:
    """:meth:`~s3flow.state.base.MetaStore.acquire_lock`, released again if the caller
    is cancelled before it gets the token."""

    async def undo(token: int | None) -> None:
        if token is not None:
            await store.release_lock(name, owner=owner, token=token)

    return await _undone_if_cancelled(store.acquire_lock(name, owner=owner, ttl_s=ttl_s), undo)


async def take_claim(
    store: StateStore,
    oid: ObjectId,
    *,
    pipeline: str,
    owner: str,
    ttl_s: float,
    size: int | None = None,
    sequencer: str | None = None,
) -> Claim:
    """:meth:`~s3flow.state.base.FileStore.claim`, released again (the record back to
    ``received``) if the caller is cancelled before it gets the claim."""

    async def undo(claim: Claim) -> None:
        if claim.outcome is ClaimOutcome.ACQUIRED:
            await store.release(oid, token=claim.token)

    return await _undone_if_cancelled(
        store.claim(
            oid, pipeline=pipeline, owner=owner, ttl_s=ttl_s, size=size, sequencer=sequencer
        ),
        undo,
    )
