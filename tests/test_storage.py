"""AsyncLocalStorage: get_store, run, exit, enter_with, scope, disable (sync and threaded parts)."""

from __future__ import annotations

import contextvars
import gc
import threading
import traceback
import weakref
from collections.abc import Callable

import pytest

import als
from als import AsyncLocalStorage

from .helpers import TIMEOUT, Recorder, Sequencer, Worker, join_all

other_var: contextvars.ContextVar[str] = contextvars.ContextVar("other_var", default="unset")


class Store:
    """A weak-referenceable store, to check what keeps it alive."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Store({self.name!r})"


class TestConstruction:
    def test_defaults(self) -> None:
        """Outside any run, get_store() returns None unless a default is given."""
        assert AsyncLocalStorage().get_store() is None
        marker = object()
        s = AsyncLocalStorage(default=marker)
        assert s.default is marker
        assert s.get_store() is marker

    def test_name_given(self) -> None:
        """The name given is kept as is; the ContextVar underneath is prefixed 'als:'."""
        s = AsyncLocalStorage(name="request_id")
        assert s.name == "request_id"
        assert s._var.name == "als:request_id"
        assert repr(s) == "<AsyncLocalStorage name='request_id'>"

    def test_generated_names_are_unique(self) -> None:
        """Storages built without a name get distinct generated names, also built from many threads."""
        names: list[str] = []
        barrier = threading.Barrier(8, timeout=TIMEOUT)

        def build() -> None:
            barrier.wait()
            names.extend(AsyncLocalStorage().name for _ in range(100))

        workers = [Worker(build) for _ in range(8)]
        for w in workers:
            w.start()
        join_all(workers)
        assert len(names) == 800
        assert len(set(names)) == 800
        assert all(isinstance(n, str) and n for n in names)

    def test_name_must_be_str(self) -> None:
        """A non-string name is a TypeError naming the argument and what came."""
        with pytest.raises(
            TypeError, match=r"AsyncLocalStorage\(\) argument 'name' must be str or None, not int"
        ):
            AsyncLocalStorage(name=5)  # type: ignore[call-overload]

    def test_same_name_storages_are_independent(self) -> None:
        """Two storages sharing a name never see each other's stores."""
        a = AsyncLocalStorage(name="same")
        b = AsyncLocalStorage(name="same")
        assert a.run(1, lambda: (a.get_store(), b.get_store())) == (1, None)

        def in_b() -> tuple[object, object]:
            def in_a() -> tuple[object, object]:
                return a.get_store(), b.get_store()

            return a.run(3, in_a)

        assert b.run(2, in_b) == (3, 2)


class TestRun:
    def test_store_is_current_inside_and_result_returned(self, storage: AsyncLocalStorage[object]) -> None:
        """fn sees the store; run returns fn's result; the caller's view is unchanged after."""
        assert storage.run("A", lambda x, y: (storage.get_store(), x + y), 1, y=2) == ("A", 3)
        assert storage.get_store() is None

    def test_store_is_shared_by_reference(self, storage: AsyncLocalStorage[object]) -> None:
        """The store object itself is current, never a copy."""
        store: dict[str, int] = {}
        assert storage.run(store, storage.get_store) is store

    def test_nested_runs_restore_the_outer_store(self, storage: AsyncLocalStorage[object]) -> None:
        """An inner run shadows the outer store, which is back once the inner one returns."""

        def outer() -> list[object]:
            seen = [storage.get_store()]
            seen.append(storage.run("inner", storage.get_store))
            seen.append(storage.get_store())
            return seen

        assert storage.run("outer", outer) == ["outer", "inner", "outer"]

    def test_everything_set_inside_is_gone_after(self, storage: AsyncLocalStorage[object]) -> None:
        """enter_with, other storages and any ContextVar set inside fn do not reach the caller."""
        second = AsyncLocalStorage[object](name="second")
        storage.enter_with("caller")

        def body() -> None:
            storage.enter_with("changed")
            second.enter_with("second")
            other_var.set("set inside")

        ctx = contextvars.copy_context()

        def check() -> None:
            storage.enter_with("caller")
            storage.run("A", body)
            assert storage.get_store() == "caller"
            assert second.get_store() is None
            assert other_var.get() == "unset"

        ctx.run(check)

    def test_exception_reaches_caller_unchanged(self, storage: AsyncLocalStorage[object]) -> None:
        """The same exception object arrives, its traceback reaching into fn, and the store is restored."""
        error = ValueError("boom")

        def fail() -> None:
            storage.enter_with("changed")
            raise error

        with pytest.raises(ValueError, match="boom") as info:
            storage.run("A", fail)
        assert info.value is error
        assert any(frame.name == "fail" for frame in traceback.extract_tb(info.value.__traceback__))
        assert storage.get_store() is None

    def test_base_exceptions_pass_through(self, storage: AsyncLocalStorage[object]) -> None:
        """KeyboardInterrupt and SystemExit are not swallowed or wrapped."""

        def interrupt() -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            storage.run("A", interrupt)
        assert storage.get_store() is None

    def test_own_parameters_are_positional_only(self, storage: AsyncLocalStorage[object]) -> None:
        """Keyword arguments named 'fn' and 'store' reach fn."""

        def target(*, fn: str, store: str) -> tuple[str, str, object]:
            return fn, store, storage.get_store()

        assert storage.run("A", target, fn="f", store="s") == ("f", "s", "A")

    def test_not_callable(self, storage: AsyncLocalStorage[object]) -> None:
        """A non-callable fn is a TypeError at the call, naming the argument."""
        with pytest.raises(TypeError, match=r"^run\(\) argument 'fn' must be callable, not int$"):
            storage.run("A", 42)  # type: ignore[call-overload]

    def test_coroutine_object_error_shows_the_fix(self, storage: AsyncLocalStorage[object]) -> None:
        """Passing handler() instead of handler says to pass the function and its arguments."""

        async def handler() -> None:
            pass

        coro = handler()
        try:
            with pytest.raises(TypeError, match=r"not a coroutine object: pass the async function") as info:
                storage.run("A", coro)  # type: ignore[call-overload]
            assert "handler" in str(info.value)
        finally:
            coro.close()

    def test_independent_storages(self) -> None:
        """Runs of one storage leave another storage's store alone."""
        a = AsyncLocalStorage[object](name="a")
        b = AsyncLocalStorage[object](name="b")

        def both() -> tuple[object, object]:
            return a.get_store(), b.get_store()

        def run_b() -> tuple[object, object]:
            return b.run("B", both)

        def exit_b() -> tuple[object, object]:
            return b.exit(both)

        assert a.run("A", run_b) == ("A", "B")
        assert a.run("A", exit_b) == ("A", None)

    def test_falsy_stores_are_stores(self, storage: AsyncLocalStorage[object]) -> None:
        """0, '' and None are stores like any other."""
        s = AsyncLocalStorage(default="default")
        assert [s.run(v, s.get_store) for v in (0, "", None, False)] == [0, "", None, False]


class TestExit:
    def test_default_inside_and_restored_after(self) -> None:
        """Inside exit(), get_store() is the default; the store is back afterwards."""
        s = AsyncLocalStorage(default="-")

        def in_a() -> tuple[str, str, str]:
            before = s.get_store()
            inside_exit = s.exit(s.get_store)
            after = s.get_store()
            return before, inside_exit, after

        assert s.run("A", in_a) == ("A", "-", "A")
        assert s.get_store() == "-"

    def test_other_storages_keep_their_stores(self) -> None:
        """exit() leaves every other storage's store as it is."""
        a = AsyncLocalStorage[object]()
        b = AsyncLocalStorage[object]()

        def in_a() -> tuple[object, object]:
            def in_b() -> tuple[object, object]:
                def outside_a() -> tuple[object, object]:
                    return a.get_store(), b.get_store()

                return a.exit(outside_a)

            return b.run(2, in_b)

        seen = a.run(1, in_a)
        assert seen == (None, 2)

    def test_nothing_leaks_back(self, storage: AsyncLocalStorage[object]) -> None:
        """What fn sets inside exit() stays there."""

        def body() -> object:
            storage.exit(storage.enter_with, "leak")
            return storage.get_store()

        assert storage.run("A", body) == "A"

    def test_not_callable(self, storage: AsyncLocalStorage[object]) -> None:
        """A non-callable fn is a TypeError naming exit()'s argument."""
        with pytest.raises(TypeError, match=r"^exit\(\) argument 'fn' must be callable, not str$"):
            storage.exit("nope")  # type: ignore[arg-type]


class TestEnterWith:
    def test_rest_of_the_context(self, storage: AsyncLocalStorage[object]) -> None:
        """enter_with holds until the enclosing run ends, and never reaches that run's caller."""

        def body() -> list[object]:
            seen = [storage.get_store()]
            storage.enter_with("B")
            seen.append(storage.get_store())
            seen.append(storage.run("C", storage.get_store))
            seen.append(storage.get_store())
            return seen

        assert storage.run("A", body) == ["A", "B", "C", "B"]
        assert storage.get_store() is None

    def test_thread_context(self, storage: AsyncLocalStorage[object]) -> None:
        """enter_with in a thread's own context lasts for that thread only."""
        recorder = Recorder()
        seq = Sequencer()

        def thread() -> None:
            with seq(0):
                storage.enter_with("T")
            with seq(2):
                recorder("thread", storage.get_store())

        worker = Worker(thread)
        worker.start()
        with seq(1):
            recorder("main", storage.get_store())
        join_all([worker])
        assert recorder.as_dict() == {"main": None, "thread": "T"}


class TestScope:
    def test_sets_and_restores(self, storage: AsyncLocalStorage[object]) -> None:
        """The store is current inside the block, __enter__ returns it, and the old one is back after."""
        storage.enter_with("outer")
        with storage.scope("inner") as entered:
            assert entered == "inner"
            assert storage.get_store() == "inner"
            with storage.scope("innermost"):
                assert storage.get_store() == "innermost"
            assert storage.get_store() == "inner"
        assert storage.get_store() == "outer"

    def test_restores_after_an_exception(self, storage: AsyncLocalStorage[object]) -> None:
        """An exception leaving the block restores the previous store and propagates unchanged."""
        error = RuntimeError("in block")
        with pytest.raises(RuntimeError) as info, storage.scope("A"):
            raise error
        assert info.value is error
        assert storage.get_store() is None

    def test_enter_twice_is_an_error(self, storage: AsyncLocalStorage[object]) -> None:
        """One scope object serves one block at a time."""
        scope = storage.scope("A")
        with scope, pytest.raises(RuntimeError, match="already entered"):
            scope.__enter__()
        assert storage.get_store() is None
        with scope:  # usable again once exited
            assert storage.get_store() == "A"

    def test_exit_from_another_thread_is_a_no_op(self, storage: AsyncLocalStorage[object]) -> None:
        """An exit in another context neither raises nor touches either context's binding."""
        scope = storage.scope("A")
        scope.__enter__()
        recorder = Recorder()

        def close_elsewhere() -> None:
            storage.enter_with("other thread")
            scope.__exit__(None, None, None)
            recorder("other thread", storage.get_store())

        worker = Worker(close_elsewhere)
        worker.start()
        join_all([worker])
        assert recorder.as_dict() == {"other thread": "other thread"}
        assert storage.get_store() == "A"  # out of reach of the other thread: left as it was
        scope.__exit__(None, None, None)  # the token is spent: a no-op here too
        assert storage.get_store() == "A"

    def test_exit_after_disable_leaves_the_new_binding(self, storage: AsyncLocalStorage[object]) -> None:
        """A scope entered before disable() restores nothing that disable() reset, and binds nothing new."""

        def body() -> list[object]:
            seen = []
            with storage.scope("A"):
                storage.disable()
                seen.append(storage.get_store())
                storage.enter_with("after disable")
            seen.append(storage.get_store())
            return seen

        assert contextvars.copy_context().run(body) == [None, "after disable"]


class TestDisable:
    def test_every_thread_sees_the_default(self, storage: AsyncLocalStorage[object]) -> None:
        """A thread inside run() sees the default once disable() is called elsewhere."""
        recorder = Recorder()
        seq = Sequencer()

        def body() -> None:
            with seq(0):
                recorder("before", storage.get_store())
            with seq(2):
                recorder("after", storage.get_store())

        worker = Worker(storage.run, "A", body)
        worker.start()
        with seq(1):
            storage.disable()
        join_all([worker])
        assert recorder.as_dict() == {"before": "A", "after": None}

    def test_captured_get_store_and_bound_functions(self) -> None:
        """get_store captured before disable(), and functions bound before it, return the default."""
        storage = AsyncLocalStorage(default="-")
        get = storage.get_store
        bound = storage.run("A", als.bind, get)
        snap = storage.run("A", als.snapshot)
        assert bound() == "A"
        assert snap(get) == "A"
        storage.disable()
        assert (get(), bound(), snap(get)) == ("-", "-", "-")

    def test_run_and_enter_with_bind_again(self, storage: AsyncLocalStorage[object]) -> None:
        """After disable(), run and enter_with work as before."""
        storage.disable()
        assert storage.run("B", storage.get_store) == "B"

        def body() -> object:
            storage.enter_with("C")
            return storage.get_store()

        assert contextvars.copy_context().run(body) == "C"

    def test_a_run_elsewhere_brings_no_old_binding_back(self, storage: AsyncLocalStorage[object]) -> None:
        """A context that held A before disable() sees the default, even while another thread runs B."""
        recorder = Recorder()
        seq = Sequencer()

        def holder() -> None:
            with seq(0):
                pass  # the holder is inside run("A")
            with seq(3):
                recorder("holder", storage.get_store())

        def runner() -> None:
            with seq(2):
                pass  # the runner is inside run("B"), and stays there while the holder looks
            with seq(4):
                recorder("runner", storage.get_store())

        first = Worker(storage.run, "A", holder)
        first.start()
        with seq(1):
            storage.disable()
        second = Worker(storage.run, "B", runner)
        second.start()
        join_all([first, second])
        assert recorder.as_dict() == {"holder": None, "runner": "B"}


class TestBindAndSnapshot:
    def test_bind_captures_at_bind_time(self, storage: AsyncLocalStorage[object]) -> None:
        """A bound function sees the stores of every storage as they were when bind() ran."""
        second = AsyncLocalStorage[object]()

        def both() -> tuple[object, object]:
            return storage.get_store(), second.get_store()

        def in_a() -> Callable[[], tuple[object, object]]:
            def in_b() -> Callable[[], tuple[object, object]]:
                return als.bind(both)

            return second.run("B", in_b)

        bound = storage.run("A", in_a)
        assert bound() == ("A", "B")
        assert storage.run("C", bound) == ("A", "B")

    def test_static_and_module_level_are_the_same(self) -> None:
        """AsyncLocalStorage.bind/snapshot are als.bind/als.snapshot."""
        assert AsyncLocalStorage.bind is als.bind
        assert AsyncLocalStorage.snapshot is als.snapshot

    def test_fresh_copy_per_call(self, storage: AsyncLocalStorage[object]) -> None:
        """What one call of a bound function sets is not seen by the next call, nor by the caller."""

        def body() -> object:
            seen = storage.get_store()
            storage.enter_with("changed")
            other_var.set("changed")
            return seen

        bound = storage.run("A", als.bind, body)
        assert [bound(), bound()] == ["A", "A"]
        snap = storage.run("A", als.snapshot)
        assert [snap(body), snap(body)] == ["A", "A"]
        assert other_var.get() == "unset"

    def test_concurrent_calls_from_many_threads(self, storage: AsyncLocalStorage[object]) -> None:
        """Many threads call one bound function at once; each call is isolated from the others."""
        barrier = threading.Barrier(8, timeout=TIMEOUT)
        recorder = Recorder()

        def body(n: int) -> None:
            barrier.wait()  # all eight calls are inside the captured context at once
            storage.enter_with(f"call {n}")
            barrier.wait()
            recorder(f"call {n}", storage.get_store())

        bound = storage.run("A", als.bind, body)
        workers = [Worker(bound, n) for n in range(8)]
        for w in workers:
            w.start()
        join_all(workers)
        assert recorder.as_dict() == {f"call {n}": f"call {n}" for n in range(8)}

    def test_bound_async_function_is_still_async(self, storage: AsyncLocalStorage[object]) -> None:
        """bind(async_fn) passes inspect.iscoroutinefunction, as frameworks check, and its coroutine runs
        with the bind-time store."""
        import asyncio
        import inspect

        async def handler(x: int) -> tuple[int, object]:
            await asyncio.sleep(0)
            return x, storage.get_store()

        bound = storage.run("A", als.bind, handler)
        assert inspect.iscoroutinefunction(bound)
        assert asyncio.run(storage.run("B", bound, 1)) == (1, "A")

    def test_bind_keeps_metadata(self) -> None:
        """functools.wraps: the bound function keeps the name and docstring."""

        def handler() -> None:
            """Handle."""

        bound = als.bind(handler)
        assert bound.__name__ == "handler"
        assert bound.__doc__ == "Handle."
        assert bound.__wrapped__ is handler  # type: ignore[attr-defined]

    def test_not_callable(self) -> None:
        """bind(42) and snapshot()(42) are TypeErrors at the call."""
        with pytest.raises(TypeError, match=r"^bind\(\) argument 'fn' must be callable, not int$"):
            als.bind(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^snapshot\(\) argument 'fn' must be callable, not int$"):
            als.snapshot()(42)  # type: ignore[arg-type]

    def test_snapshot_passes_arguments(self, storage: AsyncLocalStorage[object]) -> None:
        """The runner passes positional and keyword arguments, 'fn' included, and returns the result."""
        snap = storage.run("A", als.snapshot)

        def target(a: int, *, fn: str) -> tuple[int, str, object]:
            return a, fn, storage.get_store()

        assert snap(target, 1, fn="f") == (1, "f", "A")
        assert "Snapshot" in repr(snap)

    def test_bound_context_released_with_the_function(self, storage: AsyncLocalStorage[object]) -> None:
        """The captured store lives as long as the bound function, no longer."""
        store = Store("A")
        ref = weakref.ref(store)
        bound = storage.run(store, als.bind, storage.get_store)
        del store
        gc.collect()
        assert ref() is not None
        del bound
        gc.collect()
        assert ref() is None
