"""ContextThreadPoolExecutor and wrap_executor: each task and done callback in its own request's context."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import sys
import threading
import traceback
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

import als
from als import AsyncLocalStorage, ContextFuture, ContextThreadPoolExecutor

from .helpers import (
    TIMEOUT,
    Recorder,
    Worker,
    consumed_in_another_thread,
    join_all,
    stdlib_loses_context,
    threads_inherit_only,
    wait,
)

R = TypeVar("R")

task_var: contextvars.ContextVar[str] = contextvars.ContextVar("task_var", default="unset")


class Store:
    def __init__(self, name: str) -> None:
        self.name = name


@pytest.fixture(params=["ContextThreadPoolExecutor", "wrap_executor"])
def make_executor(request: pytest.FixtureRequest) -> Iterator[Callable[..., Executor]]:
    """Both ways of getting a propagating thread pool; every pool made is shut down after the test."""
    made: list[Executor] = []

    def make(**kwargs: Any) -> Executor:
        if request.param == "ContextThreadPoolExecutor":
            executor: Executor = ContextThreadPoolExecutor(**kwargs)
        else:
            executor = als.wrap_executor(ThreadPoolExecutor(**kwargs))
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.shutdown(wait=True)


class TestSubmit:
    def test_task_sees_its_submitters_store(
        self, storage: AsyncLocalStorage[object], make_executor: Callable[..., Executor]
    ) -> None:
        """Each task sees the store current where it was submitted; nothing else does."""
        executor = make_executor(max_workers=2)
        futures = {n: storage.run(f"req {n}", executor.submit, storage.get_store) for n in range(6)}
        assert {n: f.result(TIMEOUT) for n, f in futures.items()} == {n: f"req {n}" for n in range(6)}
        assert executor.submit(storage.get_store).result(TIMEOUT) is None
        assert storage.get_store() is None

    def test_copied_at_submit_not_later(
        self, storage: AsyncLocalStorage[object], make_executor: Callable[..., Executor]
    ) -> None:
        """A change the submitter makes after submit() does not reach the already submitted task."""
        executor = make_executor(max_workers=1)
        release = threading.Event()
        blocker = executor.submit(wait, release)

        def submit_then_change() -> Future[object]:
            future = executor.submit(storage.get_store)
            storage.enter_with("changed after submit")
            return future

        future = storage.run("A", submit_then_change)
        release.set()
        blocker.result(TIMEOUT)
        assert future.result(TIMEOUT) == "A"

    def test_nothing_leaks_back_or_across_pooled_tasks(
        self, storage: AsyncLocalStorage[object], make_executor: Callable[..., Executor]
    ) -> None:
        """What a task sets reaches neither its submitter nor the next task on the same worker thread."""
        executor = make_executor(max_workers=1)

        def first() -> int:
            storage.enter_with("set by first")
            task_var.set("set by first")
            return threading.get_ident()

        def second() -> tuple[int, object, str]:
            return threading.get_ident(), storage.get_store(), task_var.get()

        def request() -> tuple[int, tuple[int, object, str]]:
            ident = executor.submit(first).result(TIMEOUT)
            seen = storage.run("B", executor.submit, second).result(TIMEOUT)
            assert storage.get_store() == "A"
            assert task_var.get() == "unset"
            return ident, seen

        ident, (ident2, store, var) = storage.run("A", request)
        assert ident == ident2  # the same worker thread ran both tasks
        assert (store, var) == ("B", "unset")

    def test_overlapping_tasks_each_see_their_own(
        self, storage: AsyncLocalStorage[object], make_executor: Callable[..., Executor]
    ) -> None:
        """Tasks running at the same time on different workers see only their own stores."""
        executor = make_executor(max_workers=4)
        barrier = threading.Barrier(4, timeout=TIMEOUT)
        recorder = Recorder()

        def task(n: int) -> None:
            recorder(f"{n} before", storage.get_store())
            barrier.wait()
            storage.enter_with(f"changed by {n}")
            barrier.wait()
            recorder(f"{n} after", storage.get_store())

        futures = [storage.run(f"req {n}", executor.submit, task, n) for n in range(4)]
        for f in futures:
            f.result(TIMEOUT)
        expected = {f"{n} before": f"req {n}" for n in range(4)} | {
            f"{n} after": f"changed by {n}" for n in range(4)
        }
        assert recorder.as_dict() == expected

    def test_result_and_exception_unchanged(
        self, storage: AsyncLocalStorage[object], make_executor: Callable[..., Executor]
    ) -> None:
        """The future carries fn's result, or the very exception fn raised with its traceback."""
        executor = make_executor(max_workers=1)
        error = LookupError("in task")

        def fail() -> None:
            raise error

        assert executor.submit(lambda a, b: a * b, 6, b=7).result(TIMEOUT) == 42
        future = executor.submit(fail)
        assert future.exception(TIMEOUT) is error
        assert any(frame.name == "fail" for frame in traceback.extract_tb(error.__traceback__))

    def test_own_parameter_is_positional_only(self, make_executor: Callable[..., Executor]) -> None:
        """A keyword argument named 'fn' reaches the task."""
        executor = make_executor(max_workers=1)
        assert executor.submit(lambda *, fn: fn, fn="passed").result(TIMEOUT) == "passed"

    def test_not_callable_raises_at_submit(self, make_executor: Callable[..., Executor]) -> None:
        """submit(42) is a TypeError in the caller's thread, not a failed future."""
        executor = make_executor(max_workers=1)
        with pytest.raises(TypeError, match=r"^submit\(\) argument 'fn' must be callable, not int$"):
            executor.submit(42)  # type: ignore[arg-type]

    def test_submit_after_shutdown(self, make_executor: Callable[..., Executor]) -> None:
        """The executor's own error after shutdown reaches the caller as it would without als."""
        executor = make_executor(max_workers=1)
        executor.shutdown()
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.submit(print)

    def test_nested_pools_inside_workers(
        self, storage: AsyncLocalStorage[object], make_executor: Callable[..., Executor]
    ) -> None:
        """A task that submits to another propagating pool hands its store on."""
        outer = make_executor(max_workers=2)
        inner = make_executor(max_workers=2)

        def task() -> tuple[object, object]:
            return storage.get_store(), inner.submit(storage.get_store).result(TIMEOUT)

        assert storage.run("A", outer.submit, task).result(TIMEOUT) == ("A", "A")


class TestSubclassing:
    @pytest.mark.skipif(sys.version_info < (3, 14), reason="prepare_context() is new in 3.14")
    @pytest.mark.parametrize("resolver", ["the stdlib's", "its own"])
    def test_a_subclass_with_a_worker_context_of_its_own(
        self, storage: AsyncLocalStorage[object], resolver: str
    ) -> None:
        """3.14's extension point: a subclass whose prepare_context() brings its own WorkerContext (with
        the stdlib's task resolver, or one of its own) keeps that context's run() and still runs every
        task in a copy of its submitter's context."""
        from concurrent.futures.thread import WorkerContext  # type: ignore[attr-defined]

        ran: list[object] = []

        class Counting(WorkerContext):  # type: ignore[misc]
            @classmethod
            def prepare(cls, initializer: Any, initargs: Any) -> Any:
                create, resolve = super().prepare(initializer, initargs)
                if resolver == "its own":

                    def resolve(fn: Any, args: Any, kwargs: Any) -> Any:
                        return (fn, args, kwargs)

                return create, resolve

            def run(self, task: Any) -> Any:
                ran.append(storage.get_store())  # the worker's own context: no request
                return super().run(task)

        class CountingPool(ThreadPoolExecutor):
            @classmethod
            def prepare_context(cls, initializer: Any, initargs: Any, **kwargs: Any) -> Any:  # type: ignore[override]
                return Counting.prepare(initializer, initargs)

        class Own(ContextThreadPoolExecutor, CountingPool):
            pass

        with Own(max_workers=1) as executor:
            assert storage.run("A", executor.submit, storage.get_store).result(TIMEOUT) == "A"
            assert executor.submit(storage.get_store).result(TIMEOUT) is None
        assert ran == [None, None]

    def test_a_wrapper_of_the_stdlib_submit_installed_after_import_is_called(
        self, storage: AsyncLocalStorage[object], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A tracer that wraps ThreadPoolExecutor.submit after ``import als`` is not bypassed, and sees
        the submitter's store."""
        seen: list[object] = []
        original = ThreadPoolExecutor.submit

        def traced(self: ThreadPoolExecutor, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
            seen.append(storage.get_store())
            return original(self, fn, *args, **kwargs)

        monkeypatch.setattr(ThreadPoolExecutor, "submit", traced)
        with ContextThreadPoolExecutor(max_workers=1) as executor:
            assert storage.run("A", executor.submit, storage.get_store).result(TIMEOUT) == "A"
        assert seen == ["A"]

    def test_subclass_overriding_submit(self, storage: AsyncLocalStorage[object]) -> None:
        """A subclass whose submit() calls super().submit() keeps the propagation."""
        calls: list[object] = []

        class Counting(ContextThreadPoolExecutor):
            def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
                calls.append(fn)
                return super().submit(fn, *args, **kwargs)

        with Counting(max_workers=1) as executor:
            assert storage.run("A", executor.submit, storage.get_store).result(TIMEOUT) == "A"
            assert list(executor.map(lambda _: storage.get_store(), [1])) == [None]
        assert calls[0] == storage.get_store
        assert len(calls) == 2  # map() goes through submit() too

    def test_cooperative_mixin_after_it_keeps_its_submit(self, storage: AsyncLocalStorage[object]) -> None:
        """A ThreadPoolExecutor subclass placed after it in the MRO still has its submit() called."""
        seen: list[object] = []

        class Auditing(ThreadPoolExecutor):
            def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
                seen.append(storage.get_store())
                return super().submit(fn, *args, **kwargs)

        class Both(ContextThreadPoolExecutor, Auditing):
            pass

        with Both(max_workers=1) as executor:
            assert storage.run("A", executor.submit, storage.get_store).result(TIMEOUT) == "A"
        assert seen == ["A"]


class TestMap:
    @pytest.mark.skipif(sys.version_info < (3, 14), reason="map(buffersize=) is new in 3.14")
    def test_items_submitted_later_keep_the_callers_context(
        self, storage: AsyncLocalStorage[object], make_executor: Callable[..., Executor]
    ) -> None:
        """Items that map(buffersize=) submits later, while B consumes the results in another thread, run
        with map()'s caller's store."""
        executor = make_executor(max_workers=2)
        results = storage.run("A", executor.map, lambda n: (n, storage.get_store()), range(5), buffersize=1)
        assert consumed_in_another_thread(storage, "B", results) == [(n, "A") for n in range(5)]

    def test_each_call_in_the_callers_context(
        self, storage: AsyncLocalStorage[object], make_executor: Callable[..., Executor]
    ) -> None:
        """map() runs every call with the caller's store; what a call sets stays in that call."""
        executor = make_executor(max_workers=2)

        def task(n: int) -> tuple[int, object]:
            seen = storage.get_store()
            storage.enter_with(f"changed by {n}")
            return n, seen

        results = storage.run("A", lambda: list(executor.map(task, range(8), timeout=TIMEOUT)))
        assert results == [(n, "A") for n in range(8)]

    def test_not_callable(self, make_executor: Callable[..., Executor]) -> None:
        """map(42, ...) is a TypeError before anything is submitted."""
        executor = make_executor(max_workers=1)
        with pytest.raises(TypeError, match=r"^map\(\) argument 'fn' must be callable, not int$"):
            executor.map(42, [1])  # type: ignore[arg-type]


class TestWorkersStartEmpty:
    """Workers start empty, also where new threads inherit their starter's context (3.14's flag)."""

    @threads_inherit_only
    def test_the_setting_pins_a_plain_pool(self, storage: AsyncLocalStorage[object]) -> None:
        """Control: in this setting a plain pool's worker keeps the store of the request that started it."""
        with ThreadPoolExecutor(max_workers=1) as executor:
            storage.run("A", executor.submit, lambda: None).result(TIMEOUT)
            assert executor.submit(storage.get_store).result(TIMEOUT) == "A"

    def test_worker_started_by_a_request_is_not_pinned(
        self, storage: AsyncLocalStorage[object], make_executor: Callable[..., Executor]
    ) -> None:
        """A worker created while A submits shows A to A's task only, and nothing to later tasks."""
        executor = make_executor(max_workers=1)
        first = storage.run("A", executor.submit, lambda: (storage.get_store(), threading.get_ident()))
        later = executor.submit(lambda: (storage.get_store(), threading.get_ident()))
        (store_a, ident_a), (store_later, ident_later) = first.result(TIMEOUT), later.result(TIMEOUT)
        assert ident_a == ident_later
        assert (store_a, store_later) == ("A", None)

    def test_initializer_sets_are_not_visible_to_tasks(self, make_executor: Callable[..., Executor]) -> None:
        """Tasks run in their submitter's context, so a ContextVar the initializer set is not seen."""
        recorder = Recorder()

        def initializer() -> None:
            recorder("initializer", task_var.get())
            task_var.set("initializer")

        executor = make_executor(max_workers=1, initializer=initializer)
        assert contextvars.copy_context().run(_set_and_submit, executor) == "set by submitter"
        assert executor.submit(task_var.get).result(TIMEOUT) == "unset"
        assert recorder.as_dict() == {"initializer": "unset"}

    def test_idle_worker_keeps_no_store(
        self, storage: AsyncLocalStorage[object], make_executor: Callable[..., Executor]
    ) -> None:
        """Once the task of the request that started a worker is done, its store is released."""
        executor = make_executor(max_workers=1)
        store = Store("A")
        ref = weakref.ref(store)
        storage.run(store, executor.submit, storage.get_store).result(TIMEOUT)
        executor.submit(lambda: None).result(TIMEOUT)  # the worker is idle again
        del store
        gc.collect()
        assert ref() is None


def _set_and_submit(executor: Executor) -> str:
    task_var.set("set by submitter")
    return executor.submit(task_var.get).result(TIMEOUT)


class TestContextFuture:
    def test_callback_runs_in_the_registrants_context(self, storage: AsyncLocalStorage[object]) -> None:
        """A ContextFuture made by hand runs B's callback with B, completed from a thread with none."""
        future: ContextFuture[int] = ContextFuture()
        recorder = Recorder()
        storage.run("B", future.add_done_callback, lambda f: recorder("callback", storage.get_store()))
        completer = threading.Thread(target=future.set_result, args=(1,))
        completer.start()
        completer.join(TIMEOUT)
        assert recorder.as_dict() == {"callback": "B"}

    def test_callback_not_callable(self) -> None:
        """A non-callable callback is refused at registration, done or not."""
        future: ContextFuture[int] = ContextFuture()
        future.set_result(1)
        with pytest.raises(
            TypeError, match=r"^add_done_callback\(\) argument 'fn' must be callable, not int$"
        ):
            future.add_done_callback(42)  # type: ignore[arg-type]


class TestReturnedFutures:
    def test_is_a_real_future(self, make_executor: Callable[..., Executor]) -> None:
        """Returned futures are concurrent.futures.Future objects that wait/as_completed accept."""
        executor = make_executor(max_workers=2)
        futures = [executor.submit(lambda n=n: n) for n in range(4)]
        assert all(isinstance(f, Future) for f in futures)
        done, not_done = concurrent.futures.wait(futures, timeout=TIMEOUT)
        assert (len(done), len(not_done)) == (4, 0)
        assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=TIMEOUT)) == [
            0,
            1,
            2,
            3,
        ]

    def test_asyncio_wrap_future(
        self, storage: AsyncLocalStorage[object], make_executor: Callable[..., Executor]
    ) -> None:
        """asyncio.wrap_future awaits them, and the awaiting task keeps its own store."""
        executor = make_executor(max_workers=1)

        async def main() -> tuple[object, object]:
            result = await asyncio.wrap_future(executor.submit(storage.get_store))
            return result, storage.get_store()

        assert asyncio.run(storage.run("A", main)) == ("A", "A")

    def test_callback_runs_in_the_registrants_context(
        self, storage: AsyncLocalStorage[object], make_executor: Callable[..., Executor]
    ) -> None:
        """A callback registered in request B runs with B, although the worker (in A's task) completes it."""
        executor = make_executor(max_workers=1)
        recorder = Recorder()
        registered = threading.Event()
        ran = threading.Event()

        def task() -> None:
            wait(registered)

        def callback(future: Future[None]) -> None:
            recorder("callback", (storage.get_store(), threading.current_thread() is not main))
            storage.enter_with("set by callback")
            ran.set()

        main = threading.current_thread()
        future = storage.run("A", executor.submit, task)
        storage.run("B", future.add_done_callback, callback)
        registered.set()
        wait(ran)
        assert recorder.as_dict() == {"callback": ("B", True)}
        assert executor.submit(storage.get_store).result(TIMEOUT) is None

    def test_callback_on_a_done_future_runs_at_once(
        self, storage: AsyncLocalStorage[object], make_executor: Callable[..., Executor]
    ) -> None:
        """On a done future the callback runs at once in the registering thread, in a copy of its
        context: what it sets does not leak into the registering code."""
        executor = make_executor(max_workers=1)
        future = executor.submit(lambda: None)
        future.result(TIMEOUT)
        recorder = Recorder()

        def callback(_: Future[None]) -> None:
            recorder("callback", (storage.get_store(), threading.get_ident()))
            storage.enter_with("leak")

        def register_in_b() -> tuple[None, object]:
            returned = future.add_done_callback(callback)  # the callback runs in here, at once
            return returned, storage.get_store()

        after = storage.run("B", register_in_b)
        assert recorder.as_dict() == {"callback": ("B", threading.get_ident())}
        assert after == (None, "B")
        assert storage.get_store() is None

    def test_callback_keeps_no_store_after_running(
        self, storage: AsyncLocalStorage[object], make_executor: Callable[..., Executor]
    ) -> None:
        """A future keeps its callbacks, but not the registrant's store: once they ran, the store is freed."""
        executor = make_executor(max_workers=1)
        release = threading.Event()
        future = executor.submit(wait, release)
        store = Store("B")
        ref = weakref.ref(store)
        ran = threading.Event()
        storage.run(store, future.add_done_callback, lambda _: ran.set())
        release.set()
        wait(ran)
        future.result(TIMEOUT)
        executor.submit(lambda: None).result(TIMEOUT)  # the worker is past the callback (its one worker)
        del store
        gc.collect()
        assert ref() is None

    def test_callback_not_callable(self, make_executor: Callable[..., Executor]) -> None:
        """A non-callable callback on a pending future is refused at registration."""
        release = threading.Event()
        future = make_executor(max_workers=1).submit(wait, release)
        try:
            with pytest.raises(
                TypeError, match=r"^add_done_callback\(\) argument 'fn' must be callable, not int$"
            ):
                future.add_done_callback(42)  # type: ignore[arg-type]
        finally:
            release.set()
        future.result(TIMEOUT)

    def test_cancel_and_shutdown_cancel_futures(self, make_executor: Callable[..., Executor]) -> None:
        """cancel() and shutdown(cancel_futures=True) act on the returned future itself."""
        executor = make_executor(max_workers=1)
        release = threading.Event()
        started = threading.Event()
        running = executor.submit(lambda: (started.set(), wait(release)))
        wait(started)  # the worker holds this task, so the others stay queued
        pending = [executor.submit(lambda: None) for _ in range(3)]
        assert pending[0].cancel()
        executor.shutdown(wait=False, cancel_futures=True)  # cancels what is still queued, at once
        assert all(f.cancelled() for f in pending)
        release.set()
        assert running.result(TIMEOUT) == (None, None)
        executor.shutdown(wait=True)


class TestWrapExecutor:
    def test_not_an_executor(self) -> None:
        """Anything but an Executor is a TypeError naming what came."""
        with pytest.raises(
            TypeError,
            match=r"^wrap_executor\(\) argument 'executor' must be a concurrent.futures.Executor, not list$",
        ):
            als.wrap_executor([])  # type: ignore[arg-type]

    def test_already_propagating_returned_as_is(self) -> None:
        """Wrapping a ContextThreadPoolExecutor or a wrapper gives it back: no second copy per task."""
        with ContextThreadPoolExecutor(max_workers=1) as pool:
            assert als.wrap_executor(pool) is pool
        wrapped = als.wrap_executor(ThreadPoolExecutor(max_workers=1))
        with wrapped:
            assert als.wrap_executor(wrapped) is wrapped

    def test_shutdown_and_with_reach_the_wrapped_executor(self, storage: AsyncLocalStorage[object]) -> None:
        """Leaving the with block shuts the wrapped executor down after its tasks finish."""
        inner = ThreadPoolExecutor(max_workers=1)
        with als.wrap_executor(inner) as executor:
            future = storage.run("A", executor.submit, storage.get_store)
        assert future.result(0) == "A"
        with pytest.raises(RuntimeError, match="after shutdown"):
            inner.submit(print)

    def test_custom_executor_and_future_class(self, storage: AsyncLocalStorage[object]) -> None:
        """An executor with its own Future subclass gets futures of both classes, callbacks in context."""

        class MyFuture(Future[Any]):
            tag = "mine"

        class InlineExecutor(Executor):
            """Runs each call at once, in the caller's thread, like some test doubles do."""

            def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
                future: Future[R] = MyFuture()
                future.set_result(fn(*args, **kwargs))
                return future

            def shutdown(self, wait: bool = True) -> None:  # type: ignore[override]
                """An old signature, without cancel_futures."""

        executor = als.wrap_executor(InlineExecutor())
        future = storage.run("A", executor.submit, storage.get_store)
        assert isinstance(future, MyFuture)
        assert future.tag == "mine"  # type: ignore[attr-defined]
        assert future.result() == "A"
        recorder = Recorder()
        storage.run("B", future.add_done_callback, lambda f: recorder("cb", storage.get_store()))
        assert recorder.as_dict() == {"cb": "B"}
        executor.shutdown()  # no cancel_futures: passed only when asked for
        with pytest.raises(TypeError):
            executor.shutdown(cancel_futures=True)

    def test_not_a_future_comes_back_unchanged(self, storage: AsyncLocalStorage[object]) -> None:
        """Whatever an odd submit() returns, a Future or not, is handed back as it is."""

        class Handle:
            def result(self) -> str:
                return "handle"

        class OddExecutor(Executor):
            def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
                fn(*args, **kwargs)
                return Handle()

        handle = als.wrap_executor(OddExecutor()).submit(lambda: None)
        assert type(handle) is Handle
        assert handle.result() == "handle"  # type: ignore[comparison-overlap]

    def test_future_class_refusing_subclasses(self, storage: AsyncLocalStorage[object]) -> None:
        """A Future class whose __init_subclass__ raises (als cannot subclass it): submit() returns the
        executor's own future as it is, with no error, and the task saw the submitter's store."""

        class Picky(Future[Any]):
            def __init_subclass__(cls, **kwargs: Any) -> None:
                raise ValueError("no subclasses")

        class PickyExecutor(Executor):
            def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
                future = Picky()
                future.set_result(fn(*args, **kwargs))
                return future

        future = storage.run("A", als.wrap_executor(PickyExecutor()).submit, storage.get_store)
        assert type(future) is Picky
        assert future.result() == "A"

    def test_wrapped_executors_own_submit_sees_the_request(self, storage: AsyncLocalStorage[object]) -> None:
        """An instrumented executor's own submit() runs in the caller's context, and so does the task."""
        recorder = Recorder()

        class TracingExecutor(Executor):
            def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
                recorder("submit", storage.get_store())
                future: Future[Any] = Future()
                future.set_result(fn(*args, **kwargs))
                return future

        future = storage.run("A", als.wrap_executor(TracingExecutor()).submit, storage.get_store)
        assert future.result() == "A"
        assert recorder.as_dict() == {"submit": "A"}

    def test_repr_and_executor(self) -> None:
        """The wrapper shows and exposes what it wraps."""
        inner = ThreadPoolExecutor(max_workers=1)
        with als.wrap_executor(inner) as executor:
            assert executor.executor is inner  # type: ignore[attr-defined]
            assert "ThreadPoolExecutor" in repr(executor)


@stdlib_loses_context
def test_plain_thread_pool_loses_the_store(storage: AsyncLocalStorage[object]) -> None:
    """The problem als solves: a plain ThreadPoolExecutor task does not see the submitter's store."""
    with ThreadPoolExecutor(max_workers=1) as executor:
        assert storage.run("A", executor.submit, storage.get_store).result(TIMEOUT) is None


def test_subclass_submit_sees_the_request(storage: AsyncLocalStorage[object]) -> None:
    """A ContextThreadPoolExecutor subclass's submit() override runs in the caller's context."""
    recorder = Recorder()

    class Traced(ContextThreadPoolExecutor):
        def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
            recorder("submit", storage.get_store())
            return super().submit(fn, *args, **kwargs)

    with Traced(max_workers=1) as executor:
        assert storage.run("A", executor.submit, storage.get_store).result(TIMEOUT) == "A"
    assert recorder.as_dict() == {"submit": "A"}


def test_many_submitters_threads(storage: AsyncLocalStorage[object]) -> None:
    """Submitters on many threads at once, one shared pool: every task sees its own submitter's store."""
    recorder = Recorder()
    barrier = threading.Barrier(6, timeout=TIMEOUT)
    with ContextThreadPoolExecutor(max_workers=2) as executor:

        def request(n: int) -> None:
            barrier.wait()
            futures = [executor.submit(lambda k=k: (k, storage.get_store())) for k in range(5)]
            for f in futures:
                k, seen = f.result(TIMEOUT)
                recorder(f"{n}/{k}", seen)

        workers = [Worker(storage.run, f"req {n}", request, n) for n in range(6)]
        for w in workers:
            w.start()
        join_all(workers)
    assert recorder.as_dict() == {f"{n}/{k}": f"req {n}" for n in range(6) for k in range(5)}
