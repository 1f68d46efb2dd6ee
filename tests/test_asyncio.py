"""run_in_executor and install_default_executor: asyncio's thread hops with the context."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import als
from als import AsyncLocalStorage, ContextThreadPoolExecutor

from .helpers import TIMEOUT, stdlib_loses_context

task_var: contextvars.ContextVar[str] = contextvars.ContextVar("task_var", default="unset")


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


class TestRunInExecutor:
    @pytest.mark.parametrize("which", ["default", "plain pool", "propagating pool"])
    def test_fn_sees_the_tasks_store(
        self, storage: AsyncLocalStorage[object], pool: ThreadPoolExecutor, which: str
    ) -> None:
        """On the default executor, a plain pool and a propagating pool, fn sees the calling task's store."""
        executors = {"default": None, "plain pool": pool, "propagating pool": ContextThreadPoolExecutor(1)}
        executor = executors[which]

        async def request(n: int) -> tuple[object, object]:
            seen = await als.run_in_executor(executor, storage.get_store)
            return seen, storage.get_store()

        async def main() -> list[tuple[object, object]]:
            return await asyncio.gather(*(storage.run(f"req {n}", request, n) for n in range(4)))

        try:
            assert asyncio.run(main()) == [(f"req {n}", f"req {n}") for n in range(4)]
        finally:
            if executor is not None:
                executor.shutdown()

    def test_kwargs_and_positional_only(self, storage: AsyncLocalStorage[object]) -> None:
        """Keyword arguments reach fn, including ones named 'fn' and 'executor'."""

        def target(a: int, *, fn: str, executor: str) -> tuple[int, str, str, object]:
            return a, fn, executor, storage.get_store()

        async def main() -> tuple[int, str, str, object]:
            return await als.run_in_executor(None, target, 1, fn="f", executor="e")

        assert asyncio.run(storage.run("A", main)) == (1, "f", "e", "A")

    def test_copied_when_called_not_when_awaited(self, storage: AsyncLocalStorage[object]) -> None:
        """Like loop.run_in_executor it submits at once: a later change in the task does not reach fn."""
        release = threading.Event()

        def target() -> object:
            assert release.wait(TIMEOUT)
            return storage.get_store()

        async def main() -> object:
            future = als.run_in_executor(None, target)
            assert isinstance(future, asyncio.Future)
            storage.enter_with("changed after the call")
            release.set()
            return await future

        assert asyncio.run(storage.run("A", main)) == "A"

    def test_nothing_leaks_back_or_across_jobs(
        self, storage: AsyncLocalStorage[object], pool: ThreadPoolExecutor
    ) -> None:
        """What fn sets reaches neither the task nor the next job on the same worker."""

        def first() -> None:
            storage.enter_with("set by first")
            task_var.set("set by first")

        async def main() -> tuple[object, str, object, str]:
            await als.run_in_executor(pool, first)
            second = await als.run_in_executor(pool, lambda: (storage.get_store(), task_var.get()))
            return (*second, storage.get_store(), task_var.get())  # type: ignore[return-value]

        assert asyncio.run(storage.run("A", main)) == ("A", "unset", "A", "unset")

    def test_exception_reaches_the_awaiting_task(self) -> None:
        """fn's exception is raised by the await, as the same object."""
        error = OSError("disk")

        def fail() -> None:
            raise error

        async def main() -> BaseException | None:
            try:
                await als.run_in_executor(None, fail)
            except OSError as exc:
                return exc
            return None

        assert asyncio.run(main()) is error

    def test_not_callable_raises_at_the_call(self) -> None:
        """A non-callable fn is a TypeError when run_in_executor is called, before any await."""

        async def main() -> None:
            with pytest.raises(
                TypeError, match=r"^run_in_executor\(\) argument 'fn' must be callable, not int$"
            ):
                als.run_in_executor(None, 42)  # type: ignore[arg-type]

        asyncio.run(main())

    def test_bad_executors_raise_at_the_call(self) -> None:
        """A non-executor is a TypeError raised by the run_in_executor() call itself, before anything
        is awaited."""

        async def main() -> None:
            with pytest.raises(
                TypeError,
                match=r"argument 'executor' must be a concurrent.futures.Executor or None, not int$",
            ):
                als.run_in_executor(42, print)  # type: ignore[arg-type]

        asyncio.run(main())

    def test_needs_a_running_loop(self) -> None:
        """Outside a running loop it is asyncio's RuntimeError."""
        with pytest.raises(RuntimeError, match="no running event loop"):
            als.run_in_executor(None, print)

    def test_worker_it_starts_is_not_pinned(self, storage: AsyncLocalStorage[object]) -> None:
        """A worker started by A's call shows nothing to later jobs, also under 3.14's inherit flag."""
        with ThreadPoolExecutor(max_workers=1) as pool:

            async def request() -> object:
                return await als.run_in_executor(pool, storage.get_store)

            assert asyncio.run(storage.run("A", request)) == "A"
            assert pool.submit(storage.get_store).result(TIMEOUT) is None


class TestInstallDefaultExecutor:
    def test_plain_run_in_executor_and_to_thread_propagate(self, storage: AsyncLocalStorage[object]) -> None:
        """After it, loop.run_in_executor(None, fn) and asyncio.to_thread see the task's store."""

        async def request() -> tuple[object, object]:
            loop = asyncio.get_running_loop()
            via_loop = await loop.run_in_executor(None, storage.get_store)
            via_to_thread = await asyncio.to_thread(storage.get_store)
            return via_loop, via_to_thread

        async def main() -> list[tuple[object, object]]:
            executor = als.install_default_executor(max_workers=2)
            assert isinstance(executor, ContextThreadPoolExecutor)
            return await asyncio.gather(*(storage.run(f"req {n}", request) for n in range(3)))

        assert asyncio.run(main()) == [(f"req {n}", f"req {n}") for n in range(3)]

    def test_explicit_loop(self, storage: AsyncLocalStorage[object]) -> None:
        """loop= installs on that loop, running or not."""
        loop = asyncio.new_event_loop()
        try:
            executor = als.install_default_executor(loop)

            async def request() -> object:
                return await loop.run_in_executor(None, storage.get_store)

            assert loop.run_until_complete(storage.run("A", request)) == "A"
            assert executor._max_workers >= 1
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def test_needs_a_loop(self) -> None:
        """Without a running loop and without loop=, a clear RuntimeError."""
        with pytest.raises(RuntimeError, match=r"install_default_executor\(\) needs a running event loop"):
            als.install_default_executor()

    def test_bad_arguments(self) -> None:
        """A loop that is not a loop, or a max_workers that is not an int, is a TypeError."""
        with pytest.raises(
            TypeError, match=r"argument 'loop' must be an asyncio event loop or None, not str"
        ):
            als.install_default_executor("loop")  # type: ignore[arg-type]
        loop = asyncio.new_event_loop()
        try:
            with pytest.raises(TypeError, match=r"argument 'max_workers' must be int or None, not str"):
                als.install_default_executor(loop, max_workers="4")  # type: ignore[arg-type]
        finally:
            loop.close()


@stdlib_loses_context
def test_plain_run_in_executor_loses_the_store(storage: AsyncLocalStorage[object]) -> None:
    """The problem als solves: loop.run_in_executor(None, fn) runs fn with no store."""

    async def main() -> object:
        return await asyncio.get_running_loop().run_in_executor(None, storage.get_store)

    assert asyncio.run(storage.run("A", main)) is None
