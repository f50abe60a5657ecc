"""Printing benchmark results: a block per benchmark as it finishes, and the closing table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from bench.common import BenchResult, Figure


def number(value: float) -> str:
    """Compact, aligned-friendly numbers: thousands separators, fewer decimals when large."""
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(figure: Figure) -> str:
    ratio = figure.ratio
    return "inf" if ratio == float("inf") else f"{ratio:.3g}x"


def _met(figure: Figure) -> str:
    if figure.met is None:
        return ""
    return "yes" if figure.met else "NO"


def block(result: BenchResult) -> str:
    """The figures and supporting numbers of one benchmark."""
    lines = [f"== {result.name}"]
    for f in result.figures:
        target = f"  [target {f.target}: {_met(f)}]" if f.target else ""
        lines.append(
            f"  {f.name}: {number(f.value)} {f.unit}  vs {f.baseline_name}: "
            f"{number(f.baseline)} {f.unit}  (ratio {_ratio(f)}){target}"
        )
    for key, value in result.details.items():
        lines.append(f"    {key}: {number(value)}")
    lines.extend(f"    {note}" for note in result.notes)
    return "\n".join(lines)


def table(results: Sequence[BenchResult]) -> str:
    """One row per figure: value, baseline, ratio, target and whether it is met."""
    header = ("benchmark", "figure", "value", "baseline (same run)", "baseline", "ratio", "target",
              "met")  # fmt: skip
    rows = [header]
    for result in results:
        for f in result.figures:
            rows.append(
                (
                    f.bench, f.name, f"{number(f.value)} {f.unit}", f.baseline_name,
                    f"{number(f.baseline)} {f.unit}", _ratio(f), f.target, _met(f),
                )
            )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    out = []
    for index, row in enumerate(rows):
        out.append(" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


def markdown(results: Sequence[BenchResult]) -> str:
    """The same table as Markdown, for the README."""
    rows = ["| benchmark | figure | value | baseline (same run) | ratio | target | met |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for result in results:
        for f in result.figures:
            rows.append(
                f"| {f.bench} | {f.name} | {number(f.value)} {f.unit} | {f.baseline_name}: "
                f"{number(f.baseline)} {f.unit} | {_ratio(f)} | {f.target} | {_met(f)} |"
            )
    return "\n".join(rows)


def as_json(results: Sequence[BenchResult], meta: dict[str, Any]) -> str:
    payload = {
        "meta": meta,
        "results": [
            {
                "name": r.name,
                "figures": [{**asdict(f), "ratio": f.ratio} for f in r.figures],
                "details": dict(r.details),
                "notes": list(r.notes),
            }
            for r in results
        ],
    }
    return json.dumps(payload, indent=2, default=str)
