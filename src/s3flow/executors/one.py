"""Run one object through a processor: what every executor finally does.

:func:`run_object` is the common core (a context, ``process``, unexpected exceptions
classified as the worker classifies them). :func:`run_isolated` builds the processor
and the sink from an :class:`~s3flow.executors.base.ObjectJob` alone, for a process
that has nothing else: a pool child, ``s3flow run`` in a subprocess or a container.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from s3flow.errors import ConfigError, ProcessorError, S3flowError
from s3flow.executors.base import ObjectJob, Progress
from s3flow.processors.base import ProcessContext, Processor, Result
from s3flow.processors.registry import create_processor, processor_class, supported_executors
from s3flow.sinks import open_sink
from s3flow.sinks.base import Sink
from s3flow.state.base import StateStore

log = logging.getLogger("s3flow.executors")


async def run_object(
    processor: Processor,
    job: ObjectJob,
    *,
    s3: Any,
    sink: Sink,
    store: StateStore | None = None,
    progress: Progress | None = None,
    reading_done: Callable[[], None] | None = None,
) -> Result:
    """``processor.process`` on ``job``'s object; any non-s3flow exception becomes a
    (retryable) :class:`~s3flow.errors.ProcessorError`, logged with its traceback.

    ``reading_done``: see :attr:`~s3flow.processors.base.ProcessContext.reading_done`.
    """
    ctx = ProcessContext(
        event=job.event,
        pipeline=job.pipeline,
        worker_id=job.worker_id,
        s3=s3,
        sink=sink,
        report_progress=progress or (lambda n: None),
        store=store,
        max_uncompressed_bytes=job.max_uncompressed_bytes,
        reading_done=reading_done or (lambda: None),
    )
    try:
        pending = processor.process(ctx)
        if not inspect.isawaitable(pending):
            # A plain `def process` (its work done, its Result not awaitable): the same
            # on every object, so permanent, and the fix is the processor's code.
            raise ConfigError(
                f"processor {job.processor!r}: process() returned {type(pending).__name__}, "
                "not an awaitable: make it `async def process(self, ctx)`"
            )
        result = await pending
    except (asyncio.CancelledError, S3flowError):
        raise
    except Exception as exc:
        log.exception("processor %s raised on %s", job.processor, job.source)
        raise ProcessorError(f"{type(exc).__name__}: {exc}".strip()) from exc
    if not isinstance(result, Result):
        # A processor's bug (a missing `return`): the same on every attempt, but the
        # fix is a new release of it, so it is retried like any processor error.
        raise ProcessorError(
            f"processor {job.processor!r} returned {type(result).__name__}, not a Result: "
            "process() must return s3flow.Result(outputs=[...])"
        )
    return result


def check_runs_on(spec: str, executor: str) -> None:
    """ConfigError unless processor ``spec`` can run on ``executor``."""
    try:
        cls = processor_class(spec)
    except ConfigError as exc:
        raise ConfigError(f"processor {exc}") from exc
    if cls is None:
        return  # create_processor reports the unknown name with the known ones
    allowed = supported_executors(cls)
    if executor not in allowed:
        raise ConfigError(
            f"processor {spec!r} cannot run on executor {executor!r} (it runs on: "
            f"{', '.join(allowed)}); a processor with start()/stop() hooks keeps "
            "pipeline-level state in the worker and runs only inline"
        )


async def run_isolated(
    job: ObjectJob, *, s3: Any, executor: str, progress: Progress | None = None
) -> Result:
    """Build ``job``'s processor and sink afresh and run it (no state store)."""
    check_runs_on(job.processor, executor)
    processor = create_processor(job.processor, dict(job.options))
    sink = open_sink(job.output, s3)
    return await run_object(processor, job, s3=s3, sink=sink, progress=progress)
