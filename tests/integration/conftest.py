"""Fixtures: a real moto server on 127.0.0.1 and helpers to build isolated pipelines."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import boto3
import pytest
from itest_support import Harness

from s3flow.local.endpoint import LocalEndpoint


def _resolve_lazy_imports() -> None:
    """Import anyio's lazily imported names now, in the main thread.

    pytest rewrites the asserts of every pytest plugin's distribution, anyio included, so a
    lazy ``anyio.open_file`` first touched in a server thread (Starlette's FileResponse) runs
    ``ast.parse`` there while the main thread may be parsing a test module: CPython 3.11
    then fails with "AST constructor recursion depth mismatch" and the request gets no body.
    """
    for module in (anyio, anyio.abc):
        for name in dir(module):
            getattr(module, name)


_resolve_lazy_imports()


@pytest.fixture(scope="session")
def endpoint() -> Iterator[LocalEndpoint]:
    """moto server as a real HTTP server on a free 127.0.0.1 port for the whole session."""
    ep = LocalEndpoint().start()
    old = {k: os.environ.get(k) for k in ep.env()}
    os.environ.update(ep.env())
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    os.environ["AWS_REGION"] = "us-east-1"
    try:
        yield ep
    finally:
        ep.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3(endpoint: LocalEndpoint) -> Any:
    return boto3.client("s3", endpoint_url=endpoint.url, region_name="us-east-1")


@pytest.fixture(scope="session")
def sqs(endpoint: LocalEndpoint) -> Any:
    return boto3.client("sqs", endpoint_url=endpoint.url, region_name="us-east-1")


@pytest.fixture()
def harness(endpoint: LocalEndpoint, s3: Any, sqs: Any, tmp_path: Path) -> Harness:
    return Harness(endpoint, s3, sqs, tmp_path)


@pytest.fixture(autouse=True)
def _one_poller(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """One receive loop per pipeline, unless the test is marked ``many_pollers``.

    moto's concurrent ReceiveMessage calls are not atomic: two pollers can both be
    handed the same message. The worker counts the second copy as a duplicate (or
    skips, dead-letters or releases it again when it takes no claim), which is right
    for at-least-once delivery but makes every exact count depend on the emulator's
    timing under load. The crash, fault, SIGTERM and end-to-end tests, which check
    invariants rather than counts, keep the default pollers (``many_pollers``).
    Set in the environment so that a worker started as a subprocess sees it too; a
    test's own setting (config or environment) still wins.
    """
    if request.node.get_closest_marker("many_pollers") is None:
        monkeypatch.setenv("S3FLOW_WORKER__POLLERS_PER_PIPELINE", "1")
