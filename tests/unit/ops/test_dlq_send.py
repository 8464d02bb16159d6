"""The pure half of sending DLQ messages back: packing, what travels, dedup ids, and
which failures surely delivered nothing (the SQS round trips are in
tests/integration/test_dlq_redrive.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from s3flow.fastpath.http import HttpConnectError
from s3flow.ops.dlq_send import (
    MAX_BATCH_BYTES,
    MAX_MESSAGE_ATTRIBUTES,
    _dedup_id,
    _pack,
    _surely_not_sent,
    outgoing_of,
)
from s3flow.worker.acks import REDRIVE_ID_ATTR


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
    o = outgoing_of(msg, fifo=False)  # no redrive id given: none added
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


def test_a_copy_carries_its_redrive_id_unless_the_message_has_ten_attributes() -> None:
    """The id a redrive knows its copy by when it comes back (the worker carries it on);
    SQS takes at most 10 attributes, so a message that has 10 goes without it."""
    msg = _msg(1, "body")
    msg["MessageAttributes"] = {
        "s3flow.redrive-id": {"DataType": "String", "StringValue": "an-earlier-run/m0"},
        "trace": {"DataType": "String", "StringValue": "abc"},
    }
    o = outgoing_of(msg, fifo=False, redrive_id="run/m1")
    assert o.redrive_id == "run/m1"
    assert o.entry["MessageAttributes"][REDRIVE_ID_ATTR] == {
        "DataType": "String",
        "StringValue": "run/m1",
    }
    assert set(o.entry["MessageAttributes"]) == {"trace", REDRIVE_ID_ATTR}
    assert o.size == len("body") + len("trace") + 6 + 3 + len(REDRIVE_ID_ATTR) + 6 + 6

    full = _msg(2)
    full["MessageAttributes"] = {
        f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(MAX_MESSAGE_ATTRIBUTES)
    }
    o = outgoing_of(full, fifo=False, redrive_id="run/m2")
    assert o.redrive_id is None
    assert len(o.entry["MessageAttributes"]) == MAX_MESSAGE_ATTRIBUTES
    assert REDRIVE_ID_ATTR not in o.entry["MessageAttributes"]
    # Nine of its own: the redrive id is the tenth.
    del full["MessageAttributes"]["a0"]
    assert outgoing_of(full, fifo=False, redrive_id="run/m2").redrive_id == "run/m2"


def _client_error(status: int, retries: int = 0) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": "X"},
            "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": retries},
        },
        "SendMessage",
    )


@pytest.mark.parametrize(
    ("exc", "surely"),
    [
        (_client_error(400), True),
        (_client_error(403), True),
        (_client_error(500), False),
        # Throttled at last, after retries: an earlier attempt may have been a 5xx.
        (_client_error(400, retries=2), False),
        (ConnectTimeoutError(endpoint_url="http://x"), True),
        (EndpointConnectionError(endpoint_url="http://x", error=socket.gaierror(-2, "x")), True),
        (EndpointConnectionError(endpoint_url="http://x", error=HttpConnectError("x")), True),
        # aiobotocore maps a connection reset mid-request to EndpointConnectionError too.
        (EndpointConnectionError(endpoint_url="http://x", error=ConnectionResetError()), False),
        (ReadTimeoutError(endpoint_url="http://x"), False),
        (ConnectionResetError(), False),
    ],
)
def test_only_a_refusal_or_no_connection_surely_delivered_nothing(
    exc: BaseException, surely: bool
) -> None:
    assert _surely_not_sent(exc) is surely


@contextlib.asynccontextmanager
async def _endpoint(behaviour: str) -> AsyncIterator[str]:
    """A local endpoint URL: ``refused`` (nothing listens), or a server that reads the
    request and then ``stalls`` (never answers), ``closes`` the connection or ``resets``
    it."""
    if behaviour == "refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        yield f"http://127.0.0.1:{port}"
        return
    stalled: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if behaviour == "stalls":
            stalled.append(writer)  # keep it open, never answer
            return
        if behaviour == "resets":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for w in stalled:
            w.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("behaviour", "surely"),
    [("refused", True), ("stalls", False), ("closes", False), ("resets", False)],
)
async def test_what_aiobotocore_raises_is_classified_by_whether_the_request_left(
    behaviour: str, surely: bool
) -> None:
    """The real SDK against a local socket: a refused connection surely delivered
    nothing; a request sent and then unanswered, cut off or reset may have arrived."""
    config = AioConfig(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=2,
        read_timeout=0.5,
    )
    async with (
        _endpoint(behaviour) as url,
        get_session().create_client(
            "sqs",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
            config=config,
        ) as sqs,
    ):
        with pytest.raises(Exception) as caught:
            await sqs.send_message(QueueUrl=f"{url}/1/q", MessageBody="b")
    assert _surely_not_sent(caught.value) is surely, repr(caught.value)


@pytest.mark.parametrize("limit", [262_144, 1_048_576])
def test_a_redrive_id_never_takes_a_message_over_a_queue_s_size_limit(limit: int) -> None:
    """A message the queue's own redrive moved (no s3flow attributes) that fits the
    limit still fits as a copy: the id is left out rather than the send refused."""
    exact = outgoing_of(_msg(1, "x" * limit), fifo=False, redrive_id="run/m1")
    assert exact.redrive_id is None and exact.size == limit
    assert "MessageAttributes" not in exact.entry
    smaller = outgoing_of(_msg(2, "x" * (limit - 1000)), fifo=False, redrive_id="run/m2")
    assert smaller.redrive_id == "run/m2"
