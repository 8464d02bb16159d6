"""SQS's hot calls as s3flow's own signed HTTP requests: :class:`FastSqsClient`.

The worker's pollers call ReceiveMessage and its acks DeleteMessageBatch and
ChangeMessageVisibilityBatch, over and over. SQS speaks JSON (``x-amz-json-1.0``),
where a request body is the call's parameters as they are and an answer is the
output as botocore returns it, so these calls need no serialiser: the
parameters are sent as JSON, signed, and the answer is parsed with ``json``.
What botocore would change on the way is changed here too: binary message
attribute values arrive base64-encoded and are decoded. Every other call goes
to the wrapped SDK client. Errors read as botocore reads them (:func:`read_error`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from botocore.parsers import ResponseParserError

from s3flow.fastpath.transport import FastClient, Request, metadata, status_phrase

#: The calls served here (botocore's method name -> the API's operation name).
OPERATIONS = {
    "receive_message": "ReceiveMessage",
    "delete_message_batch": "DeleteMessageBatch",
    "change_message_visibility_batch": "ChangeMessageVisibilityBatch",
}
_HEADERS = {"content-type": "application/x-amz-json-1.0", "x-amzn-query-mode": "true"}


def read_error(status: int, headers: Mapping[str, str], body: bytes) -> tuple[dict[str, str], str]:
    """botocore's ``Error`` of an SQS JSON error response, and the code naming its class.

    With an ``x-amzn-query-error`` header (``AWS.SimpleQueueService.NonExistentQueue;Sender``)
    the code is the header's and the class is named by ``__type``, as botocore does.
    """
    doc: dict[str, Any] = {}
    if body:
        try:
            loaded = json.loads(body)
        except ValueError:
            loaded = None
        if isinstance(loaded, dict):
            doc = loaded
    message = str(doc.get("message") or doc.get("Message") or "")
    code = str(doc.get("__type") or "").split(":", 1)[0].rsplit("#", 1)[-1]
    if not code:
        # botocore: a body that is not an error document is the message; a bodiless
        # 5xx is named by its status phrase, a bodiless 4xx has none.
        if not doc and body:
            message = body.decode("utf-8", "replace")
        elif not message and status >= 500:
            message = status_phrase(status)
        return {"Code": str(status), "Message": message}, str(status)
    query_code, _, fault = (headers.get("x-amzn-query-error") or "").partition(";")
    if query_code and fault:
        error = {"Code": query_code, "Message": message, "QueryErrorCode": code, "Type": fault}
        return error, code
    return {"Code": code, "Message": message}, code


def decode_binary_attributes(output: dict[str, Any]) -> dict[str, Any]:
    """ReceiveMessage's output with each ``BinaryValue`` base64-decoded (botocore's blobs)."""
    for message in output.get("Messages") or []:
        for attr in (message.get("MessageAttributes") or {}).values():
            if isinstance(attr.get("BinaryValue"), str):
                attr["BinaryValue"] = base64.b64decode(attr["BinaryValue"])
            if attr.get("BinaryListValues"):
                attr["BinaryListValues"] = [
                    base64.b64decode(v) if isinstance(v, str) else v
                    for v in attr["BinaryListValues"]
                ]
    return output


class FastSqsClient(FastClient):
    """An SQS client: the calls in :data:`OPERATIONS` served by signed aiohttp requests,
    everything else by the wrapped SDK client."""

    service = "sqs"
    read_error = staticmethod(read_error)

    async def receive_message(self, **params: Any) -> dict[str, Any]:
        """ReceiveMessage."""
        out = await self._call("receive_message", params)
        return decode_binary_attributes(out)

    async def delete_message_batch(self, **params: Any) -> dict[str, Any]:
        """DeleteMessageBatch."""
        return await self._call("delete_message_batch", params)

    async def change_message_visibility_batch(self, **params: Any) -> dict[str, Any]:
        """ChangeMessageVisibilityBatch."""
        return await self._call("change_message_visibility_batch", params)

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        operation = OPERATIONS[method]
        try:
            body = json.dumps(params).encode()
        except (TypeError, ValueError):  # not JSON: the SDK will say what is wrong
            req = None
        else:
            headers = {**_HEADERS, "x-amz-target": f"AmazonSQS.{operation}"}
            req = Request(
                operation,
                "POST",
                self._http.host,
                self._http.path,
                {},
                headers,
                body,
                hashlib.sha256(body).hexdigest(),
            )
        got = await self._serve(method, params, req, read=True)
        if isinstance(got, dict):
            return got
        raw = got.body or b""
        try:
            out: dict[str, Any] = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise ResponseParserError(f"{operation}: the answer is not JSON: {exc}") from exc
        out["ResponseMetadata"] = metadata(got.response, got.attempts)
        return out
