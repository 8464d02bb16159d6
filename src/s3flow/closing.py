"""``async with`` for objects whose only exit work is ``await close()``: :class:`AsyncClosing`.

:class:`AsyncExit` is the same for an object whose ``close()`` is not a coroutine
and whose async exit work is ``aclose()``. :func:`cancel_and_wait` stops a background
task on the way out; :func:`finish_despite_cancel` runs clean-up to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")


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


async def finish_despite_cancel(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even when this task is cancelled meanwhile, then re-raise
    the cancellation.

    ``asyncio.shield`` alone is not enough for clean-up on Ctrl-C: ``asyncio.run``
    cancels every task still pending once its main task ends, the shielded one too, so
    the clean-up stopped half-way. A second cancellation (a second Ctrl-C) cuts it short.
    """
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


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
