"""How a long-running salon process sets Python's garbage collector (`salon run`, the benchmark).

A full collection walks everything the process holds for its channels: 20-30 ms at a thousand
busy channels, a pause every message waiting meanwhile shares. Python starts one after every
10 collections of the middle generation, several times a minute under load; 100 makes them
ten times rarer (p99 arrival->reply at half the flat rate 58-64 -> 12-32 ms in three pairs of
benchmark runs, throughput unchanged). Garbage that only the collector can free (reference
cycles) lives that much longer; salon makes little of it.
"""

from __future__ import annotations

import gc

OLD_GENERATION_THRESHOLD = 100  # middle-generation passes between full ones (Python: 10)


def tune_collector() -> tuple[int, int, int]:
    """Make full collections rarer; returns the previous thresholds (to restore them)."""
    old = gc.get_threshold()
    gc.set_threshold(old[0], old[1], OLD_GENERATION_THRESHOLD)
    return old
