"""``zip``: bundle every input of an upload-job step into one ZIP archive.

A job step (``steps = [{ processor = "line-count" }, { processor = "zip" }]``)
gets all of the previous step's outputs (or the job's files) at once and
writes ``<job_id>.zip`` with one entry per input, named by the input's last
path part (duplicates get ``-1``, ``-2``...). The archive is built in memory:
upload jobs are bounded by ``[jobs] max_file_bytes x max_files``.

Options: ``name`` - the archive's file name (default ``<job_id>.zip``);
``compresslevel`` - 0-9 (default 6).
"""

from __future__ import annotations

import io
import zipfile
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from s3flow.errors import PermanentError
from s3flow.processors.base import (
    BundleContext,
    OptionsProcessor,
    ProcessContext,
    Result,
)


class ZipOptions(BaseModel):
    """Options of the ``zip`` processor."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="Archive file name; default <job_id>.zip.")
    compresslevel: int = Field(default=6, ge=0, le=9, description="Deflate level (0 = store).")


class ZipProcessor(OptionsProcessor[ZipOptions]):
    """Bundles a job step's inputs into one ZIP (upload jobs only)."""

    name: ClassVar[str] = "zip"

    async def process(self, ctx: ProcessContext) -> Result:
        raise PermanentError(
            "the zip processor bundles the files of an upload job; use it as a [[templates]] "
            "step, not as a pipeline's processor"
        )

    async def bundle(self, ctx: BundleContext) -> Result:
        """Write one archive holding every input."""
        buf = io.BytesIO()
        used: dict[str, int] = {}
        total = 0
        with zipfile.ZipFile(
            buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=self.opts.compresslevel
        ) as zf:
            for event in ctx.inputs:
                base = event.key.rsplit("/", 1)[-1] or "file"
                n = used.get(base, 0)
                used[base] = n + 1
                entry = base if n == 0 else f"{base}-{n}"
                reader = await ctx.open(event)
                try:
                    with zf.open(entry, "w") as out:
                        async for chunk in reader:
                            out.write(chunk)
                            total += len(chunk)
                            ctx.report_progress(len(chunk))
                finally:
                    reader.close()
        body = buf.getvalue()
        name = self.opts.name or f"{ctx.job_id}.zip"
        uri = await ctx.sink.write(name, body, "application/zip")
        return Result(
            outputs=[uri],
            counters={"files": len(ctx.inputs), "bytes_in": total, "bytes_out": len(body)},
        )
