"""worker.verify: which outputs a write receipt vouches for, and which are still fetched.

The S3 client here is a fake that records HEADs (pure logic: the HEAD path itself runs
against real endpoints in tests/integration/test_routing_executors.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from s3flow.errors import OutputVerificationError
from s3flow.sinks.receipts import WriteReceipt
from s3flow.worker.verify import receipt_shows_it, verify_outputs


class HeadOnly:
    """HEAD answers from a dict of key -> (size, content type); records every HEAD."""

    def __init__(self, objects: dict[str, tuple[int, str]]) -> None:
        self.objects = objects
        self.heads: list[str] = []

    async def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self.heads.append(f"s3://{Bucket}/{Key}")
        size, ctype = self.objects[Key]
        return {"ContentLength": size, "ContentType": ctype}


JSON = "application/json"


async def test_an_output_with_a_matching_receipt_is_not_fetched() -> None:
    s3 = HeadOnly({})
    receipts = {"s3://o/a.json": WriteReceipt(10, JSON)}
    await verify_outputs(s3, ["s3://o/a.json"], content_type=JSON, receipts=receipts)
    await verify_outputs(s3, ["s3://o/a.json"], receipts=receipts)  # nothing declared
    assert s3.heads == []


async def test_outputs_without_a_receipt_are_fetched_alongside() -> None:
    s3 = HeadOnly({"b.json": (3, JSON)})
    receipts = {"s3://o/a.json": WriteReceipt(10, JSON)}
    await verify_outputs(s3, ["s3://o/a.json", "s3://o/b.json"], receipts=receipts)
    assert s3.heads == ["s3://o/b.json"]


@pytest.mark.parametrize(
    ("receipt", "declared", "why"),
    [
        (WriteReceipt(0, JSON), JSON, "empty"),
        (WriteReceipt(5, "text/plain"), JSON, "another content type"),
    ],
)
async def test_a_receipt_showing_a_problem_is_checked_on_the_object(
    receipt: WriteReceipt, declared: str, why: str
) -> None:
    """The object itself decides (here it is fine: what is stored now counts)."""
    s3 = HeadOnly({"a.json": (10, JSON)})
    assert not receipt_shows_it("s3://o/a.json", receipt, declared), why
    await verify_outputs(
        s3, ["s3://o/a.json"], content_type=declared, receipts={"s3://o/a.json": receipt}
    )
    assert s3.heads == ["s3://o/a.json"]


async def test_the_object_still_fails_when_the_receipt_does_not_vouch() -> None:
    s3 = HeadOnly({"a.json": (0, JSON)})
    with pytest.raises(OutputVerificationError, match=r"output s3://o/a.json is empty"):
        await verify_outputs(
            s3,
            ["s3://o/a.json"],
            content_type=JSON,
            receipts={"s3://o/a.json": WriteReceipt(0, JSON)},
        )


def test_pdfs_and_non_s3_outputs_are_never_taken_on_a_receipt() -> None:
    pdf = WriteReceipt(100, "application/pdf")
    assert not receipt_shows_it("s3://o/a.pdf", WriteReceipt(100, JSON), None)
    assert not receipt_shows_it("s3://o/a.bin", pdf, None)
    assert not receipt_shows_it("s3://o/a.bin", WriteReceipt(100, JSON), "application/pdf")
    assert not receipt_shows_it("/tmp/out/a.json", WriteReceipt(100, JSON), None)
    assert not receipt_shows_it("s3://o/a.json", None, None)
    assert receipt_shows_it(
        "s3://o/a.json", WriteReceipt(1, "Application/JSON; charset=utf-8"), JSON
    )
