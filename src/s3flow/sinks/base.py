"""Sink protocol: where processors write their outputs, durably."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import os
import tempfile
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, Self, runtime_checkable


@runtime_checkable
class Sink(Protocol):
    """A place outputs are written to. ``write`` returns only once the data is durable.

    ``relative_key`` is appended to the sink's root (an S3 prefix or a local
    directory). Writing the same key twice overwrites: outputs are idempotent.
    """

    root: str

    async def write(
        self,
        relative_key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Write ``data`` at ``relative_key``; return the output's URI.

        ``metadata``: object metadata (ASCII names and values; S3 user metadata,
        ``x-amz-meta-*``). Sinks that have nowhere to keep it ignore it.
        """
        ...

    async def read(self, relative_key: str) -> bytes | None:
        """Read back an output (None when absent)."""
        ...

    async def exists(self, relative_key: str) -> bool:
        """Whether an output exists at ``relative_key``."""
        ...

    async def check(self) -> None:
        """Verify the location exists and is writable now (start-up check).

        Raises :class:`~s3flow.errors.ConfigError` naming what is missing.
        """
        ...


@runtime_checkable
class FileSink(Sink, Protocol):
    """A sink that can also write an output straight from a local file.

    For outputs too big to hold in memory: the file is streamed (S3: a multipart
    upload). Optional: a processor checks ``isinstance(sink, FileSink)`` and
    falls back to :meth:`Sink.write` with the bytes otherwise.
    """

    async def write_file(
        self,
        relative_key: str,
        path: str,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Write the file at ``path`` as the output ``relative_key``; return its URI."""
        ...


@dataclass(frozen=True)
class OutputAttrs:
    """What an output is stored with besides its bytes (see :meth:`Sink.write`)."""

    content_type: str = "application/octet-stream"
    metadata: dict[str, str] | None = None


#: Awaited before each write of a fenced sink; raises to refuse it (see ``SinkBase.fenced``).
BeforeWrite = Callable[[], Awaitable[None]]


class SinkBase(FileSink):
    """The built-in sinks' ``write`` and ``write_file``, expressed once.

    Both take the content type and metadata as :class:`OutputAttrs`; a sink stores
    bytes with :meth:`_put` and a local file with :meth:`_put_file` its own way.
    """

    #: Awaited before every write (None: none); set on a copy by :meth:`fenced`.
    before_write: BeforeWrite | None = None

    def fenced(self, before_write: BeforeWrite) -> Self:
        """A copy of this sink (same class, same destination) that awaits
        ``before_write`` before each write: the worker's fence, which raises once the
        object's claim was lost to another worker, so that nothing more is written."""
        twin = copy.copy(self)
        twin.before_write = before_write
        return twin

    async def write(
        self,
        relative_key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        """See :meth:`Sink.write`: the bytes are stored by :meth:`_put`."""
        if self.before_write is not None:
            await self.before_write()
        return await self._put(relative_key, data, OutputAttrs(content_type, metadata))

    async def write_file(
        self,
        relative_key: str,
        path: str,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        """See :meth:`FileSink.write_file`: the file is stored by :meth:`_put_file`."""
        if self.before_write is not None:
            await self.before_write()
        return await self._put_file(relative_key, path, OutputAttrs(content_type, metadata))

    @abstractmethod
    async def _put(self, relative_key: str, data: bytes, attrs: OutputAttrs) -> str:
        """Store ``data`` as the output ``relative_key``, durably; return its URI."""

    @abstractmethod
    async def _put_file(self, relative_key: str, path: str, attrs: OutputAttrs) -> str:
        """Store the local file at ``path`` as the output ``relative_key``; return its URI."""


@contextlib.contextmanager
def scratch_file(prefix: str, suffix: str = "") -> Iterator[tuple[IO[bytes], str]]:
    """A temporary file to build an output in, and a path that opens it.

    Where the system allows (Linux: ``/proc/self/fd/N``) the file has no name in the
    directory: a process killed outright (SIGKILL at a timeout, the OOM killer) leaves
    nothing behind in ``$TMPDIR``, as a named temporary file it never closed would.
    Elsewhere it is a named file, removed on close.
    """
    if os.path.isdir("/proc/self/fd"):
        with tempfile.TemporaryFile(prefix=prefix, suffix=suffix) as fh:
            yield fh, f"/proc/self/fd/{fh.fileno()}"
    else:  # pragma: no cover - not Linux
        with tempfile.NamedTemporaryFile(prefix=prefix, suffix=suffix) as named:
            yield named, named.name


async def write_local_file(
    sink: Sink,
    relative_key: str,
    path: str,
    content_type: str = "application/octet-stream",
    metadata: dict[str, str] | None = None,
) -> str:
    """Write the local file at ``path`` through any sink; return the output's URI.

    A :class:`FileSink` streams it (memory holds one part); any other sink gets the
    file's bytes through :meth:`Sink.write`, with ``metadata`` when its ``write``
    takes it (a sink written before metadata existed gets none).
    """
    if isinstance(sink, FileSink):
        return await sink.write_file(relative_key, path, content_type, metadata)
    body = await asyncio.to_thread(Path(path).read_bytes)
    if metadata is not None and _takes_metadata(sink):
        return await sink.write(relative_key, body, content_type, metadata=metadata)
    return await sink.write(relative_key, body, content_type)


def _takes_metadata(sink: Sink) -> bool:
    try:
        params = inspect.signature(sink.write).parameters
    except (TypeError, ValueError):
        return False
    return "metadata" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
