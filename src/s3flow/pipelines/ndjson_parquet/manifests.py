"""Manifest building (``ndjson-to-parquet``, first half): dates, triggers, sealing.

Files of one ``(dataset, date)`` are tracked as *pending* in the state store
(:meth:`~s3flow.state.base.StateStore.add_pending`). A :class:`Sealer` turns
them into manifests when a trigger fires:

* ``count`` - the date has ``max_files`` pending files;
* ``bytes`` - their sizes add up to ``max_bytes``;
* ``age`` - the oldest has waited ``max_wait_s`` (a trickle is not kept forever);
* ``forced`` - an operator (``s3flow manifests seal``) or ``seal_on_stop``.

A manifest takes the oldest pending files, at most ``max_files`` of them and
at most ``max_bytes`` (one larger file still goes alone). Sealing runs under
the state-store lock ``manifests:<dataset>``; its fencing token is part of the
manifest id and the store refuses a seal by a holder that lost the lock. Each
file moves ``pending -> manifested`` with a conditional write, so even two
holders (a stolen lock) never put one file in two manifests. The sealed
manifest is then *published*: its JSON is written to
``s3://<bucket>/<prefix><dataset>/date=<date>/<manifest_id>.json`` (whose
ObjectCreated notification triggers compaction) and the location recorded. A
holder that dies between any two steps leaves an unfinished manifest that the
next holder finishes first (same id, same content).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from s3flow.errors import S3flowError, translate_aws_error
from s3flow.state.base import StateStore
from s3flow.state.records import (
    LockLostError,
    ManifestFile,
    ManifestRecord,
    ManifestStatus,
    ManifestTooLargeError,
    PendingSummary,
    TrackedFile,
)
from s3flow.state.taking import give_back_lock, take_lock

log = logging.getLogger("s3flow.pipelines.ndjson_parquet.manifests")

MANIFEST_VERSION = 1
DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")


# --- dates ------------------------------------------------------------------------------


def valid_date(text: str) -> str | None:
    """``YYYY-MM-DD`` if ``text`` starts with a real calendar date, else None."""
    m = _DATE_RE.match(text)
    if m is None:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3])).isoformat()
    except ValueError:
        return None


def date_from_key(key: str, pattern: re.Pattern[str]) -> str | None:
    """The date ``pattern`` finds in an object key (its first group, else the match)."""
    m = pattern.search(key)
    if m is None:
        return None
    found = m.group(1) if m.groups() else m.group(0)
    return valid_date(found) if found else None


#: An ISO 8601 timestamp's time and offset after its date (``T23:30:00.123-05:00``),
#: and the zone's name RFC 9557 (Java's ``ZonedDateTime``) may add: ``[Europe/Paris]``.
_TIME_RE = re.compile(
    r"[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,]\d+)?)?[ ]?"
    r"(?:[Zz]|([+-])(\d{2})(?::?(\d{2}))?)?(?:\[[^\]]*\])?$"
)


def utc_date(text: str) -> str | None:
    """The UTC date of an ISO 8601 date or timestamp (``YYYY-MM-DD...``), else None.

    A timestamp with an offset (``+02:00``, ``-0500``, ``-05``) is dated in UTC:
    ``2026-03-01T23:30:00-05:00`` is ``2026-03-02``; one without (or with ``Z``) is
    UTC. A date, and a date followed by anything but an ISO time, is the date as
    written.
    """
    day = valid_date(text)
    if day is None:
        return None
    m = _TIME_RE.match(text, 10)
    if m is None:
        return day
    hours, minutes, seconds = int(m[1]), int(m[2]), int(m[3] or 0)
    offset = timedelta(hours=int(m[5] or 0), minutes=int(m[6] or 0))
    if hours > 24 or minutes > 59 or seconds > 60 or offset >= timedelta(hours=24):
        return day  # not a time: the date as written
    # 24:00 is the end of the day (the next one's midnight); :60 a leap second
    at = datetime.fromisoformat(day) + timedelta(
        hours=hours, minutes=minutes, seconds=min(seconds, 59)
    )
    try:
        at += offset if m[4] == "-" else -offset
    except OverflowError:  # before year 1 or after 9999 in UTC
        return None
    return at.date().isoformat()


def date_from_record(record: dict[str, Any], field: str) -> str | None:
    """The UTC date of a record's ``field`` (dotted path).

    Accepts ``YYYY-MM-DD...`` strings (ISO dates and timestamps, see
    :func:`utc_date`) and numbers as unix seconds, or milliseconds when larger
    than 1e11 (UTC).
    """
    value: Any = record
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = value / 1000 if abs(value) > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, UTC).date().isoformat()
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        return utc_date(value.strip())
    return None


# --- triggers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Triggers:
    """When a date's pending files are sealed into a manifest."""

    max_files: int = 200
    max_bytes: int = 700_000_000
    max_wait_s: float = 900.0

    def due(self, s: PendingSummary, now: float) -> str | None:
        """The trigger that fires for ``s`` (``count``, ``bytes``, ``age``), else None."""
        if s.count == 0:
            return None
        if s.count >= self.max_files:
            return "count"
        if s.bytes >= self.max_bytes:
            return "bytes"
        if s.oldest_at is not None and now - s.oldest_at >= self.max_wait_s:
            return "age"
        return None

    def take(self, pending: list[TrackedFile]) -> list[ManifestFile]:
        """The files of the next manifest: oldest first, within both limits."""
        out: list[ManifestFile] = []
        total = 0
        for t in pending:
            if len(out) >= self.max_files:
                break
            if out and total + t.file.size > self.max_bytes:
                break
            out.append(t.file)
            total += t.file.size
        return out


# --- the manifest document ---------------------------------------------------------------


def manifest_id(dataset: str, day: str, token: int, seq: int) -> str:
    """``<dataset>-<date>-<token:06d>-<seq:04d>``: unique (tokens never repeat)."""
    return f"{dataset}-{day}-{token:06d}-{seq:04d}"


def manifest_key(prefix: str, m: ManifestRecord) -> str:
    """``<prefix><dataset>/date=<date>/<manifest_id>.json``."""
    return f"{prefix}{m.dataset}/date={m.date}/{m.manifest_id}.json"


def is_manifest_key(key: str, prefix: str, dataset: str) -> bool:
    """Whether ``key`` has the exact shape :func:`manifest_key` gives ``dataset``'s manifests."""
    if not key.startswith(prefix):
        return False
    m = re.fullmatch(
        rf"{re.escape(dataset)}/date=(\d{{4}}-\d{{2}}-\d{{2}})/"
        rf"{re.escape(dataset)}-(\d{{4}}-\d{{2}}-\d{{2}})-\d{{6,}}-\d{{4,}}\.json",
        key[len(prefix) :],
    )
    return m is not None and m[1] == m[2] and valid_date(m[1]) == m[1]


def iso(ts: float) -> str:
    """Unix seconds as an ISO 8601 UTC timestamp (milliseconds)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def manifest_document(m: ManifestRecord, *, republish: int = 0) -> dict[str, Any]:
    """The manifest JSON (version 1) the compaction pipeline reads.

    Deterministic for a record, so publishing again writes the same bytes;
    ``republish`` > 0 (``s3flow manifests retry``) adds a ``republish`` field so
    the new object has a new eTag and is processed as a new version.
    """
    doc: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "manifest_id": m.manifest_id,
        "dataset": m.dataset,
        "date": m.date,
        "created_at": iso(m.created_at),
        "sealed_by": m.sealed_by,
        "fencing_token": m.fencing_token,
        "trigger": m.trigger,
        "files": [f.to_json() for f in m.files],
        "total_files": m.total_files,
        "total_bytes": m.total_bytes,
    }
    if republish:
        doc["republish"] = republish
    return doc


async def publish(
    s3: Any, bucket: str, prefix: str, m: ManifestRecord, *, republish: int = 0
) -> str:
    """Write ``m``'s JSON to S3; return its ``s3://`` URI."""
    key = manifest_key(prefix, m)
    body = json.dumps(manifest_document(m, republish=republish), ensure_ascii=False).encode()
    try:
        await s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    except Exception as exc:
        raise translate_aws_error(exc, f"PutObject s3://{bucket}/{key}") from exc
    return f"s3://{bucket}/{key}"


# --- the sealer ---------------------------------------------------------------------------


@dataclass(eq=False)
class Sealer:
    """Seals one dataset's due pending files into manifests and publishes them.

    One per processor (and per ``s3flow manifests seal``); several, in any
    number of processes, may run against one state store: the store lock
    ``manifests:<dataset>`` lets one seal at a time. Within a process calls are
    serialised by an asyncio lock, so a caller that waits sees the work done.
    """

    store: StateStore
    s3: Any
    _: KW_ONLY
    dataset: str
    owner: str
    triggers: Triggers
    bucket: str
    prefix: str
    lock_ttl_s: float = 60.0
    clock: Callable[[], float] = time.time
    lock: str = field(init=False)
    #: Whether the last :meth:`seal_due` found the lock held by another builder.
    lock_busy: bool = field(init=False, default=False)
    _serial: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.lock = f"manifests:{self.dataset}"

    async def seal_due(
        self, *, dates: list[str] | None = None, force: bool = False
    ) -> list[ManifestRecord]:
        """Seal every due batch (every pending file with ``force``); return what was sealed.

        Returns [] at once when another process holds the lock (it, or a later
        pass, does the work). ``dates`` limits the pass to those dates.
        """
        async with self._serial:
            # Cancelled while asking (the background pass, at stop): a lock granted all
            # the same is released, or every final pass would find it held until its TTL.
            token = await take_lock(self.store, self.lock, owner=self.owner, ttl_s=self.lock_ttl_s)
            self.lock_busy = token is None
            if token is None:
                return []
            try:
                return await self._pass(token, dates, force)
            except LockLostError as exc:
                log.warning("manifests of %s: %s; stopping this pass", self.dataset, exc)
                return []
            finally:
                await give_back_lock(self.store, self.lock, owner=self.owner, token=token)

    async def _renew(self, token: int) -> None:
        if not await self.store.renew_lock(
            self.lock, owner=self.owner, token=token, ttl_s=self.lock_ttl_s
        ):
            raise LockLostError(f"lock {self.lock!r} (token {token}) was lost")

    async def _pass(self, token: int, dates: list[str] | None, force: bool) -> list[ManifestRecord]:
        sealed: list[ManifestRecord] = []
        # First whatever a previous holder left unfinished.
        for m in await self.store.unfinished_manifests(self.dataset):
            if m.status is ManifestStatus.SEALING:
                log.info("finishing the interrupted seal of manifest %s", m.manifest_id)
                done = await self.store.seal_manifest(
                    m, lock=self.lock, owner=self.owner, token=token
                )
                if done is None:
                    continue
                m = done
            await self._publish(m)
            sealed.append(m)
            await self._renew(token)
        seq = 0
        summaries = await self.store.pending_dates(self.dataset)
        for s in summaries:
            if dates is not None and s.date not in dates:
                continue
            while True:
                now = self.clock()
                trigger = self.triggers.due(s, now) or ("forced" if force and s.count else None)
                if trigger is None:
                    break
                files = self.triggers.take(
                    await self.store.pending_files(
                        self.dataset, s.date, limit=self.triggers.max_files
                    )
                )
                if not files:
                    break
                seq += 1
                draft = ManifestRecord(
                    manifest_id=manifest_id(self.dataset, s.date, token, seq),
                    dataset=self.dataset,
                    date=s.date,
                    status=ManifestStatus.SEALING,
                    files=files,
                    trigger=trigger,
                    fencing_token=token,
                    sealed_by=self.owner,
                    created_at=now,
                )
                got = await self._seal(draft, token)
                if got is not None:
                    await self._publish(got)
                    sealed.append(got)
                    log.info(
                        "sealed manifest %s (%s): %d files, %d bytes",
                        got.manifest_id,
                        trigger,
                        got.total_files,
                        got.total_bytes,
                    )
                await self._renew(token)
                s = await self.store.pending(self.dataset, s.date)
        return sealed

    async def _seal(self, draft: ManifestRecord, token: int) -> ManifestRecord | None:
        """Seal ``draft``; a list of files the store cannot hold in one manifest (see
        :class:`~s3flow.state.records.ManifestTooLargeError`) is halved until it can,
        the rest staying pending for the next manifest."""
        while True:
            try:
                return await self.store.seal_manifest(
                    draft, lock=self.lock, owner=self.owner, token=token
                )
            except ManifestTooLargeError as exc:
                if len(draft.files) <= 1:
                    raise
                half = draft.files[: len(draft.files) // 2]
                log.warning("%s: sealing its first %d files instead", exc, len(half))
                draft = replace(draft, files=half)

    async def _publish(self, m: ManifestRecord) -> None:
        uri = await publish(self.s3, self.bucket, self.prefix, m)
        await self.store.mark_published(m.manifest_id, uri)
        m.location = uri

    async def run_forever(self, interval_s: float) -> None:
        """Seal due batches every ``interval_s`` until cancelled (errors are logged)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.seal_due()
            except asyncio.CancelledError:
                raise
            except S3flowError as exc:
                log.warning("manifest sealing pass of %s failed: %s", self.dataset, exc)
            except Exception:
                log.exception("manifest sealing pass of %s failed", self.dataset)
