"""The pure half of sending DLQ messages back: packing, what travels, dedup ids, and
which failures surely delivered nothing (the SQS round trips are in
tests/integration/test_dlq_redrive.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from s3flow.ops.dlq_send import (
    MAX_BATCH_BYTES,
    _dedup_id,
    _pack,
    _surely_not_sent,
    outgoing_of,
)


def _msg(n: int, body: str = "{}", **attrs: Any) -> dict[str, Any]:
    return {"MessageId": f"m{n}", "Body": body, "Attributes": attrs}


def test_batches_hold_at_most_ten_messages_and_one_mib_in_order() -> None:
    small = [outgoing_of(_msg(i), fifo=False) for i in range(12)]
    assert [[o.msg["MessageId"] for o in b] for b in _pack(small)] == [
        [f"m{i}" for i in range(10)],
        ["m10", "m11"],
    ]
    big = [outgoing_of(_msg(i, "x" * (MAX_BATCH_BYTES // 2 + 1)), fifo=False) for i in range(3)]
    assert [len(b) for b in _pack(big)] == [1, 1, 1]
    too_big = outgoing_of(_msg(9, "y" * (MAX_BATCH_BYTES + 1)), fifo=False)
    assert [len(b) for b in _pack([small[0], too_big, small[1]])] == [1, 1, 1]  # alone


def test_s3flow_attributes_stay_behind_others_travel_and_count_in_the_size() -> None:
    msg = _msg(1, "body")
    msg["MessageAttributes"] = {
        "s3flow.error": {"DataType": "String", "StringValue": "boom"},
        "trace": {"DataType": "String", "StringValue": "abc"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
    }
    o = outgoing_of(msg, fifo=False)
    assert set(o.entry["MessageAttributes"]) == {"trace", "blob"}
    assert "MessageGroupId" not in o.entry and o.group is None
    assert o.size == len("body") + len("trace") + len("String") + 3 + len("blob") + 6 + 2


def test_a_fifo_message_keeps_its_group_and_gets_a_dedup_id() -> None:
    now_ms = int(time.time() * 1000)
    recent = _msg(1, MessageGroupId="g1", MessageDeduplicationId="d1", SentTimestamp=now_ms)
    o = outgoing_of(recent, fifo=True)
    assert o.group == "g1"
    # Sent to the source queue minutes ago: the queue would drop its own id, so a new
    # one, the same on every run (a killed run's resend is deduplicated).
    assert o.entry["MessageDeduplicationId"].startswith("redrive-")
    assert (
        _dedup_id(recent)
        == o.entry["MessageDeduplicationId"]
        != _dedup_id(
            _msg(
                2,
                **{"MessageGroupId": "g1", "MessageDeduplicationId": "d1", "SentTimestamp": now_ms},
            )
        )
    )
    old = _msg(3, MessageDeduplicationId="d3", SentTimestamp=now_ms - 7 * 60 * 1000)
    assert _dedup_id(old) == "d3"  # out of the 5-minute window: its own id again
    assert outgoing_of(_msg(4), fifo=True).group == "s3flow-redrive"


def _client_error(status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": "X"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "SendMessage"
    )


@pytest.mark.parametrize(
    ("exc", "surely"),
    [
        (_client_error(400), True),
        (_client_error(403), True),
        (_client_error(500), False),
        (EndpointConnectionError(endpoint_url="http://x"), True),
        (ReadTimeoutError(endpoint_url="http://x"), False),
        (ConnectionResetError(), False),
    ],
)
def test_only_a_refusal_or_no_connection_surely_delivered_nothing(
    exc: BaseException, surely: bool
) -> None:
    assert _surely_not_sent(exc) is surely
