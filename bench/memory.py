"""Benchmark 3: resident memory per idle channel, measured in a fresh subprocess.

The child warms the engine up on a few channels (so imports, caches and the SQLite page
cache are already there), reads its RSS, pushes `per_channel` messages into each of
`channels` new channels, waits until the engine is idle, collects garbage and reads its RSS
again. The baseline child inserts the same rows with plain aiosqlite (history in SQLite and
nothing else), so the ratio shows what the engine keeps in RAM beyond the database.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import BenchResult, Figure, rss_bytes
from core.types import Message

TARGET_BYTES = 20 * 1024
WARMUP_CHANNELS = 200
GROUP = 500
REPO = Path(__file__).resolve().parents[1]


def warmup_channels(channels: int) -> int:
    """Channels pushed before the first reading, so one-off allocations are not counted."""
    return min(WARMUP_CHANNELS, max(10, channels // 5))


def _groups(channels: int, per_channel: int) -> list[list[Message]]:
    """The load in groups of GROUP channels, each group's messages round-robin."""
    from bench.pipeline import workload

    load = workload(channels, range(per_channel), 0.1, 4)
    groups: list[list[Message]] = [[] for _ in range(-(-channels // GROUP))]
    for message in load:
        groups[int(message.channel.id[1:]) // GROUP].append(message)
    return groups


async def _engine_child(
    root: Path, channels: int, per_channel: int, budget_s: float
) -> dict[str, float]:
    from bench.pipeline import Harness, split_lanes, workload

    harness = Harness(root, seed=3)
    engine = await harness.open()
    try:
        warm = workload(warmup_channels(channels), range(per_channel), 0.1, 3, prefix="w")
        await harness.flat_out(split_lanes(warm, 16), time.perf_counter() + 3600)
        groups = _groups(channels, per_channel)
        gc.collect()
        before = rss_bytes()
        started = time.perf_counter()
        deadline = started + budget_s
        done = messages = replies = 0
        for group in groups:
            if time.perf_counter() >= deadline:
                break
            phase = await harness.flat_out(split_lanes(group, 16), math.inf)
            done += len({m.channel.id for m in group})
            messages += phase.messages
            replies += phase.replies
        seconds = time.perf_counter() - started
        await engine.flush()
        gc.collect()
        after = rss_bytes()
        actors = len(engine._actors)
    finally:
        await harness.close()
    return {
        "before": float(before),
        "after": float(after),
        "channels": float(done),
        "messages": float(messages),
        "replies": float(replies),
        "seconds": seconds,
        "actors": float(actors),
    }


async def _floor_child(root: Path, channels: int, per_channel: int) -> dict[str, float]:
    import aiosqlite

    from bench.pipeline import _INSERT, FLOOR_BATCH, _row, workload
    from core.sqlite_store import SCHEMA

    db = await aiosqlite.connect(str(root / "floor.db"), isolation_level=None)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        for statement in SCHEMA:
            await db.execute(statement)
        warmup = warmup_channels(channels)
        warm = [_row(m) for m in workload(warmup, range(per_channel), 0.1, 3, "w")]
        await db.executemany(_INSERT, warm)
        rows = [_row(m) for m in workload(channels, range(per_channel), 0.1, 4)]
        gc.collect()
        before = rss_bytes()
        started = time.perf_counter()
        for i in range(0, len(rows), FLOOR_BATCH):
            await db.execute("BEGIN IMMEDIATE")
            await db.executemany(_INSERT, rows[i : i + FLOOR_BATCH])
            await db.execute("COMMIT")
        seconds = time.perf_counter() - started
        gc.collect()
        after = rss_bytes()
    finally:
        await db.close()
    return {
        "before": float(before),
        "after": float(after),
        "channels": float(channels),
        "messages": float(len(rows)),
        "seconds": seconds,
    }


async def _child(
    kind: str, channels: int, per_channel: int, budget_s: float, workdir: str | None
) -> None:
    with tempfile.TemporaryDirectory(prefix="salon-bench-mem-", dir=workdir) as tmp:
        if kind == "engine":
            result = await _engine_child(Path(tmp), channels, per_channel, budget_s)
        else:
            result = await _floor_child(Path(tmp), channels, per_channel)
    print(json.dumps(result))


async def measure(
    kind: str,
    channels: int,
    per_channel: int,
    *,
    budget_s: float = math.inf,
    workdir: Path | None = None,
) -> dict[str, float]:
    """Run one child (`engine` or `floor`) and return what it measured."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    args = [
        sys.executable, "-m", "bench.memory", "--child", kind,
        "--channels", str(channels), "--per-channel", str(per_channel),
        "--budget", str(budget_s),
    ]  # fmt: skip
    if workdir is not None:
        args += ["--workdir", str(workdir)]
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=str(REPO), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise RuntimeError(f"memory child {kind} failed ({proc.returncode}): " + " | ".join(tail))
    result: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def run(
    channels: int,
    per_channel: int = 3,
    *,
    budget_s: float = math.inf,
    workdir: Path | None = None,
) -> BenchResult:
    """The engine child (stopping at a group boundary after `budget_s`), then the floor child
    on as many channels as the engine got through."""
    engine = await measure("engine", channels, per_channel, budget_s=budget_s, workdir=workdir)
    done = max(1, int(engine["channels"]))
    floor = await measure("floor", done, per_channel, workdir=workdir)
    per_channel_bytes = (engine["after"] - engine["before"]) / done
    floor_bytes = (floor["after"] - floor["before"]) / done
    figures = (
        Figure(
            "memory", "RSS per idle channel", per_channel_bytes / 1024, "KB",
            "aiosqlite inserts of the same rows", max(floor_bytes, 1.0) / 1024,
            f"< {TARGET_BYTES // 1024} KB", per_channel_bytes < TARGET_BYTES,
        ),
    )  # fmt: skip
    details = {
        "channels_planned": float(channels),
        "channels": float(done),
        "stopped_early": float(done < channels),
        "messages": engine["messages"],
        "replies": engine["replies"],
        "seconds": engine["seconds"],
        "actors_in_ram": engine["actors"],
        "rss_before_mb": engine["before"] / 2**20,
        "rss_after_mb": engine["after"] / 2**20,
        "bytes_per_channel": per_channel_bytes,
        "floor_bytes_per_channel": floor_bytes,
        "floor_rss_before_mb": floor["before"] / 2**20,
        "floor_rss_after_mb": floor["after"] / 2**20,
    }
    return BenchResult("memory", figures, details)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--child", choices=("engine", "floor"), required=True)
    parser.add_argument("--channels", type=int, required=True)
    parser.add_argument("--per-channel", type=int, default=3)
    parser.add_argument("--budget", type=float, default=math.inf)
    parser.add_argument("--workdir")
    args = parser.parse_args(argv)
    asyncio.run(_child(args.child, args.channels, args.per_channel, args.budget, args.workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
