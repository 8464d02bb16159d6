"""The SQS fast path's parts: the request equals botocore's (signature included), error
codes are read as botocore reads them, binary attributes are decoded."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from s3flow.fastpath.signing import Credentials, SigV4Signer
from s3flow.fastpath.sqs import _HEADERS, OPERATIONS, decode_binary_attributes, read_error

CALLS: list[tuple[str, dict[str, Any]]] = [
    (
        "receive_message",
        {
            "QueueUrl": "http://127.0.0.1:9/123/q",
            "MaxNumberOfMessages": 10,
            "WaitTimeSeconds": 20,
            "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
            "MessageAttributeNames": ["All"],
        },
    ),
    (
        "delete_message_batch",
        {"QueueUrl": "http://127.0.0.1:9/123/q", "Entries": [{"Id": "m0", "ReceiptHandle": "h"}]},
    ),
    (
        "change_message_visibility_batch",
        {
            "QueueUrl": "http://127.0.0.1:9/123/q",
            "Entries": [{"Id": "m0", "ReceiptHandle": "h", "VisibilityTimeout": 0}],
        },
    ),
]


@pytest.mark.parametrize(("method", "params"), CALLS, ids=[c[0] for c in CALLS])
def test_request_and_signature_equal_botocores(
    method: str, params: dict[str, Any], botocore_request: Callable[..., Any]
) -> None:
    client = boto3.client(
        "sqs",
        region_name="eu-west-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="AK",
        aws_secret_access_key="SK",
    )
    sent, headers, when = botocore_request(client, lambda c: getattr(c, method)(**params))
    body = json.dumps(params).encode()
    assert sent.body == body
    assert sent.url == "http://127.0.0.1:9/" and sent.method == "POST"
    ours = {**_HEADERS, "x-amz-target": f"AmazonSQS.{OPERATIONS[method]}"}
    assert {k: headers[k] for k in ours} == ours
    signed = SigV4Signer("eu-west-1", "sqs").sign(
        "POST",
        "127.0.0.1:9",
        "/",
        {},
        ours,
        hashlib.sha256(body).hexdigest(),
        Credentials("AK", "SK"),
        when,
    )
    assert signed["authorization"] == headers["authorization"]


def test_errors_read_as_botocore_reads_them() -> None:
    body = b'{"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "no queue"}'
    query = {"x-amzn-query-error": "AWS.SimpleQueueService.NonExistentQueue;Sender"}
    assert read_error(400, query, body) == (
        {
            "Code": "AWS.SimpleQueueService.NonExistentQueue",
            "Message": "no queue",
            "QueryErrorCode": "QueueDoesNotExist",
            "Type": "Sender",
        },
        "QueueDoesNotExist",
    )
    assert read_error(400, {}, body) == (
        {"Code": "QueueDoesNotExist", "Message": "no queue"},
        "QueueDoesNotExist",
    )
    assert read_error(503, {}, b"") == ({"Code": "503", "Message": "Service Unavailable"}, "503")
    assert read_error(500, {}, b"<html>") == ({"Code": "500", "Message": "<html>"}, "500")
    assert read_error(400, {}, b"") == ({"Code": "400", "Message": ""}, "400")


def test_binary_attribute_values_are_decoded() -> None:
    raw = base64.b64encode(b"\x00\x01bin").decode()
    out = decode_binary_attributes(
        {
            "Messages": [
                {
                    "Body": "b",
                    "MessageAttributes": {
                        "s": {"DataType": "String", "StringValue": "v"},
                        "b": {"DataType": "Binary", "BinaryValue": raw},
                    },
                }
            ]
        }
    )
    attrs = out["Messages"][0]["MessageAttributes"]
    assert attrs["b"]["BinaryValue"] == b"\x00\x01bin"
    assert attrs["s"] == {"DataType": "String", "StringValue": "v"}
