"""``text-to-pdf``: each text object becomes ``<output>/<key>.pdf``.

The object is read as a stream (decompressed on the fly like everywhere in
s3flow); every chunk is decoded, laid out and written to a temporary file as
PDF pages on a worker thread (``asyncio.to_thread``), so the event loop stays
free for other objects, heartbeats and acks even when the processor runs
inline, and memory holds one chunk and one page at a time. The finished file is
then uploaded with content type ``application/pdf`` and object metadata
``source-bucket``, ``source-key`` (characters outside printable ASCII and ``%``
percent-encoded), ``source-etag`` and ``pages``.

Bytes that do not decode in ``encoding`` are a permanent error
(:class:`~s3flow.errors.UndecodableContentError`) naming the byte offset.

Options: :class:`~s3flow.pipelines.text_to_pdf.options.TextToPdfOptions`.
"""

from __future__ import annotations

import asyncio
import time
from typing import IO, Any, ClassVar
from urllib.parse import quote

from s3flow.objects import batched
from s3flow.pipelines.text_to_pdf.fonts import find_font, load_font
from s3flow.pipelines.text_to_pdf.options import TextToPdfOptions
from s3flow.pipelines.text_to_pdf.render import TextDocument
from s3flow.processors.base import OptionsProcessor, ProcessContext, Result
from s3flow.sinks.base import scratch_file, write_local_file

CONTENT_TYPE = "application/pdf"
#: Bytes handed to the rendering thread at once (smaller network reads are gathered).
FEED_BYTES = 1024 * 1024
#: Printable ASCII but "%": kept as is in the ``source-key`` metadata value.
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


class TextToPdfProcessor(OptionsProcessor[TextToPdfOptions]):
    """Converts text objects to PDF documents, page by page."""

    name: ClassVar[str] = "text-to-pdf"
    cpu_bound: ClassVar[bool] = True
    output_content_type: ClassVar[str | None] = "application/pdf"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        # A missing font is a ConfigError now, at start-up, not on the first object.
        self.font = load_font(find_font(self.opts.monospace, self.opts.font_file))

    async def process(self, ctx: ProcessContext) -> Result:
        started = time.perf_counter()
        reader = await ctx.open()
        info = reader.info
        identity = f"s3://{info.bucket}/{info.key}@{info.etag or info.version_id or ''}"
        with scratch_file(prefix="s3flow-text-to-pdf-", suffix=".pdf") as (fh, path):
            doc = TextDocument(fh, self.opts, self.font, info.key, identity.encode("utf-8"))
            try:
                async for batch in batched(reader, FEED_BYTES):
                    await asyncio.to_thread(doc.feed, batch)
                    ctx.report_progress(len(batch))
                await asyncio.to_thread(_finish, doc, fh)
            finally:
                reader.close()
            metadata = {
                "source-bucket": info.bucket,
                "source-key": quote(info.key, safe=_SAFE),
                "pages": str(doc.pages),
            }
            if info.etag:
                metadata["source-etag"] = info.etag
            uri = await write_local_file(ctx.sink, info.key + ".pdf", path, CONTENT_TYPE, metadata)
        detail = {
            "bucket": info.bucket,
            "key": info.key,
            "etag": info.etag,
            "version_id": info.version_id,
            "output": uri,
            "content_type": CONTENT_TYPE,
            "pages": doc.pages,
            "text_bytes": doc.bytes_in,
            "pdf_bytes": doc.bytes_out,
            "encoding": self.opts.encoding,
            "metadata": metadata,
            "processing_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        return Result(
            outputs=[uri],
            counters={
                "pages": doc.pages,
                "bytes_in": reader.compressed_bytes,
                "text_bytes": doc.bytes_in,
                "bytes_out": doc.bytes_out,
            },
            detail=detail,
        )


def _finish(doc: TextDocument, fh: IO[bytes]) -> None:
    doc.finish()
    fh.flush()
