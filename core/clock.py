"""Injected time: a real clock for production, a virtual one so tests and scripts never wait."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Wall time in unix seconds, sleeping, and one-shot timers."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle: ...


class RealClock:
    """The system clock, with timers on the running event loop."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        loop = asyncio.get_running_loop()
        delay = when - self.now()
        return loop.call_later(delay, callback) if delay > 0 else loop.call_soon(callback)


class _VirtualTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """Time that moves only when told to, firing due timers in order.

    `advance` lets the program settle (via `idle`) after each timer, so what a timer
    starts (a generation over a real socket) finishes before time moves on.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, _VirtualTimer]] = []
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> _VirtualTimer:
        timer = _VirtualTimer(when, callback)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        """Wait until someone advances virtual time past now + seconds."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._seq), fut))
        await fut

    def next_due(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        due = [t for t in (self._heap[0][0] if self._heap else None,) if t is not None]
        if self._sleepers:
            due.append(self._sleepers[0][0])
        return min(due) if due else None

    async def advance(
        self, seconds: float, idle: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Move time forward by `seconds`, firing every timer due on the way."""
        target = self._now + max(0.0, seconds)
        while True:
            if idle is not None:
                await idle()
            due = self.next_due()
            if due is None or due > target:
                break
            self._now = max(self._now, due)
            self._fire_due()
            await asyncio.sleep(0)
        self._now = target
        if idle is not None:
            await idle()

    def _fire_due(self) -> None:
        while self._heap and self._heap[0][0] <= self._now:
            _, _, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.callback()
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
