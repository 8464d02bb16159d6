"""The redrive loop's own logic (a fake SQS with leases: when a lease ends is the point):
a DLQ message the run could not move, held until the run ends, is not tried again when
its lease runs out first (a run longer than ``lease_s``)."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ReadTimeoutError

from s3flow.ops.dlq import RedriveReport, _move_all
from s3flow.routing import Route
from s3flow.settings import PipelineSettings

DLQ, SRC = "dlq-url", "src-url"


class LeasingSqs:
    """A DLQ whose received messages stay hidden until :meth:`end_leases`, and a source
    queue whose sends of the bodies in ``timeouts`` time out (the copy may have arrived)."""

    def __init__(self, ids: list[str], timeouts: set[str]) -> None:
        self.dlq: dict[str, bool] = dict.fromkeys(ids, True)  # id -> visible
        self.handles: dict[str, str] = {}  # the valid receipt handle -> id
        self.timeouts = timeouts
        self.sends: list[str] = []  # the bodies of every send tried, in order
        self._n = 0

    @staticmethod
    def body(mid: str) -> str:
        return json.dumps({"Records": [], "id": mid})

    def end_leases(self) -> None:
        """Every leased DLQ message visible again, as when its lease runs out."""
        self.dlq = dict.fromkeys(self.dlq, True)
        self.handles.clear()

    async def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        got = [m for m, visible in self.dlq.items() if visible][: kwargs["MaxNumberOfMessages"]]
        msgs = []
        for mid in got:
            self._n += 1
            handle = f"{mid}#{self._n}"
            self.dlq[mid], self.handles[handle] = False, mid
            msgs.append({"MessageId": mid, "ReceiptHandle": handle, "Body": self.body(mid)})
        return {"Messages": msgs}

    async def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        visible = sum(self.dlq.values())
        return {
            "Attributes": {
                "ApproximateNumberOfMessages": str(visible),
                "ApproximateNumberOfMessagesNotVisible": str(len(self.dlq) - visible),
            }
        }

    async def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        ok, failed = [], []
        for e in kwargs["Entries"]:
            if json.loads(e["MessageBody"])["id"] in self.timeouts:
                failed.append({"Id": e["Id"], "SenderFault": False, "Code": "InternalError"})
            else:
                self.sends.append(e["MessageBody"])
                ok.append({"Id": e["Id"], "MessageId": f"copy-{e['Id']}"})
        return {"Successful": ok, "Failed": failed}

    async def send_message(self, **kwargs: Any) -> dict[str, Any]:
        self.sends.append(kwargs["MessageBody"])
        raise ReadTimeoutError(endpoint_url=SRC)

    async def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        for e in kwargs["Entries"]:
            self.dlq.pop(self.handles.pop(e["ReceiptHandle"]), None)
        return {"Successful": [{"Id": e["Id"]} for e in kwargs["Entries"]]}

    async def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        for e in kwargs["Entries"]:
            mid = self.handles.pop(e["ReceiptHandle"], None)
            if mid is not None:
                self.dlq[mid] = True
        return {}


class Clients:
    def __init__(self, sqs: LeasingSqs) -> None:
        self.sqs = sqs
        self.s3 = None  # no state store: the redrive never reads the objects


async def test_a_maybe_sent_message_is_not_sent_again_when_its_lease_runs_out() -> None:
    ids = [f"m{i:02d}" for i in range(12)]
    sqs = LeasingSqs(ids, timeouts={"m00"})
    route = Route.from_settings(
        PipelineSettings(name="p", bucket="b", queue="q", output="s3://o/x/")
    )
    report = RedriveReport("receive-send-delete")
    batches: list[int] = []

    def on_moved(n: int) -> None:
        batches.append(n)
        if len(batches) == 1:
            sqs.end_leases()  # the run outlived the held message's lease

    await _move_all(
        Clients(sqs), route, SRC, DLQ, None, None, 30, report, on_moved, lambda n, s: None
    )

    assert batches == [9, 2]
    assert [json.loads(b)["id"] for b in sqs.sends].count("m00") == 1  # tried once: timed out
    assert report.moved == 11 and list(report.unsent) == ["m00"]
    assert "may have arrived" in report.unsent["m00"]
    assert sqs.dlq == {"m00": True}  # still on the DLQ, visible again for the next run
