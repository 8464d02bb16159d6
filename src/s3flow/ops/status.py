"""Status: queue depths and what the state store knows, per pipeline."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from s3flow.app import dlq_url, open_store, queue_url, select_pipelines
from s3flow.aws import open_clients, queue_depths
from s3flow.errors import AwsError, S3flowError, translate_aws_error
from s3flow.settings import PipelineSettings, Settings, processing_pipeline


@dataclass
class QueueStatus:
    """Depth of one pipeline's queue and DLQ."""

    pipeline: str
    queue: str
    visible: int | None
    in_flight: int | None
    delayed: int | None
    dlq: str
    dlq_depth: int | None
    error: str | None = None


#: Pipelines whose queues are read at once (each: GetQueueUrl, depths, DLQ, depths).
STATUS_CONCURRENCY = 8


async def queue_status(settings: Settings, names: list[str] | None = None) -> list[QueueStatus]:
    """Per pipeline, in the config's order: messages visible / in flight / delayed and DLQ
    depth; the pipelines are read concurrently (at most :data:`STATUS_CONCURRENCY`).

    With ``[jobs]`` and no ``names``, the job worker's processing FIFO queue and its DLQ
    come last (``jobs-processing``): the worker reads them too.
    """
    limit = asyncio.Semaphore(STATUS_CONCURRENCY)
    pipelines = select_pipelines(settings, names)
    if settings.jobs is not None and not names:
        pipelines.append(processing_pipeline(settings.jobs))
    try:
        return await _read_queues(settings, pipelines, limit)
    except AwsError as exc:
        if exc.operation != "connect":
            raise
        # A local endpoint that accepts no connection (checked before any call): every
        # queue is unreadable, each row says why (the exit code and --json as for any
        # unreadable queue; against AWS the same fault comes from the calls).
        return [
            QueueStatus(p.name, p.queue, None, None, None, p.dlq_name, None, str(exc))
            for p in pipelines
        ]


async def _read_queues(
    settings: Settings, pipelines: list[PipelineSettings], limit: asyncio.Semaphore
) -> list[QueueStatus]:
    async with open_clients(settings.aws) as clients:

        async def one(p: PipelineSettings) -> QueueStatus:
            st = QueueStatus(p.name, p.queue, None, None, None, p.dlq_name, None)
            async with limit:
                try:
                    url = await queue_url(clients.sqs, p.queue, what=f"pipeline {p.name!r}")
                    depths = await queue_depths(clients.sqs, url)
                    st.visible, st.in_flight, st.delayed = (
                        depths.visible,
                        depths.in_flight,
                        depths.delayed,
                    )
                    dlq = await dlq_url(clients.sqs, p, url)
                    st.dlq = dlq.rsplit("/", 1)[-1]
                    st.dlq_depth = (await queue_depths(clients.sqs, dlq)).total
                except S3flowError as exc:
                    st.error = str(exc)
                except Exception as exc:
                    st.error = str(translate_aws_error(exc, "GetQueueAttributes"))
            return st

        return list(await asyncio.gather(*(one(p) for p in pipelines)))


@dataclass
class StateSummary:
    """What the state store knows about one pipeline."""

    pipeline: str
    counts: dict[str, int]
    oldest_in_flight_s: float | None
    duplicates: int


async def state_summary(settings: Settings, names: list[str] | None = None) -> list[StateSummary]:
    """Per pipeline: records by status, oldest in-flight age, duplicates seen."""
    out: list[StateSummary] = []
    async with open_store(settings, read_only=True) as store:
        if store is None:
            return out
        now = time.time()
        for p in select_pipelines(settings, names):
            oldest = await store.oldest_processing_at(p.name)
            out.append(
                StateSummary(
                    pipeline=p.name,
                    counts=await store.counts(p.name),
                    oldest_in_flight_s=round(now - oldest, 1) if oldest else None,
                    duplicates=await store.counter(f"duplicates:{p.name}"),
                )
            )
    return out
