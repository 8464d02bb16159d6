"""Batched acknowledgements: DeleteMessageBatch and ChangeMessageVisibilityBatch.

Requests are queued and sent in batches of up to 10 (unique entry ids) as soon
as a batch is full or ``window_s`` has passed. Every entry of every response
is checked: a ``Failed`` entry is logged, counted and reported back to the
caller as ``False``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from s3flow.errors import translate_aws_error
from s3flow.metrics import PipelineMetrics

log = logging.getLogger("s3flow.acks")
MAX_BATCH = 10


@dataclass
class _Entry:
    handle: str
    timeout_s: int | None  # None = delete
    future: asyncio.Future[bool] = field(repr=False)


class AckBatcher:
    """Owns the batched delete/visibility calls of one queue. Use ``async with``."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        *,
        window_s: float = 0.05,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self._sqs = sqs
        self._url = queue_url
        self._window = window_s
        self._metrics = metrics or PipelineMetrics()
        self._deletes: list[_Entry] = []
        self._changes: list[_Entry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __aenter__(self) -> AckBatcher:
        self._task = asyncio.create_task(self._run(), name=f"acks:{self._url}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _enqueue(
        self, bucket: list[_Entry], handle: str, timeout_s: int | None
    ) -> asyncio.Future[bool]:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._closed:
            fut.set_result(False)
            return fut
        bucket.append(_Entry(handle, timeout_s, fut))
        if len(bucket) >= MAX_BATCH or self._window == 0:
            self._flush_full()
        self._wake.set()
        return fut

    async def delete(self, receipt_handle: str) -> bool:
        """Delete one message (batched). True when SQS confirmed it."""
        return await asyncio.shield(self._enqueue(self._deletes, receipt_handle, None))

    async def change_visibility(self, receipt_handle: str, timeout_s: int) -> bool:
        """Set one message's visibility timeout (batched). True when SQS confirmed it."""
        return await asyncio.shield(self._enqueue(self._changes, receipt_handle, int(timeout_s)))

    def _take(self, bucket: list[_Entry], limit: int = MAX_BATCH) -> list[_Entry]:
        # Unique receipt handles per batch; later duplicates wait for the next one.
        batch: list[_Entry] = []
        seen: set[str] = set()
        rest: list[_Entry] = []
        for e in bucket:
            if len(batch) < limit and e.handle not in seen:
                batch.append(e)
                seen.add(e.handle)
            else:
                rest.append(e)
        bucket[:] = rest
        return batch

    def _flush_full(self) -> None:
        while len(self._deletes) >= MAX_BATCH:
            self._spawn(self._take(self._deletes), delete=True)
        while len(self._changes) >= MAX_BATCH:
            self._spawn(self._take(self._changes), delete=False)

    def _flush_all(self) -> None:
        while self._deletes:
            self._spawn(self._take(self._deletes), delete=True)
        while self._changes:
            self._spawn(self._take(self._changes), delete=False)

    def _spawn(self, batch: list[_Entry], *, delete: bool) -> None:
        if not batch:
            return
        task = asyncio.create_task(self._send(batch, delete=delete))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._window:
                await asyncio.sleep(self._window)
            self._flush_all()

    async def _send(self, batch: list[_Entry], *, delete: bool) -> None:
        entries: list[dict[str, Any]] = []
        for i, e in enumerate(batch):
            entry: dict[str, Any] = {"Id": f"m{i}", "ReceiptHandle": e.handle}
            if not delete:
                entry["VisibilityTimeout"] = e.timeout_s
            entries.append(entry)
        op = "DeleteMessageBatch" if delete else "ChangeMessageVisibilityBatch"
        try:
            if delete:
                resp = await self._sqs.delete_message_batch(QueueUrl=self._url, Entries=entries)
            else:
                resp = await self._sqs.change_message_visibility_batch(
                    QueueUrl=self._url, Entries=entries
                )
        except Exception as exc:
            err = translate_aws_error(exc, op)
            log.warning("%s of %d entries failed: %s", op, len(batch), err)
            self._metrics.ack_failures += len(batch) if delete else 0
            for e in batch:
                if not e.future.done():
                    e.future.set_result(False)
            return
        failed = {f.get("Id"): f for f in resp.get("Failed") or []}
        for i, e in enumerate(batch):
            f = failed.get(f"m{i}")
            if f is not None:
                if delete:
                    self._metrics.ack_failures += 1
                log.warning(
                    "%s entry failed: %s %s (sender fault: %s)",
                    op,
                    f.get("Code"),
                    f.get("Message"),
                    f.get("SenderFault"),
                )
            if not e.future.done():
                e.future.set_result(f is None)

    async def flush(self) -> None:
        """Send everything queued now and wait for the answers."""
        self._flush_all()
        if self._sends:
            await asyncio.gather(*list(self._sends), return_exceptions=True)

    async def close(self) -> None:
        """Flush pending requests and stop the background task."""
        await self.flush()
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
