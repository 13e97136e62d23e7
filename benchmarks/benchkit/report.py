"""Tables (markdown) and plots (PNG) of benchmark results."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MIB = 1024**2


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; cells are str()-ed."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def seconds(value: float | None) -> str:
    """``12 ms`` / ``1.23 s`` / ``-``."""
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def mib(value: float) -> str:
    """Bytes as ``123 MiB``."""
    return f"{value / MIB:,.0f} MiB"


def median_max(values: Sequence[float]) -> str:
    """``median (max)`` of a list of durations."""
    if not values:
        return "-"
    return f"{seconds(statistics.median(values))} ({seconds(max(values))})"


def plot_lines(
    path: Path, title: str, xlabel: str, ylabel: str, series: dict[str, list[tuple[float, float]]], logy: bool = False
) -> None:
    """One line per series of (x, y) points, written as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, points in series.items():
        if points:
            xs, ys = zip(*sorted(points))
            axes.plot(xs, ys, marker="o", label=name)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if logy:
        axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def write_report(out: Path, stem: str, results: dict[str, Any], markdown: str, extra: str = "") -> None:
    """Write ``STEM.json`` and ``STEM.md`` to ``out``, print the markdown, say where they went."""
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    (out / f"{stem}.md").write_text(markdown)
    print()
    print(markdown)
    print(f"Written: {out / f'{stem}.md'}, {out / f'{stem}.json'}{extra}", file=sys.stderr)
