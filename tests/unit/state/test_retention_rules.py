"""Retention rules: the setting, what expires when, the counters' deltas and day buckets."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from s3flow.settings import StateSettings
from s3flow.state.dynamodb.codec import counts_pk, expiry_day, purge_seconds, with_purge
from s3flow.state.lifecycle import (
    DAY_S,
    count_delta,
    purge_time,
    retention_seconds,
)
from s3flow.state.records import TERMINAL_FILE_STATUSES, FileStatus, RecountReport

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def test_retention_days_must_exceed_the_longest_message_retention() -> None:
    assert StateSettings().retention_days == 30
    assert StateSettings(retention_days=0).retention_days == 0  # keep forever
    assert StateSettings(retention_days=14.5).retention_days == 14.5
    for bad in (1, 7, 14):
        with pytest.raises(ValidationError, match="must exceed 14"):
            StateSettings(retention_days=bad)
    with pytest.raises(ValidationError):
        StateSettings(retention_days=-1)


def test_retention_seconds() -> None:
    assert retention_seconds(30) == 30 * DAY_S
    assert retention_seconds(0) is None
    assert retention_seconds(None) is None


def test_only_terminal_records_expire() -> None:
    assert {
        FileStatus.COMPLETED,
        FileStatus.DEAD,
        FileStatus.QUARANTINED,
    } == TERMINAL_FILE_STATUSES
    for status in FileStatus:
        got = purge_time(status, T0, 10.0)
        assert got == (T0 + 10.0 if status in TERMINAL_FILE_STATUSES else None)
        assert purge_time(status, T0, None) is None


def test_count_delta() -> None:
    S = FileStatus
    assert count_delta(None, ("p", S.PROCESSING)) == {("p", S.PROCESSING): 1}
    assert count_delta(("p", S.PROCESSING), ("p", S.COMPLETED)) == {
        ("p", S.COMPLETED): 1,
        ("p", S.PROCESSING): -1,
    }
    assert count_delta(("p", S.PROCESSING), ("p", S.PROCESSING)) == {}  # a takeover
    moved = count_delta(("a", S.FAILED), ("b", S.FAILED))  # claimed by another pipeline
    assert moved == {("a", S.FAILED): -1, ("b", S.FAILED): 1}


def test_dynamodb_expiry_days_and_keys() -> None:
    assert purge_seconds(T0 + 0.2) == math.ceil(T0 + 0.2)
    assert expiry_day(None) is None
    assert expiry_day(T0) == int(T0 // DAY_S) == 19675
    assert expiry_day(19676 * DAY_S - 0.5) == 19676  # rounded up to a whole second first
    assert with_purge({}, None) == {}
    assert with_purge({}, T0 + 0.5) == {"purge_at": {"N": str(math.ceil(T0 + 0.5))}}
    assert counts_pk("p") == 'fcount#["p"]'
    assert counts_pk("p#1", 19675) == 'fcount#["p#1","19675"]'  # no separator ambiguity


def test_recount_report_drift() -> None:
    report = RecountReport(
        counted={"p": {"completed": 3, "failed": 1}, "q": {"received": 2}},
        counters={"p": {"completed": 2, "failed": 1, "processing": 1}, "q": {"received": 2}},
        items_read=6,
    )
    assert report.drift == {"p": {"completed": -1, "processing": 1}}
    assert not report.consistent
    same = RecountReport(counted={"p": {"dead": 1}}, counters={"p": {"dead": 1}}, items_read=1)
    assert same.consistent and same.drift == {}
