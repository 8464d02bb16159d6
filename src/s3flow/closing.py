"""``async with`` for objects whose only exit work is ``await close()``: :class:`AsyncClosing`."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncClosing:
    """Mixin: ``async with obj`` gives ``obj`` and awaits ``obj.close()`` on the way out.

    A subclass defines ``async def close()``; one that must open something on entry
    overrides ``__aenter__`` too.
    """

    async def close(self) -> None:
        """Release what the object holds; defined by each subclass."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
