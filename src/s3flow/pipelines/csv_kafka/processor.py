"""``csv-to-kafka``: stream the rows of CSV objects into a Kafka topic, exactly once.

Each row becomes one message (a JSON object by default, or the raw record) with
headers ``s3.bucket``, ``s3.key``, ``s3.version`` and ``s3.line``. Rows go out in
transactions of ``checkpoint_rows`` rows, each committed together with a checkpoint
(object identity -> next row) on a compacted topic; a restarted worker resumes from
the committed checkpoint and ``read_committed`` consumers see every row once, in order.
See docs/pipelines/csv-to-kafka.md and :mod:`s3flow.pipelines.csv_kafka` for the parts.

Options (``[pipelines.options]``): :class:`s3flow.pipelines.csv_kafka.options.CsvKafkaOptions`;
``topic`` is required, Kafka is found through ``bootstrap_servers`` or $KAFKA_BOOTSTRAP.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from s3flow.errors import ConfigError, OutputUnavailableError, RetryableError
from s3flow.events import content_part
from s3flow.pipelines.csv_kafka.checkpoint import ObjectRef, mirror_name
from s3flow.pipelines.csv_kafka.options import CsvKafkaOptions
from s3flow.pipelines.csv_kafka.ranges import run_csv_object
from s3flow.pipelines.csv_kafka.runner import RunReport
from s3flow.pipelines.csv_kafka.topics import ensure_topics
from s3flow.processors.base import OptionsProcessor, PipelineContext, ProcessContext, Result
from s3flow.settings import PipelineSettings
from s3flow.state.base import StateStore
from s3flow.state.records import FileRecord

log = logging.getLogger("s3flow.pipelines.csv_kafka")

#: Produce loops running at once in one process (one thread each).
MAX_THREADS = 32


class CsvToKafkaProcessor(OptionsProcessor[CsvKafkaOptions]):
    """Streams CSV rows to Kafka with transactional, checkpointed, resumable writes."""

    name: ClassVar[str] = "csv-to-kafka"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.opts.bootstrap()  # fail at configuration time when Kafka cannot be found
        self._executor: ThreadPoolExecutor | None = None
        self._topics_ready = False

    @classmethod
    async def describe_file(
        cls, pipeline: PipelineSettings, record: FileRecord, store: StateStore
    ) -> list[str]:
        """The object's checkpoint as mirrored in the state store (``files show``)."""
        topic = pipeline.options.get("topic")
        if not topic:
            return []
        ref = ObjectRef(record.bucket, record.key, content_part(record.version))
        value = await store.get_checkpoint(mirror_name(str(topic), ref))
        return [f"checkpoint: {value}"] if value else []

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The threads the produce loops run in (not the loop's default executor)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="csv-kafka")
        return self._executor

    async def start(self, pipeline: PipelineContext) -> None:
        """Create the topics when asked to (once); Kafka being down is not fatal here."""
        try:
            await self.ensure_topics()
        except RetryableError as exc:
            log.warning("csv-to-kafka: Kafka not ready at start (%s); retrying per object", exc)

    async def ensure_topics(self) -> None:
        """Create the data, checkpoint and DLQ topics if missing (``create_topics``);
        check the data topic's partitions (once)."""
        if not self._topics_ready:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.executor, ensure_topics, self.opts)
        self._topics_ready = True

    async def stop(self) -> None:
        """Release the threads."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def process(self, ctx: ProcessContext) -> Result:
        """Produce the object's rows (resuming from its checkpoint); durable on return."""
        try:
            await self.ensure_topics()
        except ConfigError as exc:
            # Topics missing or wrong since the start (deleted, not created yet): the
            # operator's to fix, not the object's; retried, never dead-lettered per object.
            raise OutputUnavailableError(str(exc)) from exc
        event = ctx.event
        ref = ObjectRef.of(event.bucket, event.key, event.version_id, event.etag)
        report = await run_csv_object(
            self.opts,
            ref,
            ctx.s3,
            event.version_id,
            event.size,
            executor=self.executor,
            store=ctx.store,
            report_progress=ctx.report_progress,
            if_match=event.if_match,
        )
        return self.result(report)

    def result(self, report: RunReport) -> Result:
        """The engine's view of a report."""
        ckpt = report.checkpoint
        return Result(
            outputs=[f"kafka://{self.opts.topic}"],
            counters={
                "rows": ckpt.sent,
                "bad_rows": ckpt.bad,
                "records": ckpt.row,
                "transactions": ckpt.transactions,
                "bytes_in": report.compressed_bytes,
                "resumed_from_row": report.resumed_from_row,
                "attempts": report.attempts,
            },
            detail={
                "topic": self.opts.topic,
                "object": ckpt.object,
                "already_done": report.already_done,
                "checkpoint": {"offset": ckpt.offset, "row": ckpt.row, "line": ckpt.line},
                "seconds": round(report.seconds, 3),
            },
        )
