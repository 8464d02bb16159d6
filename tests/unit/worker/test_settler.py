"""Rules of the settler: what an outcome asks of SQS, and of the state store (a real
SQLite file)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from s3flow.settings import PipelineSettings
from s3flow.state import ClaimOutcome, FileStatus, ObjectId, SqliteStateStore
from s3flow.worker.acks import REDRIVE_ID_ATTR, AckBatcher, Settler
from s3flow.worker.outcomes import (
    SQS_MAX_VISIBILITY_S,
    DeadLetter,
    HeldClaim,
    RecordPart,
    Retry,
    Split,
)
from s3flow.worker.source import ReceivedMessage


class FakeAcks:
    """Records the visibility changes asked for (the batching is not under test)."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, int]] = []

    async def change_visibility(self, receipt_handle: str, timeout_s: int) -> bool:
        self.changes.append((receipt_handle, timeout_s))
        return True


def settler(acks: FakeAcks) -> Settler:
    p = PipelineSettings(name="p", bucket="b", queue="q", output="s3://o/")
    fake: AckBatcher = acks  # type: ignore[assignment]
    return Settler(fake, None, pipeline=p, queue_url="q", dlq_url="d", worker_id="w")


@pytest.mark.parametrize(
    ("in_flight_s", "asked", "expected"),
    [
        (10, 900, (900, 900)),  # far from the limit: as asked
        (SQS_MAX_VISIBILITY_S - 300, 900, (239, 240)),  # 5 min left, less the margin
        (SQS_MAX_VISIBILITY_S - 30, 900, (0, 0)),  # past the margin: visible now
    ],
)
async def test_a_retry_never_asks_for_a_visibility_past_12_hours_from_the_receive(
    in_flight_s: int, asked: int, expected: tuple[int, int]
) -> None:
    """SQS refuses the whole change otherwise, and the retry would come whenever the
    last extension ends instead."""
    acks = FakeAcks()
    msg = ReceivedMessage("m", "h", "{}", 1, time.monotonic() - in_flight_s)
    await settler(acks).settle(msg, Retry(asked, "X", "boom"))
    ((handle, delay),) = acks.changes
    assert handle == "h" and expected[0] <= delay <= expected[1], delay


class FakeSqs:
    """Takes every DLQ send (the settler's other calls are not under test)."""

    async def send_message(self, **kwargs: object) -> dict[str, str]:
        return {"MessageId": "dlq-copy"}


class FakeDeletes(FakeAcks):
    async def delete(self, receipt_handle: str) -> bool:
        return True


@pytest.mark.parametrize("moved", [False, True])
async def test_a_dead_letter_ends_the_claim_its_handler_kept_dead(
    tmp_path: Path, moved: bool
) -> None:
    """The handler keeps the claim of a record it dead-letters (copies of the message
    wait for it, then find the record dead): the settler ends it dead once the DLQ has
    the message. Fenced: a record an operator moved meanwhile (released: received)
    stays so, and its copy is processed."""
    oid = ObjectId("b", "k", "v1")
    async with SqliteStateStore(tmp_path / "state.db") as store:
        claim = await store.claim(oid, pipeline="p", owner="w", ttl_s=60)
        if moved:
            await store.set_status(oid, FileStatus.RECEIVED, detail="released")
        p = PipelineSettings(name="p", bucket="b", queue="q", output="s3://o/")
        fake: AckBatcher = FakeDeletes()  # type: ignore[assignment]
        settler = Settler(
            fake, FakeSqs(), pipeline=p, queue_url="q", dlq_url="d", worker_id="w", store=store
        )
        msg = ReceivedMessage("m", "h", "{}", 1, time.monotonic())
        held = HeldClaim(oid, claim.token, "E", "x")
        await settler.settle(msg, DeadLetter("RetriesExhausted.E", "failed 2 times", (held,)))
        rec = await store.get(oid)
    assert rec is not None
    assert rec.status is (FileStatus.RECEIVED if moved else FileStatus.DEAD)
    assert rec.claim_owner is None and rec.claim_expires_at is None
    if not moved:
        assert (rec.last_error_class, rec.last_error) == ("E", "x")


async def test_a_dead_letter_the_dlq_refused_ends_its_claim_failed_and_is_retried(
    tmp_path: Path,
) -> None:
    """The message is retried: its record must be claimable at once (failed, the failure
    counted), not held until the kept claim expires."""
    oid = ObjectId("b", "k", "v1")
    async with SqliteStateStore(tmp_path / "state.db") as store:
        claim = await store.claim(oid, pipeline="p", owner="w", ttl_s=60)
        p = PipelineSettings(name="p", bucket="b", queue="q", output="s3://o/")
        acks = FakeDeletes()
        fake: AckBatcher = acks  # type: ignore[assignment]
        settler = Settler(
            fake,
            RecordingSqs(fail=True),
            pipeline=p,
            queue_url="q",
            dlq_url="d",
            worker_id="w",
            store=store,
        )
        msg = ReceivedMessage("m", "h", "{}", 1, time.monotonic())
        held = HeldClaim(oid, claim.token, "E", "x")
        final = await settler.settle(msg, DeadLetter("E", "x", (held,)))
        rec = await store.get(oid)
        again = await store.claim(oid, pipeline="p", owner="w2", ttl_s=60)
    assert isinstance(final, Retry) and len(acks.changes) == 1
    assert rec is not None and rec.status is FileStatus.FAILED and rec.failures == 1, rec
    assert again.outcome is ClaimOutcome.ACQUIRED


class RecordingSqs:
    """Takes every send and keeps its arguments; ``fail`` refuses them."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[dict[str, Any]] = []

    async def send_message(self, **kwargs: Any) -> dict[str, str]:
        if self.fail:
            raise RuntimeError("queue down")
        self.sent.append(kwargs)
        return {"MessageId": f"sent-{len(self.sent)}"}


@pytest.mark.parametrize("redriven", [False, True])
async def test_every_message_derived_from_a_redriven_copy_carries_its_redrive_id(
    redriven: bool,
) -> None:
    """A record re-sent alone and a dead letter carry the received message's
    s3flow.redrive-id: `dlq redrive` knows them by it when they come back to the DLQ
    (a re-sent record's own dead letter names the re-sent message, not the copy)."""
    sqs = RecordingSqs()
    p = PipelineSettings(name="p", bucket="b", queue="q", output="s3://o/")
    fake: AckBatcher = FakeDeletes()  # type: ignore[assignment]
    settler = Settler(fake, sqs, pipeline=p, queue_url="q", dlq_url="d", worker_id="w")
    attrs = {REDRIVE_ID_ATTR: {"DataType": "String", "StringValue": "run/dlq-1"}}
    msg = ReceivedMessage(
        "copy-1", "h", "{}", 1, time.monotonic(), message_attributes=attrs if redriven else {}
    )
    split = Split(
        (RecordPart("{}", Retry(1, "X", "again")), RecordPart("{}", DeadLetter("Y", "bad")))
    )
    assert await settler.settle(msg, split) == split
    await settler.settle(msg, DeadLetter("Z", "bad"))
    assert [s["QueueUrl"] for s in sqs.sent] == ["q", "d", "d"]
    for s in sqs.sent:
        carried = s["MessageAttributes"].get(REDRIVE_ID_ATTR)
        assert carried == (attrs[REDRIVE_ID_ATTR] if redriven else None), s


class RecordingDeletes(FakeAcks):
    def __init__(self) -> None:
        super().__init__()
        self.deleted: list[str] = []

    async def delete(self, receipt_handle: str) -> bool:
        self.deleted.append(receipt_handle)
        return True


@pytest.mark.parametrize(("send_fails", "capped"), [(False, False), (False, True), (True, False)])
async def test_a_renewed_retry_is_sent_again_as_a_new_message(
    send_fails: bool, capped: bool
) -> None:
    """A wait that is not the file's fault near the queue's redrive limit: a new message
    (its receive count starts over) carrying the failures so far, then the old one is
    deleted; when the send fails, the message is retried as it is."""
    acks, sqs = RecordingDeletes(), RecordingSqs(fail=send_fails)
    p = PipelineSettings(name="p", bucket="b", queue="q", output="s3://o/")
    s = Settler(acks, sqs, pipeline=p, queue_url="q", dlq_url="d", worker_id="w")  # type: ignore[arg-type]
    attrs = {"s3flow.failures": {"StringValue": "2"}, REDRIVE_ID_ATTR: {"StringValue": "r1"}}
    msg = ReceivedMessage("m", "h", "body", 11, time.monotonic(), message_attributes=attrs)
    sent_as = Retry(30, "OutputUnavailable", "bucket gone", renew=True, capped=capped)
    done = await s.settle(msg, sent_as)
    if send_fails:
        assert done == Retry(30, "OutputUnavailable", "bucket gone")
        assert (acks.deleted, acks.changes) == ([], [("h", 30)])
        return
    assert done == sent_as
    ((sent,),) = [sqs.sent]
    assert (sent["QueueUrl"], sent["MessageBody"], sent["DelaySeconds"]) == ("q", "body", 30)
    got = {k: v["StringValue"] for k, v in sent["MessageAttributes"].items()}
    # an output down: its waits are no failures (a renewed copy carrying them was
    # dead-lettered at its next real failure); a capped wait carries what a worker
    # without a store counts: 2 carried + the 10 receives before this one
    assert got["s3flow.failures"] == ("12" if capped else "2") and got[REDRIVE_ID_ATTR] == "r1"
    assert got["s3flow.renewed-from"] == "m" and got["s3flow.last-error"] == "bucket gone"
    assert got["s3flow.renewals"] == ("1" if capped else "0")  # capped renewals so far
    # s3flow.error marks a message a worker dead-lettered: `dlq list` took a renewed copy
    # the queue's redrive moved for one, hiding that SQS moved it
    assert "s3flow.error" not in got and "s3flow.error-class" not in got
    assert (acks.deleted, acks.changes) == (["h"], [])


async def test_a_store_error_ending_a_dead_letters_claim_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DLQ has the message, then marking the record dead failed once (a busy store):
    it was left processing for good, its message deleted, nothing to bring it back."""
    from s3flow.errors import S3flowError
    from s3flow.worker import acks as acks_module

    monkeypatch.setattr(acks_module, "_END_CLAIM_RETRY_S", (0.01, 0.01))
    oid = ObjectId("b", "k", "v1")
    async with SqliteStateStore(tmp_path / "state.db") as store:
        claim = await store.claim(oid, pipeline="p", owner="w", ttl_s=60)
        real_fail, calls = store.fail, []

        async def flaky_fail(*args: Any, **kwargs: Any) -> bool:
            calls.append(1)
            if len(calls) < 3:
                raise S3flowError("database is locked")
            return await real_fail(*args, **kwargs)

        monkeypatch.setattr(store, "fail", flaky_fail)
        p = PipelineSettings(name="p", bucket="b", queue="q", output="s3://o/")
        fake: AckBatcher = FakeDeletes()  # type: ignore[assignment]
        settler = Settler(
            fake, FakeSqs(), pipeline=p, queue_url="q", dlq_url="d", worker_id="w", store=store
        )
        msg = ReceivedMessage("m", "h", "{}", 1, time.monotonic())
        held = HeldClaim(oid, claim.token, "E", "x")
        await settler.settle(msg, DeadLetter("E", "x", (held,)))
        rec = await store.get(oid)
    assert len(calls) == 3
    assert rec is not None and rec.status is FileStatus.DEAD, rec
