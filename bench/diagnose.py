"""Where the pipeline's time goes: store calls, aiosqlite round trips and a profile, per message.

Counting wraps the methods of the one store instance (and its connection's worker-thread
hand-off), so nothing global is patched; the figures are slower than a plain run and are
meant for the per-message counts and the profile's proportions, not for the rates.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.memstore import MemoryStore
from bench.pipeline import Harness, Phase, PipelineSize, split_lanes, workload
from core.types import Message

STORE_METHODS = (
    "add_message", "edit_message", "delete_message", "get_message", "recent", "last_message",
    "get_state", "put_state", "add_usage", "usage", "get_kv", "set_kv", "active_channels",
)  # fmt: skip


def _counting(
    counter: Counter[str], name: str, method: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    async def counted(*args: Any, **kwargs: Any) -> Any:
        counter[name] += 1
        return await method(*args, **kwargs)

    return counted


async def _on_memory_store(
    root: Path, size: PipelineSize, seed: int, messages: list[Message]
) -> Phase:
    """The engine's own ceiling: the same flat-out push with a store that does no I/O."""
    harness = Harness(root / "dict", seed, store=MemoryStore())
    await harness.open()
    try:
        return await harness.flat_out(
            split_lanes(messages, size.concurrency), time.perf_counter() + 3600
        )
    finally:
        await harness.close()


async def diagnose(size: PipelineSize, *, seed: int = 1, workdir: Path | None = None) -> str:
    """Run the flat-out phase once with counters and cProfile on; a printable report."""
    calls: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="salon-bench-diag-", dir=workdir) as tmp:
        harness = Harness(Path(tmp), seed, trace=True)
        await harness.open()
        store = harness.store
        for name in STORE_METHODS:
            setattr(store, name, _counting(calls, name, getattr(store, name)))
        connection: Any = getattr(store, "_conn", lambda: None)()
        hop = getattr(connection, "_execute", None)
        if hop is not None:  # aiosqlite hands each call to its worker thread here
            connection._execute = _counting(calls, "<aiosqlite hop>", hop)
        messages = workload(size.channels, range(size.per_channel), size.addressed_share, seed)
        profile = cProfile.Profile()
        try:
            profile.enable()
            phase = await harness.flat_out(
                split_lanes(messages, size.concurrency), time.perf_counter() + 3600
            )
            profile.disable()
        finally:
            await harness.close()
        ceiling = await _on_memory_store(Path(tmp), size, seed, messages)
    n = max(1, phase.messages)
    lines = [
        f"== diagnosis: {phase.messages} messages, {size.channels} channels, "
        f"{phase.replies} replies, {phase.rate:,.0f} msg/s under the profiler",
        "  store calls per message:",
    ]
    for name, count in calls.most_common():
        if name != "<aiosqlite hop>":
            lines.append(f"    {name}: {count / n:.2f}")
    if "<aiosqlite hop>" in calls:
        hops = calls["<aiosqlite hop>"] / n
        lines.append(f"  aiosqlite worker-thread round trips per message: {hops:.2f}")
    if harness.traced:
        lines.append(f"  SQL statements per message: {phase.statements / n:.2f}")
    lines.append(
        f"  the same workload on a dict store (no I/O, no profiler): {ceiling.rate:,.0f} msg/s, "
        f"{1e6 / max(ceiling.rate, 1e-9):,.0f} us of engine CPU per message"
    )
    stats = pstats.Stats(profile)
    total = max(1e-9, sum(row[2] for row in stats.stats.values()))  # type: ignore[attr-defined]
    waiting = sum(
        row[2]
        for (_, _, func), row in stats.stats.items()  # type: ignore[attr-defined]
        if "poll" in func and "epoll" in func
    )
    lines.append(
        f"  event loop idle in epoll (nothing ready to run): "
        f"{waiting / total:.0%} of profiled own time"
    )
    text = io.StringIO()
    stats.stream = text  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(15)
    lines.append("  top functions by own time:")
    lines.extend("    " + line for line in text.getvalue().splitlines() if line.strip())
    return "\n".join(lines)
