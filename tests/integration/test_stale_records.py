"""Records of an upload the object no longer is are settled, not left for ever: without a
versionId or sequencer a message's upload is the object as a HEAD finds it, so a record of
the upload the message named (left `received` by `s3flow backfill`, or `processing` by a
worker that died holding it) could never be processed again once the key was overwritten
or deleted; `status` counted it in flight for ever and retention never expired it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from itest_support import Harness, wait_for

from s3flow.app import open_store
from s3flow.ops.backfill import backfill
from s3flow.state.records import FileStatus

pytestmark = pytest.mark.integration


def _backfill(harness: Harness) -> Any:
    settings = harness.settings
    assert settings is not None

    async def go() -> Any:
        async with open_store(settings) as store:
            return await backfill(settings, settings.pipelines[0], store=store)

    return asyncio.run(go())


@pytest.mark.parametrize("then", ["overwrite", "delete"])
def test_a_backfilled_upload_overwritten_or_deleted_before_its_turn_is_settled(
    harness: Harness, then: str
) -> None:
    harness.configure()
    harness.put("k.txt", b"1\n2\n")
    harness.purge()  # its notification lost: backfill is how it comes back
    assert _backfill(harness).enqueued == 1
    (first,) = harness.records("k.txt")
    assert first.status is FileStatus.RECEIVED
    second = int(time.time())  # a later upload has a new LastModified second
    wait_for(lambda: int(time.time()) > second, 5, "the next second")
    if then == "overwrite":
        harness.put("k.txt", b"1\n2\n3\n")
    else:
        harness.s3.delete_object(Bucket=harness.bucket, Key="k.txt")
    harness.run()
    records = {r.version: r for r in harness.records("k.txt")}
    old = records.pop(first.version)
    assert old.status is FileStatus.COMPLETED and old.outputs == []
    assert old.attempts == 1
    if then == "overwrite":
        (new,) = records.values()
        assert new.status is FileStatus.COMPLETED
        result = harness.result("k.txt")
        assert result is not None and result["lines"] == 3
    else:
        assert records == {}
    assert harness.depth() == (0, 0) and harness.depth(harness.dlq_url) == (0, 0)


def test_a_newer_upload_of_the_same_bytes_is_not_settled_as_stale(harness: Harness) -> None:
    """Uploads A, B, then A's bytes again: a message naming the first A finds the object
    with A's eTag but a later LastModified. Only the first A's record is settled; the
    current upload (the same eTag) is processed, not completed empty."""
    harness.configure()

    def next_second() -> None:
        second = int(time.time())
        wait_for(lambda: int(time.time()) > second, 5, "the next second")

    harness.put("k.txt", b"1\n")
    harness.purge()
    assert _backfill(harness).enqueued == 1  # the first A, received
    next_second()
    harness.put("k.txt", b"1\n2\n")
    next_second()
    harness.put("k.txt", b"1\n")  # A's bytes again: its own notification
    harness.run()
    records = harness.records("k.txt")
    settled = [r for r in records if r.outputs == [] and r.status is FileStatus.COMPLETED]
    processed = [r for r in records if r.outputs]
    assert len(settled) == 1 and settled[0].attempts == 1
    assert [r.version.split("@")[0] for r in processed] == [settled[0].version.split("@")[0]]
    assert processed[0].version != settled[0].version
    assert all(r.status is FileStatus.COMPLETED for r in records)
    result = harness.result("k.txt")
    assert result is not None and result["lines"] == 1
