"""An append-only sequence that the garbage collector can mostly skip.

Long-lived, growing lists (a channel's cached lines, a remembered prompt's turns) are walked by
every collection that reaches them; tuples of untracked items are dropped from the collector's
lists. Items are sealed into tuples of SEAL as they arrive, so the collector visits a few
references per sequence, and no append copies the whole sequence into a new tuple.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

# items an open tail collects before it is sealed; the collector walks every item of an open
# tail (64 made tails a third of a full pass at 1,000 channels)
SEAL = 16


class Chunked(Generic[T]):
    """Items, oldest first: sealed chunks of SEAL items plus a short open tail.

    A tuple of untracked items is itself untracked, so a full garbage collection visits a few
    references per sequence instead of every item (tens of milliseconds at a thousand busy
    channels). Sealing makes one new tuple of SEAL items, never a copy of the whole sequence:
    a new tuple is tracked until a young collection has looked at it, and copies of hundreds
    of lines made young collections walk tens of thousands of them (measured). Only the first
    chunk may be shorter; the oldest items are dropped by moving `skip` within it.
    """

    __slots__ = ("chunks", "sealed", "skip", "tail")

    def __init__(self, items: Iterable[T] = ()) -> None:
        held = tuple(items)
        first = len(held) % SEAL or min(SEAL, len(held))
        self.chunks: tuple[tuple[T, ...], ...] = tuple(
            held[i : i + SEAL] for i in range(first, len(held), SEAL)
        )
        if first:
            self.chunks = (held[:first], *self.chunks)
        self.sealed = len(held)  # items in `chunks`, counting the skipped ones
        self.skip = 0
        self.tail: list[T] = []

    def __len__(self) -> int:
        return self.sealed - self.skip + len(self.tail)

    def _locate(self, at: int) -> tuple[int, int]:
        """(chunk, offset) of sealed item `at` (counted from the first chunk's start)."""
        head = len(self.chunks[0])
        if at < head:
            return 0, at
        at -= head
        return 1 + at // SEAL, at % SEAL

    def __getitem__(self, index: int) -> T:
        if index < 0:
            index += len(self)
        at = self.skip + index
        if at >= self.sealed:
            return self.tail[at - self.sealed]
        chunk, offset = self._locate(at)
        return self.chunks[chunk][offset]

    def since(self, index: int) -> list[T]:
        """self[index:] as a new list."""
        at = self.skip + index
        if at >= self.sealed:
            return self.tail[at - self.sealed :]
        chunk, offset = self._locate(at)
        out = list(self.chunks[chunk][offset:])
        for rest in self.chunks[chunk + 1 :]:
            out.extend(rest)
        out.extend(self.tail)
        return out

    def newest(self) -> T | None:
        """The last item (None when empty), without counting."""
        if self.tail:
            return self.tail[-1]
        return self.chunks[-1][-1] if self.chunks else None  # (a chunk is never all skipped)

    def append(self, item: T) -> None:
        self.tail.append(item)
        if len(self.tail) >= SEAL:
            self.chunks = (*self.chunks, tuple(self.tail))
            self.sealed += len(self.tail)
            self.tail = []

    def drop_front(self, count: int) -> list[T]:
        """Forget the oldest `count` items; returns them."""
        gone = [self[i] for i in range(min(count, len(self)))]
        left = count
        while left and self.chunks:
            first = len(self.chunks[0]) - self.skip
            if left < first:
                self.skip += left
                return gone
            left -= first
            self.sealed -= len(self.chunks[0])
            self.chunks, self.skip = self.chunks[1:], 0
        del self.tail[:left]
        return gone
