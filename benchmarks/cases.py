"""The operations measured, each as a group: the bare baseline first, then the variants."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import als

from ._harness import Group, Variant

storage: als.AsyncLocalStorage[str | None] = als.AsyncLocalStorage(name="request_id")


def noop() -> None:
    pass


@contextlib.contextmanager
def in_request() -> Iterator[None]:
    """Measure as a service would: inside a request, with a store and a couple of other variables set."""
    context = contextvars.copy_context()
    context.run(storage.enter_with, "request-0123456789abcdef")
    context.run(contextvars.ContextVar("tenant").set, "acme")
    context.run(contextvars.ContextVar("trace").set, ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"))
    # Variants switch the process-wide patch per timed block, so the measured
    # code runs in the request context through this one level of indirection.
    token = _request_context.set(context)
    try:
        yield
    finally:
        _request_context.reset(token)


_request_context: contextvars.ContextVar[contextvars.Context] = contextvars.ContextVar("request_context")


def _in_request(fn: Callable[[int], None]) -> Callable[[int], None]:
    def run(number: int) -> None:
        _request_context.get().run(fn, number)

    return run


@contextlib.contextmanager
def als_patched() -> Iterator[None]:
    with als.patched():
        yield


def opentelemetry_instrumented() -> Callable[[], contextlib.AbstractContextManager[Any]] | None:
    """OpenTelemetry's threading instrumentation as a variant, if the benchmark extra is installed."""
    try:
        from opentelemetry.instrumentation.threading import ThreadingInstrumentor  # noqa: PLC0415
    except ImportError:
        return None
    instrumentor = ThreadingInstrumentor()

    @contextlib.contextmanager
    def active() -> Iterator[None]:
        instrumentor.instrument()
        try:
            yield
        finally:
            instrumentor.uninstrument()

    return active


def _patch_variants(run: Callable[[int], None]) -> list[Variant]:
    variants = [Variant("unpatched", run), Variant("als.patch()", run, als_patched)]
    otel = opentelemetry_instrumented()
    if otel is not None:
        variants.append(Variant("OpenTelemetry", run, otel))
    return variants


def patched_hops() -> list[Group]:
    """The standard library's own hops: unpatched, under als.patch(), under OpenTelemetry."""
    pool = ThreadPoolExecutor(max_workers=4)

    @contextlib.contextmanager
    def with_pool() -> Iterator[None]:
        with in_request():
            wait([pool.submit(noop) for _ in range(8)])  # all workers started
            yield

    def round_trip(number: int) -> None:
        submit = pool.submit
        for _ in range(number):
            submit(noop).result()

    def batch(number: int) -> None:
        submit = pool.submit
        for _ in range(number):
            wait([submit(noop) for _ in range(1000)])

    def thread_start_join(number: int) -> None:
        for _ in range(number):
            thread = threading.Thread(target=noop)
            thread.start()
            thread.join()

    loop = asyncio.new_event_loop()

    @contextlib.contextmanager
    def with_loop() -> Iterator[None]:
        with in_request():
            loop.run_until_complete(_warm_default_executor(loop))
            yield

    def run_in_executor(number: int) -> None:
        async def many() -> None:
            for _ in range(number):
                await loop.run_in_executor(None, noop)

        loop.run_until_complete(many())

    return [
        Group(
            "patched ThreadPoolExecutor submit+result",
            "round trip",
            20_000,
            _patch_variants(_in_request(round_trip)),
            with_pool,
            {"als.patch()": 1.04},
        ),
        Group(
            "patched ThreadPoolExecutor 1k-task batch",
            "batch of 1000",
            20,
            _patch_variants(_in_request(batch)),
            with_pool,
            {"als.patch()": 1.10},
        ),
        Group(
            "patched Thread start+join",
            "thread",
            2_000,
            _patch_variants(_in_request(thread_start_join)),
            in_request,
            {"als.patch()": 1.05},
        ),
        Group(
            "patched loop.run_in_executor",
            "await",
            10_000,
            _patch_variants(_in_request(run_in_executor)),
            with_loop,
            {"als.patch()": 1.02},
        ),
    ]


async def _warm_default_executor(loop: asyncio.AbstractEventLoop) -> None:
    await asyncio.gather(*(loop.run_in_executor(None, noop) for _ in range(16)))


GROUPS: dict[str, Callable[[], list[Group]]] = {"patch": patched_hops}
