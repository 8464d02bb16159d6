"""worker.outcomes.backoff_s: exponential backoff with equal jitter, bounded."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3flow.worker.outcomes import SQS_MAX_VISIBILITY_S, backoff_s


class FixedRandom(random.Random):
    """random() always returns ``value`` (0 <= value < 1)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def ceiling(receive_count: int, base: float, cap: float) -> float:
    n = max(1, receive_count)
    return min(cap, base * 2 ** (n - 1))


def test_low_end_of_jitter_is_half_the_ceiling() -> None:
    # ceiling for the 4th receive: 2 * 2**3 = 16 -> delay in [8, 16]
    assert backoff_s(4, 2.0, 900.0, FixedRandom(0.0)) == 8
    assert backoff_s(4, 2.0, 900.0, FixedRandom(0.5)) == 12
    assert backoff_s(4, 2.0, 900.0, FixedRandom(0.999999)) == 16


def test_grows_exponentially_with_receive_count() -> None:
    got = [backoff_s(n, 2.0, 10_000.0, FixedRandom(0.0)) for n in range(1, 9)]
    assert got == [1, 2, 4, 8, 16, 32, 64, 128]
    top = [backoff_s(n, 2.0, 10_000.0, FixedRandom(0.999999)) for n in range(1, 9)]
    assert top == [2, 4, 8, 16, 32, 64, 128, 256]


def test_capped_at_retry_max() -> None:
    assert backoff_s(30, 2.0, 900.0, FixedRandom(0.999999)) == 900
    assert backoff_s(30, 2.0, 900.0, FixedRandom(0.0)) == 450


def test_capped_at_sqs_limit() -> None:
    assert SQS_MAX_VISIBILITY_S == 43200
    assert backoff_s(40, 2.0, 1e9, FixedRandom(0.999999)) == 43200
    assert backoff_s(10**6, 1000.0, 1e12, FixedRandom(0.999999)) == 43200


@pytest.mark.parametrize("receive_count", [0, -1, -100])
def test_non_positive_receive_count_is_treated_as_first(receive_count: int) -> None:
    for seed in range(20):
        assert backoff_s(receive_count, 4.0, 900.0, random.Random(seed)) == backoff_s(
            1, 4.0, 900.0, random.Random(seed)
        )
    assert backoff_s(receive_count, 4.0, 900.0, FixedRandom(0.0)) == 2


def test_deterministic_with_seeded_random() -> None:
    a = [backoff_s(n, 2.0, 900.0, random.Random(1234)) for n in range(1, 12)]
    b = [backoff_s(n, 2.0, 900.0, random.Random(1234)) for n in range(1, 12)]
    assert a == b
    rng1, rng2 = random.Random(99), random.Random(99)
    assert [backoff_s(5, 2.0, 900.0, rng1) for _ in range(50)] == [
        backoff_s(5, 2.0, 900.0, rng2) for _ in range(50)
    ]


def test_jitter_spreads_values() -> None:
    rng = random.Random(7)
    values = {backoff_s(8, 2.0, 900.0, rng) for _ in range(200)}
    # ceiling 256 -> [128, 256]; 200 draws hit many distinct values
    assert min(values) >= 128 and max(values) <= 256
    assert len(values) > 50


def test_zero_base_gives_zero() -> None:
    assert backoff_s(5, 0.0, 900.0, random.Random(0)) == 0


def test_returns_int() -> None:
    assert type(backoff_s(3, 1.5, 900.0, random.Random(0))) is int


@settings(max_examples=300, deadline=None)
@given(
    receive_count=st.integers(min_value=-10, max_value=200),
    base=st.floats(min_value=1.0, max_value=5000.0),
    cap=st.floats(min_value=0.0, max_value=1e7),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_property_within_jitter_window(
    receive_count: int, base: float, cap: float, seed: int
) -> None:
    cap = max(cap, base)  # settings enforce retry_max_s >= retry_base_s
    delay = backoff_s(receive_count, base, cap, random.Random(seed))
    c = ceiling(receive_count, base, cap)
    assert 0 <= delay <= SQS_MAX_VISIBILITY_S
    # the delay is rounded up to whole seconds (SQS takes whole seconds)
    assert min(c / 2, SQS_MAX_VISIBILITY_S) <= delay <= min(math.ceil(c), SQS_MAX_VISIBILITY_S)
    assert delay == backoff_s(receive_count, base, cap, random.Random(seed))


@pytest.mark.parametrize(
    ("base", "rng"), [(0.5, random.Random(0)), (0.9, FixedRandom(0.0)), (1.0, FixedRandom(0.0))]
)
def test_positive_base_never_gives_zero(base: float, rng: random.Random) -> None:
    assert backoff_s(1, base, 900.0, rng) >= 1
