"""AckBatcher: what goes into each batch (a fake SQS client records the calls)."""

from __future__ import annotations

import asyncio
from typing import Any

from s3flow.worker.acks import AckBatcher


class _RecordingSqs:
    """Answers every entry as done, and records what was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    async def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> Any:
        self.calls.append(("delete", [e["ReceiptHandle"] for e in Entries]))
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}

    async def change_message_visibility_batch(
        self,
        QueueUrl: str,
        Entries: list[dict[str, Any]],
    ) -> Any:
        self.calls.append(("change", [e["ReceiptHandle"] for e in Entries]))
        return {"Successful": [{"Id": e["Id"]} for e in Entries]}


def test_a_heartbeat_in_the_window_its_message_is_deleted_in_is_not_sent() -> None:
    """Sent beside the delete, it failed (ReceiptHandleIsInvalid) and was logged as a
    lost lease; the other message's heartbeat still goes out."""
    sqs = _RecordingSqs()

    async def go() -> tuple[bool, bool, bool]:
        async with AckBatcher(sqs, "q", window_s=0.05) as acks:
            extend = asyncio.ensure_future(acks.change_visibility("h1", 60))
            other = asyncio.ensure_future(acks.change_visibility("h2", 60))
            deleted = asyncio.ensure_future(acks.delete("h1"))
            return await extend, await other, await deleted

    assert asyncio.run(go()) == (True, True, True)
    assert sorted(sqs.calls) == [("change", ["h2"]), ("delete", ["h1"])]
