"""Pure rules of the message handler."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from s3flow.errors import CorruptDataError, InvalidInputError
from s3flow.metrics import PipelineMetrics
from s3flow.pipelines.line_count import LineCountProcessor
from s3flow.processors.base import Result
from s3flow.routing import Route
from s3flow.settings import PipelineSettings, WorkerSettings
from s3flow.sinks.receipts import WriteReceipt
from s3flow.state.records import FileRecord, FileStatus, ObjectId
from s3flow.state.sqlite import SqliteStateStore
from s3flow.worker.handler import MessageHandler, PipelineRuntime, WorkerObserver
from s3flow.worker.identity import sequencer_after
from s3flow.worker.outcomes import Ack, DeadLetter, Release, Retry
from s3flow.worker.policy import FAILURES_ATTR, prior_failures
from s3flow.worker.source import ReceivedMessage


def test_sequencers_compare_after_left_padding() -> None:
    assert sequencer_after("0A2", "A1")  # padded: 0A2 vs 0A1
    assert sequencer_after("00000661789B13D3FC", "661789B13D3FB")
    assert not sequencer_after("A1", "00A1")  # equal once padded
    assert not sequencer_after("0a1", "0A2")  # case does not matter
    assert sequencer_after("10", "F")


def _msg(attrs: dict[str, object]) -> ReceivedMessage:
    return ReceivedMessage("m", "h", "{}", 1, 0.0, message_attributes=attrs)  # type: ignore[arg-type]


def test_prior_failures_come_from_the_message_attribute() -> None:
    assert prior_failures(_msg({})) == 0
    assert prior_failures(_msg({FAILURES_ATTR: {"StringValue": "2"}})) == 2
    assert prior_failures(_msg({FAILURES_ATTR: {"StringValue": "junk"}})) == 0
    assert prior_failures(_msg({FAILURES_ATTR: {"StringValue": "-3"}})) == 0


class _DenyingS3:
    async def head_object(self, **kw: object) -> dict[str, object]:
        from botocore.exceptions import ClientError

        raise ClientError(
            {"Error": {"Code": "AccessDenied", "Message": "no"}, "ResponseMetadata": {}},
            "HeadObject",
        )


async def test_an_unreadable_object_is_dead_lettered_not_acked_in_quarantine_mode() -> None:
    # No identity without a HEAD, and the HEAD is refused: nothing to quarantine, so
    # the message must reach the DLQ with the reason (an ack would lose it).
    p = PipelineSettings(
        name="p", bucket="b", queue="q", output="s3://o/", on_permanent_error="quarantine"
    )
    proc = LineCountProcessor({})
    rt = PipelineRuntime(p, "q-url", "dlq-url", proc, None, Route.from_settings(p))  # type: ignore[arg-type]
    handler = MessageHandler(
        rt,
        s3=_DenyingS3(),
        store=None,
        worker=WorkerSettings(),
        metrics=PipelineMetrics(),
        observer=WorkerObserver(),
        stop=asyncio.Event(),
    )
    body = json.dumps(
        {
            "Records": [
                {
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": "b"}, "object": {"key": "k.txt", "eTag": "e"}},
                }
            ]
        }
    )
    outcome = await handler.handle(ReceivedMessage("m", "h", body, 1, 0.0))
    assert isinstance(outcome, DeadLetter) and "AccessDenied" in outcome.error


class _RecordingExecutors:
    """Stands in for the ExecutorSet: records the hand-over hook each run got."""

    def __init__(self, trace: list[str] | None = None, *, writes: bool = False) -> None:
        """``writes``: each run declares one output and, given a receipts dict, keeps
        its receipt there as the inline executor's sink would."""
        self.writes = writes
        self.hooks: list[object] = []
        self.receipts: list[object] = []
        self.trace = trace if trace is not None else []

    async def run(
        self,
        name: str,
        job: object,
        progress: object,
        *,
        reading_done: object = None,
        receipts: object = None,
        waited: object = None,
        before_write: object = None,
    ) -> Result:
        self.hooks.append(reading_done)
        self.receipts.append(receipts)
        self.trace.append("run")
        if not self.writes:
            return Result()
        uri = f"s3://o/out-{len(self.trace)}.json"
        if isinstance(receipts, dict):
            receipts[uri] = WriteReceipt(12, "application/json")
        return Result(outputs=[uri])


def _handler(
    executors: _RecordingExecutors,
    *,
    verify: bool = False,
    processor: str = "line-count",
    by_write: bool = True,
    store: SqliteStateStore | None = None,
    s3: object | None = None,
) -> MessageHandler:
    p = PipelineSettings(
        name="p",
        bucket="b",
        queue="q",
        output="s3://o/",
        verify_outputs=verify,
        verify_outputs_by_write=by_write,
        processor=processor,
    )
    proc = LineCountProcessor({})
    rt = PipelineRuntime(p, "q-url", "dlq-url", proc, None, Route.from_settings(p))  # type: ignore[arg-type]
    return MessageHandler(
        rt,
        s3=s3 or _DenyingS3(),  # HEAD never asked: every event has an eTag and a sequencer
        store=store,
        worker=WorkerSettings(),
        metrics=PipelineMetrics(),
        observer=WorkerObserver(),
        stop=asyncio.Event(),
        executors=executors,  # type: ignore[arg-type]
    )


def _records(n: int = 3) -> str:
    """A notification of ``n`` object records (k0.txt, k1.txt...)."""
    records = [
        {
            "eventSource": "aws:s3",
            "eventName": "ObjectCreated:Put",
            "s3": {
                "bucket": {"name": "b"},
                "object": {"key": f"k{i}.txt", "eTag": "e", "sequencer": f"0{i}"},
            },
        }
        for i in range(n)
    ]
    return json.dumps({"Records": records})


async def test_only_the_last_record_of_a_message_hands_its_slot_over() -> None:
    executors = _RecordingExecutors()
    handler = _handler(executors)
    msg = ReceivedMessage("m", "h", _records(), 1, 0.0)
    handed: list[int] = []
    msg.reading_done = lambda: handed.append(1)
    outcome = await handler.handle(msg)
    assert isinstance(outcome, Ack)
    assert executors.hooks[:2] == [None, None]  # earlier records have more to read
    assert executors.hooks[2] is msg.reading_done


async def test_each_record_takes_the_slot_just_before_its_work_and_gives_it_back_after() -> None:
    # No slot is held between two records: the next record's key lock and claim may
    # wait on a prefetched message that itself waits for a slot.
    trace: list[str] = []
    handler = _handler(_RecordingExecutors(trace))
    msg = ReceivedMessage("m", "h", _records(), 1, 0.0)

    async def begin_work() -> bool:
        trace.append("begin")
        return True

    msg.begin_work = begin_work
    msg.pause_work = lambda: trace.append("pause")
    assert isinstance(await handler.handle(msg), Ack)
    assert trace == ["begin", "run", "pause"] * 2 + ["begin", "run"]


@pytest.mark.parametrize(
    ("verify", "processor", "collects"),
    [
        (True, "line-count", True),  # line-count vouches for its writes
        (False, "line-count", False),  # nothing is verified: nothing to collect
        (True, "zip", False),  # no promise: every output is fetched
    ],
)
async def test_write_receipts_are_collected_only_for_a_processor_that_vouches(
    verify: bool, processor: str, collects: bool
) -> None:
    executors = _RecordingExecutors()
    handler = _handler(executors, verify=verify, processor=processor)
    msg = ReceivedMessage("m", "h", _records(), 1, 0.0)
    assert isinstance(await handler.handle(msg), Ack)
    if collects:
        assert executors.receipts == [{}, {}, {}]  # one per record, not shared
        assert len({id(r) for r in executors.receipts}) == 3
    else:
        assert executors.receipts == [None, None, None]


@pytest.mark.parametrize(
    ("processor", "by_write"), [("line-count", True), ("zip", True), ("line-count", False)]
)
async def test_the_receipts_reach_the_verification(processor: str, by_write: bool) -> None:
    """This S3 refuses every HEAD: only outputs vouched for by a receipt pass, and
    ``verify_outputs_by_write = false`` makes the worker fetch them all the same."""
    handler = _handler(
        _RecordingExecutors(writes=True), verify=True, processor=processor, by_write=by_write
    )
    msg = ReceivedMessage("m", "h", _records(), 1, 0.0)
    outcome = await handler.handle(msg)
    if processor == "line-count" and by_write:
        assert isinstance(outcome, Ack)
    else:
        assert not isinstance(outcome, Ack)
        assert "output verification failed" in str(outcome)


async def test_a_stop_before_the_slot_releases_the_message_without_work() -> None:
    executors = _RecordingExecutors()
    handler = _handler(executors)
    msg = ReceivedMessage("m", "h", _records(), 1, 0.0)

    async def stopped() -> bool:
        return False

    msg.begin_work = stopped
    outcome = await handler.handle(msg)
    assert isinstance(outcome, Release) and executors.trace == []


class _GatedStore(SqliteStateStore):
    """A real SQLite store whose ``complete`` waits for ``gate`` (after ``asked``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.asked = asyncio.Event()
        self.gate = asyncio.Event()

    async def complete(
        self, oid: ObjectId, *, token: int, outputs: list[str], detail: str = ""
    ) -> bool:
        self.asked.set()
        await self.gate.wait()
        return await super().complete(oid, token=token, outputs=outputs, detail=detail)


@pytest.mark.parametrize("records", [1, 3])
async def test_a_shutdown_while_a_result_is_recorded_keeps_the_result(
    tmp_path: Path, records: int
) -> None:
    """Cancelled (shutdown, no grace left) while the store completes its record, the
    record is completed all the same: the message is acknowledged, not released to
    come back; of a message with more records, the rest is released unstarted."""
    executors = _RecordingExecutors()
    async with _GatedStore(tmp_path / "state.db") as store:
        handler = _handler(executors, store=store)
        body = _records(records)
        msg = ReceivedMessage("m", "h", body, 1, 0.0)
        work = asyncio.create_task(handler.handle(msg))
        await asyncio.wait_for(store.asked.wait(), 5)
        work.cancel()
        await asyncio.sleep(0)
        store.gate.set()
        outcome = await work
        assert not work.cancelled()
        assert isinstance(outcome, Ack if records == 1 else Release), outcome
        assert executors.trace == ["run"]  # nothing more was started
        first = await store.versions("b", "k0.txt")
        assert [r.status for r in first] == [FileStatus.COMPLETED], first
        for i in range(1, records):  # never claimed
            assert await store.versions("b", f"k{i}.txt") == []
        assert handler._cut_short == set()  # forgotten with the message


class _UnavailableS3:
    """HeadObject answers 503 (what botocore gives up on after its own retries)."""

    async def head_object(self, **kw: object) -> dict[str, object]:
        from botocore.exceptions import ClientError

        raise ClientError(
            {
                "Error": {"Code": "ServiceUnavailable", "Message": "slow down"},
                "ResponseMetadata": {},
            },
            "HeadObject",
        )


@pytest.mark.parametrize(
    ("with_store", "receives", "dead"),
    [(True, 3, False), (True, 12, False), (True, 13, True), (False, 3, True)],
)
async def test_a_head_failure_before_the_claim_is_not_charged_receives_it_did_not_fail(
    tmp_path: Path, with_store: bool, receives: int, dead: bool
) -> None:
    """No sequencer (MinIO, moto): the HEAD names the upload before its claim. Its
    receives also count shutdown releases and crashed workers' deliveries, which the
    store does not count as failures: with a store, a transient HEAD failure on the
    third receive (max_receive_count = 3) is retried; it is dead-lettered at the queue's
    safety net (max_receive_count + 10). Without a store the receives are all it has."""
    p = PipelineSettings(name="p", bucket="b", queue="q", output="s3://o/", max_receive_count=3)
    proc = LineCountProcessor({})
    rt = PipelineRuntime(p, "q-url", "dlq-url", proc, None, Route.from_settings(p))  # type: ignore[arg-type]
    body = json.dumps(
        {
            "Records": [
                {
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": "b"}, "object": {"key": "k.txt"}},
                }
            ]
        }
    )
    async with SqliteStateStore(tmp_path / "state.db") as store:
        handler = MessageHandler(
            rt,
            s3=_UnavailableS3(),
            store=store if with_store else None,
            worker=WorkerSettings(),
            metrics=PipelineMetrics(),
            observer=WorkerObserver(),
            stop=asyncio.Event(),
        )
        outcome = await handler.handle(ReceivedMessage("m", "h", body, receives, 0.0))
    if dead:
        assert isinstance(outcome, DeadLetter), outcome
        assert outcome.error_class == "RetriesExhausted.AwsError"
        assert "ServiceUnavailable" in outcome.error and "HeadObject" in outcome.error
    else:
        assert isinstance(outcome, Retry), outcome
        assert "HeadObject" in outcome.error


class _TagRefusingS3:
    """Tagging refused with ``code`` (AccessDenied: a bucket without
    ``s3:PutObjectTagging`` for the worker; SlowDown: throttled, for a moment)."""

    def __init__(self, code: str, status: int) -> None:
        self.code, self.status = code, status

    async def get_object_tagging(self, **kw: object) -> dict[str, object]:
        return {"TagSet": []}

    async def put_object_tagging(self, **kw: object) -> dict[str, object]:
        from botocore.exceptions import ClientError

        raise ClientError(
            {
                "Error": {"Code": self.code, "Message": "no"},
                "ResponseMetadata": {"HTTPStatusCode": self.status},
            },
            "PutObjectTagging",
        )


class _InvalidExecutors(_RecordingExecutors):
    """Every object fails validation (a QUARANTINE error)."""

    async def run(self, name: str, job: object, progress: object, **kw: object) -> Result:
        raise InvalidInputError("row 3 has 2 columns, not 3")


async def _quarantine_refused(tmp_path: Path, code: str, status: int) -> tuple[object, FileRecord]:
    async with SqliteStateStore(tmp_path / "state.db") as store:
        handler = _handler(_InvalidExecutors(), store=store, s3=_TagRefusingS3(code, status))
        body = _records(1)
        outcome = await handler.handle(ReceivedMessage("m", "h", body, 1, 0.0))
        (rec,) = await store.versions("b", "k0.txt")
        return outcome, rec


async def test_an_object_that_cannot_be_tagged_is_dead_lettered_with_its_reason(
    tmp_path: Path,
) -> None:
    """A quarantine whose tags S3 refuses for good: the message is dead-lettered with the
    reason, the record's claim kept for the settler to end it dead once on the DLQ. The
    tagging error used to escape: the claim was given back uncounted and the message
    retried on every receive."""
    outcome, rec = await _quarantine_refused(tmp_path, "AccessDenied", 403)
    assert isinstance(outcome, DeadLetter), outcome
    assert outcome.error_class == "InvalidInputError"
    assert "row 3 has 2 columns" in outcome.error and "not quarantined" in outcome.error
    assert "AccessDenied" in outcome.error
    assert rec.status is FileStatus.PROCESSING, rec
    (held,) = outcome.claims
    assert (held.oid, held.token) == (rec.id, rec.fencing_token)
    assert held.error_class == "InvalidInputError" and "row 3" in held.error


async def test_a_throttled_tagging_is_retried_and_counted(tmp_path: Path) -> None:
    """Throttled for a moment: retried with back-off and its failure counted (it goes to
    the DLQ only after max_receive_count failures), not dead-lettered at once."""
    outcome, rec = await _quarantine_refused(tmp_path, "SlowDown", 503)
    assert isinstance(outcome, Retry), outcome
    assert rec.status is FileStatus.FAILED and rec.failures == 1, rec


class _SupersededExecutors(_RecordingExecutors):
    """Every run's read is refused: the object was overwritten since the event (as any
    executor reports it)."""

    async def run(self, name: str, job: object, progress: object, **kw: object) -> Result:
        from s3flow.errors import ObjectChangedError, superseded_text

        self.jobs.append(job)
        raise ObjectChangedError(superseded_text(job.event.if_match))  # type: ignore[attr-defined]

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[object] = []


@pytest.mark.parametrize("store", [True, False])
async def test_an_event_whose_upload_was_overwritten_is_settled_as_superseded(
    tmp_path: Path, store: bool
) -> None:
    """The run's read (conditional on the event's eTag) was refused: acknowledged without
    output, the record completed with none and why, no failure counted, no DLQ."""
    executors = _SupersededExecutors()
    async with SqliteStateStore(tmp_path / "state.db") as db:
        handler = _handler(executors, store=db if store else None)
        out = await handler.handle(ReceivedMessage("m", "h", _records(), 1, 0.0))
        assert isinstance(out, Ack), out
        assert all(j.event.if_match for j in executors.jobs)  # type: ignore[attr-defined]
        assert handler.metrics.objects_skipped == 3 and handler.metrics.objects_processed == 0
        if not store:
            return
        recs = [r for k in ("k0.txt", "k1.txt", "k2.txt") for r in await db.versions("b", k)]
        assert len(recs) == 3
        for rec in recs:
            assert rec.status is FileStatus.COMPLETED and rec.outputs == [], rec
            assert rec.failures == 0 and rec.last_error is None, rec
        history = [h.detail for h in await db.history("b", "k0.txt")]
        etag = recs[0].version.partition("@")[0]
        assert (
            "superseded: the object was overwritten since this event "
            f"(upload eTag {etag} is not the object now)"
        ) in history, history


class _StalledExecutors:
    """A run that waits until told (a long read); whether it was cancelled is kept."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False
        self.fences: list[object] = []

    async def run(self, name: str, job: object, progress: object, **kw: object) -> Result:
        self.fences.append(kw.get("before_write"))
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return Result(outputs=["s3://o/late.json"])


async def test_a_run_whose_claim_is_lost_is_stopped_and_its_message_released(
    tmp_path: Path,
) -> None:
    """The heartbeat found the record's lock or claim taken over (the worker stalled past
    the TTL): the run is cancelled before it writes, nothing is recorded as done, no
    failure is counted and the message goes back to the queue."""
    executors = _StalledExecutors()
    async with SqliteStateStore(tmp_path / "state.db") as db:
        handler = _handler(executors, store=db)  # type: ignore[arg-type]
        body = _records(1)
        msg = ReceivedMessage("m", "h", body, 1, 0.0)
        handling = asyncio.create_task(handler.handle(msg))
        await asyncio.wait_for(executors.started.wait(), 10)
        assert executors.fences[0] is not None  # each write of the run is fenced
        handler._holds.lost(msg.delivery).set()  # as Holds.renew does on a refused renewal
        outcome = await asyncio.wait_for(handling, 10)
        assert isinstance(outcome, Release) and "another worker took it over" in outcome.reason
        assert executors.cancelled
        (rec,) = await db.versions("b", "k0.txt")
        assert rec.status is not FileStatus.COMPLETED and rec.failures == 0, rec
        # Its claim (still its own when only the key lock was lost) is given back: the
        # next delivery need not wait it out.
        assert rec.status is FileStatus.RECEIVED and rec.claim_owner is None, rec
        assert handler.metrics.objects_processed == 0


class _DeadThenLost(_StalledExecutors):
    """The first record fails for good; the second is stalled until its hold is lost."""

    async def run(self, name: str, job: object, progress: object, **kw: object) -> Result:
        if not self.fences:
            self.fences.append(None)
            raise CorruptDataError("truncated")
        return await super().run(name, job, progress, **kw)


async def test_a_message_released_gives_back_the_claims_kept_for_its_dead_letters(
    tmp_path: Path,
) -> None:
    """Record 0 failed for good (its claim kept for the dead letter), then record 1's run
    was stopped (a lost hold; a shutdown the same): the whole message is released, and
    record 0 stayed processing until its claim's TTL."""
    executors = _DeadThenLost()
    async with SqliteStateStore(tmp_path / "state.db") as db:
        handler = _handler(executors, store=db)  # type: ignore[arg-type]
        body = _records(2)
        msg = ReceivedMessage("m", "h", body, 1, 0.0)
        handling = asyncio.create_task(handler.handle(msg))
        await asyncio.wait_for(executors.started.wait(), 10)
        handler._holds.lost(msg.delivery).set()
        outcome = await asyncio.wait_for(handling, 10)
        assert isinstance(outcome, Release), outcome
        (rec,) = await db.versions("b", "k0.txt")
        assert rec.status is not FileStatus.PROCESSING and rec.claim_owner is None, rec


class _NoneExecutors:
    """A processor that returns None instead of a Result (a user's mistake), run as the
    inline executor runs it."""

    async def run(self, name: str, job: Any, progress: object, **kw: object) -> Result:
        from s3flow.executors.one import run_object
        from s3flow.processors.base import BaseProcessor, ProcessContext

        class Forgets(BaseProcessor):
            async def process(self, ctx: ProcessContext) -> Result:
                return None  # type: ignore[return-value]

        return await run_object(Forgets({}), job, s3=None, sink=None)  # type: ignore[arg-type]


async def test_a_run_that_returns_no_result_is_a_failure_not_a_lost_claim(
    tmp_path: Path,
) -> None:
    """None was taken for "the claim was lost": the message was released without a
    failure, again and again, and never reached the DLQ."""
    async with SqliteStateStore(tmp_path / "state.db") as db:
        handler = _handler(_NoneExecutors(), store=db)  # type: ignore[arg-type]
        body = _records(1)
        outcome = await handler.handle(ReceivedMessage("m", "h", body, 1, 0.0))
        assert isinstance(outcome, Retry), outcome
        (rec,) = await db.versions("b", "k0.txt")
        assert rec.status is FileStatus.FAILED and rec.failures == 1, rec
