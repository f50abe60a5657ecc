"""Benchmark 1: messages through the real engine, policy and SQLite store vs the storage floor.

An in-process adapter pushes group messages round-robin over the channels (as a gateway
delivers them) with `concurrency` deliveries in flight, each awaiting `receive` (which returns
once the message is stored); per-channel order is kept. The model answers instantly; about
`addressed_share` of the messages address the character and only those are answered
(talkativeness 0), so each reply belongs to exactly one message. Latency runs from a message's
arrival to its reply being handed to the adapter; the debounce is 0, so there is no debounce
wait to subtract. Throughput is measured flat out; latency also at half that rate (open loop),
where it shows the engine's own overhead rather than the queue in front of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import random
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from bench.common import (
    CHARACTER_KEY,
    BenchResult,
    Figure,
    InstantBackend,
    RecordingSender,
    chat_text,
    humans,
    percentile,
    write_setup,
)
from core.clock import RealClock
from core.collector import tune_collector
from core.engine import Engine
from core.sqlite_store import SCHEMA, SqliteStore
from core.store import Store
from core.types import Channel, Message, Outgoing

TARGET_RATE = 5_000.0
TARGET_P99_MS = 10.0
FLOOR_BATCH = 1_000
FLOOR_TRANSACTION_ROWS = 20_000
PACED_SHARE = 0.5
SETTLE_S = 1.0
PACED_MAX_RATE = TARGET_RATE  # the paced messages are built before timing, for at most this rate
BEHAVIOR: dict[str, float | int] = {
    "talkativeness": 0.0,
    "debounce_s": 0.0,
    "replies_per_minute": 0,
    "user_replies_per_minute": 0,
}
_INSERT = (
    "INSERT INTO messages (platform, channel_id, msg_id, author_id, author_name, "
    "author_is_bot, character, text, at, reply_to, addressed, deleted) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
)


@dataclass(frozen=True, slots=True)
class PipelineSize:
    """The workload; `budget_s` stops pushing early (the figures then cover what was pushed)."""

    channels: int
    per_channel: int
    addressed_share: float = 0.1
    concurrency: int = 16
    budget_s: float = 150.0
    paced_s: float = 10.0

    @property
    def messages(self) -> int:
        return self.channels * self.per_channel


@dataclass(frozen=True, slots=True)
class Phase:
    """What the engine did with one part of the workload."""

    messages: int
    seconds: float
    replies: int
    addressed: int
    latencies_ms: tuple[float, ...]
    statements: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def split_lanes(messages: Sequence[Message], concurrency: int) -> list[list[Message]]:
    """Messages per delivery lane; a channel always goes through the same lane (order kept)."""
    lanes: list[list[Message]] = [[] for _ in range(max(1, concurrency))]
    for message in messages:
        lanes[int(message.channel.id[1:]) % len(lanes)].append(message)
    return lanes


def workload(
    channels: int, rounds: range, addressed_share: float, seed: int, prefix: str = "c"
) -> list[Message]:
    """The messages in arrival order: one per channel per round, round after round."""
    rng = random.Random(seed * 7919 + rounds.start)
    chans = [Channel("bench", f"{prefix}{i}") for i in range(channels)]
    people = [humans(c) for c in chans]
    start = 1_700_000_000.0 + rounds.start * channels * 0.001
    out: list[Message] = []
    for round_no in rounds:
        for index, channel in enumerate(chans):
            hit = rng.random() < addressed_share
            out.append(
                Message(
                    channel,
                    f"m{round_no}",
                    rng.choice(people[index]),
                    chat_text(rng),
                    start + len(out) * 0.001,
                    frozenset({CHARACTER_KEY}) if hit else frozenset(),
                )
            )
    return out


async def _trace(store: SqliteStore, callback: Callable[[str], None]) -> bool:
    """Count every SQL statement the store runs (BEGIN and COMMIT included), if it lets us."""
    connection = getattr(store, "_conn", None)
    db = connection() if callable(connection) else None
    setter = getattr(db, "set_trace_callback", None)
    if setter is None:
        return False
    result = setter(callback)
    if inspect.isawaitable(result):
        await result
    return True


class Harness:
    """The engine on a file store with an instant model and a recording adapter."""

    def __init__(
        self, root: Path, seed: int, *, store: Store | None = None, trace: bool = False
    ) -> None:
        self.root = root
        self.trace = trace
        self.seed = seed
        self._given_store = store
        self.arrivals: dict[tuple[str, str], float] = {}
        # an array, not a list: the collector never walks its samples in the paced phase
        self.latencies = array("d")
        self.statements = 0
        self.traced = False
        self._pushed: tuple[Sequence[Sequence[Message]], list[int]] = ((), [])
        self.engine: Engine | None = None
        self.store: Store | None = None
        self.sender = RecordingSender(RealClock(), self._on_send)

    def _on_send(self, out: Outgoing) -> None:
        sent_at = time.perf_counter()
        arrived = self.arrivals.pop((out.channel.id, out.reply_to or ""), None)
        if arrived is not None:
            self.latencies.append((sent_at - arrived) * 1000.0)

    def _trace(self, _statement: str) -> None:
        self.statements += 1

    async def open(self) -> Engine:
        settings, character = write_setup(self.root, behavior=BEHAVIOR)
        if self._given_store is None:
            sqlite = SqliteStore(settings.storage_path())
            await sqlite.open()
            # counting statements costs ~4% (SQLite expands each one): only the diagnosis does
            self.traced = self.trace and await _trace(sqlite, self._trace)
            self.store = sqlite
        else:
            self.store = self._given_store
            await self.store.open()
        self.engine = Engine(
            settings=settings,
            characters={character.key: character},
            store=self.store,
            backend=InstantBackend(),
            clock=RealClock(),
            rng=random.Random(self.seed),
        )
        return self.engine

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.aclose()
        if self.store is not None:
            await self.store.close()

    async def deliver(self, message: Message, arrived: float) -> None:
        assert self.engine is not None
        if message.addressed:
            self.arrivals[(message.channel.id, message.id)] = arrived
        await self.engine.receive(message, via=CHARACTER_KEY, sender=self.sender)

    def _mark(self) -> tuple[int, int]:
        self.latencies = array("d")
        self.arrivals.clear()
        return self.sender.sent, self.statements

    async def flat_out(self, lanes: Sequence[Sequence[Message]], deadline: float) -> Phase:
        """Push as fast as the engine takes them, one delivery in flight per lane."""
        assert self.engine is not None
        sent0, statements0 = self._mark()
        done = [0] * len(lanes)

        async def lane(index: int, items: Sequence[Message]) -> None:
            for message in items:
                if time.perf_counter() >= deadline:
                    return
                await self.deliver(message, time.perf_counter())
                done[index] += 1

        started = time.perf_counter()
        await asyncio.gather(*(lane(i, items) for i, items in enumerate(lanes)))
        await self.engine.flush()
        seconds = time.perf_counter() - started
        # what was pushed is kept as counts: a list of 100,000 messages, new to the collector,
        # would be scanned by each of its passes (10-40 ms) as no gateway's memory is
        self._pushed = (lanes, done)
        addressed = sum(1 for m in self.pushed() if m.addressed)
        return self._phase(sum(done), addressed, seconds, sent0, statements0)

    def pushed(self) -> list[Message]:
        """The messages the flat-out phase delivered."""
        lanes, done = self._pushed
        return [m for items, n in zip(lanes, done, strict=True) for m in items[:n]]

    async def paced(
        self, messages: Sequence[Message], rate: float, count: int | None = None, start: int = 0
    ) -> Phase:
        """Open loop: message i arrives at start + i / rate whether or not the engine kept up.

        `count` messages (all by default) from index `start` on are delivered.
        """
        assert self.engine is not None
        sent0, statements0 = self._mark()
        left = max(0, len(messages) - start)
        count = left if count is None else min(count, left)
        running: set[asyncio.Task[None]] = set()  # done ones leave at once, as a gateway's would
        started = time.perf_counter()
        for index in range(count):
            message = messages[start + index]
            due = started + index / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            task = asyncio.ensure_future(self.deliver(message, due))
            running.add(task)
            task.add_done_callback(running.discard)
        while running:
            await asyncio.gather(*running)
        await self.engine.flush()
        addressed = sum(1 for i in range(start, start + count) if messages[i].addressed)
        return self._phase(count, addressed, time.perf_counter() - started, sent0, statements0)

    def _phase(
        self, messages: int, addressed: int, seconds: float, sent0: int, statements0: int
    ) -> Phase:
        return Phase(
            messages=messages,
            seconds=seconds,
            replies=self.sender.sent - sent0,
            addressed=addressed,
            latencies_ms=tuple(self.latencies),
            statements=self.statements - statements0,
        )


def _row(message: Message) -> tuple[object, ...]:
    author = message.author
    return (
        message.channel.platform,
        message.channel.id,
        message.id,
        author.id,
        author.name,
        int(author.is_bot),
        author.character,
        message.text,
        message.at,
        message.reply_to,
        json.dumps(sorted(message.addressed)),
    )


async def storage_floor(path: Path, messages: Sequence[Message], mode: str) -> float:
    """Rows/s for plain aiosqlite inserts of the same rows into the same schema (WAL file).

    "autocommit": one execute and one commit per row; "transaction": BEGIN IMMEDIATE,
    INSERT, COMMIT per row, as SqliteStore writes; "batched": executemany, one commit
    per FLOOR_BATCH rows.
    """
    rows = [_row(m) for m in messages]
    db = await aiosqlite.connect(str(path), isolation_level=None)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        for statement in SCHEMA:
            await db.execute(statement)
        started = time.perf_counter()
        if mode == "autocommit":
            for row in rows:
                await db.execute(_INSERT, row)
        elif mode == "transaction":
            for row in rows:
                await db.execute("BEGIN IMMEDIATE")
                await db.execute(_INSERT, row)
                await db.execute("COMMIT")
        elif mode == "batched":
            for i in range(0, len(rows), FLOOR_BATCH):
                await db.execute("BEGIN IMMEDIATE")
                await db.executemany(_INSERT, rows[i : i + FLOOR_BATCH])
                await db.execute("COMMIT")
        else:
            raise ValueError(f"unknown floor mode {mode!r}")
        seconds = time.perf_counter() - started
    finally:
        await db.close()
    return len(rows) / seconds if seconds > 0 else 0.0


@contextlib.contextmanager
def frozen_workload() -> Iterator[None]:
    """Keep the collector off the harness's pre-built messages (a gateway holds no such list):
    what exists now (the workload, an engine that holds nothing yet) is frozen; everything the
    engine creates while it runs is collected as in production, with `salon run`'s settings."""
    gc.collect()
    gc.freeze()
    old = tune_collector()
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


async def _timed(phase: Awaitable[Phase]) -> tuple[Phase, float]:
    """The phase, and the loop thread's CPU share while it ran (how loaded that rate was)."""
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    done = await phase
    return done, (time.thread_time() - cpu0) / max(1e-9, time.perf_counter() - wall0)


def _latency(phase: Phase) -> tuple[float, float, float]:
    values = phase.latencies_ms
    return percentile(values, 50), percentile(values, 99), max(values, default=0.0)


async def run(size: PipelineSize, *, seed: int = 1, workdir: Path | None = None) -> BenchResult:
    """Flat-out and paced engine phases, then the storage floors on the same rows."""
    with tempfile.TemporaryDirectory(prefix="salon-bench-", dir=workdir) as tmp:
        root = Path(tmp)
        harness = Harness(root / "engine", seed)
        await harness.open()
        lanes = split_lanes(
            workload(size.channels, range(size.per_channel), size.addressed_share, seed),
            size.concurrency,
        )
        # the half-rate phase, then the quarter-rate one, from the same pre-built messages
        most = int(PACED_MAX_RATE * size.paced_s * 1.5) + 2
        rounds = range(size.per_channel, size.per_channel + -(-most // size.channels))
        extra = workload(size.channels, rounds, size.addressed_share, seed)[:most]
        try:
            with frozen_workload():
                flat = await harness.flat_out(lanes, time.perf_counter() + size.budget_s)
                await asyncio.sleep(SETTLE_S)  # a pause after the burst, as traffic has
                rate = min(PACED_SHARE * flat.rate, PACED_MAX_RATE)
                count = max(1, int(rate * size.paced_s))
                paced, busy = await _timed(harness.paced(extra, rate, count))
                await asyncio.sleep(SETTLE_S)
                low_rate = rate / 2
                low_count = max(1, int(low_rate * size.paced_s))
                low, low_busy = await _timed(harness.paced(extra, low_rate, low_count, start=count))
        finally:
            await harness.close()
        stored = sorted(harness.pushed(), key=lambda m: (int(m.id[1:]), int(m.channel.id[1:])))
        floors = {
            "autocommit": await storage_floor(root / "floor-a.db", stored, "autocommit"),
            "transaction": await storage_floor(
                root / "floor-t.db", stored[:FLOOR_TRANSACTION_ROWS], "transaction"
            ),
            "batched": await storage_floor(root / "floor-b.db", stored, "batched"),
        }
    commit_ms = 1000.0 / floors["autocommit"] if floors["autocommit"] else 0.0
    flat_p50, flat_p99, flat_max = _latency(flat)
    p50, p99, worst = _latency(paced)
    low_p50, low_p99, low_worst = _latency(low)
    figures = (
        Figure(
            "pipeline", "throughput", flat.rate, "msg/s",
            "aiosqlite insert, 1 commit/row", floors["autocommit"],
            f">= {TARGET_RATE:,.0f} msg/s", flat.rate >= TARGET_RATE,
        ),
        Figure(
            "pipeline", "throughput (vs batched floor)", flat.rate, "msg/s",
            f"aiosqlite executemany, {FLOOR_BATCH} rows/commit", floors["batched"],
        ),
        Figure(
            "pipeline", f"p99 arrival->reply @{PACED_SHARE:.0%} load", p99, "ms",
            "1 aiosqlite insert+commit", commit_ms,
            f"< {TARGET_P99_MS:.0f} ms", p99 < TARGET_P99_MS,
        ),
        Figure(
            "pipeline", "p99 arrival->reply flat out", flat_p99, "ms",
            "1 aiosqlite insert+commit", commit_ms,
        ),
        Figure(
            "pipeline", f"p99 arrival->reply @{PACED_SHARE / 2:.0%} load", low_p99, "ms",
            "1 aiosqlite insert+commit", commit_ms,
        ),
    )  # fmt: skip
    details = {
        "channels": float(size.channels),
        "messages_planned": float(size.messages),
        "messages": float(flat.messages),
        "stopped_early": float(flat.messages < size.messages),
        "seconds": flat.seconds,
        "concurrency": float(size.concurrency),
        "replies": float(flat.replies),
        "addressed": float(flat.addressed),
        "answered_share": flat.replies / max(1, flat.messages),
        "flat_p50_ms": flat_p50,
        "flat_p99_ms": flat_p99,
        "flat_max_ms": flat_max,
        "flat_samples": float(len(flat.latencies_ms)),
        "paced_rate": rate,
        # below 0.5 when the rate cap applies: the "50% load" phase was lighter than its name
        "paced_share_of_flat": rate / flat.rate if flat.rate else 0.0,
        "paced_messages": float(paced.messages),
        "paced_achieved_rate": paced.rate,
        "paced_loop_busy": busy,
        "paced_replies": float(paced.replies),
        "paced_p50_ms": p50,
        "paced_p99_ms": p99,
        "paced_max_ms": worst,
        "paced_samples": float(len(paced.latencies_ms)),
        "quarter_rate": low_rate,
        "quarter_loop_busy": low_busy,
        "quarter_replies": float(low.replies),
        "quarter_p50_ms": low_p50,
        "quarter_p99_ms": low_p99,
        "quarter_max_ms": low_worst,
        "floor_autocommit_rows_s": floors["autocommit"],
        "floor_transaction_rows_s": floors["transaction"],
        "floor_batched_rows_s": floors["batched"],
    }
    return BenchResult("pipeline", figures, details)
