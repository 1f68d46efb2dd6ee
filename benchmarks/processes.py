"""Carrying stores beyond the process: a process-pool round trip and a Celery publish, with and without.

Both run inside a request whose carried storages hold a request id and a
small tenant dict, as a service's would. The process pool has one worker
(the round trip is pickling, a pipe and the worker's call); the Celery
publishes go to kombu's in-memory transport, so no broker is measured, only
what publishing costs in this process, ``als.celery.install`` on and off.

    python -m benchmarks --only processes
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import als

from ._harness import Group, Variant

request_id: als.AsyncLocalStorage[str | None] = als.AsyncLocalStorage("bench.request_id", carry=True)
tenant: als.AsyncLocalStorage[dict[str, str] | None] = als.AsyncLocalStorage("bench.tenant", carry=True)


def noop() -> None:
    pass


def _in_request(fn: Callable[[int], None]) -> Callable[[int], None]:
    context = contextvars.Context()
    context.run(request_id.enter_with, "request-0123456789abcdef")
    context.run(tenant.enter_with, {"name": "acme", "plan": "gold"})

    def run(number: int) -> None:
        context.run(fn, number)

    return run


def _round_trips(executor: Any) -> Callable[[int], None]:
    def run(number: int) -> None:
        submit = executor.submit
        for _ in range(number):
            submit(noop).result()

    return _in_request(run)


def _with_id(rid: str, fn: Callable[[], Any]) -> Any:
    """The reference: what a hand-written hand-off does in the worker (the id passed as an argument)."""
    return request_id.run(rid, fn)


def _hand_carried(executor: Any) -> Callable[[int], None]:
    def run(number: int) -> None:
        submit = executor.submit
        for _ in range(number):
            submit(_with_id, request_id.get_store(), noop).result()

    return _in_request(run)


def process_groups() -> list[Group]:
    holder: list[ProcessPoolExecutor] = []

    @contextlib.contextmanager
    def pool_running() -> Iterator[None]:
        try:
            yield
        finally:
            holder[0].shutdown()

    pool = ProcessPoolExecutor(max_workers=1)
    holder.append(pool)
    wrapped = als.wrap_executor(pool)
    groups = [
        Group(
            "process pool submit+result round trip",
            "round trip",
            400,
            [
                Variant("ProcessPoolExecutor", _round_trips(pool)),
                Variant("wrap_executor (carrying)", _round_trips(wrapped)),
                Variant("als.patch() (carrying)", _round_trips(pool), als.patched),
                Variant("the id as an argument, by hand", _hand_carried(pool)),
            ],
            pool_running,
            # A no-op task: the fixed cost of carrying (capture, pickling, entering the stores in the
            # worker) is all there is to measure. The by-hand reference shows the floor of any way.
            {"wrap_executor (carrying)": 1.25, "als.patch() (carrying)": 1.25},
        )
    ]
    groups.append(_celery_group())
    return groups


def _celery_group() -> Group:
    from celery import Celery  # noqa: PLC0415 - the bench extra installs it

    import als.celery  # noqa: PLC0415

    app = Celery("bench", broker="memory://")
    app.conf.task_ignore_result = True

    @app.task
    def task(n: int) -> int:  # pragma: no cover - never consumed here
        return n

    def publish(number: int) -> None:
        delay = task.delay
        for n in range(number):
            delay(n)

    @contextlib.contextmanager
    def installed() -> Iterator[None]:
        undo = als.celery.install(app)
        try:
            yield
        finally:
            undo()

    @contextlib.contextmanager
    def connected() -> Iterator[None]:
        with app.connection_for_write() as connection:
            yield
            connection.default_channel.queue_purge("celery")

    return Group(
        "Celery publish (delay)",
        "publish",
        2_000,
        [
            Variant("task.delay()", _in_request(publish)),
            Variant("als.celery.install", _in_request(publish), installed),
        ],
        connected,
        {"als.celery.install": 1.10},
        kind="operation",
    )
