"""A recording Sender and a log tap: what the reliability suite inspects after a run.

The sender stands in for a platform (it posts nowhere, it remembers); the tap captures every
log record, formatted with its traceback, so tests can count warnings and grep for secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from core.types import Channel, Outgoing, Sent


@dataclass(frozen=True, slots=True)
class Posted:
    """One piece a character posted, with the platform id it got and when."""

    key: str
    out: Outgoing
    id: str
    at: float
    step: int


class RecordingSender:
    """A Sender that records every piece and typing call; `step` tags what the test was doing.

    `on_send` lets a test react to a post, e.g. arm the next fault only once a reply is out.
    """

    def __init__(
        self, key: str, now: Callable[[], float], *, max_length: int = 4000, log: list[Posted]
    ) -> None:
        self.key = key
        self.max_length = max_length
        self.typing_seen: list[Channel] = []
        self.step = 0
        self.on_send: Callable[[Posted], None] | None = None
        self._now = now
        self._log = log

    async def send(self, out: Outgoing) -> Sent:
        sent = Sent(f"{self.key}-out-{len(self._log) + 1}", self._now())
        posted = Posted(self.key, out, sent.id, sent.at, self.step)
        self._log.append(posted)
        if self.on_send is not None:
            self.on_send(posted)
        return sent

    async def typing(self, channel: Channel) -> None:
        self.typing_seen.append(channel)


class LogTap(logging.Handler):
    """Every record of the watched loggers, once each, as (logger, level, formatted text)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.records: list[tuple[str, int, str]] = []
        self._seen: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if any(r is record for r in self._seen[-8:]):
            return  # the same record reached the tap through a child logger and the root
        self._seen.append(record)
        self.records.append((record.name, record.levelno, self.format(record)))

    def lines(self, logger: str = "", level: int = logging.NOTSET, contains: str = "") -> list[str]:
        return [
            text
            for name, lvl, text in self.records
            if (not logger or name == logger or name.startswith(logger + "."))
            and lvl >= level
            and contains in text
        ]

    @property
    def text(self) -> str:
        return "\n".join(text for _, _, text in self.records)


@contextmanager
def tapped(level: int = logging.INFO, *, extra: Iterable[str] = ()) -> Iterator[LogTap]:
    """Tap the root, "salon" and `extra` loggers at `level`; restore levels and handlers after.

    "salon" gets the tap directly because the console's logging setup stops it propagating.
    """
    tap = LogTap()
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in ("salon", *extra))]
    saved = [(lg, lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
        lg.addHandler(tap)
    try:
        yield tap
    finally:
        for lg, lvl, prop in saved:
            lg.removeHandler(tap)
            lg.setLevel(lvl)
            lg.propagate = prop
