"""Shared fixtures for the fast unit tests (no servers, no network)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from s3flow.events import ObjectEvent
from s3flow.objects import ObjectInfo, ObjectReader
from s3flow.processors.base import ProcessContext
from s3flow.sinks.local import LocalDirSink

_ENV_PREFIXES = ("S3FLOW_", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings read the environment: make each test start from a known, empty one."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    yield


class FakeBody:
    """Stands in for a StreamingBody: ``read(n)`` returns at most ``step`` bytes, then b""."""

    def __init__(self, data: bytes, step: int | None = None) -> None:
        self._data = data
        self._pos = 0
        self._step = step
        self.closed = False
        self.reads = 0

    async def read(self, n: int) -> bytes:
        self.reads += 1
        size = n if self._step is None else min(n, self._step)
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk

    def close(self) -> None:
        self.closed = True


class FakeContext(ProcessContext):
    """A ProcessContext whose open() serves an in-memory object instead of S3."""

    def __init__(
        self,
        data: bytes,
        sink: LocalDirSink,
        *,
        key: str = "in/file.txt",
        bucket: str = "incoming",
        etag: str | None = "abc123",
        content_encoding: str | None = None,
        step: int | None = None,
        chunk_bytes: int = 1024 * 1024,
    ) -> None:
        super().__init__(
            event=ObjectEvent(bucket=bucket, key=key, etag=etag),
            pipeline="counts",
            worker_id="worker-7",
            s3=None,
            sink=sink,
        )
        self.body = FakeBody(data, step)
        self.progress: list[int] = []
        self.report_progress = self.progress.append
        self._info = ObjectInfo(
            bucket=bucket,
            key=key,
            etag=etag,
            version_id=None,
            size=len(data),
            content_encoding=content_encoding,
            content_type=None,
            metadata={},
        )
        self._chunk_bytes = chunk_bytes

    async def open(self) -> ObjectReader:
        return ObjectReader(self._info, self.body, self._chunk_bytes)


@pytest.fixture
def fake_body() -> type[FakeBody]:
    return FakeBody


@pytest.fixture
def make_ctx(tmp_path: Path) -> Callable[..., FakeContext]:
    sink = LocalDirSink(tmp_path / "out")

    def make(data: bytes, **kwargs: Any) -> FakeContext:
        return FakeContext(data, sink, **kwargs)

    return make
