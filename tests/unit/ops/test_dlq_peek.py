"""The DLQ peek's own logic (a fake SQS client: which batches come back is the point):
a scan that comes round to messages it already gave says so instead of ending as if
the DLQ were exhausted."""

from __future__ import annotations

from typing import Any

from s3flow.ops.dlq import _peeking


class FakeSqs:
    """Answers receive_message with the batches given, then nothing."""

    def __init__(self, batches: list[list[str]]) -> None:
        self.batches = batches
        self.released: list[str] = []

    async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        if not self.batches:
            return {}
        ids = self.batches.pop(0)[: kwargs["MaxNumberOfMessages"]]
        return {
            "Messages": [
                {"MessageId": i, "ReceiptHandle": f"h-{i}-{len(self.batches)}", "Body": "{}"}
                for i in ids
            ]
        }

    async def change_message_visibility_batch(self, **kwargs: Any) -> None:
        self.released += [e["ReceiptHandle"] for e in kwargs["Entries"]]


class Clients:
    def __init__(self, sqs: FakeSqs) -> None:
        self.sqs = sqs


async def ids(batches: list[list[str]], n: int) -> tuple[list[str], bool, FakeSqs]:
    sqs = FakeSqs(batches)
    async with _peeking(Clients(sqs), "dlq-url") as peek:
        got = [m.message_id async for m in peek.messages(n)]
    return got, peek.came_round, sqs


async def test_an_empty_answer_ends_a_complete_scan() -> None:
    got, came_round, sqs = await ids([["a", "b"], ["c"]], 100)
    assert got == ["a", "b", "c"] and not came_round
    assert len(sqs.released) == 3  # every message received is visible again


async def test_a_batch_of_messages_already_seen_is_a_scan_that_came_round() -> None:
    # the hold expired: "a" and "b" come back before "d" and "e" were ever given
    got, came_round, sqs = await ids([["a", "b"], ["c"], ["a", "b"], ["d", "e"]], 100)
    assert got == ["a", "b", "c"] and came_round
    assert len(sqs.released) == 5  # the second handles of a and b too


async def test_a_batch_with_some_new_messages_goes_on() -> None:
    got, came_round, _ = await ids([["a", "b"], ["a", "c"], ["d"]], 100)
    assert got == ["a", "b", "c", "d"] and not came_round


async def test_at_most_n_distinct_messages() -> None:
    got, came_round, _ = await ids([["a", "b"], ["c", "d"]], 3)
    assert got == ["a", "b", "c"] and not came_round
