"""Processors for the core-integrity tests (loaded as 'module:attr', also in subprocesses)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, ClassVar

from s3flow.pipelines.line_count import LineCountProcessor
from s3flow.processors import BaseProcessor, ProcessContext, Result


class MixedSpeedProcessor(BaseProcessor):
    """line-count after a sleep: ``slow_s`` for keys starting with ``slow_prefix``, else
    ``fast_s``. Writes ``started-*`` / ``done-*`` marker files (content: the key) to
    ``marker_dir``, like ``s3flow_testprocs.SlowProcessor``."""

    name: ClassVar[str] = "test-mixed-speed"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.fast_s = float(self.options.get("fast_s", 0.2))
        self.slow_s = float(self.options.get("slow_s", 60.0))
        self.slow_prefix = str(self.options.get("slow_prefix", "slow"))
        self.marker_dir = Path(str(self.options.get("marker_dir", "/tmp")))
        self.inner = LineCountProcessor({})

    def _mark(self, what: str, key: str) -> None:
        safe = key.replace("/", "_")
        path = self.marker_dir / f"{what}-{safe}-{os.getpid()}-{time.monotonic_ns()}"
        path.write_text(key)

    async def process(self, ctx: ProcessContext) -> Result:
        key = ctx.event.key
        self._mark("started", key)
        await asyncio.sleep(self.slow_s if key.startswith(self.slow_prefix) else self.fast_s)
        result = await self.inner.process(ctx)
        self._mark("done", key)
        return result
