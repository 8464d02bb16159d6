"""Pure rules of the message handler."""

from __future__ import annotations

from s3flow.worker.handler import FAILURES_ATTR, prior_failures, sequencer_after
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
