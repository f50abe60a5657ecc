"""Benchmark 4: start-up time of `salon --help` and `salon console`, and what they import.

Each command runs as a fresh subprocess (the median of N runs, the commands interleaved so
machine noise hits all alike) next to `python -c pass` measured in the same run. The console
starts on a scratch config with a piped, immediately ending input and `--clock virtual`: it
loads the config and the character, opens (and migrates) the SQLite file, builds the engine,
resumes its channel and exits, so start-to-exit bounds start-to-ready. A separate subprocess
per command reports whether the Discord and Telegram libraries were imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import BenchResult, Figure, median, write_setup

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("discord", "telegram")
WATCHED = (*HEAVY, "aiohttp", "httpx", "aiosqlite", "pydantic", "pydantic_settings")
_PROBE = """
import json, sys
out, args = sys.argv[1], sys.argv[2:]
code = 0
try:
    from adapters.cli import main
    code = main(args)
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else 0
finally:
    loaded = sorted({name.split(".")[0] for name in sys.modules})
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"code": code, "modules": loaded, "count": len(sys.modules)}, f)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _time(cmd: Sequence[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        cmd, cwd=str(REPO), env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({done.returncode}): " + " | ".join(tail))
    return seconds


def probe(args: Sequence[str], scratch: Path) -> dict[str, object]:
    """Run the CLI with `args` in a subprocess; its exit code and the top-level modules loaded."""
    out = scratch / "probe.json"
    subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), *args], cwd=str(REPO), env=_env(),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        check=False,
    )  # fmt: skip
    result: dict[str, object] = json.loads(out.read_text(encoding="utf-8"))
    return result


def _imported(report: dict[str, object]) -> list[str]:
    modules = report.get("modules")
    names = set(modules) if isinstance(modules, list) else set()
    return [name for name in WATCHED if name in names]


def _number(report: dict[str, object], key: str) -> float:
    value = report.get(key)
    return float(value) if isinstance(value, int | float) else -1.0


async def run(
    runs: int, *, references: bool = True, warm: bool = True, workdir: Path | None = None
) -> BenchResult:
    """Median start-up times; `references` adds `import discord` / `import telegram.ext`
    timings (what lazy imports save), `warm` one uncounted run of each command first."""
    env = _env()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="salon-bench-start-", dir=workdir) as tmp:
        root = Path(tmp)
        settings, _ = write_setup(root, behavior={"debounce_s": 0.0})
        config = str(settings.config_path)
        bot = str(root / "bench_lu.toml")
        console = ["console", "--config", config, "--bot", bot, "--clock", "virtual", "--quiet"]
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "salon --help": [py, "-m", "adapters.cli", "--help"],
            "salon console": [py, "-m", "adapters.cli", *console],
        }
        if references:
            commands["import discord"] = [py, "-c", "import discord"]
            commands["import telegram"] = [py, "-c", "import telegram.ext"]
        if warm:
            for cmd in commands.values():
                _time(cmd, env)  # warms the OS file cache and the .pyc files; not counted
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(max(1, runs)):
            for name, cmd in commands.items():
                times[name].append(_time(cmd, env) * 1000.0)
        help_report = probe(["--help"], root)
        console_report = probe(console, root)
    ms = {name: median(values) for name, values in times.items()}
    help_heavy = [m for m in _imported(help_report) if m in HEAVY]
    console_heavy = [m for m in _imported(console_report) if m in HEAVY]
    figures = (
        Figure(
            "startup", "salon --help", ms["salon --help"], "ms",
            "python -c pass", ms["python -c pass"],
            "no discord/telegram import", not help_heavy,
        ),
        Figure(
            "startup", "salon console start->exit", ms["salon console"], "ms",
            "python -c pass", ms["python -c pass"],
            "no discord/telegram import", not console_heavy,
        ),
    )  # fmt: skip
    details: dict[str, float] = {f"{name} ms": value for name, value in ms.items()}
    details["runs"] = float(max(1, runs))
    details["console exit code"] = _number(console_report, "code")
    details["modules loaded by --help"] = _number(help_report, "count")
    details["modules loaded by console"] = _number(console_report, "count")
    notes = (
        "--help imports: " + (", ".join(_imported(help_report)) or "none of the watched"),
        "console imports: " + (", ".join(_imported(console_report)) or "none of the watched"),
    )
    return BenchResult("startup", figures, details, notes)
