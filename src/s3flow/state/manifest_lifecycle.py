"""Backend-neutral manifest rules shared by every state store.

How a manifest's file list is stored, the errors of fenced manifest writes, and
what an operator / compaction status change does (:func:`plan_manifest_status`);
:class:`ManifestStatusMixin` is both backends' one ``set_manifest_status`` and
``list_manifests`` on top of their atomic read-decide-write.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from s3flow.state.lifecycle import as_status, clip
from s3flow.state.records import (
    LockLostError,
    ManifestFile,
    ManifestRecord,
    ManifestStatus,
    ObjectId,
    StateError,
    TransitionError,
    UnknownManifestError,
    check_manifest_transition,
)

#: ``decide(manifest or None, now)``: the manifest to write (raises if refused).
DecideManifest = Callable[[ManifestRecord | None, float], ManifestRecord]


def files_to_text(files: list[ManifestFile]) -> str:
    """A manifest's file list as stored (compact JSON)."""
    return json.dumps([f.to_json() for f in files], separators=(",", ":"), ensure_ascii=False)


def files_from_text(text: str) -> list[ManifestFile]:
    """Inverse of :func:`files_to_text`."""
    return [ManifestFile.from_json(d) for d in json.loads(text)]


def lock_lost(lock: str, owner: str, token: int) -> LockLostError:
    """The refusal of a fenced write: ``lock`` is no longer held by ``owner`` with ``token``."""
    return LockLostError(f"lock {lock!r} is no longer held by {owner} with token {token}")


def unknown_manifest(manifest_id: str) -> UnknownManifestError:
    """The error for a ``manifest_id`` that no manifest has."""
    return UnknownManifestError(f"no manifest {manifest_id!r}")


def not_publishable(rec: ManifestRecord | None, manifest_id: str) -> StateError:
    """Why ``mark_published`` refuses: no manifest (``rec`` None), else one still sealing."""
    if rec is None:
        return unknown_manifest(manifest_id)
    return StateError(f"manifest {manifest_id} is not sealed yet")


def plan_manifest_status(
    rec: ManifestRecord | None,
    manifest_id: str,
    status: ManifestStatus,
    *,
    detail: str,
    expect: ManifestStatus | None,
    now: float,
) -> ManifestRecord:
    """The manifest after an operator / compaction status change (raises if refused)."""
    if rec is None:
        raise unknown_manifest(manifest_id)
    if expect is not None and rec.status is not expect:
        raise TransitionError(
            f"manifest {manifest_id} is {rec.status.value}, not {expect.value} as expected"
        )
    check_manifest_transition(rec.status, status)
    return replace(
        rec,
        status=status,
        files=list(rec.files),
        detail=clip(detail),
        attempts=rec.attempts + (1 if status is ManifestStatus.PROCESSING else 0),
        updated_at=now,
    )


@dataclass(frozen=True)
class ManifestFilter:
    """What ``list_manifests`` asks a backend for: ``limit`` > 0, ``status`` a ManifestStatus."""

    dataset: str | None
    status: ManifestStatus | None
    limit: int


class ManifestStatusMixin:
    """``set_manifest_status`` and ``list_manifests`` for every backend.

    On its ``_move_manifest`` and ``_list_manifests``.
    """

    #: Provided by the backend: the manifests a filter matches, newest first
    #: (``limit`` at most).
    _list_manifests: Callable[[ManifestFilter], Awaitable[list[ManifestRecord]]]

    async def _move_manifest(
        self,
        manifest_id: str,
        decide: DecideManifest,
        held: dict[ObjectId, str],
    ) -> ManifestRecord:  # pragma: no cover - provided by the backend
        """Write the manifest ``decide`` returns, conditioned on what it was given.

        Then its files: those in ``held`` quarantined with their reason as
        detail, the others in :data:`FILE_STATUS_OF` its status with its detail.
        """
        raise NotImplementedError

    async def set_manifest_status(
        self,
        manifest_id: str,
        status: ManifestStatus,
        *,
        detail: str = "",
        expect: ManifestStatus | None = None,
        quarantined: Mapping[ObjectId, str] | None = None,
    ) -> ManifestRecord:
        """Move a manifest and its files (see :meth:`StateStore.set_manifest_status`)."""

        def decide(rec: ManifestRecord | None, now: float) -> ManifestRecord:
            return plan_manifest_status(
                rec, manifest_id, status, detail=detail, expect=expect, now=now
            )

        held = {oid: clip(reason) for oid, reason in (quarantined or {}).items()}
        return await self._move_manifest(manifest_id, decide, held)

    async def list_manifests(
        self,
        *,
        dataset: str | None = None,
        status: ManifestStatus | None = None,
        limit: int = 1000,
    ) -> list[ManifestRecord]:
        """Manifests matching the filters, newest first (see :meth:`StateStore.list_manifests`)."""
        query = ManifestFilter(dataset, as_status(ManifestStatus, status), limit)
        return await self._list_manifests(query) if limit > 0 else []
