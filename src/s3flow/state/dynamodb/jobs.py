"""The jobs part of the DynamoDB store: upload jobs and their event logs, without a Scan.

Two tables (the layout is in :mod:`s3flow.state.dynamodb`): ``<prefix>-jobs``
holds each job's record, an item per upload naming its job and an idempotency
marker per event id; ``<prefix>-job-events`` holds the logs (``job_id``,
``seq``). Every write is one ``TransactWriteItems``, so a job's record, its
log and its markers never disagree, whatever number of machines append:

- creating a job puts the job, its upload item, event 1 and its
  marker, each on condition that it does not exist (1 call).
- appending an event reads the job, folds the event into it
  (:func:`s3flow.state.jobs.plan_append`) and puts the record on condition that
  ``last_seq`` and ``status`` are still the ones read, with the event
  (``seq = last_seq + 1``) and its marker on condition that they do not exist
  (1 GetItem + 1 transaction). A writer that lost the race gets the current
  record back with the cancellation (``ALL_OLD``) and folds again on it; an
  event id already logged comes back as its marker, and the event it names is
  returned.

Reads are strongly consistent GetItem / Query / BatchGetItem calls except the
``status`` index, which only picks the keys of a listing: a job that just
changed status can be missing from a listing, or listed once under its old
status, for the index's propagation delay (well under a second); the records
listed are always current, and a status filter is checked on them.

Retention (TTL ``purge_at``): the event that ends a job stamps the job's item and
its upload's item to expire ``retention_s`` later (in the same transaction);
events and their idempotency markers expire ``retention_s`` after they were
appended (a log cannot be re-stamped in one write; a job is long finished by then).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

from s3flow.state.dynamodb.client import (
    MAX_CONFLICT_RETRIES,
    DynamoClient,
    TransactionCanceled,
    backoff,
)
from s3flow.state.dynamodb.codec import (
    Item,
    decode_job,
    decode_job_event,
    encode_event_marker,
    encode_job,
    encode_job_event,
    encode_upload,
    event_marker_key,
    job_event_key,
    job_key,
    job_listed,
    upload_key,
    with_purge,
)
from s3flow.state.dynamodb.tables import JOBS_STATUS_INDEX
from s3flow.state.jobs import (
    EventDraft,
    JobEvent,
    JobLogMixin,
    JobPosition,
    JobRecord,
    JobStatus,
    plan_append,
)
from s3flow.state.records import StateError

# Cancellation codes that mean "decide again": a condition another writer changed, a
# concurrent transaction on the same item, throttling. Any other (ValidationError,
# ItemCollectionSizeLimitExceeded...) is an error.
_RETRY_CODES = frozenset(
    {
        "None",
        "ConditionalCheckFailed",
        "TransactionConflict",
        "ThrottlingError",
        "ProvisionedThroughputExceeded",
        "RequestLimitExceeded",
    }
)
_MARKER_READS = 5  # tries to read the event an idempotency marker names


def _put(table: str, item: Item, condition: str, **extra: Any) -> Item:
    """A ``Put`` action of a transaction, with its condition (and optional extra fields)."""
    return {"Put": {"TableName": table, "Item": item, "ConditionExpression": condition, **extra}}


class JobsMixin(JobLogMixin, DynamoClient):
    """The JobStore protocol on the jobs and job-events tables (see :mod:`.jobs`)."""

    # --- writes ------------------------------------------------------------------------------

    async def _transact(self, actions: list[Item]) -> None:
        """One TransactWriteItems; TransactionCanceled when it may be decided again.

        A cancellation for any other reason is a StateError. Each call carries
        a fresh ClientRequestToken, so the SDK's own retry of a request whose
        answer was lost is not applied twice (nor reported as a lost race).
        """
        try:
            await self._api(
                "TransactWriteItems",
                self.jobs_table,
                TransactItems=actions,
                ClientRequestToken=uuid.uuid4().hex,
            )
        except TransactionCanceled as exc:
            codes = [exc.code(i) for i in range(len(actions))]
            if any(c not in _RETRY_CODES for c in codes):
                raise StateError(
                    f"state store dynamodb://{self.table_prefix}: transaction on "
                    f"{self.jobs_table} cancelled: {', '.join(codes)}"
                ) from exc
            raise

    async def _create(self, job: JobRecord, draft: EventDraft) -> JobEvent:
        """The job, its upload's item, event 1 and its marker: one transaction."""
        event = draft.logged(job.job_id, 1, self._clock())
        absent = "attribute_not_exists(pk)"
        actions = [
            _put(self.jobs_table, encode_job(replace(job, last_seq=1)), absent),
            _put(
                self.jobs_table,
                encode_upload(job.upload_id, job.job_id),
                absent,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            ),
            _put(
                self.job_events_table,
                encode_job_event(event, draft.payload, self._purge_at(event.at)),
                "attribute_not_exists(job_id)",
            ),
            _put(self.jobs_table, encode_event_marker(event, self._purge_at(event.at)), absent),
        ]
        for attempt in range(MAX_CONFLICT_RETRIES):
            try:
                await self._transact(actions)
            except TransactionCanceled as exc:
                if exc.failed(0):  # the job exists: its first event
                    first = await self._event_at(job.job_id, 1)
                    if first is None:
                        raise StateError(f"job {job.job_id} has no job.created event") from exc
                    return first
                if exc.failed(1):
                    owner = exc.current(1)
                    other = "another job" if owner is None else f"job {owner['job_id']['S']}"
                    raise StateError(f"upload {job.upload_id} already belongs to {other}") from exc
                await backoff(attempt)
                continue
            return event
        raise self._gave_up(f"job {job.job_id}")

    async def _append(
        self, job_id: str, draft: EventDraft, if_status: frozenset[JobStatus] | None
    ) -> tuple[JobEvent | None, bool]:
        """Read the job, fold, write conditioned on what was read (see the module).

        Concurrent appenders on any number of machines get consecutive sequence
        numbers; an event id already logged returns that event.
        """
        known: Item | None = None  # the job's current item, when a cancellation returned it
        for attempt in range(MAX_CONFLICT_RETRIES):
            item = (
                known
                if known is not None
                else await self._get_item(self.jobs_table, job_key(job_id))
            )
            known = None
            if item is None:
                return None, False
            job = decode_job(item)
            planned = plan_append(job, draft, self._clock(), if_status)
            if planned is None:
                return await self._logged(job_id, draft.event_id), False
            event, new = planned
            purge = self._purge_at(event.at) if new.status.terminal else None
            all_old = {"ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
            actions = [
                _put(
                    self.jobs_table,
                    encode_job(new, purge),
                    "last_seq = :seq AND #st = :st",
                    ExpressionAttributeNames={"#st": "status"},
                    ExpressionAttributeValues={
                        ":seq": {"N": str(job.last_seq)},
                        ":st": {"S": job.status.value},
                    },
                    **all_old,
                ),
                _put(
                    self.job_events_table,
                    encode_job_event(event, draft.payload, self._purge_at(event.at)),
                    "attribute_not_exists(job_id)",
                ),
                _put(
                    self.jobs_table,
                    encode_event_marker(event, self._purge_at(event.at)),
                    "attribute_not_exists(pk)",
                    **all_old,
                ),
            ]
            if purge is not None:  # the job ends: its upload's item expires with it
                # (a Put of the whole item: the web app, which appends, may not UpdateItem)
                upload = with_purge(encode_upload(job.upload_id, job_id), purge)
                actions.append({"Put": {"TableName": self.jobs_table, "Item": upload}})
            try:
                await self._transact(actions)
            except TransactionCanceled as exc:
                marker = exc.current(2)
                if marker is not None:  # event_id is in the log already
                    existing = await self._event_at(job_id, int(marker["seq"]["N"]))
                    if existing is not None and existing.event_id == draft.event_id:
                        return existing, False
                known = exc.current(0)  # the record that won (None: read it again)
                await backoff(attempt)
                continue
            return event, True
        raise self._gave_up(f"job {job_id}")

    # --- reads -------------------------------------------------------------------------------

    async def _event_at(self, job_id: str, seq: int) -> JobEvent | None:
        """Event ``seq`` of a job's log (None when absent)."""
        item = await self._get_item(self.job_events_table, job_event_key(job_id, seq))
        return None if item is None else decode_job_event(item)

    async def _logged(self, job_id: str, event_id: str) -> JobEvent | None:
        """The event ``event_id`` of a job's log, by its marker (None when not logged).

        The marker and its event are written by one transaction, so they agree;
        an emulator that shows a transaction's writes before it is rolled back
        (moto) can make them disagree for an instant, hence the few re-reads.
        """
        for _ in range(_MARKER_READS):
            marker = await self._get_item(self.jobs_table, event_marker_key(job_id, event_id))
            if marker is None:
                return None
            event = await self._event_at(job_id, int(marker["seq"]["N"]))
            if event is not None and event.event_id == event_id:
                return event
            await asyncio.sleep(0.01)
        raise StateError(
            f"state store dynamodb://{self.table_prefix}: event {event_id} of job {job_id} "
            "has a marker but is not in the log"
        )

    async def get_job(self, job_id: str) -> JobRecord | None:
        """The job, or None (one strongly consistent GetItem)."""
        item = await self._get_item(self.jobs_table, job_key(job_id))
        return None if item is None else decode_job(item)

    async def job_for_upload(self, upload_id: str) -> JobRecord | None:
        """The job an upload id belongs to, or None (the upload's item, then the job's)."""
        item = await self._get_item(self.jobs_table, upload_key(upload_id))
        return None if item is None else await self.get_job(item["job_id"]["S"])

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        limit: int = 50,
        oldest_first: bool = False,
        after: JobPosition | None = None,
    ) -> list[JobRecord]:
        """Jobs by ``(created_at to the microsecond, job_id)``, newest first unless
        ``oldest_first``.

        Optionally with one status; ``after``: only the jobs past that one in
        this order (the last of the previous page). Queries the ``status``
        index in that order for the first ``limit`` keys (with no status: each
        of the six statuses at once, merged), then reads those records
        (BatchGetItem, strongly consistent). No Scan: the cost follows
        ``limit``, not the number of jobs.

        A key whose record no longer has ``status`` (the index lags a status
        change) is dropped, and the index is read on past it: fewer than
        ``limit`` jobs come back only when the index has no more, so a caller
        paging until an empty page sees every job (not just those before a page
        of lagging entries).
        """
        if limit <= 0:
            return []
        wanted = list(JobStatus) if status is None else [JobStatus(status)]
        past = None if after is None else job_listed(after)
        jobs: dict[str, JobRecord] = {}
        while True:
            found = await asyncio.gather(
                *(self._listed(s, limit, oldest_first=oldest_first, past=past) for s in wanted)
            )
            keys = sorted({k for ks in found for k in ks}, reverse=not oldest_first)[:limit]
            for job in await self._get_jobs([job_id for _, job_id in keys]):
                # The index may lag a status change; the record does not.
                if status is None or job.status is JobStatus(status):
                    jobs[job.job_id] = job
            # Every status read fewer keys than asked: the index has no more. Otherwise
            # the keys up to keys[-1] are all read (each status's first `limit` past
            # `past` include its keys up to there): go on past it.
            if len(jobs) >= limit or all(len(ks) < limit for ks in found):
                break
            past = keys[-1][0]
        # In the index's own order, (created_at to the microsecond, job_id): sorted by
        # the exact float instead, two jobs created within one microsecond could swap,
        # and the next page (past the last job's index key) would repeat one.
        return sorted(jobs.values(), key=job_listed, reverse=not oldest_first)[:limit]

    async def _listed(
        self, status: JobStatus, limit: int, *, oldest_first: bool = False, past: str | None = None
    ) -> list[tuple[str, str]]:
        """The first ``limit`` entries of ``status`` in the index: ``(listed, job_id)``.

        Newest first unless ``oldest_first``; only those past the sort key ``past``.
        """
        condition = "#st = :st"
        values: dict[str, Any] = {":st": {"S": status.value}}
        if past is not None:
            condition += f" AND listed {'>' if oldest_first else '<'} :past"
            values[":past"] = {"S": past}
        items = await self._first_items(
            self.jobs_table,
            limit,
            IndexName=JOBS_STATUS_INDEX,
            KeyConditionExpression=condition,
            ExpressionAttributeNames={"#st": "status"},
            ExpressionAttributeValues=values,
            ScanIndexForward=oldest_first,
        )
        return [(i["listed"]["S"], i["pk"]["S"][len("job#") :]) for i in items]

    async def _get_jobs(self, job_ids: list[str]) -> list[JobRecord]:
        """The records of ``job_ids`` that exist (BatchGetItem, strongly consistent, any order)."""
        items = await self._batch_get(self.jobs_table, [job_key(j) for j in job_ids])
        return [decode_job(i) for i in items]

    async def events(self, job_id: str, *, after_seq: int = 0, limit: int = 1000) -> list[JobEvent]:
        """Events with ``seq > after_seq``, in order (at most ``limit``; a consistent Query)."""
        if limit <= 0:
            return []
        items = await self._first_items(
            self.job_events_table,
            limit,
            KeyConditionExpression="job_id = :j AND #seq > :a",
            ExpressionAttributeNames={"#seq": "seq"},
            ExpressionAttributeValues={":j": {"S": job_id}, ":a": {"N": str(after_seq)}},
            ConsistentRead=True,
        )
        return [decode_job_event(i) for i in items]
