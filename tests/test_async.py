"""run/exit/bind over coroutines: the whole body in one context, under asyncio and trio."""

from __future__ import annotations

import asyncio
import collections.abc
import contextvars
import gc
import traceback
import types
import weakref
from collections.abc import Coroutine, Generator
from typing import Any

import anyio
import pytest
import trio

import als
from als import AsyncLocalStorage
from als._context import ContextCoroutine

from .helpers import Recorder

other_var: contextvars.ContextVar[str] = contextvars.ContextVar("other_var", default="unset")


class Store:
    """A weak-referenceable store."""


@pytest.mark.anyio
class TestRunCoroutine:
    async def test_whole_body_across_awaits(self, storage: AsyncLocalStorage[object]) -> None:
        """Every step of the body sees the store; the awaiting code never does."""
        recorder = Recorder()

        async def body() -> str:
            for step in range(3):
                recorder(f"step {step}", storage.get_store())
                await anyio.sleep(0)
            return "done"

        assert await storage.run("A", body) == "done"
        recorder("after", storage.get_store())
        assert recorder.seen == [("step 0", "A"), ("step 1", "A"), ("step 2", "A"), ("after", None)]

    async def test_tasks_created_inside_inherit(self, storage: AsyncLocalStorage[object]) -> None:
        """Tasks the body starts (anyio task groups: asyncio tasks, trio nurseries) see the store."""
        recorder = Recorder()

        async def child(n: int) -> None:
            await anyio.sleep(0)
            recorder(f"child {n}", storage.get_store())

        async def body() -> None:
            async with anyio.create_task_group() as tg:
                for n in range(3):
                    tg.start_soon(child, n)

        await storage.run("A", body)
        assert recorder.as_dict() == {"child 0": "A", "child 1": "A", "child 2": "A"}

    async def test_concurrent_runs_do_not_cross(self, storage: AsyncLocalStorage[object]) -> None:
        """Interleaved runs in sibling tasks each see only their own store, at every step."""
        recorder = Recorder()
        gate = anyio.Event()

        async def body(n: int) -> None:
            recorder(f"{n} before", storage.get_store())
            await gate.wait()  # every body is suspended here before any resumes
            recorder(f"{n} after", storage.get_store())

        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(storage.run, f"req {n}", body, n)
            await anyio.sleep(0)
            await anyio.wait_all_tasks_blocked()
            gate.set()
        expected = {f"{n} {when}": f"req {n}" for n in range(5) for when in ("before", "after")}
        assert recorder.as_dict() == expected
        assert storage.get_store() is None

    async def test_awaiting_context_untouched_before_during_after(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        """While the body is suspended, and after it ends, the task that started it sees its own store."""
        recorder = Recorder()
        suspended = anyio.Event()
        resume = anyio.Event()

        async def body() -> None:
            storage.enter_with("set in body")
            other_var.set("set in body")
            suspended.set()
            await resume.wait()
            recorder("body", storage.get_store())

        storage.enter_with("parent")
        async with anyio.create_task_group() as tg:
            tg.start_soon(storage.run, "A", body)
            await suspended.wait()
            recorder("during", (storage.get_store(), other_var.get()))
            resume.set()
        recorder("after", (storage.get_store(), other_var.get()))
        assert recorder.as_dict() == {
            "during": ("parent", "unset"),
            "body": "set in body",
            "after": ("parent", "unset"),
        }

    async def test_exception_from_body_unchanged(self, storage: AsyncLocalStorage[object]) -> None:
        """The body's exception reaches the awaiting code as the same object, traceback into the body."""
        error = KeyError("missing")

        async def body() -> None:
            await anyio.sleep(0)
            raise error

        with pytest.raises(KeyError) as info:
            await storage.run("A", body)
        assert info.value is error
        assert any(frame.name == "body" for frame in traceback.extract_tb(info.value.__traceback__))
        assert storage.get_store() is None

    async def test_cancellation_reaches_the_body(self, storage: AsyncLocalStorage[object]) -> None:
        """Cancelling the task cancels the body, whose cleanup still sees the store."""
        recorder = Recorder()
        started = anyio.Event()

        async def body() -> None:
            try:
                started.set()
                await anyio.sleep_forever()
            finally:
                recorder("cleanup", storage.get_store())

        async with anyio.create_task_group() as tg:
            tg.start_soon(storage.run, "A", body)
            await started.wait()
            tg.cancel_scope.cancel()
        assert recorder.as_dict() == {"cleanup": "A"}

    async def test_exit_inside_async(self, storage: AsyncLocalStorage[object]) -> None:
        """exit() over a coroutine: the default throughout its body, the store back after."""
        recorder = Recorder()

        async def outside() -> None:
            await anyio.sleep(0)
            recorder("exit body", storage.get_store())

        async def body() -> None:
            await storage.exit(outside)
            recorder("back", storage.get_store())

        await storage.run("A", body)
        assert recorder.seen == [("exit body", None), ("back", "A")]

    async def test_bind_and_snapshot_drive_coroutines(self, storage: AsyncLocalStorage[object]) -> None:
        """A bound async function runs its whole body in a fresh copy of the captured context."""
        recorder = Recorder()

        async def body(tag: str) -> None:
            await anyio.sleep(0)
            recorder(tag, storage.get_store())
            storage.enter_with("changed")

        bound = storage.run("A", als.bind, body)
        snap = storage.run("S", als.snapshot)
        await storage.run("B", bound, "bound 1")
        await bound("bound 2")
        await snap(body, "snapshot")
        assert recorder.seen == [("bound 1", "A"), ("bound 2", "A"), ("snapshot", "S")]
        assert storage.get_store() is None


class TestRunCoroutineAsyncio:
    """Behaviours specific to asyncio's task API."""

    def test_create_task_accepts_it(self, storage: AsyncLocalStorage[object]) -> None:
        """asyncio.create_task and asyncio.run take what run() returns; tasks it creates inherit."""
        recorder = Recorder()

        async def grandchild() -> None:
            recorder("grandchild", storage.get_store())

        async def body() -> int:
            await asyncio.sleep(0)
            await asyncio.create_task(grandchild())
            recorder("body", storage.get_store())
            return 7

        async def main() -> None:
            task = asyncio.create_task(storage.run("A", body))
            assert await task == 7
            recorder("main", storage.get_store())

        asyncio.run(main())
        assert recorder.seen == [("grandchild", "A"), ("body", "A"), ("main", None)]
        assert asyncio.run(storage.run("B", body)) == 7

    def test_task_cancel_passes_through(self, storage: AsyncLocalStorage[object]) -> None:
        """task.cancel() raises CancelledError in the body; the task ends cancelled."""
        recorder = Recorder()

        async def body() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                recorder("cancelled", storage.get_store())
                raise

        started = asyncio.Event()

        async def body_started() -> None:
            started.set()
            await body()

        async def main() -> None:
            task = asyncio.create_task(storage.run("A", body_started))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert task.cancelled()

        asyncio.run(main())
        assert recorder.as_dict() == {"cancelled": "A"}

    def test_finished_task_keeps_no_store(self, storage: AsyncLocalStorage[object]) -> None:
        """A done task still holds its coroutine, but not the request's store: the store is freed."""
        store = Store()
        ref = weakref.ref(store)

        async def handler() -> None:
            await asyncio.sleep(0)

        async def main(request: Store) -> asyncio.Task[None]:
            task = asyncio.create_task(storage.run(request, handler))
            await task
            return task

        task = asyncio.run(main(store))
        del store
        gc.collect()
        assert ref() is None
        assert task.done()

    def test_stack_and_repr_show_the_wrapped_coroutine(self, storage: AsyncLocalStorage[object]) -> None:
        """task.get_stack() and the task's repr reach through the driven coroutine into the user's own:
        the stack is the handler's frame, the repr says where it is suspended."""
        seen: list[object] = []

        async def handler() -> None:
            await asyncio.sleep(0)

        async def main() -> None:
            task = asyncio.create_task(storage.run("A", handler))
            await asyncio.sleep(0)  # the task is now suspended inside handler
            seen.append([frame.f_code.co_name for frame in task.get_stack()])
            seen.append(repr(task))
            await task

        asyncio.run(main())
        assert seen[0] == ["handler"]
        assert "running at" in str(seen[1])
        assert "test_async.py" in str(seen[1])

    def test_task_repr_names_the_coroutine(self, storage: AsyncLocalStorage[object]) -> None:
        """A task running a driven coroutine is shown with the coroutine's name."""

        async def handler() -> None:
            await asyncio.sleep(0)

        async def main() -> str:
            task = asyncio.create_task(storage.run("A", handler))
            shown = repr(task)
            await task
            return shown

        assert "handler" in asyncio.run(main())


class TestRunCoroutineTrio:
    def test_nursery_start_soon(self, storage: AsyncLocalStorage[object]) -> None:
        """A trio nursery runs run(store, async_fn) as a task; the parent keeps its own context."""
        recorder = Recorder()

        async def body(n: int) -> None:
            await trio.lowlevel.checkpoint()
            recorder(f"task {n}", storage.get_store())

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                for n in range(3):
                    nursery.start_soon(storage.run, f"req {n}", body, n)
            recorder("main", storage.get_store())

        trio.run(main)
        assert recorder.as_dict() == {"task 0": "req 0", "task 1": "req 1", "task 2": "req 2", "main": None}

    def test_trio_run_takes_it(self, storage: AsyncLocalStorage[object]) -> None:
        """trio.run(storage.run, store, main) runs main with the store."""

        async def main() -> object:
            await trio.lowlevel.checkpoint()
            return storage.get_store()

        assert trio.run(storage.run, "A", main) == "A"


@types.coroutine
def suspend() -> Generator[None, Any, Any]:
    """Suspend once, with no event loop: the test drives the coroutine by hand."""
    yield


class TestCoroutineProtocol:
    """ContextCoroutine driven by hand: send, throw, close, with no event loop at all."""

    def test_send_and_return(self, storage: AsyncLocalStorage[object]) -> None:
        """Values sent in reach the body; StopIteration carries the result."""

        @types.coroutine
        def suspend() -> Generator[str, Any, Any]:
            return (yield "suspended")

        async def body() -> tuple[object, object]:
            received = await suspend()
            return received, storage.get_store()

        coro = storage.run("A", body)
        assert isinstance(coro, collections.abc.Coroutine)
        assert coro.send(None) == "suspended"
        with pytest.raises(StopIteration) as info:
            coro.send("value")
        assert info.value.value == ("value", "A")

    def test_throw_reaches_the_body(self, storage: AsyncLocalStorage[object]) -> None:
        """throw() raises inside the body, in the store's context; the body may handle it."""

        async def body() -> object:
            try:
                await suspend()
            except ValueError:
                return ("handled", storage.get_store())
            return "not reached"

        coro = storage.run("A", body)
        coro.send(None)
        with pytest.raises(StopIteration) as info:
            coro.throw(ValueError("thrown"))
        assert info.value.value == ("handled", "A")

    @pytest.mark.parametrize("end", ["close()", "garbage collection"])
    def test_cleanup_runs_in_context(self, storage: AsyncLocalStorage[object], end: str) -> None:
        """Closed, or dropped while suspended and garbage-collected, the body's finally block still sees
        the store."""
        recorder = Recorder()

        async def body() -> None:
            try:
                await suspend()
            finally:
                recorder("finally", storage.get_store())

        coro = storage.run("A", body)
        coro.send(None)
        if end == "close()":
            coro.close()
        else:
            del coro
            gc.collect()
        assert recorder.as_dict() == {"finally": "A"}

    def test_other_awaitables_returned_unchanged(self, storage: AsyncLocalStorage[object]) -> None:
        """A Future, or any awaitable that is not a coroutine, comes back as is."""
        loop = asyncio.new_event_loop()
        try:
            future = loop.create_future()
            assert storage.run("A", lambda: future) is future
        finally:
            loop.close()

    def test_any_coroutine_type_is_driven(self, storage: AsyncLocalStorage[object]) -> None:
        """A coroutine that is not a native one (collections.abc.Coroutine) is driven too."""

        class Handmade(collections.abc.Coroutine[Any, Any, object]):
            def send(self, value: Any) -> Any:
                raise StopIteration(storage.get_store())

            def throw(self, *args: Any) -> Any:
                raise args[0]

            def __await__(self) -> Generator[Any, None, object]:
                return self  # type: ignore[return-value]

        result = storage.run("A", Handmade)
        assert isinstance(result, ContextCoroutine)
        with pytest.raises(StopIteration) as info:
            result.send(None)
        assert info.value.value == "A"

    def test_sync_function_returning_a_coroutine(self, storage: AsyncLocalStorage[object]) -> None:
        """A coroutine returned by a plain function is driven as well."""

        async def body() -> object:
            return storage.get_store()

        def plain() -> Coroutine[Any, Any, object]:
            return body()

        assert asyncio.run(storage.run("A", plain)) == "A"

    def test_yield_from_and_weakref(self, storage: AsyncLocalStorage[object]) -> None:
        """A driven coroutine works under ``yield from`` (generator-based coroutines) and can be weakly
        referenced, as a native coroutine can."""

        async def body() -> object:
            return storage.get_store()

        @types.coroutine
        def legacy() -> Generator[Any, Any, Any]:
            return (yield from storage.run("A", body))  # type: ignore[misc]

        async def main() -> object:
            return await legacy()

        assert asyncio.run(main()) == "A"
        coro = storage.run("A", body)
        assert weakref.ref(coro)() is coro
        coro.close()

    def test_unawaited_coroutine_is_released(self, storage: AsyncLocalStorage[object]) -> None:
        """A driven coroutine that is closed keeps no store alive once dropped."""

        store = Store()
        ref = weakref.ref(store)

        async def body() -> None:
            pass

        coro = storage.run(store, body)
        coro.close()
        del coro, store
        gc.collect()
        assert ref() is None
