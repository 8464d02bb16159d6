"""Sink protocol: where processors write their outputs, durably."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Sink(Protocol):
    """A place outputs are written to. ``write`` returns only once the data is durable.

    ``relative_key`` is appended to the sink's root (an S3 prefix or a local
    directory). Writing the same key twice overwrites: outputs are idempotent.
    """

    root: str

    async def write(
        self, relative_key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        """Write ``data`` at ``relative_key``; return the output's URI."""
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
