"""Counters, checkpoints and locks, on every backend."""

from __future__ import annotations

import json

import pytest
from state_support import FakeClock, backends

from s3flow.state import (
    StateStore,
)

pytestmark = pytest.mark.integration


# --- counters, checkpoints, locks -------------------------------------------------------


@backends
async def test_counters(store: StateStore) -> None:
    assert await store.counter("duplicates:p") == 0
    assert await store.incr("duplicates:p") == 1
    assert await store.incr("duplicates:p", 5) == 6
    assert await store.incr("other") == 1
    assert await store.counter("duplicates:p") == 6
    assert await store.incr("duplicates:p", -6) == 0


@backends
async def test_checkpoints(store: StateStore) -> None:
    assert await store.get_checkpoint("csv:k") is None
    await store.put_checkpoint("csv:k", "row=10")
    await store.put_checkpoint("csv:other", "")
    assert await store.get_checkpoint("csv:k") == "row=10"
    await store.put_checkpoint("csv:k", json.dumps({"row": 20}))
    assert await store.get_checkpoint("csv:k") == '{"row": 20}'
    assert await store.get_checkpoint("csv:other") == ""


@backends
async def test_locks(store: StateStore, clock: FakeClock) -> None:
    t1 = await store.acquire_lock("compact", owner="a", ttl_s=30)
    assert t1 is not None
    assert await store.acquire_lock("compact", owner="b", ttl_s=30) is None
    assert await store.acquire_lock("compact", owner="a", ttl_s=30) is None  # not reentrant
    other = await store.acquire_lock("other", owner="b", ttl_s=30)
    assert other is not None
    clock.advance(20)
    assert await store.renew_lock("compact", owner="a", token=t1, ttl_s=30)
    clock.advance(20)  # renewed: still held
    assert await store.acquire_lock("compact", owner="b", ttl_s=30) is None
    clock.advance(11)  # expired
    t2 = await store.acquire_lock("compact", owner="b", ttl_s=30)
    assert t2 is not None and t2 > t1
    assert not await store.renew_lock("compact", owner="a", token=t1, ttl_s=30)
    assert not await store.release_lock("compact", owner="a", token=t1)
    assert not await store.release_lock("compact", owner="a", token=t2)  # wrong owner
    assert await store.renew_lock("compact", owner="b", token=t2, ttl_s=30)
    assert await store.release_lock("compact", owner="b", token=t2)
    assert not await store.release_lock("compact", owner="b", token=t2)
    assert not await store.renew_lock("compact", owner="b", token=t2, ttl_s=30)
    t3 = await store.acquire_lock("compact", owner="a", ttl_s=30)
    assert t3 is not None and t3 > t2
    assert not await store.renew_lock("nolock", owner="a", token=1, ttl_s=30)
