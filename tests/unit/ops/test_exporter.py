"""The metrics server over a real socket: oversized requests get an answer, not a traceback."""

from __future__ import annotations

import asyncio
import logging

import pytest

from s3flow.metrics import WorkerMetrics
from s3flow.ops.exporter import MetricsServer


async def _ask(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /healthz HTTP/1.1\r\nX-A: " + b"a" * 70_000 + b"\r\n\r\n",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n" + b"X-A: 1\r\n" * 500 + b"\r\n",
    ],
    ids=["long header", "long path", "many headers"],
)
async def test_an_oversized_request_is_answered_431_and_the_server_goes_on(
    raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with MetricsServer(WorkerMetrics(), sqs=None, queues=[], store=None, port=0) as srv:
        answer = await _ask(srv.port, raw)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        ok = await _ask(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and b'"alive"' in ok
    assert not [r for r in caplog.records if r.exc_info]  # no traceback logged
