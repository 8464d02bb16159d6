"""Upload jobs on SQLite: the JobStore half of the state store.

A job is one ``jobs`` row (the whole record as JSON, plus the columns it is
looked up and listed by) and its log is ``job_events``, keyed by ``(job_id,
seq)`` with ``event_id`` unique per job. Appending an event reads the job,
assigns ``last_seq + 1``, inserts the event and writes the folded record
(:func:`s3flow.state.jobs.plan_append`) in one ``BEGIN IMMEDIATE``
transaction, so concurrent appenders in any number of processes get
consecutive sequence numbers and the record never disagrees with its log.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from typing import Any

from s3flow.state.jobs import (
    EventDraft,
    JobEvent,
    JobLogMixin,
    JobPosition,
    JobRecord,
    JobStatus,
    job_from_json,
    job_to_json,
    plan_append,
)
from s3flow.state.records import StateError
from s3flow.state.sqlite.codec import JOB_COLS, JOB_EVENT_COLS, job_event, job_row
from s3flow.state.sqlite.connection import SqliteStoreBase, in_tx

_INSERT_JOB = f"INSERT INTO jobs ({JOB_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATE_JOB = (
    "UPDATE jobs SET status = ?, updated_at = ?, last_seq = ?, record = ? WHERE job_id = ?"
)
_INSERT_EVENT = f"INSERT INTO job_events ({JOB_EVENT_COLS}) VALUES (?, ?, ?, ?, ?, ?)"
_EVENT_BY_ID = f"SELECT {JOB_EVENT_COLS} FROM job_events WHERE job_id = ? AND event_id = ?"
_EVENT_BY_SEQ = f"SELECT {JOB_EVENT_COLS} FROM job_events WHERE job_id = ? AND seq = ?"
_EVENTS_AFTER = (
    f"SELECT {JOB_EVENT_COLS} FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)


def _select_job(conn: sqlite3.Connection, where: str, value: str) -> JobRecord | None:
    r = conn.execute(f"SELECT record FROM jobs WHERE {where} = ?", (value,)).fetchone()
    return None if r is None else job_from_json(r[0])


def _insert_event(conn: sqlite3.Connection, event: JobEvent, payload: str) -> None:
    conn.execute(
        _INSERT_EVENT,
        (event.job_id, event.seq, event.event_id, event.type.value, payload, event.at),
    )


class JobsMixin(JobLogMixin, SqliteStoreBase):
    """The JobStore protocol: jobs, their append-only event logs, and listings."""

    async def _create(self, job: JobRecord, draft: EventDraft) -> JobEvent:
        """The job, its upload id checked, and event 1 in one transaction."""

        def tx(conn: sqlite3.Connection) -> JobEvent:
            if _select_job(conn, "job_id", job.job_id) is not None:
                r = conn.execute(_EVENT_BY_SEQ, (job.job_id, 1)).fetchone()
                if r is None:
                    raise StateError(f"job {job.job_id} has no job.created event")
                return job_event(r)
            other = _select_job(conn, "upload_id", job.upload_id)
            if other is not None:
                raise StateError(f"upload {job.upload_id} already belongs to job {other.job_id}")
            event = draft.logged(job.job_id, 1, self._clock())
            conn.execute(_INSERT_JOB, job_row(replace(job, last_seq=1)))
            _insert_event(conn, event, draft.payload)
            return event

        return await self._run(lambda conn: in_tx(conn, tx))

    async def get_job(self, job_id: str) -> JobRecord | None:
        """The job, or None."""
        return await self._run(lambda conn: _select_job(conn, "job_id", job_id), read=True)

    async def job_for_upload(self, upload_id: str) -> JobRecord | None:
        """The job an upload id belongs to, or None."""
        return await self._run(lambda conn: _select_job(conn, "upload_id", upload_id), read=True)

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        limit: int = 50,
        oldest_first: bool = False,
        after: JobPosition | None = None,
    ) -> list[JobRecord]:
        """Jobs by ``(created_at, job_id)``, newest first unless ``oldest_first``.

        Optionally with one status; ``after``: only the jobs past that one in this order.
        """
        sql = "SELECT record FROM jobs"
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(JobStatus(status).value)
        if after is not None:
            where.append(f"(created_at, job_id) {'>' if oldest_first else '<'} (?, ?)")
            args += [after.created_at, after.job_id]
        if where:
            sql += " WHERE " + " AND ".join(where)
        order = "ASC" if oldest_first else "DESC"
        sql += f" ORDER BY created_at {order}, job_id {order} LIMIT ?"
        args.append(max(0, limit))
        return await self._run(
            lambda conn: [job_from_json(r[0]) for r in conn.execute(sql, args)], read=True
        )

    async def _append(
        self, job_id: str, draft: EventDraft, if_status: frozenset[JobStatus] | None
    ) -> tuple[JobEvent | None, bool]:
        """The event and the folded record in one transaction (see the module)."""

        def tx(conn: sqlite3.Connection) -> tuple[JobEvent | None, bool]:
            r = conn.execute(_EVENT_BY_ID, (job_id, draft.event_id)).fetchone()
            if r is not None:
                return job_event(r), False
            job = _select_job(conn, "job_id", job_id)
            planned = None if job is None else plan_append(job, draft, self._clock(), if_status)
            if planned is None:
                return None, False
            event, new = planned
            _insert_event(conn, event, draft.payload)
            conn.execute(
                _UPDATE_JOB,
                (new.status.value, new.updated_at, new.last_seq, job_to_json(new), job_id),
            )
            return event, True

        return await self._run(lambda conn: in_tx(conn, tx))

    async def events(self, job_id: str, *, after_seq: int = 0, limit: int = 1000) -> list[JobEvent]:
        """Events with ``seq > after_seq``, in order (at most ``limit``)."""
        args = (job_id, after_seq, max(0, limit))
        return await self._run(
            lambda conn: [job_event(r) for r in conn.execute(_EVENTS_AFTER, args)], read=True
        )
