"""The README's chart of one run: hop overheads, operation ratios and memory, as a PNG.

Needs matplotlib (``pip install -e .[bench]``); the benchmarks run without it.
Bars are medians, whiskers the interquartile range of the per-repetition
ratios, black ticks the targets; green met, red missed, grey has no target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._harness import Result
from .memory import MemoryResult


def _colour(met: bool | None) -> str:
    return "tab:gray" if met is None else ("tab:green" if met else "tab:red")


def _bars(axis: Any, results: list[Result], scale: float, offset: float) -> None:
    """One bar per result: (ratio - offset) * scale, with IQR whiskers and a target tick."""
    places = list(range(len(results)))[::-1]
    values = [(r.ratio - offset) * scale for r in results]
    axis.barh(places, values, color=[_colour(r.met) for r in results], height=0.6)
    axis.errorbar(
        values,
        places,
        xerr=[
            [(r.ratio - r.quartiles[0]) * scale for r in results],
            [(r.quartiles[1] - r.ratio) * scale for r in results],
        ],
        fmt="none",
        ecolor="black",
        elinewidth=0.8,
        capsize=2,
    )
    for place, result in zip(places, results, strict=True):
        if result.target is not None:
            target = (result.target - offset) * scale
            axis.plot([target, target], [place - 0.4, place + 0.4], color="black", linewidth=2)
    axis.axvline(0, color="black", linewidth=0.8)
    axis.set_yticks(places, [f"{r.group}: {r.variant}" for r in results], fontsize=7)


def write_chart(results: list[Result], memory: list[MemoryResult], path: Path, title: str) -> None:
    import matplotlib  # noqa: PLC0415 - optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    hops = [r for r in results if r.kind in ("hop", "request")]
    operations = [r for r in results if r.kind == "operation"]
    panels = [(n, len(rows)) for n, rows in (("hops", hops), ("ops", operations), ("memory", memory)) if rows]
    figure, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, 0.3 * sum(size for _, size in panels) + 1.2 * len(panels)),
        gridspec_kw={"height_ratios": [size for _, size in panels]},
        squeeze=False,
    )
    for (name, _), (axis,) in zip(panels, axes, strict=True):
        if name == "hops":
            _bars(axis, hops, 100, 1)
            axis.set_xlabel("thread hops: time added to the bare hop, % (median, IQR; tick = target)")
        elif name == "ops":
            _bars(axis, operations, 1, 0)
            axis.set_xlabel("operations: time over bare contextvars code, x (median, IQR; tick = target)")
        else:
            places = list(range(len(memory)))[::-1]
            colours = [_colour(m.met) for m in memory]
            axis.barh(places, [m.over_bare for m in memory], color=colours, height=0.6)
            for place, m in zip(places, memory, strict=True):
                label = f"{m.bytes_per_task:,.0f} B in all"
                axis.text(m.over_bare + 2, place, label, va="center", fontsize=7)
            axis.set_yticks(places, [m.variant for m in memory], fontsize=7)
            axis.set_xlabel("memory: bytes held per pending task over the bare ThreadPoolExecutor")
    axes[0][0].set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
