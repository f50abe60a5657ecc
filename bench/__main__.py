"""`python -m bench`: run the benchmarks, print each one's figures and ratios, then a table.

Sizes: `full` is the issue's workload (1,000 channels x 100 messages; 2,000-message
conversation; 10,000 idle channels; 7 start-up runs) with time budgets that stop the
pipeline and memory pushes early on a slow engine, so a run fits in about five minutes
(the output says when a budget cut a run short; `--no-budget` runs everything). `small`
takes about a minute, `tiny` a few seconds (the smoke test's size).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench import memory, pipeline, prompt_cache, startup
from bench.common import BenchResult
from bench.report import as_json, block, markdown, table

NAMES = ("pipeline", "prompt_cache", "memory", "startup")
ALIASES = {"cache": "prompt_cache", "prompt": "prompt_cache", "mem": "memory", "start": "startup"}


@dataclass(frozen=True, slots=True)
class Size:
    pipeline: pipeline.PipelineSize
    cache: prompt_cache.CacheSize
    memory_channels: int
    memory_budget_s: float
    startup_runs: int
    startup_references: bool = True


SIZES = {
    "tiny": Size(
        pipeline.PipelineSize(10, 10, concurrency=4, budget_s=60.0, paced_s=0.3),
        prompt_cache.CacheSize(120, input_limit=600),
        memory_channels=60, memory_budget_s=60.0, startup_runs=1, startup_references=False,
    ),
    "small": Size(
        pipeline.PipelineSize(100, 20, budget_s=60.0, paced_s=3.0),
        prompt_cache.CacheSize(500),
        memory_channels=1_000, memory_budget_s=60.0, startup_runs=3,
    ),
    "full": Size(
        pipeline.PipelineSize(1_000, 100, budget_s=80.0, paced_s=10.0),
        prompt_cache.CacheSize(2_000),
        memory_channels=10_000, memory_budget_s=120.0, startup_runs=7,
    ),
}  # fmt: skip


def _names(values: Sequence[str] | None) -> list[str]:
    if not values:
        return list(NAMES)
    chosen: list[str] = []
    for value in values:
        for part in value.split(","):
            name = ALIASES.get(part.strip(), part.strip())
            if name not in NAMES:
                raise SystemExit(f"unknown benchmark {part!r}; choose from {', '.join(NAMES)}")
            if name not in chosen:
                chosen.append(name)
    return chosen


def _load() -> str:
    """The 1/5/15-minute load averages: other work on the machine skews the timings."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _unbudgeted(size: Size) -> Size:
    return replace(
        size,
        pipeline=replace(size.pipeline, budget_s=math.inf),
        memory_budget_s=math.inf,
    )


def runners(
    size: Size, seed: int, workdir: Path | None
) -> dict[str, Callable[[], Awaitable[BenchResult]]]:
    return {
        "pipeline": lambda: pipeline.run(size.pipeline, seed=seed, workdir=workdir),
        "prompt_cache": lambda: prompt_cache.run(size.cache, seed=seed + 1, workdir=workdir),
        "memory": lambda: memory.run(
            size.memory_channels, budget_s=size.memory_budget_s, workdir=workdir
        ),
        "startup": lambda: startup.run(
            size.startup_runs,
            references=size.startup_references,
            warm=size.startup_references,
            workdir=workdir,
        ),
    }


async def run_all(
    names: Sequence[str],
    size: Size,
    *,
    seed: int = 1,
    workdir: Path | None = None,
    echo: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Run the chosen benchmarks in order, echoing each block as it completes."""
    table_of = runners(size, seed, workdir)
    results: list[BenchResult] = []
    for name in names:
        started = time.perf_counter()
        result = await table_of[name]()
        results.append(result)
        if echo is not None:
            echo(block(result) + f"\n    (took {time.perf_counter() - started:.1f} s)\n")
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="salon benchmarks: pipeline throughput/latency, prompt-cache prefix, "
        "memory per idle channel, start-up. Every figure comes with a baseline from the same run.",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only these (repeatable or comma-separated): {', '.join(NAMES)}",
    )
    p.add_argument(
        "--size",
        choices=tuple(SIZES),
        default="full",
        help="full = the issue's sizes within time budgets (default); small ~1 min",
    )
    p.add_argument(
        "--no-budget", action="store_true", help="never stop the pipeline or memory push early"
    )
    p.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="pipeline deliveries in flight (default 16, like an adapter that "
        "dispatches each event as a task)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--workdir", metavar="DIR", help="where the scratch databases go (default: temp)"
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    p.add_argument(
        "--diagnose",
        action="store_true",
        help="profile the pipeline: store calls and SQLite round trips per message",
    )
    return p  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    size = SIZES[args.size]
    if args.no_budget:
        size = _unbudgeted(size)
    if args.concurrency:
        size = replace(size, pipeline=replace(size.pipeline, concurrency=max(1, args.concurrency)))
    workdir = Path(args.workdir) if args.workdir else None

    def echo(text: str) -> None:
        print(text, flush=True)

    meta = {
        "size": args.size,
        "budget": not args.no_budget,
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()} {platform.system()} {os.cpu_count()} cpu",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_before": _load(),
    }
    if args.diagnose:
        from bench.diagnose import diagnose

        echo(asyncio.run(diagnose(SIZES["small"].pipeline, seed=args.seed, workdir=workdir)))
        if not args.only:
            return 0
    names = _names(args.only)
    echo(f"salon benchmarks ({args.size}): {', '.join(names)}; {meta['machine']}, "
         f"Python {meta['python']}, load average {meta['load_before']}\n")  # fmt: skip
    started = time.perf_counter()
    results = asyncio.run(run_all(names, size, seed=args.seed, workdir=workdir, echo=echo))
    echo(table(results))
    meta["load_after"] = _load()
    echo(f"\ntotal {time.perf_counter() - started:.0f} s; load average {meta['load_after']} "
         "(other processes on the machine slow every figure but the ratios less)")  # fmt: skip
    if args.markdown:
        echo("\n" + markdown(results))
    if args.json:
        Path(args.json).write_text(as_json(results, meta), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
