"""``zip``: bundle every input of an upload-job step into one ZIP archive.

A job step (``steps = [{ processor = "line-count" }, { processor = "zip" }]``)
gets all of the previous step's outputs (or the job's files) at once and
writes ``<job_id>.zip`` with one entry per input. Each entry holds the input's
bytes as stored, never decompressed (``data.csv.gz`` stays that gzip file).

Entry names are the input key's last path part, made safe to extract: a
backslash counts as a path separator too, control characters and ``:`` become
``_``, and a name that is empty or only dots (``..``) becomes ``file``; no entry
name can reach outside the directory it is extracted to. Names are written in
Unicode NFC (``café`` typed on macOS is NFD). A name already taken (compared
case-insensitively, and whatever its Unicode normalisation) gets ``-1``,
``-2``... before its extension: ``r.txt``, ``r-1.txt``, ``data.csv.gz``,
``data-1.csv.gz``.

Every entry is written with ZIP64 headers, so members past 2/4 GiB work. The
archive is built in a temporary file (compressed on a worker thread, so the event
loop stays free for other work, heartbeats and acks), then uploaded from it: S3
streams it as a multipart upload. Memory holds about one read chunk and one upload
part whatever the inputs' size; the temporary directory (``TMPDIR``) needs room for
the archive, at most the inputs' stored bytes (``[jobs] max_file_bytes x max_files``).

Options: ``name`` - the archive's file name (default ``<job_id>.zip``);
``compresslevel`` - 0-9 (default 6).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import unicodedata
import zipfile
from collections.abc import Callable
from typing import IO, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from s3flow.errors import PermanentError
from s3flow.events import ObjectEvent
from s3flow.objects import ObjectReader, batched
from s3flow.processors.base import (
    BundleContext,
    OptionsProcessor,
    ProcessContext,
    Result,
)
from s3flow.sinks.base import scratch_file, write_local_file

#: Bytes handed to the compressing thread at once (smaller network reads are gathered).
FEED_BYTES = 1024 * 1024

#: Suffixes kept with the extension when a duplicate name gets its ``-n``.
_COMPRESSED_SUFFIXES = (".gz", ".gzip", ".bz2", ".zst", ".zstd", ".xz", ".lz4", ".br")


class ZipOptions(BaseModel):
    """Options of the ``zip`` processor."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="Archive file name; default <job_id>.zip.")
    compresslevel: int = Field(default=6, ge=0, le=9, description="Deflate level (0 = store).")

    @field_validator("name")
    @classmethod
    def _file_name(cls, value: str | None) -> str | None:
        # A name is one key part: "../x.zip" made the output key outputs/<job>/../x.zip,
        # which clients normalise (a broken download link) or skip.
        if value is not None and entry_base(value) != value:
            raise ValueError(
                f"{value!r} is not a plain file name: no '/', '\\', ':' or control "
                "characters, and not only dots (e.g. 'results.zip')"
            )
        return value


def entry_base(key: str) -> str:
    """The entry name of an input key: its last path part, safe to extract anywhere.

    ``/`` and ``\\`` both separate path parts (Windows unzippers treat a backslash
    as one), control characters and ``:`` (a drive to Windows) become ``_``, and
    ``""``, ``.``, ``..`` (any name of only dots and spaces) become ``file``.
    """
    name = key.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join("_" if c == ":" or unicodedata.category(c) in ("Cc", "Cs") else c for c in name)
    return name if name.strip(". ") else "file"


def _split_extension(name: str) -> tuple[str, str]:
    """Stem and extension: ``r.txt`` -> ``r`` + ``.txt``, ``a.csv.gz`` -> ``a`` + ``.csv.gz``.

    A compression suffix stays with the extension before it; a dot file (``.env``)
    or a name without a dot is all stem.
    """
    outer = ""
    lowered = name.lower()
    for suffix in _COMPRESSED_SUFFIXES:
        if lowered.endswith(suffix) and len(name) > len(suffix):
            name, outer = name[: -len(suffix)], name[-len(suffix) :]
            break
    dot = name.rfind(".")
    if dot <= 0:  # no extension, or a dot file
        return name, outer
    return name[:dot], name[dot:] + outer


def _fold(name: str) -> str:
    """``name`` as compared for uniqueness: case and Unicode normalisation ignored
    (Unicode's canonical caseless match), as macOS and Windows file systems compare."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def unique_entry(base: str, used: set[str]) -> str:
    """``base`` in NFC, or ``<stem>-<n><ext>`` with the smallest ``n`` not in ``used``
    (compared by :func:`_fold`: ``café`` in NFC and in NFD are one name, which would
    overwrite each other when extracted on macOS).

    The name returned is added to ``used``.
    """
    name = base = unicodedata.normalize("NFC", base)
    if _fold(name) in used:
        stem, ext = _split_extension(base)
        n = 1
        while _fold(name := f"{stem}-{n}{ext}") in used:
            n += 1
    used.add(_fold(name))
    return name


class ZipProcessor(OptionsProcessor[ZipOptions]):
    """Bundles a job step's inputs into one ZIP (upload jobs only)."""

    name: ClassVar[str] = "zip"

    async def process(self, ctx: ProcessContext) -> Result:
        raise PermanentError(
            "the zip processor bundles the files of an upload job; use it as a [[templates]] "
            "step, not as a pipeline's processor"
        )

    async def bundle(self, ctx: BundleContext) -> Result:
        """Write one archive holding every input, each as stored."""
        name = self.opts.name or f"{ctx.job_id}.zip"
        with scratch_file(prefix="s3flow-zip-", suffix=".zip") as (fh, path):
            total = await self._write_archive(ctx, fh, name)
            size = await asyncio.to_thread(os.path.getsize, path)
            uri = await write_local_file(ctx.sink, name, path, "application/zip")
        return Result(
            outputs=[uri],
            counters={"files": len(ctx.inputs), "bytes_in": total, "bytes_out": size},
        )

    async def _write_archive(self, ctx: BundleContext, fh: IO[bytes], name: str) -> int:
        """Compress every input into ``fh`` (a whole ZIP once this returns); bytes read.

        On an error or a cancellation (the step's timeout) the archive is abandoned:
        the call still running on the worker thread is waited for (asyncio cannot stop
        a thread), then the entry and the ZipFile are closed quietly, so that what is
        raised stays the first error.
        """
        used: set[str] = set()
        total = 0
        blocking = _OneThread()
        zf = zipfile.ZipFile(
            fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=self.opts.compresslevel
        )
        try:
            for event in ctx.inputs:
                entry = unique_entry(entry_base(event.key), used)
                reader = await ctx.open_raw(event)
                try:
                    # ZIP64 always: the size is only known once read, and without it a
                    # member past 2 GiB fails at the end ("File size too large").
                    out = zf.open(entry, "w", force_zip64=True)
                    try:
                        total += await _write_entry(ctx, reader, out, blocking)
                    except BaseException:
                        await blocking.quietly(out.close)
                        raise
                    # the entry's sizes and CRC go into its header (a seek back)
                    await blocking(out.close)
                except (RuntimeError, zipfile.LargeZipFile) as exc:
                    raise _cannot_store(ctx, event, entry, name, exc) from exc
                finally:
                    reader.close()
        except BaseException:
            await blocking.quietly(zf.close)
            raise
        await blocking(zf.close)  # the central directory
        await blocking(fh.flush)
        return total


class _OneThread:
    """Runs blocking calls on a worker thread, one at a time, even after a cancellation:
    a call cancelled while it runs goes on in its thread, and the next call (or
    :meth:`quietly`) waits for it first, so no two threads use the archive at once."""

    def __init__(self) -> None:
        self._running: asyncio.Future[object] | None = None

    async def __call__(self, fn: Callable[..., object], *args: object) -> object:
        """``fn(*args)`` on a worker thread, after any call still running."""
        await self._settle()
        self._running = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        return await asyncio.shield(self._running)

    async def quietly(self, fn: Callable[[], object]) -> None:
        """``fn()`` as :meth:`__call__` does, any error of it dropped (the archive is
        being abandoned: the first error is the one to raise)."""
        with contextlib.suppress(Exception):
            await self(fn)

    async def _settle(self) -> None:
        running, self._running = self._running, None
        if running is not None and not running.done():
            await asyncio.wait({running})  # not cancelled by our own cancellation


async def _write_entry(
    ctx: BundleContext, reader: ObjectReader, out: IO[bytes], blocking: _OneThread
) -> int:
    """Copy ``reader`` into the entry ``out``, compressed on a worker thread about
    :data:`FEED_BYTES` at a time; the bytes copied."""
    total = 0
    async for batch in batched(reader, FEED_BYTES):
        await blocking(out.write, batch)
        total += len(batch)
        ctx.report_progress(len(batch))
    return total


def _cannot_store(
    ctx: BundleContext, event: ObjectEvent, entry: str, archive: str, exc: BaseException
) -> PermanentError:
    """zipfile refused an entry: the same input fails the same way every time."""
    return PermanentError(
        f"zip step of job {ctx.job_id}: s3://{event.bucket}/{event.key} cannot be stored as "
        f"entry {entry!r} of {archive}: {exc}. Retrying gives the same result: leave this file "
        "out of the job (or split it), and report it as an s3flow bug if it is an ordinary file"
    )
