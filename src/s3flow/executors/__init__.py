"""Where a processor runs: ``inline``, ``pool``, ``subprocess``, ``ecs``, ``batch``.

Every executor implements :class:`~s3flow.executors.base.Executor`: run one object
(processor spec + options, the event, the output URI, the ``[aws]`` settings) and
return the processor's Result or raise its classified error. The worker handles the
message the same way whatever runs it: the lease heartbeats while the run lasts, the
outputs are verified before the ack, a cancelled run (shutdown) releases its message
and stops its process, task or job.

:class:`ExecutorSet` holds one pipeline's executors, each created on first use and all
closed together when the worker stops (``async with``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

from s3flow.closing import AsyncClosing
from s3flow.errors import ConfigError
from s3flow.executors.base import Executor, ObjectJob, Progress
from s3flow.executors.inline import InlineExecutor, processor_key
from s3flow.processors.base import Processor, Result
from s3flow.settings import AwsSettings, PipelineSettings, WorkerSettings
from s3flow.sinks.base import BeforeWrite, Sink
from s3flow.sinks.receipts import WriteReceipt
from s3flow.state.base import StateStore

__all__ = ["Executor", "ExecutorSet", "InlineExecutor", "ObjectJob", "processor_key"]


class _WaitingExecutor(Protocol):
    """The pool: it tells how long a run waited for a free child."""

    async def run(
        self,
        job: ObjectJob,
        progress: Progress | None = None,
        *,
        waited: Callable[[float], None] | None = None,
    ) -> Result: ...


class ExecutorSet(AsyncClosing):
    """One pipeline's executors (created on first use; ``async with`` closes them)."""

    def __init__(
        self,
        settings: PipelineSettings,
        *,
        s3: Any,
        sink: Sink,
        store: StateStore | None = None,
        processors: Mapping[str, Processor] | None = None,
        aws: AwsSettings | None = None,
        worker: WorkerSettings | None = None,
    ) -> None:
        """``processors``: the pipeline's instances by :func:`processor_key` (inline)."""
        self.settings = settings
        self.aws = aws or AwsSettings()
        self._s3 = s3
        self._sink = sink
        self._store = store
        self._worker = worker or WorkerSettings()
        self._executors: dict[str, Executor] = {
            "inline": InlineExecutor(s3=s3, sink=sink, store=store, processors=processors)
        }

    def get(self, name: str) -> Executor:
        """The executor called ``name`` (created now if it is the first use)."""
        found = self._executors.get(name)
        if found is None:
            found = self._executors[name] = self._create(name)
        return found

    def _create(self, name: str) -> Executor:
        p = self.settings
        if name == "pool":
            from s3flow.executors.pool import PoolExecutor

            return PoolExecutor(p.executors.pool, self._worker)
        if name == "subprocess":
            from s3flow.executors.command import SubprocessExecutor

            return SubprocessExecutor(p.executors.subprocess)
        if name == "ecs" and p.executors.ecs is not None:
            from s3flow.executors.ecs import EcsExecutor

            return EcsExecutor(
                p.executors.ecs, aws=self.aws, s3=self._s3, output=p.output, pipeline=p.name
            )
        if name == "batch" and p.executors.batch is not None:
            from s3flow.executors.batch import BatchExecutor

            return BatchExecutor(
                p.executors.batch,
                aws=self.aws,
                s3=self._s3,
                output=p.output,
                pipeline=p.name,
                job_timeout_s=p.job_timeout_s,
            )
        raise ConfigError(f"pipeline {p.name!r}: executor {name!r} is not configured")

    @property
    def inline(self) -> InlineExecutor:
        """The inline executor (its processor instances are the pipeline's)."""
        found = self._executors["inline"]
        assert isinstance(found, InlineExecutor)
        return found

    async def run(
        self,
        name: str,
        job: ObjectJob,
        progress: Progress | None = None,
        *,
        reading_done: Callable[[], None] | None = None,
        receipts: dict[str, WriteReceipt] | None = None,
        waited: Callable[[float], None] | None = None,
        before_write: BeforeWrite | None = None,
    ) -> Result:
        """Run ``job`` on executor ``name``.

        ``reading_done`` is called when an inline processor has finished reading its
        input (see :attr:`~s3flow.processors.base.ProcessContext.reading_done`);
        ``receipts`` gets the write receipts of an inline processor's sink (see
        :mod:`s3flow.sinks.receipts`). Other executors read and write elsewhere: they
        never call the one nor fill the other. ``waited`` is called, as it goes, with the
        seconds a pool run has waited for a free child (its ``timeout_s`` counts from
        the child's start, so the caller's lease must last as much longer).
        ``before_write`` is awaited before each write of an inline processor's sink.
        """
        ex = self.get(name)
        if isinstance(ex, InlineExecutor):
            return await ex.run(
                job,
                progress,
                reading_done=reading_done,
                receipts=receipts,
                before_write=before_write,
            )
        if name == "pool":  # (the pool's module is imported on its first use only)
            return await cast(_WaitingExecutor, ex).run(job, progress, waited=waited)
        return await ex.run(job, progress)

    async def close(self) -> None:
        """Close every executor created (pools shut down, processes/tasks stopped)."""
        executors, self._executors = self._executors, {"inline": self.inline}
        for ex in executors.values():
            await ex.close()
