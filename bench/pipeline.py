"""Benchmark 1: messages through the real engine, policy and SQLite store, against the storage floor.

An in-process adapter pushes group messages round-robin over the channels (as a gateway
delivers them), awaiting each `receive` (it returns once the message is stored). The model
answers instantly; about `addressed_share` of the messages address the character, and only
those are answered (talkativeness 0), so each reply belongs to exactly one message.
Latency runs from just before `receive` to the reply being handed to the adapter; the
debounce is 0, so there is no debounce wait to subtract.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
from collections.abc import Sequence
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
from core.engine import Engine
from core.sqlite_store import MIGRATIONS, SqliteStore
from core.types import Channel, Message, Outgoing

TARGET_RATE = 5_000.0
TARGET_P99_MS = 10.0
FLOOR_BATCH = 1_000
_INSERT = (
    "INSERT INTO messages (platform, channel_id, msg_id, author_id, author_name, "
    "author_is_bot, character, text, at, reply_to, addressed, deleted) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
)


@dataclass(frozen=True, slots=True)
class PipelineSize:
    channels: int
    per_channel: int
    addressed_share: float = 0.1
    feeders: int = 1

    @property
    def messages(self) -> int:
        return self.channels * self.per_channel


@dataclass(frozen=True, slots=True)
class EngineRun:
    """What the engine did with the workload."""

    messages: int
    seconds: float
    replies: int
    addressed: int
    latencies_s: tuple[float, ...]
    statements: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def workload(size: PipelineSize, seed: int) -> list[Message]:
    """The messages in arrival order: channel after channel, round after round."""
    rng = random.Random(seed)
    channels = [Channel("bench", f"c{i}") for i in range(size.channels)]
    people = [humans(c) for c in channels]
    start = 1_700_000_000.0
    out: list[Message] = []
    for round_no in range(size.per_channel):
        for index, channel in enumerate(channels):
            addressed = (
                frozenset({CHARACTER_KEY})
                if rng.random() < size.addressed_share
                else frozenset()
            )
            out.append(
                Message(
                    channel,
                    f"m{round_no}",
                    rng.choice(people[index]),
                    chat_text(rng),
                    start + len(out) * 0.001,
                    addressed,
                )
            )
    return out


async def _trace_statements(store: SqliteStore, counter: list[int]) -> None:
    """Count every SQL statement the store runs (BEGIN and COMMIT included)."""

    def trace(_statement: str) -> None:
        counter[0] += 1

    await store._conn().set_trace_callback(trace)


async def run_engine(root: Path, size: PipelineSize, seed: int = 1) -> EngineRun:
    settings, character = write_setup(
        root,
        behavior={
            "talkativeness": 0.0,
            "debounce_s": 0.0,
            "replies_per_minute": 0,
            "user_replies_per_minute": 0,
        },
    )
    messages = workload(size, seed)
    store = SqliteStore(settings.storage_path())
    await store.open()
    statements = [0]
    await _trace_statements(store, statements)
    clock = RealClock()
    arrivals: dict[tuple[str, str], float] = {}
    latencies: list[float] = []

    def on_send(out: Outgoing) -> None:
        sent_at = time.perf_counter()
        arrived = arrivals.pop((out.channel.id, out.reply_to or ""), None)
        if arrived is not None:
            latencies.append(sent_at - arrived)

    sender = RecordingSender(clock, on_send)
    engine = Engine(
        settings=settings,
        characters={character.key: character},
        store=store,
        backend=InstantBackend(),
        clock=clock,
        rng=random.Random(seed),
    )
    shards: list[list[Message]] = [[] for _ in range(max(1, size.feeders))]
    for message in messages:
        shards[int(message.channel.id[1:]) % len(shards)].append(message)

    async def feed(shard: Sequence[Message]) -> None:
        for message in shard:
            if message.addressed:
                arrivals[(message.channel.id, message.id)] = time.perf_counter()
            await engine.receive(message, via=character.key, sender=sender)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(feed(shard) for shard in shards))
        await engine.idle()
        seconds = time.perf_counter() - started
    finally:
        await engine.aclose()
        await store.close()
    return EngineRun(
        messages=len(messages),
        seconds=seconds,
        replies=sender.sent,
        addressed=sum(1 for m in messages if m.addressed),
        latencies_s=tuple(latencies),
        statements=statements[0],
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

    mode "autocommit": one execute, one commit per row; "transaction": BEGIN IMMEDIATE,
    INSERT, COMMIT per row (what SqliteStore does); "batched": executemany, one commit
    per FLOOR_BATCH rows.
    """
    rows = [_row(m) for m in messages]
    db = await aiosqlite.connect(str(path), isolation_level=None)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        for statement in MIGRATIONS[0]:
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


async def run(size: PipelineSize, *, seed: int = 1, workdir: Path | None = None) -> BenchResult:
    """The engine run and the three storage floors, all in one temporary directory."""
    with tempfile.TemporaryDirectory(prefix="salon-bench-", dir=workdir) as tmp:
        root = Path(tmp)
        engine_run = await run_engine(root / "engine", size, seed)
        messages = workload(size, seed)
        floors = {
            mode: await storage_floor(root / f"floor-{mode}.db", messages, mode)
            for mode in ("autocommit", "transaction", "batched")
        }
    lat_ms = [s * 1000.0 for s in engine_run.latencies_s]
    p50, p99 = percentile(lat_ms, 50), percentile(lat_ms, 99)
    rate = engine_run.rate
    figures = (
        Figure(
            "pipeline", "throughput", rate, "msg/s",
            "aiosqlite insert, 1 commit/row", floors["autocommit"],
            f">= {TARGET_RATE:,.0f} msg/s", rate >= TARGET_RATE,
        ),
        Figure(
            "pipeline", "throughput vs batched floor", rate, "msg/s",
            f"aiosqlite executemany, {FLOOR_BATCH} rows/commit", floors["batched"],
        ),
        Figure(
            "pipeline", "p99 arrival->reply", p99, "ms",
            "p50 arrival->reply", p50,
            f"< {TARGET_P99_MS:.0f} ms", p99 < TARGET_P99_MS,
        ),
    )  # fmt: skip
    details = {
        "channels": float(size.channels),
        "messages": float(engine_run.messages),
        "seconds": engine_run.seconds,
        "replies": float(engine_run.replies),
        "addressed": float(engine_run.addressed),
        "answered_share": engine_run.replies / max(1, engine_run.messages),
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "latency_max_ms": max(lat_ms, default=0.0),
        "latency_samples": float(len(lat_ms)),
        "sql_statements_per_message": engine_run.statements / max(1, engine_run.messages),
        "floor_autocommit_rows_s": floors["autocommit"],
        "floor_transaction_rows_s": floors["transaction"],
        "floor_batched_rows_s": floors["batched"],
    }
    return BenchResult("pipeline", figures, details)
