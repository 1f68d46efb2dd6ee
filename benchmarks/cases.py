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
from .outgoing import outgoing_groups
from .processes import process_groups
from .web import web_groups

storage: als.AsyncLocalStorage[str | None] = als.AsyncLocalStorage(name="request_id")


def noop() -> None:
    pass


_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant")
_trace: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("trace")


@contextlib.contextmanager
def in_request() -> Iterator[None]:
    """Measure as a service would: inside a request, with a store and a couple of other variables set."""
    context = contextvars.copy_context()
    context.run(storage.enter_with, "request-0123456789abcdef")
    context.run(_tenant.set, "acme")
    context.run(_trace.set, ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"))
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


def round_trip(executor: Any, hand_copied: bool = False) -> Callable[[int], None]:
    """submit(noop).result(), n times, in the request."""

    def run(number: int) -> None:
        submit = executor.submit
        for _ in range(number):
            submit(noop).result()

    def run_hand_copied(number: int) -> None:
        submit = executor.submit
        for _ in range(number):
            submit(contextvars.copy_context().run, noop).result()

    return _in_request(run_hand_copied if hand_copied else run)


def batch(executor: Any, hand_copied: bool = False) -> Callable[[int], None]:
    """n batches of 1000 submits, each waited for, in the request."""

    def run(number: int) -> None:
        submit = executor.submit
        for _ in range(number):
            wait([submit(noop) for _ in range(1000)])

    def run_hand_copied(number: int) -> None:
        submit = executor.submit
        for _ in range(number):
            wait([submit(contextvars.copy_context().run, noop) for _ in range(1000)])

    return _in_request(run_hand_copied if hand_copied else run)


class MinimalOverride(ThreadPoolExecutor):
    """The least a propagating subclass can do: copy, and hand the copy's run to super().submit."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


class MinimalThread(threading.Thread):
    """The least a propagating subclass can do: copy in start(), run the target in the copy."""

    _copy: contextvars.Context

    def start(self) -> None:
        self._copy = contextvars.copy_context()
        super().start()

    def run(self) -> None:
        self._copy.run(super().run)


def start_join(make: Callable[[], threading.Thread]) -> Callable[[int], None]:
    """Start and join n threads made by ``make``, in the request."""

    def run(number: int) -> None:
        for _ in range(number):
            thread = make()
            thread.start()
            thread.join()

    return _in_request(run)


def awaiting(loop: asyncio.AbstractEventLoop, make: Callable[[], Any]) -> Callable[[int], None]:
    """Await ``make()`` n times on ``loop``, in the request."""

    def run(number: int) -> None:
        async def many() -> None:
            for _ in range(number):
                await make()

        loop.run_until_complete(many())

    return _in_request(run)


def warmed(*executors: Any) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """Group setup: in a request, with every worker of ``executors`` already started."""

    @contextlib.contextmanager
    def setup() -> Iterator[None]:
        with in_request():
            for executor in executors:
                wait([executor.submit(noop) for _ in range(8)])
            yield

    return setup


def warmed_loop(loop: asyncio.AbstractEventLoop) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """Group setup: in a request, with ``loop``'s default executor already started."""

    @contextlib.contextmanager
    def setup() -> Iterator[None]:
        with in_request():
            loop.run_until_complete(_warm_default_executor(loop))
            yield

    return setup


def _patch_variants(run: Callable[[int], None]) -> list[Variant]:
    variants = [Variant("unpatched", run), Variant("als.patch()", run, als_patched)]
    otel = opentelemetry_instrumented()
    if otel is not None:
        variants.append(Variant("OpenTelemetry", run, otel))
    return variants


def patched_hops() -> list[Group]:
    """The standard library's own hops: unpatched, under als.patch(), under OpenTelemetry."""
    pool = ThreadPoolExecutor(max_workers=4)
    loop = asyncio.new_event_loop()
    with_pool = warmed(pool)

    return [
        Group(
            "patched ThreadPoolExecutor submit+result",
            "round trip",
            20_000,
            _patch_variants(round_trip(pool)),
            with_pool,
            {"als.patch()": 1.04},
        ),
        Group(
            "patched ThreadPoolExecutor 1k-task batch",
            "batch of 1000",
            20,
            _patch_variants(batch(pool)),
            with_pool,
            {"als.patch()": 1.10},
        ),
        Group(
            "patched Thread start+join",
            "thread",
            2_000,
            _patch_variants(start_join(lambda: threading.Thread(target=noop))),
            in_request,
            {"als.patch()": 1.05},
        ),
        Group(
            "patched loop.run_in_executor",
            "await",
            10_000,
            _patch_variants(awaiting(loop, lambda: loop.run_in_executor(None, noop))),
            warmed_loop(loop),
            {"als.patch()": 1.02},
        ),
    ]


def operations() -> list[Group]:
    """get_store, run, scope and bind against the bare contextvars code a user would write instead."""
    raw: contextvars.ContextVar[str | None] = contextvars.ContextVar("raw", default=None)
    get_store, raw_get = storage.get_store, raw.get

    def loop_raw_get(number: int) -> None:
        for _ in range(number):
            raw_get()

    def loop_get_store(number: int) -> None:
        for _ in range(number):
            get_store()

    def noop_fn() -> None:
        pass

    def hand_run(store: str | None, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        # What run() does, written out: copy, set the variable in the copy, run fn in it.
        context = contextvars.copy_context()
        context.run(raw.set, store)
        return context.run(fn, *args, **kwargs)

    def loop_hand_run(number: int) -> None:
        for _ in range(number):
            hand_run("x", noop_fn)

    def loop_run(number: int) -> None:
        run = storage.run
        for _ in range(number):
            run("x", noop_fn)

    def loop_token(number: int) -> None:
        for _ in range(number):
            token = raw.set("x")
            raw.reset(token)

    def loop_scope(number: int) -> None:
        scope = storage.scope
        for _ in range(number):
            with scope("x"):
                pass

    def loop_hand_bound(number: int) -> None:
        captured = contextvars.copy_context()
        for _ in range(number):
            captured.copy().run(noop_fn)

    def loop_bound(number: int) -> None:
        bound = als.bind(noop_fn)
        for _ in range(number):
            bound()

    return [
        Group(
            "get_store() outside any run",
            "call",
            1_000_000,
            [Variant("ContextVar.get()", loop_raw_get), Variant("get_store()", loop_get_store)],
            targets={"get_store()": 3.0},
            kind="operation",
        ),
        Group(
            "get_store() inside a run",
            "call",
            1_000_000,
            [
                Variant("ContextVar.get()", _in_request(loop_raw_get)),
                Variant("get_store()", _in_request(loop_get_store)),
            ],
            in_request,
            {"get_store()": 3.0},
            "operation",
        ),
        Group(
            "run(store, fn)",
            "call",
            200_000,
            [Variant("copy+set+run by hand", loop_hand_run), Variant("run()", loop_run)],
            targets={"run()": 1.3},
            kind="operation",
        ),
        Group(
            "scope() enter+exit",
            "block",
            200_000,
            [Variant("ContextVar set/reset", loop_token), Variant("with scope()", loop_scope)],
            kind="operation",
        ),
        Group(
            "bound function call",
            "call",
            200_000,
            [Variant("captured.copy().run", loop_hand_bound), Variant("bind(fn)()", loop_bound)],
            kind="operation",
        ),
    ]


def als_hops() -> list[Group]:
    """als's executors, threads, timers and run_in_executor against the bare standard library."""
    pool = ThreadPoolExecutor(max_workers=4)
    context_pool = als.ContextThreadPoolExecutor(max_workers=4)
    wrapped = als.wrap_executor(ThreadPoolExecutor(max_workers=4))
    minimal = MinimalOverride(max_workers=4)

    with_pools = warmed(pool, context_pool, wrapped)
    loop = asyncio.new_event_loop()
    with_loop = warmed_loop(loop)

    def mapped(executor: Any) -> Callable[[int], None]:
        def run(number: int) -> None:
            for _ in range(number):
                for _ in executor.map(_identity, range(1000)):
                    pass

        return _in_request(run)

    async def hundred_awaits() -> None:
        for _ in range(100):
            await asyncio.sleep(0)

    return [
        Group(
            "submit+result round trip",
            "round trip",
            20_000,
            # The last two are references for the floor: the copy alone, and
            # the least any Python-level submit() override costs on top of it.
            [
                Variant("ThreadPoolExecutor", round_trip(pool)),
                Variant("ContextThreadPoolExecutor", round_trip(context_pool)),
                Variant("wrap_executor", round_trip(wrapped)),
                Variant("copy_context().run by hand", round_trip(pool, hand_copied=True)),
                Variant("minimal submit() override", round_trip(minimal)),
            ],
            warmed(pool, context_pool, wrapped, minimal),
            {"ContextThreadPoolExecutor": 1.03, "wrap_executor": 1.03},
        ),
        Group(
            "1k-task batch",
            "batch of 1000",
            20,
            [  # with the same two references
                Variant("ThreadPoolExecutor", batch(pool)),
                Variant("ContextThreadPoolExecutor", batch(context_pool)),
                Variant("wrap_executor", batch(wrapped)),
                Variant("copy_context().run by hand", batch(pool, hand_copied=True)),
                Variant("minimal submit() override", batch(minimal)),
            ],
            warmed(pool, context_pool, wrapped, minimal),
            {"ContextThreadPoolExecutor": 1.09, "wrap_executor": 1.09},
        ),
        Group(
            "map over 1000 items",
            "map of 1000",
            20,
            [
                Variant("ThreadPoolExecutor", mapped(pool)),
                Variant("ContextThreadPoolExecutor", mapped(context_pool)),
            ],
            with_pools,
            {"ContextThreadPoolExecutor": 1.10},
        ),
        Group(
            "Thread start+join",
            "thread",
            2_000,
            [
                Variant("threading.Thread", start_join(lambda: threading.Thread(target=noop))),
                Variant("ContextThread", start_join(lambda: als.ContextThread(target=noop))),
                # Reference for the floor: the least a propagating subclass can do.
                Variant("minimal start()/run() override", start_join(lambda: MinimalThread(target=noop))),
            ],
            in_request,
            {"ContextThread": 1.02},
        ),
        Group(
            "Timer start+join",
            "timer",
            2_000,
            [
                Variant("threading.Timer", start_join(lambda: threading.Timer(0, noop))),
                Variant("ContextTimer", start_join(lambda: als.ContextTimer(0, noop))),
            ],
            in_request,
            {"ContextTimer": 1.02},
        ),
        Group(
            "run_in_executor",
            "await",
            10_000,
            [
                Variant("loop.run_in_executor", awaiting(loop, lambda: loop.run_in_executor(None, noop))),
                Variant("als.run_in_executor", awaiting(loop, lambda: als.run_in_executor(None, noop))),
                Variant("asyncio.to_thread", awaiting(loop, lambda: asyncio.to_thread(noop))),
            ],
            with_loop,
            {"als.run_in_executor": 1.02},
        ),
        Group(
            "coroutine with 100 awaits",
            "coroutine",
            500,
            [
                Variant("bare coroutine", awaiting(loop, hundred_awaits)),
                Variant("run(store, coroutine)", awaiting(loop, lambda: storage.run("x", hundred_awaits))),
            ],
            with_loop,
            {"run(store, coroutine)": 1.3},
        ),
    ]


def _identity(n: int) -> int:
    return n


async def _warm_default_executor(loop: asyncio.AbstractEventLoop) -> None:
    await asyncio.gather(*(loop.run_in_executor(None, noop) for _ in range(16)))


GROUPS: dict[str, Callable[[], list[Group]]] = {
    "core": lambda: operations() + als_hops(),
    "patch": patched_hops,
    "web": web_groups,
    "processes": process_groups,
    "outgoing": outgoing_groups,
}
