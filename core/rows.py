"""The newest stored messages of busy channels, held in memory so turns and prompts skip SQLite.

The store stays the source of truth: a channel's rows are a copy that is complete for every
seq above `after`, filled by a load and kept current as messages are stored, dropped on an
edit or a deletion, and evicted least-recently-used when the cache outgrows its byte budget.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field

from core.chunked import Chunked
from core.lines import AUTHOR_NAME, SEQ, TEXT, Line

ROW_OVERHEAD = 300  # bytes a cached line costs besides its text (tuple, strings, list slot)


def weight(row: Line) -> int:
    """An estimate of the memory one cached line holds."""
    return ROW_OVERHEAD + len(row[TEXT]) + len(row[AUTHOR_NAME])


@dataclass
class _Entry:
    rows: Chunked[Line] | None = None
    after: int = 0  # rows holds every stored, non-deleted message with seq > after
    weight: int = 0
    loads: int = 0
    pending: list[Line] = field(default_factory=list)  # stored while loads > 0
    epoch: int = 0  # bumped by invalidate; a load that started before is not kept


class RowCache:
    """Per channel key, the newest rows; at most `per_channel` rows each, `budget` bytes in all."""

    def __init__(self, *, budget: int, per_channel: int) -> None:
        self.budget = budget
        self.per_channel = max(1, per_channel)
        self.weight = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return sum(1 for e in self._entries.values() if e.rows is not None)

    def lookup(self, key: str, after: int, limit: int) -> list[Line] | None:
        """The newest `limit` rows with seq > after, oldest first, if memory has all of them."""
        entry = self._entries.get(key)
        if entry is None or entry.rows is None or limit <= 0:
            return None if limit > 0 else []
        self._entries.move_to_end(key)
        rows = entry.rows
        size = len(rows)
        if entry.after <= after:
            first = size - limit if size > limit else 0
            if size and rows[first][SEQ] > after:
                return rows.since(first)
            return rows.since(bisect.bisect_right(rows, after, key=_seq))
        if size >= limit:
            return rows.since(size - limit)
        return None

    def begin_load(self, key: str) -> int:
        """A store read for `key` starts; what is stored meanwhile is set aside for `end_load`."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.loads += 1
        return entry.epoch

    def end_load(
        self, key: str, token: int, after: int, limit: int, loaded: list[Line]
    ) -> list[Line]:
        """`loaded` (the store's newest `limit` rows above `after`) plus what was stored meanwhile.

        The result is kept when it covers more than memory held and nothing was edited or
        deleted during the read.
        """
        entry = self._entries.get(key)
        if entry is None:
            return loaded
        entry.loads -= 1
        pending = entry.pending
        if entry.loads <= 0:
            entry.loads = 0
            entry.pending = []
        merged = _merge(loaded, pending, after)
        complete_after = after if len(loaded) < limit else loaded[0][SEQ] - 1
        if token == entry.epoch and (entry.rows is None or complete_after <= entry.after):
            self._replace(key, entry, merged, complete_after)
        elif entry.rows is None and entry.loads == 0:
            del self._entries[key]
        return merged[-limit:] if limit > 0 else []

    def cancel_load(self, key: str) -> None:
        """The read failed: nothing changes but the bookkeeping."""
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.loads = max(0, entry.loads - 1)
        if entry.loads == 0:
            entry.pending = []
            if entry.rows is None:
                del self._entries[key]

    def add(self, key: str, record: Line) -> None:
        """A record was stored (new, or a redelivery that added addressees): keep memory current."""
        entry = self._entries.get(key)
        if entry is None:
            return
        if entry.loads:
            entry.pending.append(record)
        rows = entry.rows
        if rows is None or record[SEQ] <= entry.after:
            return
        self._entries.move_to_end(key)
        newest = rows.newest()
        if newest is not None and newest[SEQ] < record[SEQ]:
            rows.append(record)  # the usual case: the newest message
        else:
            lines = rows.since(0)
            for i in range(len(lines) - 1, -1, -1):
                if lines[i][SEQ] == record[SEQ]:
                    entry.weight += weight(record) - weight(lines[i])
                    self.weight += weight(record) - weight(lines[i])
                    lines[i] = record
                    entry.rows = Chunked(lines)
                    return
                if lines[i][SEQ] < record[SEQ]:
                    lines.insert(i + 1, record)
                    break
            else:
                lines.insert(0, record)
            rows = entry.rows = Chunked(lines)
        added = weight(record)
        entry.weight += added
        self.weight += added
        if len(rows) > self.per_channel:
            self._trim(entry)
        if self.weight > self.budget:
            self._evict(keep=key)

    def invalidate(self, key: str) -> None:
        """Forget the channel's rows (an edit or a deletion changed what the store holds)."""
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.epoch += 1
        self._drop(entry)
        if entry.loads == 0:
            del self._entries[key]

    # -- internals ---------------------------------------------------------------------------

    def _replace(self, key: str, entry: _Entry, rows: list[Line], after: int) -> None:
        self._drop(entry)
        entry.rows = Chunked(rows)
        entry.after = after
        entry.weight = sum(weight(r) for r in rows)
        self.weight += entry.weight
        self._entries.move_to_end(key)
        self._trim(entry)
        self._evict(keep=key)

    def _drop(self, entry: _Entry) -> None:
        self.weight -= entry.weight
        entry.weight = 0
        entry.rows = None

    def _trim(self, entry: _Entry) -> None:
        rows = entry.rows
        if rows is None or len(rows) <= self.per_channel:
            return
        gone = sum(weight(r) for r in rows.drop_front(len(rows) - self.per_channel))
        entry.after = rows[0][SEQ] - 1
        entry.weight -= gone
        self.weight -= gone

    def _evict(self, *, keep: str) -> None:
        """Drop least recently used channels' rows (never `keep`'s) until within the budget."""
        if self.weight <= self.budget:
            return
        for _ in range(len(self._entries)):
            if self.weight <= self.budget:
                break
            key = next(iter(self._entries))
            entry = self._entries[key]
            if key == keep or (entry.rows is None and entry.loads):
                self._entries.move_to_end(key)
                continue
            self._drop(entry)
            if entry.loads == 0:
                del self._entries[key]
            else:
                self._entries.move_to_end(key)


def _seq(row: Line) -> int:
    return row[SEQ]


def _merge(loaded: list[Line], pending: list[Line], after: int) -> list[Line]:
    """Loaded rows updated and extended by records stored during the read, in seq order."""
    if not pending:
        return loaded
    by_seq = {r[SEQ]: r for r in loaded}
    floor = loaded[0][SEQ] if loaded else after + 1
    for record in pending:
        if record[SEQ] >= floor:
            by_seq[record[SEQ]] = record
    return [by_seq[seq] for seq in sorted(by_seq)]
