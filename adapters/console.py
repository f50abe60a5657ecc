"""The console adapter: a simulated channel on stdin/stdout, driving the same core as the bots."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from core.clock import Clock, RealClock, VirtualClock
from core.sanitize import canonical_name
from core.types import Channel, Message, Outgoing, Participant, Sent

if TYPE_CHECKING:
    from core.config import Character, Settings
    from core.engine import Engine

PLATFORM = "console"
DIRECTIVES = ("wait", "note", "reset", "regen", "why", "stats", "help", "quit")
HELP = """\
Type a line to say it. "Name: text" says it as Name; other lines are from the --as name.
@Name or @alias addresses a character. Directives:
  /wait S     let S seconds pass          /note TEXT  one-off info for the next reply
  /reset      forget the conversation     /regen      replace the last reply
  /why        why characters spoke/stayed silent
  /stats      tokens, cached tokens, estimated cost
  /help       this text                   /quit       leave"""

_SPEAKER = re.compile(r"^([^\s:：/@][^:：\n]{0,39}?)\s*[:：]\s?(.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Said:
    speaker: str
    text: str
    addressed: frozenset[str]


@dataclass(frozen=True, slots=True)
class Directive:
    name: str
    arg: str


def parse_line(
    line: str, characters: Sequence[Character], default_speaker: str
) -> Said | Directive | None:
    """Read one input line: a directive, a message by someone, or nothing (blank)."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    stripped = text.strip()
    if stripped.startswith("/"):
        name, _, arg = stripped[1:].partition(" ")
        return Directive(name.lower(), arg.strip())
    speaker = default_speaker
    m = _SPEAKER.match(text)
    if m and len(m.group(1).split()) <= 4 and "//" not in m.group(2)[:2]:
        speaker, text = m.group(1).strip(), m.group(2)
    return Said(speaker, text, mentioned(text, characters))


def mentioned(text: str, characters: Sequence[Character]) -> frozenset[str]:
    """Characters addressed with @Name, @alias or @key inside the text."""
    folded = canonical_name(text)
    hits = set()
    for c in characters:
        for name in (c.name, *c.aliases, c.key):
            key = canonical_name(name)
            if key and re.search(rf"@{re.escape(key)}(?!\w)", folded):
                hits.add(c.key)
    return frozenset(hits)


class ConsoleSender:
    """Prints a character's messages as `Name: text` lines on stdout."""

    max_length = 4000

    def __init__(self, name: str, out: TextIO, clock: Clock, run_id: str) -> None:
        self.name = name
        self._out = out
        self._clock = clock
        self._run_id = run_id
        self._count = 0

    async def send(self, out: Outgoing) -> Sent:
        self._count += 1
        self._out.write(f"{self.name}: {out.text}\n")
        self._out.flush()
        return Sent(f"{self._run_id}-{self.name}-{self._count}", self._clock.now())

    async def typing(self, channel: Channel) -> None:
        return None


async def stdin_lines() -> AsyncIterator[str]:
    """Lines from stdin without blocking the event loop (TTY or pipe alike)."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        yield line


class Console:
    """One console session: a channel, its characters, and the directives typed into it."""

    def __init__(
        self,
        engine: Engine,
        characters: Sequence[Character],
        *,
        direct: bool,
        as_name: str,
        channel_id: str | None,
        out: TextIO,
        err: TextIO,
    ) -> None:
        self.engine = engine
        self.characters = list(characters)
        self.channel = Channel(PLATFORM, channel_id or ("direct" if direct else "group"), direct)
        self.as_name = as_name
        self.out = out
        self.err = err
        self.run_id = uuid.uuid4().hex[:8]
        self.senders = {
            c.key: ConsoleSender(c.name, out, engine.clock, self.run_id) for c in self.characters
        }
        self._count = 0

    def _say(self, text: str) -> None:
        self.err.write(text.rstrip("\n") + "\n")
        self.err.flush()

    async def start(self) -> None:
        for c in self.characters:
            await self.engine.resume(
                PLATFORM, via=c.key, sender=self.senders[c.key], only=self.channel
            )
        if self.channel.direct:
            c = self.characters[0]
            await self.engine.open_direct(self.channel, via=c.key, sender=self.senders[c.key])

    async def handle(self, line: str) -> bool:
        """Process one input line; False means the session should end."""
        item = parse_line(line, self.characters, self.as_name)
        if item is None:
            return True
        if isinstance(item, Directive):
            return await self._directive(item)
        self._count += 1
        author = Participant(f"console:{canonical_name(item.speaker)}", item.speaker)
        addressed = item.addressed | (
            frozenset({self.characters[0].key}) if self.channel.direct else frozenset()
        )
        message = Message(
            self.channel,
            f"{self.run_id}-in-{self._count}",
            author,
            item.text,
            self.engine.clock.now(),
            addressed,
        )
        first, *rest = self.characters
        await self.engine.receive(message, via=first.key, sender=self.senders[first.key])
        for c in rest:
            await self.engine.receive(message, via=c.key, sender=self.senders[c.key])
        return True

    async def _directive(self, d: Directive) -> bool:
        first = self.characters[0]
        if d.name == "quit":
            return False
        if d.name == "help":
            self._say(HELP)
        elif d.name == "wait":
            try:
                seconds = float(d.arg)
            except ValueError:
                self._say("usage: /wait SECONDS")
                return True
            await self.wait(seconds)
        elif d.name == "note":
            if not d.arg:
                self._say("usage: /note TEXT")
            else:
                await self.engine.add_note(
                    self.channel, d.arg, via=first.key, sender=self.senders[first.key]
                )
        elif d.name in ("reset", "why", "stats"):
            for c in self.characters:
                result = await self.engine.command(
                    self.channel, d.name, d.arg, via=c.key, sender=self.senders[c.key]
                )
                self._say(result.text)
        elif d.name == "regen":
            await self.engine.idle()
            last = await self._last_speaker()
            if last is None:
                self._say("nothing to regenerate yet")
            else:
                result = await self.engine.command(
                    self.channel, "regen", via=last, sender=self.senders[last]
                )
                self._say(result.text)
        else:
            self._say(f"unknown directive /{d.name}; try /help")
        return True

    async def _last_speaker(self) -> str | None:
        rows = await self.engine.store.recent(self.channel, limit=50)
        keys = {c.key for c in self.characters}
        return next((r.character for r in reversed(rows) if r.character in keys), None)

    async def wait(self, seconds: float) -> None:
        clock = self.engine.clock
        if isinstance(clock, VirtualClock):
            await clock.advance(seconds, idle=self.engine.idle)
        else:
            await asyncio.sleep(seconds)

    async def finish(self) -> None:
        """End of input: answer what was already said, wait for replies in flight."""
        await self.engine.flush()
        clock = self.engine.clock
        if isinstance(clock, VirtualClock):
            while self.engine.busy():
                due = clock.next_due()
                if due is None:
                    break
                await clock.advance(max(0.0, due - clock.now()), idle=self.engine.idle)
        await self.engine.idle()


class _StderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == "salon.decision":
            return f"· {record.getMessage()}"
        return f"salon: {record.levelname.lower()}: {record.getMessage()}"


def configure_logging(err: TextIO, verbose: bool = True) -> None:
    """Decisions and diagnostics to stderr; stdout stays the pure transcript."""
    handler = logging.StreamHandler(err)
    handler.setFormatter(_StderrFormatter())
    root = logging.getLogger("salon")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False


async def run_console(
    settings: Settings,
    characters: Sequence[Character],
    *,
    direct: bool = False,
    as_name: str = "You",
    channel_id: str | None = None,
    lines: AsyncIterator[str] | None = None,
    clock: Clock | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    seed: int | None = None,
    verbose: bool = True,
) -> int:
    """Run a console session until /quit or end of input; the exit code."""
    import random

    from core.engine import build_engine
    from core.errors import StartupError

    out = out or sys.stdout
    err = err or sys.stderr
    if direct and len(characters) != 1:
        err.write("salon: --direct takes exactly one --bot (a direct chat has one character)\n")
        return 2
    clock = clock or RealClock()
    configure_logging(err, verbose)
    try:
        async with build_engine(
            settings, list(characters), clock=clock, rng=random.Random(seed)
        ) as engine:
            console = Console(
                engine,
                characters,
                direct=direct,
                as_name=as_name,
                channel_id=channel_id,
                out=out,
                err=err,
            )
            if lines is None and sys.stdin.isatty():
                names = ", ".join(c.name for c in characters)
                kind = "direct chat" if direct else "group"
                err.write(f"salon console: {kind} {console.channel.id!r} with {names}. /help\n")
            await console.start()
            async for line in lines if lines is not None else stdin_lines():
                if not await console.handle(line) or engine.fatal is not None:
                    break
                await asyncio.sleep(0)
            await console.finish()
            if engine.fatal is not None:
                return 2  # the engine has logged the reason once
    except StartupError as e:
        err.write(f"salon: {e}\n")
        return e.exit_code
    return 0
