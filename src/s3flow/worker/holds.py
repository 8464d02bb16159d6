"""What a message holds in the state store while its records run: key locks and claims.

A record first takes its key's lock (one upload of a key at a time, across
workers), then claims its upload. One held elsewhere is waited for with the
message still leased (:mod:`~s3flow.worker.waiting`). Both are kept by delivery
(:attr:`~s3flow.worker.source.ReceivedMessage.delivery`, one per copy of a message in
flight) so the heartbeat renews exactly what each in-flight copy holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from s3flow.errors import S3flowError
from s3flow.events import ObjectEvent
from s3flow.settings import PipelineSettings
from s3flow.state.base import StateStore
from s3flow.state.records import Claim, ClaimOutcome, FileStatus, ObjectId
from s3flow.state.taking import take_claim, take_lock
from s3flow.worker.outcomes import RecordOutcome
from s3flow.worker.source import ReceivedMessage
from s3flow.worker.waiting import until_free

log = logging.getLogger("s3flow.worker")
K = TypeVar("K")
T = TypeVar("T")


@dataclass(frozen=True)
class KeyLock:
    """A key lock taken for one message: its name, owner and fencing token."""

    name: str
    owner: str
    token: int


def _forget(held: dict[str, dict[K, T]], delivery: str, key: K) -> None:
    """Drop ``key`` from what ``delivery`` holds (and the delivery once it holds nothing)."""
    mine = held.get(delivery)
    if mine is not None:
        mine.pop(key, None)
        if not mine:
            held.pop(delivery, None)


class Holds:
    """Takes, tracks and renews the key locks and claims of one pipeline's messages.

    Both last ``claim_ttl_s`` (0: the pipeline's visibility timeout) unless renewed.
    Without a state store nothing is held: :meth:`renew` does nothing and the
    handler takes neither locks nor claims.
    """

    def __init__(
        self,
        store: StateStore | None,
        settings: PipelineSettings,
        *,
        worker_id: str,
        stop: asyncio.Event,
        claim_ttl_s: float = 0,
    ) -> None:
        self._store = store
        self.p = settings
        self._worker_id = worker_id
        self.ttl_s = claim_ttl_s or float(settings.visibility_timeout_s)
        self._stop = stop
        # message id -> claims and key locks held for it (renewed with its heartbeat)
        self._claims: dict[str, dict[ObjectId, int]] = {}
        self._locks: dict[str, dict[str, tuple[str, int]]] = {}
        # key lock name -> set when this process releases it (its waiters look at once)
        self._freed: dict[str, asyncio.Event] = {}
        self._waiting: dict[str, int] = {}  # key lock name -> lock_key calls under way
        # delivery -> monotonic time at which everything it holds was last confirmed
        # (taken, or renewed all at once): what :meth:`fence` trusts without a round trip
        self._confirmed: dict[str, float] = {}
        # delivery -> set once a lock or claim it holds was found lost (see :meth:`lost`)
        self._lost: dict[str, asyncio.Event] = {}

    async def _until_free(
        self,
        attempt: Callable[[], Awaitable[tuple[T | None, float | None]]],
        msg: ReceivedMessage,
        event: ObjectEvent,
        *,
        error_class: str,
        what: str,
        wake: Callable[[], asyncio.Event] | None = None,
    ) -> T | RecordOutcome:
        return await until_free(
            attempt,
            msg=msg,
            event=event,
            settings=self.p,
            stop=self._stop,
            error_class=error_class,
            what=what,
            wake=wake,
        )

    async def lock_key(self, msg: ReceivedMessage, event: ObjectEvent) -> KeyLock | RecordOutcome:
        """Take the key's lock; while another upload of the key is worked on, wait leased."""
        store = self._store
        assert store is not None
        name = f"key:{self.p.name}:{event.bucket}/{event.key}"
        owner = f"{self._worker_id}:{msg.message_id}"

        async def attempt() -> tuple[int | None, float | None]:
            return await take_lock(store, name, owner=owner, ttl_s=self.ttl_s), None

        self._waiting[name] = self._waiting.get(name, 0) + 1
        try:
            token = await self._until_free(
                attempt,
                msg,
                event,
                error_class="KeyBusy",
                what="another upload of the key",
                wake=lambda: self._freed.setdefault(name, asyncio.Event()),
            )
        finally:
            # The last waiter drops the key's wake event: one held by another worker is
            # never set here, and one per contended key would stay for good.
            self._waiting[name] -= 1
            if not self._waiting[name]:
                del self._waiting[name]
                self._freed.pop(name, None)
        if not isinstance(token, int):
            return token
        self._locks.setdefault(msg.delivery, {})[name] = (owner, token)
        self._confirmed.setdefault(msg.delivery, time.monotonic())
        return KeyLock(name, owner, token)

    async def unlock(self, delivery: str, lock: KeyLock) -> None:
        """Stop renewing ``lock`` and release it (best effort: it expires otherwise).

        Not protected against the caller's cancellation: the handler runs it so that
        it is finished (:meth:`~s3flow.worker.handler.MessageHandler._recorded`).
        """
        store = self._store
        assert store is not None
        _forget(self._locks, delivery, lock.name)
        self._drop_if_empty(delivery)
        with contextlib.suppress(S3flowError):
            await store.release_lock(lock.name, owner=lock.owner, token=lock.token)
        freed = self._freed.pop(lock.name, None)
        if freed is not None:
            freed.set()

    async def claim(
        self, msg: ReceivedMessage, event: ObjectEvent, oid: ObjectId
    ) -> Claim | RecordOutcome:
        """Claim ``oid``; while another worker holds it, wait with the message leased."""
        store = self._store
        assert store is not None

        async def attempt() -> tuple[Claim | None, float | None]:
            claim = await take_claim(
                store,
                oid,
                pipeline=self.p.name,
                owner=self._worker_id,
                ttl_s=self.ttl_s,
                size=event.size,
                sequencer=event.sequencer,
            )
            if claim.outcome is not ClaimOutcome.BUSY:
                return claim, None
            return None, (claim.record.claim_expires_at or 0) - time.time()

        return await self._until_free(
            attempt, msg, event, error_class="ClaimBusy", what="another worker's claim"
        )

    def track_claim(self, delivery: str, oid: ObjectId, token: int) -> None:
        """Renew the claim on ``oid`` with ``delivery``'s heartbeat from now on."""
        self._claims.setdefault(delivery, {})[oid] = token
        self._confirmed.setdefault(delivery, time.monotonic())

    def forget_claim(self, delivery: str, oid: ObjectId) -> None:
        """Stop renewing the claim on ``oid`` (it is finished or released)."""
        _forget(self._claims, delivery, oid)
        self._drop_if_empty(delivery)

    def _drop_if_empty(self, delivery: str) -> None:
        if delivery not in self._locks and delivery not in self._claims:
            self._confirmed.pop(delivery, None)
            self._lost.pop(delivery, None)

    def lost(self, delivery: str) -> asyncio.Event:
        """Set once a key lock or claim ``delivery`` holds is found lost: it expired (the
        worker stalled, the store was out of reach) and another worker took it over.

        The run of that record must stop and write nothing more: the other worker is
        processing the key (perhaps a newer upload of it) and its outputs must win.
        """
        return self._lost.setdefault(delivery, asyncio.Event())

    def _is_lost(self, delivery: str) -> bool:
        lost = self._lost.get(delivery)
        return lost is not None and lost.is_set()

    def _mark_lost(self, delivery: str) -> None:
        if delivery in self._locks or delivery in self._claims:
            self.lost(delivery).set()

    async def fence(self, delivery: str) -> bool:
        """True while what ``delivery`` holds is still its own: checked before each output
        write. Free while the last confirmation is recent (the heartbeat renews at half
        the TTL); after a stall (a frozen VM, a paused process) it is renewed first, so a
        worker that wakes up after its lease was taken over finds out before writing.
        """
        if self._is_lost(delivery):
            return False
        confirmed = self._confirmed.get(delivery)
        if confirmed is None or time.monotonic() - confirmed < self.ttl_s / 2:
            return True
        await self.renew([delivery])
        if self._is_lost(delivery):
            return False
        confirmed = self._confirmed.get(delivery)
        if confirmed is not None and time.monotonic() - confirmed >= self.ttl_s:
            # Not renewed (the store out of reach) and past the TTL: expired for sure.
            self._mark_lost(delivery)
            return False
        return True

    @staticmethod
    async def _taken_over(store: StateStore, oid: ObjectId, token: int) -> bool:
        """Whether a claim whose renewal was refused is another's now: not when this run
        finished it itself (completed or failed between the renewal and its forgetting)."""
        try:
            rec = await store.get(oid)
        except S3flowError:
            return True  # cannot tell: as refused
        return rec is None or rec.fencing_token != token or rec.status is FileStatus.PROCESSING

    async def renew(self, deliveries: list[str]) -> None:
        """Extend the locks and claims held for these deliveries (with their visibility beat)."""
        store = self._store
        if store is None:
            return
        for delivery in deliveries:
            started, renewed = time.monotonic(), True
            for name, (owner, lock) in list(self._locks.get(delivery, {}).items()):
                try:
                    if not await store.renew_lock(
                        name, owner=owner, token=lock, ttl_s=self.ttl_s
                    ) and self._locks.get(delivery, {}).get(name) == (owner, lock):
                        renewed = False
                        log.warning(
                            "lock %s was lost (expired and taken over): its run is stopped",
                            name,
                        )
                        self._mark_lost(delivery)
                except S3flowError as exc:
                    renewed = False
                    log.warning("renewing lock %s failed: %s", name, exc)
            for oid, token in list(self._claims.get(delivery, {}).items()):
                try:
                    ok = await store.renew(oid, token=token, ttl_s=self.ttl_s)
                except S3flowError as exc:
                    renewed = False
                    log.warning(
                        "renewing the claim on s3://%s/%s failed: %s", oid.bucket, oid.key, exc
                    )
                    continue
                # A claim that finished meanwhile is not "lost".
                if (
                    not ok
                    and self._claims.get(delivery, {}).get(oid) == token
                    and await self._taken_over(store, oid, token)
                ):
                    renewed = False
                    log.warning(
                        "claim on s3://%s/%s was lost (expired and taken over elsewhere): "
                        "its run is stopped",
                        oid.bucket,
                        oid.key,
                    )
                    self._mark_lost(delivery)
            if renewed and delivery in self._confirmed:
                self._confirmed[delivery] = started
