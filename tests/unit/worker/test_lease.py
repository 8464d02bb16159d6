"""LeaseKeeper heartbeat logic with a fake batcher (pure timing logic)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from s3flow.metrics import PipelineMetrics
from s3flow.worker.lease import JOB_STOP_GRACE_S, LeaseKeeper


class FakeAcks:
    def __init__(self, ok: bool = True) -> None:
        self.calls: list[tuple[str, int]] = []
        self.ok = ok

    async def change_visibility(self, handle: str, timeout_s: int) -> bool:
        self.calls.append((handle, timeout_s))
        return self.ok


def keeper(acks: Any, timeout: int = 10, job: int = 3600) -> tuple[LeaseKeeper, PipelineMetrics]:
    m = PipelineMetrics()
    return LeaseKeeper(acks, visibility_timeout_s=timeout, job_timeout_s=job, metrics=m), m


async def test_not_due_before_half_timeout() -> None:
    acks = FakeAcks()
    lk, m = keeper(acks)
    lk.track("m1", "h1", time.monotonic())
    await lk.beat()
    assert acks.calls == [] and m.visibility_extensions == 0


async def test_due_at_half_timeout_extends_by_a_full_timeout() -> None:
    acks = FakeAcks()
    lk, m = keeper(acks)
    lk.track("m1", "h1", time.monotonic() - 6)  # 4 s of visibility left < 5 s
    lk.track("m2", "h2", time.monotonic())  # fresh
    await lk.beat()
    assert acks.calls == [("h1", 10)] and m.visibility_extensions == 1
    await lk.beat()  # just extended: not due again
    assert len(acks.calls) == 1


async def test_extension_is_capped_by_the_job_timeout_and_its_stop_grace() -> None:
    acks = FakeAcks()
    lk, _ = keeper(acks, timeout=10, job=8)  # grace: min(JOB_STOP_GRACE_S, 8) = 8
    lk.track("m1", "h1", time.monotonic() - 14)
    lk.restart("m1", time.monotonic() - 14)  # 8 + 8 - 14: 2 s left
    await lk.beat()
    assert acks.calls == [("h1", 2)]


async def test_within_the_stop_grace_the_message_stays_leased() -> None:
    # The executor stops a run at job_timeout_s; its retry must be sent before the
    # message is visible to another worker.
    acks = FakeAcks()
    lk, _ = keeper(acks, timeout=10, job=5)
    lk.track("m1", "h1", time.monotonic() - 6)
    lk.restart("m1", time.monotonic() - 6)  # 1 s past job_timeout_s, 4 s of grace left
    await lk.beat()
    assert acks.calls == [("h1", 4)]


async def test_the_stop_grace_is_at_most_a_minute() -> None:
    acks = FakeAcks()
    lk, _ = keeper(acks, timeout=600, job=3600)
    started = time.monotonic() - 3600 - JOB_STOP_GRACE_S - 1
    lk.track("m1", "h1", started)
    lk.restart("m1", started)
    await lk.beat()
    assert JOB_STOP_GRACE_S == 60 and acks.calls == []


async def test_past_the_job_timeout_and_its_grace_is_left_to_expire() -> None:
    acks = FakeAcks()
    lk, _ = keeper(acks, timeout=10, job=5)
    lk.track("m1", "h1", time.monotonic() - 11)
    lk.restart("m1", time.monotonic() - 11)
    await lk.beat()
    assert acks.calls == []


async def test_a_message_waiting_for_a_slot_is_leased_past_the_job_timeout() -> None:
    # Prefetched and holding its claim: letting its visibility (and so its claim)
    # lapse would give its object to another worker while this one still means to
    # process it.
    acks = FakeAcks()
    lk, _ = keeper(acks, timeout=10, job=5)
    lk.track("m1", "h1", time.monotonic() - 6)  # waited 6 s for a slot so far
    await lk.beat()
    assert acks.calls == [("h1", 10)]


async def test_untracked_and_failed_extensions() -> None:
    acks = FakeAcks(ok=False)
    lk, m = keeper(acks)
    lk.track("m1", "h1", time.monotonic() - 9)
    lk.track("m2", "h2", time.monotonic() - 9)
    lk.untrack("m2")
    assert len(lk) == 1
    await lk.beat()
    assert acks.calls == [("h1", 10)]
    assert m.visibility_extensions == 0  # SQS refused: not counted


def test_tick_is_a_quarter_timeout_within_bounds() -> None:
    assert keeper(FakeAcks(), timeout=2)[0].tick_s == 0.5
    assert keeper(FakeAcks(), timeout=3600)[0].tick_s == 5.0


async def test_a_message_settled_while_the_beat_runs_is_not_extended() -> None:
    class SettlingAcks(FakeAcks):
        async def change_visibility(self, handle: str, timeout_s: int) -> bool:
            lk.untrack("m2")  # m2 is settled (say, released) while the beat is under way
            return await super().change_visibility(handle, timeout_s)

    acks = SettlingAcks()
    lk, m = keeper(acks)
    now = time.monotonic()
    lk.track("m1", "h1", now - 6)
    lk.track("m2", "h2", now - 6)
    await lk.beat()
    # m2's release must not be overridden by an extension queued after it.
    assert acks.calls == [("h1", 10)] and m.visibility_extensions == 1


async def test_the_job_timeout_counts_from_the_start_of_work_not_the_receive() -> None:
    acks = FakeAcks()
    lk, _ = keeper(acks, timeout=20, job=5)
    lk.track("m1", "h1", time.monotonic() - 16)  # waited 16 s for a slot, prefetched
    lk.restart("m1", time.monotonic())  # its work starts now: 5 s + 5 s of grace left
    lk.restart("gone", time.monotonic())  # not tracked: nothing to do
    await lk.beat()
    assert acks.calls == [("h1", 10)]


async def test_no_extension_reaches_past_12_hours_from_the_receive() -> None:
    """SQS refuses a visibility ending more than 12 h after the receive: a message
    waiting for a slot (no job deadline) is extended up to that limit, then left."""
    acks = FakeAcks()
    lk, m = keeper(acks, timeout=600)
    received = time.monotonic() - (43_200 - 300)  # 5 min short of 12 h
    lk.track("m1", "h1", received)
    lk._leases["m1"].visible_at = time.monotonic() + 10  # due
    await lk.beat()
    # 300 s left, less the margin for the receive's round trip
    (call,) = acks.calls
    assert call[0] == "h1" and 230 <= call[1] <= 240
    lk._leases["m1"].visible_at = time.monotonic() + 10
    lk._leases["m1"].limit_at = time.monotonic() + 0.5  # the limit is reached
    await lk.beat()
    assert len(acks.calls) == 1 and m.visibility_extensions == 1


async def test_a_slow_claim_renewal_does_not_hold_back_the_next_extension() -> None:
    """Claims renew beside the beat: with the state store stuck, the next beat still
    extends what is due; what fell due meanwhile is renewed after, in one batch."""
    acks: Any = FakeAcks()
    release = asyncio.Event()
    renewed: list[list[str]] = []

    async def renew(deliveries: list[str]) -> None:
        renewed.append(deliveries)
        await release.wait()

    lk = LeaseKeeper(acks, visibility_timeout_s=10, job_timeout_s=3600, renew_claims=renew)
    lk.track("m1", "h1", time.monotonic() - 6)
    await asyncio.wait_for(lk.beat(), 2)  # the renewal hangs; the beat does not
    lk.track("m2", "h2", time.monotonic() - 6)
    lk.track("m3", "h3", time.monotonic() - 6)
    await asyncio.wait_for(lk.beat(), 2)
    assert [h for h, _ in acks.calls] == ["h1", "h2", "h3"]
    assert renewed == [["m1"]]  # one renewal at a time
    release.set()
    for _ in range(100):
        if len(renewed) == 2:
            break
        await asyncio.sleep(0.01)
    assert renewed == [["m1"], ["m2", "m3"]]
    await lk.__aexit__(None, None, None)
