"""``async with`` for objects whose only exit work is ``await close()``: :class:`AsyncClosing`.

:class:`AsyncExit` is the same for an object whose ``close()`` is not a coroutine
and whose async exit work is ``aclose()``. :func:`cancel_and_wait` stops a background
task on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any, Self


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has ended (None: nothing to do).

    The task's own :class:`asyncio.CancelledError` is swallowed; any other exception
    it ends with is raised here.
    """
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class AsyncExit:
    """Mixin: ``async with obj`` gives ``obj`` and awaits ``obj.aclose()`` on the way out.

    A subclass defines ``async def aclose()``; one that must open something on
    entry overrides ``__aenter__`` too.
    """

    async def aclose(self) -> None:
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
        await self.aclose()


class AsyncClosing(AsyncExit):
    """Mixin: ``async with obj`` gives ``obj`` and awaits ``obj.close()`` on the way out.

    A subclass defines ``async def close()``; one that must open something on entry
    overrides ``__aenter__`` too.
    """

    async def close(self) -> None:
        """Release what the object holds; defined by each subclass."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """:meth:`close`."""
        await self.close()
