"""Write receipts: what a sink stored for one object, as the store answered it.

The worker's inline executor wraps its sink in a :class:`ReceiptSink` for each
object whose processor sets ``verified_by_write``: every write that returns has
been acknowledged by the store (AWS S3 answers a PutObject only once the object is
stored durably, and reads after the answer see it), so its receipt (URI, size,
content type) tells output verification what a HEAD would, without the round trip
(see :mod:`s3flow.worker.verify`). A file written with ``write_file`` gets no
receipt: it is fetched as before.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from s3flow.sinks.base import FileSink, Sink


@dataclass(frozen=True)
class WriteReceipt:
    """One acknowledged write: how many bytes, with which Content-Type."""

    size: int
    content_type: str


class ReceiptSink:
    """A sink that records a :class:`WriteReceipt` for every ``write`` it completes.

    Everything else is the wrapped sink's (:attr:`inner`); only the members of the
    :class:`~s3flow.sinks.base.FileSink` protocol are offered. ``write_file`` keeps no
    receipt; to a sink that cannot write files it writes the file's bytes.
    """

    def __init__(self, sink: Sink, receipts: dict[str, WriteReceipt]) -> None:
        self._sink = sink
        self.receipts = receipts
        self.root = sink.root

    @property
    def inner(self) -> Sink:
        """The wrapped sink."""
        return self._sink

    async def write(
        self,
        relative_key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        """See :meth:`Sink.write`; the write's receipt is kept under the URI returned."""
        uri = await self._sink.write(relative_key, data, content_type, metadata)
        self.receipts[uri] = WriteReceipt(len(data), content_type)
        return uri

    async def write_file(
        self,
        relative_key: str,
        path: str,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        """See :meth:`FileSink.write_file`. No receipt: the file could change while it is
        uploaded, and one HEAD costs little next to an upload of a file."""
        if isinstance(self._sink, FileSink):
            return await self._sink.write_file(relative_key, path, content_type, metadata)
        data = await asyncio.to_thread(Path(path).read_bytes)
        return await self._sink.write(relative_key, data, content_type, metadata)

    async def read(self, relative_key: str) -> bytes | None:
        """See :meth:`Sink.read`."""
        return await self._sink.read(relative_key)

    async def exists(self, relative_key: str) -> bool:
        """See :meth:`Sink.exists`."""
        return await self._sink.exists(relative_key)

    async def check(self) -> None:
        """See :meth:`Sink.check`."""
        await self._sink.check()
