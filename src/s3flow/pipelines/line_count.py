"""``line-count``: count the lines and bytes of each object, write a JSON result.

Output: ``<output>/<key>.json`` - deterministic, so a repeated delivery
overwrites the same result. ``lines`` counts newline-terminated lines plus a
last line without a newline (so ``a\\nb`` has 2 lines; ``wc -l`` would say 1).

Options (``[pipelines.options]``):
  ``text_encoding`` - e.g. ``"utf-8"``: also check the content decodes in that
  encoding; content that does not is a permanent error (dead-lettered).
"""

from __future__ import annotations

import codecs
import json
import time
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from s3flow.errors import UndecodableContentError
from s3flow.objects import count_byte, prepare_count_byte
from s3flow.processors.base import OptionsProcessor, ProcessContext, Result
from s3flow.settings import codec_info


class LineCountOptions(BaseModel):
    """Options of the ``line-count`` processor."""

    model_config = ConfigDict(extra="forbid")

    text_encoding: str | None = Field(
        default=None,
        description=(
            "Also check the content decodes in this encoding (e.g. 'utf-8'); "
            "content that does not is a permanent error. None = count bytes only."
        ),
    )

    @field_validator("text_encoding")
    @classmethod
    def _known_codec(cls, v: str | None) -> str | None:
        if v:
            codec_info(v)
        return v or None


class LineCountProcessor(OptionsProcessor[LineCountOptions]):
    """Counts lines/bytes of (possibly compressed) objects."""

    name: ClassVar[str] = "line-count"
    #: One ``ctx.sink.write`` per object, never touched again: S3's answer to it is
    #: the verification (no HEAD before the ack).
    verified_by_write: ClassVar[bool] = True

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        prepare_count_byte()

    @property
    def text_encoding(self) -> str | None:
        """The ``text_encoding`` option: the codec the content must decode in (None: any)."""
        return self.opts.text_encoding

    async def process(self, ctx: ProcessContext) -> Result:
        started = time.perf_counter()
        reader = await ctx.open()
        decoder = codecs.getincrementaldecoder(self.text_encoding)() if self.text_encoding else None
        lines = 0
        last = b""
        offset = 0
        try:
            async for chunk in reader:
                lines += count_byte(chunk, 10)
                last = chunk[-1:]
                if decoder is not None:
                    try:
                        decoder.decode(chunk)
                    except UnicodeDecodeError as exc:
                        raise UndecodableContentError(
                            f"not {self.text_encoding} at byte {offset + exc.start}: {exc.reason}"
                        ) from exc
                offset += len(chunk)
                ctx.report_progress(len(chunk))
            if decoder is not None:
                try:
                    decoder.decode(b"", final=True)
                except UnicodeDecodeError as exc:
                    raise UndecodableContentError(
                        f"not {self.text_encoding}: truncated character at the end"
                    ) from exc
        finally:
            reader.close()
        if offset and last != b"\n":
            lines += 1
        info = reader.info
        doc = {
            "bucket": info.bucket,
            "key": info.key,
            "version_id": info.version_id,
            "etag": info.etag,
            "compressed_bytes": reader.compressed_bytes,
            "uncompressed_bytes": reader.uncompressed_bytes,
            "lines": lines,
            "encoding": reader.encoding,
            "processing_ms": round((time.perf_counter() - started) * 1000, 3),
            "worker_id": ctx.worker_id,
            "pipeline": ctx.pipeline,
            "processed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        body = json.dumps(doc, ensure_ascii=False, indent=None).encode("utf-8")
        uri = await ctx.sink.write(info.key + ".json", body, "application/json")
        return Result(
            outputs=[uri],
            counters={
                "lines": lines,
                "bytes_in": reader.compressed_bytes,
                "bytes_out": len(body),
            },
            detail=doc,
        )
