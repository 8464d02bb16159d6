"""Explicit outcomes of handling one SQS message (values, not exceptions)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from s3flow.state.records import ObjectId

SQS_MAX_VISIBILITY_S = 43200  # 12 hours
#: How long before SQS's 12 h limit (counted by SQS from a moment before the worker's
#: ``received_at``: the receive's answer took a round trip) visibility changes stop.
RECEIVE_LIMIT_MARGIN_S = 60


def visibility_left_s(received_at: float, now: float) -> int:
    """The longest visibility SQS still accepts for a message received at ``received_at``
    (``time.monotonic()``): it refuses one ending more than 12 h after the receive."""
    return max(0, math.floor(received_at + SQS_MAX_VISIBILITY_S - RECEIVE_LIMIT_MARGIN_S - now))


@dataclass(frozen=True)
class Ack:
    """Done (or nothing to do): delete the message."""

    reason: str = "processed"


@dataclass(frozen=True)
class Retry:
    """Transient failure: make the message visible again after ``delay_s``.

    ``renew``: send it again as a new message (its receive count starts over) and
    delete this one, instead: a wait that is not the file's fault (an output down)
    near the queue's redrive limit, which would move it to the DLQ with no reason.
    """

    delay_s: int
    error_class: str
    error: str
    renew: bool = False
    #: The wait may be the object's own (an error no handler could record, a lookup
    #: refused for this object): a renewal carries its receives as failures (for a
    #: worker without a store) and it is renewed at most ``MAX_CAPPED_RENEWALS`` times.
    capped: bool = False


@dataclass(frozen=True)
class HeldClaim:
    """The claim on an upload whose message goes to the DLQ, kept (not renewed) until
    the settler ends it: ``dead`` once the DLQ has the message, ``failed`` (with
    ``error``) if the send fails.

    While it is held, other copies of the message wait for it (busy), then find the
    upload dead and are acknowledged without work: released at once, the next copy
    ran the upload again and dead-lettered it again. A worker killed before the send
    leaves it to expire: the message comes back and takes it over, as after any crash.
    """

    oid: ObjectId
    token: int
    error_class: str
    error: str


@dataclass(frozen=True)
class DeadLetter:
    """Permanent failure or poison message: send to the DLQ with the reason, then delete.

    ``claims`` are the state-store claims to end dead once the DLQ has it.
    """

    error_class: str
    error: str
    claims: tuple[HeldClaim, ...] = ()


@dataclass(frozen=True)
class Release:
    """Not finished (shutdown): make the message visible again at once."""

    reason: str = "shutdown"


@dataclass(frozen=True)
class RecordPart:
    """One record of a multi-record message that settles on its own.

    ``body`` is a notification holding only that record; ``outcome`` says where
    it goes: ``Retry`` = back to the source queue (delayed), ``DeadLetter`` = the
    DLQ with its reason. ``failures`` travels with a re-sent record
    (``s3flow.failures`` message attribute) for workers without a state store.
    """

    body: str
    outcome: Retry | DeadLetter
    failures: int = 0


@dataclass(frozen=True)
class Split:
    """Some records of a message are done, the others settle alone (``parts``).

    The original message is deleted only once every part is on a queue; if any
    send fails the whole message is retried instead (done records are then
    acknowledged as duplicates).
    """

    parts: tuple[RecordPart, ...]


Outcome = Ack | Retry | DeadLetter | Release | Split
#: How one record of a message did not finish (``None`` stands for done).
RecordOutcome = Retry | DeadLetter | Release


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
