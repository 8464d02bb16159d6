"""The produce loop of a batch (``TxnSession._sender``): order, headers, a full queue."""

from __future__ import annotations

from typing import Any

import pytest

from s3flow.errors import UndecodableContentError
from s3flow.pipelines.csv_kafka import session as session_mod
from s3flow.pipelines.csv_kafka.checkpoint import ObjectRef
from s3flow.pipelines.csv_kafka.options import parse_options
from s3flow.pipelines.csv_kafka.session import TxnSession


class FakeProducer:
    """Records produce() calls; raises BufferError on the calls numbered in ``full``."""

    def __init__(self, full: set[int] | None = None) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.full = set(full or ())
        self.calls = 0
        self.polls = 0

    def produce(self, topic: str, value: Any, key: Any = None, partition: int = -1,
                on_delivery: Any = None, callback: Any = None, timestamp: int = 0,
                headers: Any = None) -> None:  # fmt: skip
        self.calls += 1
        if self.calls in self.full:
            raise BufferError("queue full")
        if isinstance(value, str):
            value.encode("utf-8")  # like the client: surrogates do not encode
        self.sent.append((topic, value, key, partition, headers))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0


def _session() -> TxnSession:
    opts = parse_options({"topic": "t", "bootstrap_servers": "127.0.0.1:1"})
    return TxnSession(opts, ObjectRef("b", "k.csv", "v1"))


CONST = [("s3.bucket", b"b"), ("s3.key", b"k.csv"), ("s3.version", b"v1")]


@pytest.mark.parametrize("full", [set(), {1}, {3}, {3, 4, 9}, {1200}])
def test_every_message_once_in_order_with_its_headers(
    full: set[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_mod, "SEND_SLICE", 4)  # several slices per batch
    producer = FakeProducer(full)
    send = _session()._sender(producer, "t", 0, list(CONST))  # type: ignore[arg-type]
    n = 1300 if 1200 in full else 10
    values = [f"v{i}".encode() for i in range(n)]
    send(values, None, range(2, 2 + n))
    assert [s[1] for s in producer.sent] == values
    assert all(s[0] == "t" and s[2] is None and s[3] == 0 for s in producer.sent)
    assert [s[4] for s in producer.sent] == [
        [*CONST, ("s3.line", str(i + 2).encode())] for i in range(n)
    ]
    # the first full queue moves the rest of the batch to the one-by-one loop, which
    # waits for room (poll) at each later one
    assert producer.polls == max(len(full) - 1, 0)


def test_keys_and_no_headers() -> None:
    producer = FakeProducer({2})
    send = _session()._sender(producer, "t", -1, None)  # type: ignore[arg-type]
    send([b"a", b"b", b"c"], ["k1", "k2", "k3"], [5, 6, 7])
    assert [(s[1], s[2], s[3], s[4]) for s in producer.sent] == [
        (b"a", "k1", -1, None),
        (b"b", "k2", -1, None),
        (b"c", "k3", -1, None),
    ]


def test_a_value_that_is_not_text_is_a_permanent_error() -> None:
    send = _session()._sender(FakeProducer(), "t", 0, None)  # type: ignore[arg-type]
    with pytest.raises(UndecodableContentError):
        send(["ok", "bad \udcff"], None, [2, 3])


@pytest.mark.parametrize(
    ("raw", "fields"),
    [
        ("é" * 5000, ["é" * 2000, "x" * 3000]),  # 2-byte characters
        ('"\n' * 3000, None),  # escaped characters (a CSV error: no fields)
        ("a" * 100, ["b"] * 5000),  # many empty-ish fields
    ],
)
def test_a_dead_letter_is_cut_to_fit_the_room_it_has(raw: str, fields: list[str] | None) -> None:
    import json

    def doc() -> dict[str, Any]:
        return {"line": 7, "reason": "r", "fields": fields, "raw": raw, "raw_truncated": False,
                "fields_truncated": False}  # fmt: skip

    value = session_mod._fit_dead_letter(doc(), 100, 1500)
    assert value is not None and len(value.encode()) + 100 <= 1500
    out = json.loads(value)
    assert raw.startswith(out["raw"]) and out["raw_truncated"] is True
    assert len(out["raw"]) > 100 or len(raw) <= 100
    if fields is not None:
        assert out["fields_truncated"] is True and len(out["fields"]) <= len(fields)
    # a room that even the bare document does not fit
    assert session_mod._fit_dead_letter(doc(), 1450, 1500) is None
