"""Fixtures of the state-store contract suites: a store on every backend."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from state_support import FakeClock

from s3flow.settings import AwsSettings
from s3flow.state import (
    DynamoStateStore,
    SqliteStateStore,
    StateStore,
)


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Callable[[], StateStore]:
    """A factory of stores on one shared backend instance (same file / same tables).

    ``dynamodb-paged`` reads 2 items per Query/Scan request, so every listing
    of more than 2 items follows LastEvaluatedKey across pages.

    ``dynamodb-atomic`` (the race tests) needs conditional writes that are atomic, as
    real DynamoDB's per-item writes are: moto's threaded server checks a condition and
    then writes without a lock, so two racing writes can both win now and then (~1 in
    600 contended rounds). The shared endpoint's moto runs s3flow's patch that
    serialises DynamoDB writes (``s3flow.local.moto_server.patch_moto_dynamodb``); moto as
    shipped (``S3FLOW_MOTO_UNPATCHED=1``) cannot run these races.
    """
    backend = request.param if hasattr(request, "param") else "sqlite"
    if backend == "sqlite":
        path = tmp_path / "sub" / "state.db"
        return lambda: SqliteStateStore(path, clock=clock)
    if backend == "dynamodb-atomic" and os.environ.get("S3FLOW_MOTO_UNPATCHED") == "1":
        pytest.skip("moto as shipped does not make DynamoDB conditional writes atomic")
    url = request.getfixturevalue("endpoint").url
    aws = AwsSettings(endpoint_url=url, region="us-east-1")
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    page_size = 2 if backend == "dynamodb-paged" else None
    return lambda: DynamoStateStore(prefix, aws, clock=clock, page_size=page_size)


@pytest.fixture()
async def store(make_store: Callable[[], StateStore]) -> AsyncIterator[StateStore]:
    s = make_store()
    if isinstance(s, DynamoStateStore):
        await s.ensure_tables()
    async with s as opened:
        yield opened
