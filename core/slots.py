"""A concurrency limit that lets urgent work (addressed replies) go before chatter."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from types import TracebackType


class PrioritySlots:
    """At most `size` holders at once; waiters are served by priority (lower first), then FIFO."""

    def __init__(self, size: int) -> None:
        self._free = max(1, size)
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f in self._waiters if not f.done())

    def hold(self, priority: int = 0) -> _Hold:
        """`async with slots.hold(priority):` runs its body in a slot."""
        return _Hold(self, priority)

    async def _acquire(self, priority: int) -> None:
        if self._free > 0 and not self.waiting:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()
            raise

    def _release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1


class _Hold:
    """The context manager of `PrioritySlots.hold` (a class: a generator-based one costs more)."""

    __slots__ = ("_priority", "_slots")

    def __init__(self, slots: PrioritySlots, priority: int) -> None:
        self._slots, self._priority = slots, priority

    async def __aenter__(self) -> None:
        await self._slots._acquire(self._priority)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._slots._release()
