"""Interleaved, rotated repetitions; a ratio per repetition against the group's baseline.

Each group times its variants one after the other inside every repetition, in
an order that rotates between repetitions, so that drift on a shared machine
hits every variant alike. The figure reported for a variant is the median of
its per-repetition ratios to the baseline, with their interquartile range
(thread hand-offs on a shared machine have outliers that min..max would show
instead of the typical spread).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Variant:
    name: str
    run: Callable[[int], None]  # runs the operation n times
    active: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext


@dataclass
class Group:
    name: str
    unit: str  # what one operation is, for the per-operation time
    number: int  # operations per timed block (full run; --quick divides it)
    variants: list[Variant]
    setup: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    targets: dict[str, float] = field(default_factory=dict)  # variant -> max ratio
    # "hop" (a thread hand-off), "operation" (in-thread, sub-microsecond) or
    # "request" (an HTTP request through a real server)
    kind: str = "hop"

    @property
    def baseline(self) -> Variant:
        return self.variants[0]


@dataclass
class Result:
    group: str
    variant: str
    baseline: str
    per_op_ns: list[float]
    ratios: list[float]
    target: float | None
    kind: str

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def per_op_median(self) -> float:
        return statistics.median(self.per_op_ns)

    @property
    def quartiles(self) -> tuple[float, float]:
        q = statistics.quantiles(self.ratios, n=4)
        return q[0], q[2]

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target


def pin_to_one_cpu() -> int | None:
    """Pin this process to one CPU (ratios are far steadier); returns it, or None if not possible."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[-1]
    os.sched_setaffinity(0, {cpu})
    return cpu


def _timed(variant: Variant, number: int) -> float:
    with variant.active():
        start = time.perf_counter_ns()
        variant.run(number)
        return (time.perf_counter_ns() - start) / number


def measure(group: Group, repetitions: int, number: int) -> Iterator[Result]:
    names = [v.name for v in group.variants]
    per_op: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    with group.setup():
        for variant in group.variants:  # warm-up: imports, worker threads, caches
            _timed(variant, max(1, number // 10))
        for repetition in range(repetitions):
            shift = repetition % len(group.variants)
            order = group.variants[shift:] + group.variants[:shift]
            times = {v.name: _timed(v, number) for v in order}
            for name in names:
                per_op[name].append(times[name])
                ratios[name].append(times[name] / times[group.baseline.name])
    for name in names[1:]:
        yield Result(
            group.name,
            name,
            group.baseline.name,
            per_op[name],
            ratios[name],
            group.targets.get(name),
            group.kind,
        )
