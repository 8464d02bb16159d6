"""Write receipts: what a sink stored for one object, as the store answered it.

The worker's inline executor wraps its sink (:func:`receipt_sink`) for each object
whose processor sets ``verified_by_write``: every write that returns has been
acknowledged by the store (AWS S3 answers a PutObject only once the object is
stored durably, and reads after the answer see it), so its receipt (URI, size,
content type) tells output verification what a HEAD would, without the round trip
(see :mod:`s3flow.worker.verify`). A file written with ``write_file`` gets no
receipt: it is fetched as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from s3flow.sinks.base import FileSink, Sink


@dataclass(frozen=True)
class WriteReceipt:
    """One acknowledged write: how many bytes, with which Content-Type."""

    size: int
    content_type: str


class ReceiptSink:
    """A sink that records a :class:`WriteReceipt` for every ``write`` it completes.

    Everything else is the wrapped sink's (:attr:`inner`), and only the members of the
    :class:`~s3flow.sinks.base.Sink` protocol are offered: build one with
    :func:`receipt_sink`, which also offers ``write_file`` when the wrapped sink has it.
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

    async def read(self, relative_key: str) -> bytes | None:
        """See :meth:`Sink.read`."""
        return await self._sink.read(relative_key)

    async def exists(self, relative_key: str) -> bool:
        """See :meth:`Sink.exists`."""
        return await self._sink.exists(relative_key)

    async def check(self) -> None:
        """See :meth:`Sink.check`."""
        await self._sink.check()


class ReceiptFileSink(ReceiptSink):
    """A :class:`ReceiptSink` around a :class:`~s3flow.sinks.base.FileSink`."""

    def __init__(self, sink: FileSink, receipts: dict[str, WriteReceipt]) -> None:
        super().__init__(sink, receipts)
        self._files = sink

    async def write_file(
        self,
        relative_key: str,
        path: str,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        """See :meth:`FileSink.write_file`. No receipt: the file could change while it is
        uploaded, and one HEAD costs little next to an upload of a file."""
        return await self._files.write_file(relative_key, path, content_type, metadata)


def receipt_sink(sink: Sink, receipts: dict[str, WriteReceipt]) -> ReceiptSink:
    """``sink`` wrapped to keep receipts in ``receipts``: a FileSink stays a FileSink,
    a sink without ``write_file`` stays without it (processors then write bytes)."""
    if isinstance(sink, FileSink):
        return ReceiptFileSink(sink, receipts)
    return ReceiptSink(sink, receipts)
