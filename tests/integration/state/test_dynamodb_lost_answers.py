"""A DynamoDB write whose answer is lost (the SDK retries a write that was applied).

Between the store and moto sits a proxy that forwards a chosen request, lets moto
apply it, then resets the connection instead of answering. botocore retries the
request, and its condition fails on the record the first attempt wrote: a claim came
back busy (held by its own caller, who then waited out the claim's TTL), a complete
came back refused, and the counters and history missed the transition. A lock's
acquire came back "held" (by its own caller), a release "not ours", and a manifest's
status change was decided again on the status it had just written.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from fault_proxy import FaultProxy
from state_support import draft, mfile

from s3flow.local.endpoint import LocalEndpoint
from s3flow.settings import AwsSettings
from s3flow.state import DynamoStateStore
from s3flow.state.records import (
    ClaimOutcome,
    FileStatus,
    ManifestFileStatus,
    ManifestStatus,
    ObjectId,
)

pytestmark = pytest.mark.integration
OID = ObjectId("b", "dir/a.txt", "e@01")


@pytest.fixture()
def proxy(endpoint: LocalEndpoint) -> Iterator[FaultProxy]:
    with FaultProxy(endpoint.url, fault_rate=0) as p:
        yield p


@pytest.fixture()
async def store(proxy: FaultProxy) -> AsyncIterator[DynamoStateStore]:
    aws = AwsSettings(endpoint_url=proxy.url, region="us-east-1")
    s = DynamoStateStore(f"lost-{uuid.uuid4().hex[:8]}", aws)
    await s.ensure_tables()
    async with s as opened:
        yield opened


def _files(operation: str) -> object:
    return lambda op, body: op == operation and b'-files"' in body


@pytest.mark.parametrize("lost", ["claim", "complete", "both"])
async def test_a_claim_and_a_complete_whose_answers_were_lost_still_hold(
    proxy: FaultProxy, store: DynamoStateStore, lost: str
) -> None:
    if lost in ("claim", "both"):
        proxy.lose_answer(_files("PutItem"))  # type: ignore[arg-type]
    claim = await store.claim(OID, pipeline="p", owner="w1", ttl_s=300)
    assert claim.outcome is ClaimOutcome.ACQUIRED
    rec = await store.get(OID)
    assert rec is not None and rec.status is FileStatus.PROCESSING
    assert (rec.claim_owner, rec.fencing_token) == ("w1", claim.token)

    if lost in ("complete", "both"):
        proxy.lose_answer(_files("UpdateItem"))  # type: ignore[arg-type]
    assert await store.complete(OID, token=claim.token, outputs=["s3://o/a.json"])
    rec = await store.get(OID)
    assert rec is not None and rec.status is FileStatus.COMPLETED
    assert rec.outputs == ["s3://o/a.json"]

    assert proxy.counts["lost-answer"] == (2 if lost == "both" else 1)  # really lost
    report = await store.recount()
    assert not report.drift, report.drift  # the counters saw both transitions
    assert (await store.counts("p")).get("completed") == 1
    history = [(h.old, h.new) for h in await store.history(OID.bucket, OID.key)]
    assert history == [
        (None, FileStatus.PROCESSING),
        (FileStatus.PROCESSING, FileStatus.COMPLETED),
    ]


async def test_a_failed_set_status_whose_answer_was_lost_is_not_retried_into_an_error(
    proxy: FaultProxy, store: DynamoStateStore
) -> None:
    claim = await store.claim(OID, pipeline="p", owner="w1", ttl_s=300)
    assert await store.fail(
        OID, token=claim.token, status=FileStatus.DEAD, error_class="E", error="boom"
    )
    proxy.lose_answer(_files("PutItem"))  # type: ignore[arg-type]
    rec = await store.set_status(OID, FileStatus.RECEIVED, detail="redrive")
    assert rec.status is FileStatus.RECEIVED
    assert proxy.counts["lost-answer"] == 1
    stored = await store.get(OID)
    assert stored is not None and stored.status is FileStatus.RECEIVED
    assert not (await store.recount()).drift


def _meta_lock(op: str, body: bytes) -> bool:
    return op == "UpdateItem" and b'-meta"' in body and b"lock#" in body


async def test_a_lock_acquired_or_released_whose_answer_was_lost_is_still_taken_or_free(
    proxy: FaultProxy, store: DynamoStateStore
) -> None:
    proxy.lose_answer(_meta_lock)
    token = await store.acquire_lock("seal:ds", owner="w1", ttl_s=300)
    assert token == 1  # not None: the retry found the lock held by this very acquire
    assert proxy.counts["lost-answer"] == 1
    assert await store.acquire_lock("seal:ds", owner="w2", ttl_s=300) is None
    assert await store.renew_lock("seal:ds", owner="w1", token=token, ttl_s=300)

    proxy.lose_answer(_meta_lock)
    assert await store.release_lock("seal:ds", owner="w1", token=token)
    assert proxy.counts["lost-answer"] == 2
    assert await store.acquire_lock("seal:ds", owner="w2", ttl_s=300) == 2
    # Someone else's lock is not taken for ours because an answer was lost.
    assert not await store.release_lock("seal:ds", owner="w1", token=token)


async def test_a_manifest_move_whose_answer_was_lost_is_not_retried_into_an_error(
    proxy: FaultProxy, store: DynamoStateStore
) -> None:
    fs = [mfile(f"2025-12-23/{i}.json") for i in range(3)]
    for f in fs:
        await store.add_pending("ds", "2025-12-23", f)
    token = await store.acquire_lock("seal:ds", owner="w1", ttl_s=300)
    assert token is not None
    sealed = await store.seal_manifest(
        draft("m1", fs, token), lock="seal:ds", owner="w1", token=token
    )
    assert sealed is not None

    proxy.lose_answer(lambda op, body: op == "PutItem" and b"#rev = :rev" in body)
    moved = await store.set_manifest_status(
        "m1", ManifestStatus.PROCESSING, expect=ManifestStatus.SEALED
    )
    assert proxy.counts["lost-answer"] == 1
    assert moved.status is ManifestStatus.PROCESSING and moved.attempts == 1
    assert await store.get_manifest("m1") == moved
    for f in fs:  # its files followed it
        t = await store.get_tracked("ds", "2025-12-23", f.id)
        assert t is not None and t.status is ManifestFileStatus.PROCESSING
