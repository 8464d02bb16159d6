"""The ``inline`` executor: the worker's own event loop (s3flow's original behaviour).

The processor instances are the pipeline's (built once at start, ``start()`` already
called); they share the worker's S3 client, sink and state store.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

from s3flow.executors.base import ObjectJob, Progress, job_timed_out
from s3flow.executors.one import run_object
from s3flow.processors.base import Processor, Result
from s3flow.processors.registry import create_processor
from s3flow.sinks.base import BeforeWrite, Sink, SinkBase
from s3flow.sinks.receipts import WriteReceipt, receipt_sink
from s3flow.state.base import StateStore


def processor_key(spec: str, options: Mapping[str, Any]) -> str:
    """One key per (processor, options): the instance to use for them."""
    return spec + "|" + json.dumps(dict(options), sort_keys=True, default=str)


class InlineExecutor:
    """Runs the processor in the worker's event loop."""

    name = "inline"

    def __init__(
        self,
        *,
        s3: Any,
        sink: Sink,
        store: StateStore | None = None,
        processors: Mapping[str, Processor] | None = None,
    ) -> None:
        """``processors``: instances by :func:`processor_key` (others are built on use)."""
        self._s3 = s3
        self._sink = sink
        self._store = store
        self._processors: dict[str, Processor] = dict(processors or {})

    def processor(self, spec: str, options: Mapping[str, Any]) -> Processor:
        """The instance for ``spec`` with ``options`` (built once)."""
        key = processor_key(spec, options)
        proc = self._processors.get(key)
        if proc is None:
            proc = self._processors[key] = create_processor(spec, dict(options))
        return proc

    async def run(
        self,
        job: ObjectJob,
        progress: Progress | None = None,
        *,
        reading_done: Callable[[], None] | None = None,
        receipts: dict[str, WriteReceipt] | None = None,
        before_write: BeforeWrite | None = None,
    ) -> Result:
        """Process ``job`` here, with the worker's clients and store.

        ``reading_done``: called once the processor has read its input (the engine
        then lets the next object start while this one writes its outputs).
        ``receipts``: given, it gets a receipt for every write of this job's sink.
        ``before_write``: awaited before every write of this job's sink (it raises to
        refuse the write).
        """
        proc = self.processor(job.processor, job.options)
        sink = self._sink
        if before_write is not None and isinstance(sink, SinkBase):
            sink = sink.fenced(before_write)  # same class: a processor may check it
        if receipts is not None:
            sink = receipt_sink(sink, receipts)
        try:
            async with asyncio.timeout(job.timeout_s):
                return await run_object(
                    proc,
                    job,
                    s3=self._s3,
                    sink=sink,
                    store=self._store,
                    progress=progress,
                    reading_done=reading_done,
                )
        except TimeoutError as exc:
            # Only the deadline's own TimeoutError comes out of `asyncio.timeout` as
            # one: a processor's TimeoutError (a socket) is translated inside run_object.
            raise job_timed_out(job, "the worker's event loop", "cancelled") from exc

    async def close(self) -> None:
        """Nothing to release (the pipeline stops its processors)."""
