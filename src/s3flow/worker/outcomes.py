"""Explicit outcomes of handling one SQS message (values, not exceptions)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

SQS_MAX_VISIBILITY_S = 43200  # 12 hours


@dataclass(frozen=True)
class Ack:
    """Done (or nothing to do): delete the message."""

    reason: str = "processed"


@dataclass(frozen=True)
class Retry:
    """Transient failure: make the message visible again after ``delay_s``."""

    delay_s: int
    error_class: str
    error: str


@dataclass(frozen=True)
class DeadLetter:
    """Permanent failure or poison message: send to the DLQ with the reason, then delete."""

    error_class: str
    error: str


@dataclass(frozen=True)
class Release:
    """Not finished (shutdown): make the message visible again at once."""

    reason: str = "shutdown"


Outcome = Ack | Retry | DeadLetter | Release


def backoff_s(
    receive_count: int,
    base_s: float,
    max_s: float,
    rng: random.Random | None = None,
) -> int:
    """Exponential backoff with "equal jitter" for the ``receive_count``-th failure.

    The ceiling is ``base * 2**(receive_count-1)`` capped at ``max_s``; the delay
    is uniformly drawn from ``[ceiling/2, ceiling]`` (never 0 unless base is 0,
    so a failing message cannot spin) and capped at SQS's 12 h limit.
    """
    r = rng or random
    n = max(1, receive_count)
    ceiling = min(max_s, base_s * (2 ** min(n - 1, 30)))
    delay = ceiling / 2 + r.random() * ceiling / 2
    whole = math.ceil(delay) if ceiling > 0 else 0  # SQS takes whole seconds; keep >= 1
    return int(min(SQS_MAX_VISIBILITY_S, whole))
