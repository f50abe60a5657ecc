"""Flood limits as a booking sheet: each send books the earliest moment the limits allow.

Pure (time is passed in), platform-neutral, so bursts wait a little instead of collecting
429s; a 429 that still happens is handled by the sender.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

_EPSILON = 1e-6  # bookings a hair under a second apart count as a second apart (float sums)


@dataclass(frozen=True, slots=True)
class FloodLimits:
    """Telegram's limits for one bot: ~1 msg/s per chat, 20/min per group, 30/s overall."""

    per_chat_interval_s: float = 1.0
    group_per_minute: int = 20
    overall_per_second: int = 30


class FloodGate:
    """Books send times for one bot account; `book` returns when a message may go out."""

    def __init__(self, limits: FloodLimits | None = None) -> None:
        self.limits = limits or FloodLimits()
        self._chats: dict[str, list[float]] = {}
        self._all: list[float] = []

    def book(self, chat: str, *, group: bool, now: float) -> float:
        """Reserve the earliest send time ≥ `now` that keeps `chat` and the bot within limits."""
        limits = self.limits
        self._forget(now)
        history = self._chats.setdefault(chat, [])
        at = now
        if history:
            at = max(at, history[-1] + limits.per_chat_interval_s)
        if group and len(history) >= limits.group_per_minute > 0:
            at = max(at, history[-limits.group_per_minute] + 60.0)
        if not self._fits(at):
            at = next(t + 1.0 for t in self._all if t + 1.0 > at and self._fits(t + 1.0))
        history.append(at)
        bisect.insort(self._all, at)
        return at

    def _fits(self, at: float) -> bool:
        """Whether one more send at `at` keeps every one-second window under the overall limit."""
        limit = self.limits.overall_per_second
        if limit <= 0:
            return True
        later = self._all[
            bisect.bisect_right(self._all, at) : bisect.bisect_left(self._all, at + 1.0)
        ]
        for end in (at, *later):
            start = bisect.bisect_right(self._all, end - 1.0 + _EPSILON)
            inside = bisect.bisect_right(self._all, end) - start
            if inside >= limit:
                return False
        return True

    def _forget(self, now: float) -> None:
        horizon = now - 60.0
        self._all = self._all[bisect.bisect_right(self._all, horizon) :]
        for chat in list(self._chats):
            kept = [t for t in self._chats[chat] if t > horizon]
            if kept:
                self._chats[chat] = kept
            else:
                del self._chats[chat]
