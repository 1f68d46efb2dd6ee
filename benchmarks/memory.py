"""Memory held per pending task: what a queued submit() costs while it waits for a worker.

One worker is blocked, ``number`` tasks are submitted behind it from inside a
request, and tracemalloc reports what those submits allocated and still hold.
The figure is deterministic for a given Python (no timing involved), so one
measurement per variant is enough; it is taken twice and must agree.

The target is the issue's: at most one context copy over the bare pool. The
size of one context copy is measured in the same run, as the hand-written
propagation ``pool.submit(copy_context().run, fn)``.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import tracemalloc
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass
from typing import Any

import als

from .cases import _in_request, als_patched, in_request, noop, opentelemetry_instrumented

# Amortized growth (the work queue's deque blocks, a type's caches) can add a
# fraction of a byte per task either way.
TOLERANCE = 1.0


@dataclass
class MemoryResult:
    variant: str
    passes: list[float]  # bytes per pending task, one figure per pass
    over_bare: float
    target: float | None  # most bytes over bare allowed, or None for references

    @property
    def bytes_per_task(self) -> float:
        return self.passes[-1]

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.over_bare <= self.target + TOLERANCE


def _plain_submit(executor: Executor) -> Future[Any]:
    return executor.submit(noop)


def _hand_copied_submit(executor: Executor) -> Future[Any]:
    return executor.submit(copy_context().run, noop)


def held_per_pending_task(
    make: Callable[[], Executor],
    submit: Callable[[Executor], Future[Any]] = _plain_submit,
    number: int = 2000,
) -> float:
    """Bytes still allocated per task while ``number`` submits wait behind a blocked worker."""
    executor = make()
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait()

    try:
        executor.submit(block)
        started.wait()
        futures: list[Future[Any] | None] = [None] * number  # allocated before measuring

        def submit_all(n: int) -> None:
            for i in range(n):
                futures[i] = submit(executor)

        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            _in_request(submit_all)(number)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        return held / number
    finally:
        release.set()
        executor.shutdown(wait=True)


def _bare_pool() -> Executor:
    return ThreadPoolExecutor(max_workers=1)


def pending_task_memory(number: int = 2000) -> list[MemoryResult]:
    """Each variant's bytes per pending task, against the bare pool measured in the same run."""
    nothing = contextlib.nullcontext
    # name, executor factory, submit, active while measuring, judged against the target
    variants: list[tuple[str, Callable[[], Executor], Callable[[Executor], Future[Any]], Any, bool]] = [
        ("ThreadPoolExecutor", _bare_pool, _plain_submit, nothing, False),
        ("copy_context().run by hand", _bare_pool, _hand_copied_submit, nothing, False),
        (
            "ContextThreadPoolExecutor",
            lambda: als.ContextThreadPoolExecutor(max_workers=1),
            _plain_submit,
            nothing,
            True,
        ),
        ("wrap_executor", lambda: als.wrap_executor(_bare_pool()), _plain_submit, nothing, True),
        ("ThreadPoolExecutor, als.patch()", _bare_pool, _plain_submit, als_patched, True),
    ]
    otel = opentelemetry_instrumented()
    if otel is not None:
        variants.append(("ThreadPoolExecutor, OpenTelemetry", _bare_pool, _plain_submit, otel, False))

    held: dict[str, list[float]] = {name: [] for name, *_ in variants}
    with in_request():
        for _ in range(2):  # deterministic figures: the second pass confirms the first
            for name, make, submit, active, _judged in variants:
                with active():
                    held[name].append(held_per_pending_task(make, submit, number))

    bare = held["ThreadPoolExecutor"][-1]
    one_copy = held["copy_context().run by hand"][-1] - bare
    return [
        MemoryResult(name, held[name], held[name][-1] - bare, one_copy if judged else None)
        for name, *_, judged in variants
    ]
