"""Leaks: a request's store is released when the request ends, by reference counting alone.

Each check runs with the cyclic garbage collector disabled, so a store that
is only freed by ``gc.collect()`` (a reference cycle through a context, a
thread or a future) fails the test, not just one that is never freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import sys
import threading
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import als
from als import AsyncLocalStorage

from .helpers import TIMEOUT


class Store:
    """A request's store: weak-referenceable."""


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _pool_hops(storage: AsyncLocalStorage[object]) -> dict[str, Callable[[ThreadPoolExecutor], None]]:
    return {
        "ContextThreadPoolExecutor.submit": lambda _: _with_pool(
            als.ContextThreadPoolExecutor, lambda p: p.submit(storage.get_store).result(TIMEOUT)
        ),
        "ContextThreadPoolExecutor.map": lambda _: _with_pool(
            als.ContextThreadPoolExecutor, lambda p: list(p.map(lambda _: storage.get_store(), [1]))
        ),
        "wrap_executor.submit": lambda plain: (
            als.wrap_executor(plain).submit(storage.get_store).result(TIMEOUT)
        ),
        "done callback": lambda plain: _callback(als.wrap_executor(plain), storage),
    }


def _with_pool(make: Callable[..., ThreadPoolExecutor], use: Callable[[ThreadPoolExecutor], object]) -> None:
    with make(max_workers=1) as pool:
        use(pool)


def _callback(executor: als._executors.ContextExecutor, storage: AsyncLocalStorage[object]) -> None:
    ran = threading.Event()
    future = executor.submit(storage.get_store)
    future.add_done_callback(lambda _: ran.set())
    future.result(TIMEOUT)
    assert ran.wait(TIMEOUT)


def _thread_hops(storage: AsyncLocalStorage[object]) -> dict[str, Callable[[], None]]:
    def start_join(thread: threading.Thread) -> None:
        thread.start()
        thread.join(TIMEOUT)

    async def coroutine() -> None:
        await asyncio.sleep(0)
        await als.run_in_executor(None, storage.get_store)

    return {
        "run": lambda: storage.run(Store(), storage.get_store),
        "bind": lambda: als.bind(storage.get_store)(),  # noqa: PLW0108 - bind inside the request
        "snapshot": lambda: als.snapshot()(storage.get_store),
        "ContextThread": lambda: start_join(als.ContextThread(target=storage.get_store)),
        "ContextTimer": lambda: start_join(als.ContextTimer(0, storage.get_store)),
        "run over a coroutine, run_in_executor": lambda: asyncio.run(coroutine()),
    }


HOPS = [
    "ContextThreadPoolExecutor.submit",
    "ContextThreadPoolExecutor.map",
    "wrap_executor.submit",
    "done callback",
    "run",
    "bind",
    "snapshot",
    "ContextThread",
    "ContextTimer",
    "run over a coroutine, run_in_executor",
]


@pytest.mark.usefixtures("no_gc")
@pytest.mark.parametrize("patch_on", [False, True], ids=["unpatched", "patched"])
@pytest.mark.parametrize("hop", HOPS)
def test_store_released_when_the_request_ends(
    storage: AsyncLocalStorage[object], hop: str, patch_on: bool
) -> None:
    """After the request, nothing keeps its store: not the hop, not the pool, not a cycle."""
    store = Store()
    ref = weakref.ref(store)
    with ThreadPoolExecutor(max_workers=1) as plain, als.patched() if patch_on else contextlib.nullcontext():
        pool_hops = _pool_hops(storage)
        if hop in pool_hops:
            storage.run(store, pool_hops[hop], plain)
        else:
            storage.run(store, _thread_hops(storage)[hop])
        # The result (or the callback's event) can reach this thread while the worker still holds the
        # hop's work item; its one worker takes the next item only once it let go of that one.
        plain.submit(lambda: None).result(TIMEOUT)
        del store
        assert ref() is None, f"{hop}: the store outlived its request"


@pytest.mark.usefixtures("no_gc")
def test_patched_stdlib_hops_release_the_store(storage: AsyncLocalStorage[object]) -> None:
    """Under the patch, plain pools, threads, timers and run_in_executor keep nothing of a request."""
    store = Store()
    ref = weakref.ref(store)

    def request() -> None:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(storage.get_store).result(TIMEOUT)
            list(pool.map(lambda _: storage.get_store(), [1, 2]))
        for thread in (threading.Thread(target=storage.get_store), threading.Timer(0, storage.get_store)):
            thread.start()
            thread.join(TIMEOUT)

        async def main() -> None:
            await asyncio.get_running_loop().run_in_executor(None, storage.get_store)
            await asyncio.to_thread(storage.get_store)

        asyncio.run(main())

    with als.patched():
        storage.run(store, request)
        del store
        assert ref() is None


@pytest.mark.timeout(300)  # about 5 s here: tracemalloc traces every allocation
@pytest.mark.parametrize("patch_on", [False, True], ids=["ContextThreadPoolExecutor", "patched stdlib pool"])
def test_50k_pooled_tasks_do_not_grow_memory(storage: AsyncLocalStorage[object], patch_on: bool) -> None:
    """50,000 tasks through one small pool, in batches of 10,000 each from a request: memory stays flat
    (64 KiB at most: a leak of even 2 bytes a task would show)."""

    def task(n: int) -> int:
        assert storage.get_store() == "request"
        return n

    def batch(pool: ThreadPoolExecutor, count: int) -> None:
        storage.run("request", lambda: sum(pool.map(task, range(count), timeout=120)))

    with als.patched() if patch_on else contextlib.nullcontext():
        pool = ThreadPoolExecutor(max_workers=2) if patch_on else als.ContextThreadPoolExecutor(max_workers=2)
        with pool:
            batch(pool, 10_000)  # warm up: worker threads, caches, free lists
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for _ in range(5):
                    batch(pool, 10_000)
                gc.collect()
                growth = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
    assert growth < 64 * 1024, f"grew {growth} bytes over 50,000 tasks"


@pytest.mark.usefixtures("no_gc")
def test_disable_keeps_nothing(storage: AsyncLocalStorage[object]) -> None:
    """After disable(), neither ended requests' stores nor the storage's old variable are kept."""
    store = Store()
    ref = weakref.ref(store)
    old_var = storage._var  # not weak-referenceable: its reference count tells instead
    with als.ContextThreadPoolExecutor(max_workers=1) as pool:
        storage.run(store, pool.submit, storage.get_store).result(TIMEOUT)
        pool.submit(lambda: None).result(TIMEOUT)  # its one worker has let go of the first item
        storage.disable()
        del store
        assert ref() is None
        # As many references as a variable only a local refers to (3.14 counts borrowed ones differently).
        probe: contextvars.ContextVar[object] = contextvars.ContextVar("probe")
        assert sys.getrefcount(old_var) == sys.getrefcount(probe)
        assert storage.run("after", pool.submit, storage.get_store).result(TIMEOUT) == "after"
