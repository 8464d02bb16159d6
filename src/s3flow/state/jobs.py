"""Upload jobs in the state store: the job record, its event log, and the JobStore protocol.

A job groups the files of one upload and runs a template over them. Its
history is an append-only event log with a sequence number per job (1, 2, 3…
without gaps) that the SSE stream serves as event ids. Appending an event is
idempotent by ``event_id`` and folds the event into the job record in the same
write (:func:`apply_event`), so the record and its log never disagree::

    waiting_for_files -> queued -> running -> completed | failed
    waiting_for_files -> expired            (declared files never arrived)
    waiting_for_files | queued | running -> failed

Status only moves forward; nothing is appended after a terminal event.

:func:`job_to_json` / :func:`job_from_json` are the one encoding of a
:class:`JobRecord` every backend stores.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable


class JobStatus(enum.StrEnum):
    """Where a job is."""

    WAITING_FOR_FILES = "waiting_for_files"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        """True for completed, failed and expired."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED})
_RANK = {
    JobStatus.WAITING_FOR_FILES: 0,
    JobStatus.QUEUED: 1,
    JobStatus.RUNNING: 2,
    JobStatus.COMPLETED: 3,
    JobStatus.FAILED: 3,
    JobStatus.EXPIRED: 3,
}


class EventType(enum.StrEnum):
    """The events of a job's log (the SSE ``event:`` field)."""

    JOB_CREATED = "job.created"
    FILE_RECEIVED = "file.received"
    JOB_QUEUED = "job.queued"
    STEP_STARTED = "step.started"
    STEP_PROGRESS = "step.progress"
    STEP_COMPLETED = "step.completed"
    JOB_COMPLETED = "job.completed"
    JOB_FAILED = "job.failed"
    JOB_EXPIRED = "job.expired"

    @property
    def terminal(self) -> bool:
        """True for the events that end a job (and its stream): those setting a terminal status."""
        return self in TERMINAL_EVENTS


#: The status an event moves a job to (when its rank is not below the job's: see
#: :func:`apply_event`); the other events leave it.
_STATUS_AFTER: dict[EventType, JobStatus] = {
    EventType.JOB_QUEUED: JobStatus.QUEUED,
    EventType.STEP_STARTED: JobStatus.RUNNING,
    EventType.JOB_COMPLETED: JobStatus.COMPLETED,
    EventType.JOB_FAILED: JobStatus.FAILED,
    EventType.JOB_EXPIRED: JobStatus.EXPIRED,
}
TERMINAL_EVENTS = frozenset(e for e, status in _STATUS_AFTER.items() if status.terminal)


class StepStatus(enum.StrEnum):
    """Where one step of a job is."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class JobFile:
    """One declared file of an upload."""

    name: str  # the client's file name
    key: str  # uploads/<upload_id>/<index>-<safe name>
    size: int  # declared bytes
    content_type: str
    received: bool = False


@dataclass(frozen=True)
class JobStep:
    """One step of the job's template and its live state."""

    name: str  # the processor
    status: StepStatus = StepStatus.PENDING
    progress: dict[str, int] = field(default_factory=dict)  # bytes_done, records_done, files_done
    #: The job attempt whose ``step.started`` this state follows (0: not started yet).
    attempt: int = 0


@dataclass(frozen=True)
class JobOutput:
    """One output object of a finished job."""

    name: str
    key: str
    bucket: str
    size: int = 0

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> JobOutput:
        """An output as a ``job.completed`` event and a stored job list it (``size`` optional)."""
        return cls(
            name=str(doc["name"]),
            key=str(doc["key"]),
            bucket=str(doc["bucket"]),
            size=int(doc.get("size", 0)),
        )


@dataclass(frozen=True)
class JobRecord:
    """A job as the API shows it (folded from its events)."""

    job_id: str
    upload_id: str
    template: str
    status: JobStatus
    files: tuple[JobFile, ...]
    steps: tuple[JobStep, ...]
    created_at: float
    updated_at: float
    expires_at: float  # deadline for the declared files
    outputs: tuple[JobOutput, ...] = ()
    error: str | None = None
    last_seq: int = 0

    @property
    def missing(self) -> list[str]:
        """Names of the declared files that have not arrived."""
        return [f.name for f in self.files if not f.received]


class JobPosition(Protocol):
    """A place in a job listing's order, ``(created_at, job_id)``.

    A :class:`JobRecord` is one (the last job of a page); so is a :class:`JobCursor`.
    """

    @property
    def created_at(self) -> float:
        """When the job was created (the listing's first sort key)."""
        ...

    @property
    def job_id(self) -> str:
        """The job's id (the tie-break)."""
        ...


#: Longest cursor token taken (a job id is at most a few dozen characters).
MAX_CURSOR_CHARS = 512


@dataclass(frozen=True)
class JobCursor:
    """A position in a job listing, as an opaque token for API and CLI paging.

    It holds the position itself, not a job to look up, so a page boundary stays
    valid when that job is later removed (retention) or changes status.
    """

    created_at: float
    job_id: str

    @classmethod
    def of(cls, job: JobPosition) -> JobCursor:
        """The cursor just past ``job`` (the last job of a page)."""
        return cls(job.created_at, job.job_id)

    def token(self) -> str:
        """URL-safe text: base64url of ``[created_at, job_id]``, no padding."""
        raw = json.dumps([self.created_at, self.job_id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def from_token(cls, token: str) -> JobCursor | None:
        """The cursor ``token`` stands for, or None when it is not one :meth:`token` made."""
        if not 0 < len(token) <= MAX_CURSOR_CHARS or not token.isascii():
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            doc = json.loads(raw)
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            return None
        if not (isinstance(doc, list) and len(doc) == 2):
            return None
        at, job_id = doc
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            return None
        if not isinstance(job_id, str) or not job_id:
            return None
        return cls(float(at), job_id)


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event log."""

    job_id: str
    seq: int  # 1, 2, 3... per job, no gaps
    event_id: str  # idempotency key given by the producer
    type: EventType
    data: dict[str, Any]
    at: float


def _progress(data: dict[str, Any]) -> dict[str, int]:
    """The counters (``*_done``, ``*_total``) a step event's ``data`` reports."""
    return {k: int(v) for k, v in data.items() if k.endswith("_done") or k.endswith("_total")}


_STEP_EVENTS = (EventType.STEP_STARTED, EventType.STEP_PROGRESS, EventType.STEP_COMPLETED)


def _stale(steps: list[JobStep], data: dict[str, Any]) -> bool:
    """Whether a step event's ``data`` comes from an attempt older than the job's newest
    (a worker that lost its message and kept running, maybe into the next steps)."""
    index, attempt = data.get("step"), data.get("attempt")
    if not (isinstance(index, int) and isinstance(attempt, int) and 0 <= index < len(steps)):
        return False
    return attempt < max(s.attempt for s in steps)


def apply_event(job: JobRecord, type_: EventType, data: dict[str, Any], at: float) -> JobRecord:
    """``job`` after ``type_``; pure, used by every backend inside the append.

    Status never moves backwards, and a terminal job is returned unchanged (a
    late ``step.started`` after ``job.completed`` changes nothing: not the
    status, steps, outputs, error nor ``updated_at``); ``data`` keys follow
    docs/jobs.md. ``step.started`` starts its step over (no figures yet) and sets
    the later steps pending (left from an earlier attempt); ``job.failed`` marks the
    step it names (``step``) and every step still running failed, so a failed job
    shows no running step.
    """
    if job.status.terminal:
        return job

    def status(new: JobStatus) -> JobStatus:
        return new if _RANK[new] >= _RANK[job.status] and not job.status.terminal else job.status

    steps = list(job.steps)

    def set_step(index: Any, **changes: Any) -> None:
        if isinstance(index, int) and 0 <= index < len(steps):
            steps[index] = replace(steps[index], **changes)

    files = list(job.files)
    new_status = status(_STATUS_AFTER[type_]) if type_ in _STATUS_AFTER else job.status
    outputs = job.outputs
    error = job.error
    if type_ is EventType.FILE_RECEIVED:
        i = data.get("index")
        if isinstance(i, int) and 0 <= i < len(files):
            files[i] = replace(files[i], received=True)
    elif type_ in _STEP_EVENTS and _stale(steps, data):
        pass  # from an attempt the job has been started over since (a late worker)
    elif type_ is EventType.STEP_STARTED:
        # Steps run in order, so a later step that shows a status now is left from an
        # earlier attempt (the job runs again after a crash): not started in this one.
        index = data.get("step")
        attempt = data.get("attempt")
        set_step(
            index,
            status=StepStatus.RUNNING,
            progress={},
            **({"attempt": attempt} if isinstance(attempt, int) else {}),
        )
        if isinstance(index, int) and 0 <= index < len(steps):
            for later in range(index + 1, len(steps)):
                set_step(later, status=StepStatus.PENDING, progress={})
    elif type_ is EventType.STEP_PROGRESS:
        set_step(data.get("step"), progress=_progress(data))
    elif type_ is EventType.STEP_COMPLETED:
        progress = _progress(data)
        set_step(
            data.get("step"),
            status=StepStatus.COMPLETED,
            **({"progress": progress} if progress else {}),
        )
    elif type_ is EventType.JOB_COMPLETED:
        outputs = tuple(JobOutput.from_json(o) for o in data.get("outputs", []))
    elif type_ is EventType.JOB_FAILED:
        error = str(data.get("error") or "the job failed")
        set_step(data.get("step"), status=StepStatus.FAILED)  # the step it failed in
        for i, step in enumerate(steps):  # and what still runs (a cancel names no step)
            if step.status is StepStatus.RUNNING:
                set_step(i, status=StepStatus.FAILED)
    elif type_ is EventType.JOB_EXPIRED:
        error = str(data.get("error") or "the job expired")
    return replace(
        job,
        status=new_status,
        files=tuple(files),
        steps=tuple(steps),
        outputs=outputs,
        error=error,
        updated_at=at,
    )


@dataclass(frozen=True)
class EventDraft:
    """An event on its way into a log, before the store gives it a seq and a time.

    ``payload`` is ``data`` as the JSON text stored, made first so that data
    JSON cannot hold fails before any write; ``data`` is that text read back
    (what the logged event carries).
    """

    event_id: str
    type: EventType
    payload: str
    data: dict[str, Any]

    @classmethod
    def of(cls, event_id: str, type_: EventType | str, data: dict[str, Any]) -> EventDraft:
        """The draft of ``type_`` with ``data`` (TypeError / ValueError if not storable)."""
        payload = json.dumps(data, separators=(",", ":"), allow_nan=False)
        return cls(event_id, EventType(type_), payload, json.loads(payload))

    def logged(self, job_id: str, seq: int, at: float) -> JobEvent:
        """The event as logged at ``seq`` of ``job_id``'s log, at ``at``."""
        return JobEvent(job_id, seq, self.event_id, self.type, self.data, at)


def plan_append(
    job: JobRecord, draft: EventDraft, at: float, if_status: frozenset[JobStatus] | None
) -> tuple[JobEvent, JobRecord] | None:
    """The next event of ``job``'s log and the job folded with it (:func:`apply_event`).

    None when the job takes no more events: terminal, or its status not in ``if_status``.
    """
    if job.status.terminal or (if_status is not None and job.status not in if_status):
        return None
    event = draft.logged(job.job_id, job.last_seq + 1, at)
    return event, replace(apply_event(job, draft.type, draft.data, at), last_seq=event.seq)


# --- the stored form of a record -------------------------------------------------------------

#: Format of :func:`job_to_json`'s document (``"v"``); bumped only by an incompatible change.
JOB_JSON_VERSION = 1


def job_to_json(job: JobRecord) -> str:
    """``job`` as compact JSON text: every field, the inverse of :func:`job_from_json`."""
    doc: dict[str, Any] = {
        "v": JOB_JSON_VERSION,
        "job_id": job.job_id,
        "upload_id": job.upload_id,
        "template": job.template,
        "status": job.status.value,
        "files": [
            {
                "name": f.name,
                "key": f.key,
                "size": f.size,
                "content_type": f.content_type,
                "received": f.received,
            }
            for f in job.files
        ],
        "steps": [
            {
                "name": s.name,
                "status": s.status.value,
                "progress": dict(s.progress),
                "attempt": s.attempt,
            }
            for s in job.steps
        ],
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "expires_at": job.expires_at,
        "outputs": [
            {"name": o.name, "key": o.key, "bucket": o.bucket, "size": o.size} for o in job.outputs
        ],
        "error": job.error,
        "last_seq": job.last_seq,
    }
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


def job_from_json(text: str | bytes) -> JobRecord:
    """The record :func:`job_to_json` wrote; ValueError if ``text`` is not one.

    Optional fields (``received``, ``progress``, a step's ``attempt``, ``outputs``, ``error``,
    ``last_seq``) may be absent; a document of a newer format is refused.
    """
    try:
        doc = json.loads(text)
        version = doc.get("v", JOB_JSON_VERSION)
        if version > JOB_JSON_VERSION:
            raise ValueError(f"format version {version} is newer than {JOB_JSON_VERSION}")
        error = doc.get("error")
        return JobRecord(
            job_id=str(doc["job_id"]),
            upload_id=str(doc["upload_id"]),
            template=str(doc["template"]),
            status=JobStatus(doc["status"]),
            files=tuple(
                JobFile(
                    name=str(f["name"]),
                    key=str(f["key"]),
                    size=int(f["size"]),
                    content_type=str(f["content_type"]),
                    received=bool(f.get("received", False)),
                )
                for f in doc["files"]
            ),
            steps=tuple(
                JobStep(
                    name=str(s["name"]),
                    status=StepStatus(s.get("status", StepStatus.PENDING.value)),
                    progress={str(k): int(v) for k, v in s.get("progress", {}).items()},
                    attempt=int(s.get("attempt", 0)),
                )
                for s in doc["steps"]
            ),
            created_at=float(doc["created_at"]),
            updated_at=float(doc["updated_at"]),
            expires_at=float(doc["expires_at"]),
            outputs=tuple(JobOutput.from_json(o) for o in doc.get("outputs", [])),
            error=None if error is None else str(error),
            last_seq=int(doc.get("last_seq", 0)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a stored job record: {type(exc).__name__}: {exc}") from exc


@runtime_checkable
class JobStore(Protocol):
    """Jobs and their event logs; every state backend implements it.

    The store stamps each event's ``at`` (and the folded record's
    ``updated_at``) with its own clock. A stored job's ``last_seq`` is the seq
    of its newest event (1 right after :meth:`create_job`).
    """

    async def create_job(self, job: JobRecord, *, event_id: str, data: dict[str, Any]) -> JobEvent:
        """Store a new job with its ``job.created`` event (seq 1); idempotent by ``job_id``."""
        ...

    async def get_job(self, job_id: str) -> JobRecord | None:
        """The job, or None."""
        ...

    async def job_for_upload(self, upload_id: str) -> JobRecord | None:
        """The job an upload id belongs to, or None."""
        ...

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        limit: int = 50,
        oldest_first: bool = False,
        after: JobPosition | None = None,
    ) -> list[JobRecord]:
        """Jobs, newest first (``oldest_first``: oldest first), optionally with one status.

        The order is ``(created_at, job_id)`` (a backend may keep ``created_at`` to the
        microsecond, as DynamoDB does: jobs created within one microsecond are then in
        job id order, on every page alike). ``after``: only the jobs that come
        after this position in that order (the last job of the previous page, or a
        :class:`JobCursor`), so a caller can page through every job.
        """
        ...

    async def append_event(
        self,
        job_id: str,
        *,
        event_id: str,
        type: EventType,
        data: dict[str, Any],
        if_status: frozenset[JobStatus] | None = None,
    ) -> tuple[JobEvent | None, bool]:
        """Append one event and fold it into the job, atomically.

        Returns ``(event, True)`` when appended, ``(existing, False)`` when
        ``event_id`` is already in the log, and ``(None, False)`` when the job
        is unknown, already terminal, or its status is not in ``if_status``.
        """
        ...

    async def events(self, job_id: str, *, after_seq: int = 0, limit: int = 1000) -> list[JobEvent]:
        """Events with ``seq > after_seq``, in order."""
        ...


class JobLogMixin:
    """``create_job`` and ``append_event`` for every backend, on its ``_create`` / ``_append``.

    Both check the event's data (:class:`EventDraft`) before the backend writes
    anything; the backend writes atomically what :func:`plan_append` decides.
    """

    async def _create(
        self, job: JobRecord, draft: EventDraft
    ) -> JobEvent:  # pragma: no cover - provided by the backend
        raise NotImplementedError

    async def _append(
        self, job_id: str, draft: EventDraft, if_status: frozenset[JobStatus] | None
    ) -> tuple[JobEvent | None, bool]:  # pragma: no cover - provided by the backend
        raise NotImplementedError

    async def create_job(self, job: JobRecord, *, event_id: str, data: dict[str, Any]) -> JobEvent:
        """Store ``job`` (``last_seq`` 1) with its ``job.created`` event (seq 1), atomically.

        Idempotent by ``job_id``: if the job exists, its event 1 is returned and
        nothing is written. StateError if another job already has its upload id.
        """
        return await self._create(job, EventDraft.of(event_id, EventType.JOB_CREATED, data))

    async def append_event(
        self,
        job_id: str,
        *,
        event_id: str,
        type: EventType,
        data: dict[str, Any],
        if_status: frozenset[JobStatus] | None = None,
    ) -> tuple[JobEvent | None, bool]:
        """Append one event and fold it into the job, atomically (see :class:`JobStore`).

        ``(event, True)`` when appended; ``(existing, False)`` when ``event_id``
        is already in this job's log (whatever the job's status now);
        ``(None, False)`` when the job is unknown, terminal, or its status is not
        in ``if_status``.
        """
        return await self._append(job_id, EventDraft.of(event_id, type, data), if_status)


async def job_page(
    store: JobStore,
    *,
    status: JobStatus | None = None,
    limit: int = 50,
    after: JobPosition | None = None,
) -> tuple[list[JobRecord], JobCursor | None]:
    """One page of :meth:`JobStore.list_jobs` (newest first) and the cursor of the next.

    The cursor is None when no job follows: the store is asked for one job more than
    the page holds, so a page that ends the listing never leads to an empty one.
    """
    listed = await store.list_jobs(status=status, limit=limit + 1, after=after)
    page = listed[:limit]
    return page, JobCursor.of(page[-1]) if len(listed) > limit and page else None
