"""als.patch(): unmodified standard-library code propagates the context on every thread hop."""

from __future__ import annotations

import _contextvars
import asyncio
import contextlib
import contextvars
import gc
import inspect
import multiprocessing
import os
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest

import als
import als._context
import als._executors
import als._patch
import als._threads
from als import AsyncLocalStorage

from .helpers import (
    ORIGINALS,
    PATCH_TARGETS,
    THREADS_INHERIT,
    TIMEOUT,
    Recorder,
    Sequencer,
    Worker,
    assert_originals,
    consumed_in_another_thread,
    join_all,
    run_child,
    stdlib_loses_context,
    threads_inherit_only,
    wait,
)


def installed() -> dict[str, object]:
    """What each patched attribute holds now."""
    return {label: vars(owner).get(name) for label, (owner, name) in PATCH_TARGETS.items()}


task_var: contextvars.ContextVar[str] = contextvars.ContextVar("task_var", default="unset")


class Store:
    def __init__(self, name: str) -> None:
        self.name = name


def pid_and_store(storage_name: str) -> tuple[int, str]:
    """Runs in a worker process: picklable, reports where it ran."""
    return os.getpid(), storage_name


needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="no fork start method on this platform"
)


@pytest.fixture
def patched_process() -> Iterator[None]:
    als.patch()
    try:
        yield
    finally:
        als.unpatch()


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """Counts the copies als makes of a request's context (at most one per hop), in every module.

    Copies of an empty context, made when a pool starts a worker thread
    outside any request, are not counted: whether a hop starts a worker
    depends on timing.
    """
    made: list[None] = []
    counting = counted_copies(contextvars.copy_context, made)
    for module in (als._context, als._executors, als._patch, als._threads):
        monkeypatch.setattr(module, "copy_context", counting)
    return made


def counted_copies(
    copy: Callable[[], contextvars.Context], made: list[None]
) -> Callable[[], contextvars.Context]:
    """``copy``, appending to ``made`` for each copy of a non-empty context."""

    def counting() -> contextvars.Context:
        context = copy()
        if len(context):
            made.append(None)
        return context

    return counting


@pytest.mark.usefixtures("patched_process")
class TestThreads:
    def test_thread_target_subclass_and_timer(self, storage: AsyncLocalStorage[object]) -> None:
        """Thread(target=), a subclass overriding run() and a Timer all see the starter's store."""
        recorder = Recorder()

        class Legacy(threading.Thread):
            def run(self) -> None:
                recorder("subclass", storage.get_store())

        def request() -> list[threading.Thread]:
            threads = [
                threading.Thread(target=lambda: recorder("target", storage.get_store())),
                Legacy(),
                threading.Timer(0, lambda: recorder("timer", storage.get_store())),
            ]
            for thread in threads:
                thread.start()
            return threads

        join_all(storage.run("A", request))
        assert recorder.as_dict() == {"target": "A", "subclass": "A", "timer": "A"}

    def test_copied_at_start_and_nothing_leaks_back(self, storage: AsyncLocalStorage[object]) -> None:
        """A thread built in A and started in B sees B; what it sets stays in the thread."""
        recorder = Recorder()

        def target() -> None:
            recorder("thread", storage.get_store())
            storage.enter_with("set in thread")

        thread = storage.run("A", threading.Thread, target=target)

        def request() -> object:
            thread.start()
            thread.join(TIMEOUT)
            return storage.get_store()

        assert storage.run("B", request) == "B"
        assert recorder.as_dict() == {"thread": "B"}

    def test_thread_created_before_patch(self, storage: AsyncLocalStorage[object]) -> None:
        """A thread object made before patch() and started after it propagates too."""
        als.unpatch()
        recorder = Recorder()
        thread = threading.Thread(target=lambda: recorder("thread", storage.get_store()))
        als.patch()
        storage.run("A", thread.start)
        join_all([thread])
        assert recorder.as_dict() == {"thread": "A"}

    def test_opt_out(self, storage: AsyncLocalStorage[object]) -> None:
        """als_inherit_context = False, on a thread or its class, starts it with an empty context."""
        recorder = Recorder()

        class LongLived(threading.Thread):
            als_inherit_context = False

            def run(self) -> None:
                recorder("class", storage.get_store())

        instance = threading.Thread(target=lambda: recorder("instance", storage.get_store()))
        instance.als_inherit_context = False  # type: ignore[attr-defined]
        threads = [LongLived(), instance]
        storage.run("A", lambda: [t.start() for t in threads])
        join_all(threads)
        assert recorder.as_dict() == {"class": None, "instance": None}

    def test_a_run_the_instance_had_is_kept(self, storage: AsyncLocalStorage[object]) -> None:
        """A run() assigned on the thread instance is what runs, in the starter's context, and it is still
        the instance's own attribute afterwards."""
        recorder = Recorder()
        thread = threading.Thread()

        def work() -> None:
            recorder("work", storage.get_store())

        thread.run = work  # type: ignore[method-assign]
        storage.run("A", thread.start)
        join_all([thread])
        assert recorder.as_dict() == {"work": "A"}
        assert thread.__dict__["run"] is work

    def test_a_start_saved_in_a_subclass_before_the_patch_is_not_bypassed(
        self, storage: AsyncLocalStorage[object], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A start() saved in a subclass's own dict before the patch does not get around it: with
        Timer.start set to the Thread.start found earlier (as OpenTelemetry's uninstrument() leaves it),
        a Timer started through it still runs in its starter's copy."""
        monkeypatch.setattr(threading.Timer, "start", threading.Thread.start, raising=False)
        recorder = Recorder()
        timer = threading.Timer(0, lambda: recorder("timer", storage.get_store()))
        storage.run("A", timer.start)
        join_all([timer])
        assert recorder.as_dict() == {"timer": "A"}

    @pytest.mark.skipif(sys.version_info < (3, 14), reason="Thread(context=) is new in 3.14")
    def test_an_explicit_context_is_kept(self, storage: AsyncLocalStorage[object]) -> None:
        """Thread(context=ctx) runs in ctx itself, an empty Context() included: never the starter's."""
        recorder = Recorder()
        given = contextvars.Context()
        given.run(storage.enter_with, "given")
        threads = [
            threading.Thread(
                target=lambda: recorder("empty", storage.get_store()), context=contextvars.Context()
            ),  # type: ignore[call-arg]
            threading.Thread(target=lambda: recorder("given", storage.get_store()), context=given),  # type: ignore[call-arg]
            threading.Thread(target=lambda: recorder("none", storage.get_store())),
        ]
        storage.run("A", lambda: [thread.start() for thread in threads])
        join_all(threads)
        assert recorder.as_dict() == {"empty": None, "given": "given", "none": "A"}

    def test_finished_thread_keeps_no_store(self, storage: AsyncLocalStorage[object]) -> None:
        """A finished thread object keeps nothing of its starter's context."""
        store = Store("A")
        ref = weakref.ref(store)
        thread = threading.Thread(target=storage.get_store)
        storage.run(store, thread.start)
        join_all([thread])
        del store
        gc.collect()
        assert ref() is None

    def test_exceptions_reach_excepthook_unchanged(
        self, storage: AsyncLocalStorage[object], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An exception in a patched thread reaches threading.excepthook as the same object."""
        calls: list[threading.ExceptHookArgs] = []
        monkeypatch.setattr(threading, "excepthook", calls.append)
        error = RuntimeError("in thread")

        def fail() -> None:
            raise error

        thread = threading.Thread(target=fail)
        storage.run("A", thread.start)
        join_all([thread])
        assert [c.exc_value for c in calls] == [error]

    def test_als_threads_are_not_copied_twice(
        self, storage: AsyncLocalStorage[object], copies: list[None], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ContextThread and ContextTimer copy for themselves (where threads inherit, the interpreter's
        own copy is theirs); the patch adds no copy: one per thread."""
        # What Thread.start calls, where threads inherit.
        monkeypatch.setattr(_contextvars, "copy_context", counted_copies(_contextvars.copy_context, copies))
        recorder = Recorder()
        threads = [
            als.ContextThread(target=lambda: recorder("thread", storage.get_store())),
            als.ContextTimer(0, lambda: recorder("timer", storage.get_store())),
        ]
        storage.run("A", lambda: [t.start() for t in threads])
        join_all(threads)
        assert recorder.as_dict() == {"thread": "A", "timer": "A"}
        assert len(copies) == 2


@pytest.mark.usefixtures("patched_process")
class TestThreadPools:
    def test_submit_and_map(self, storage: AsyncLocalStorage[object]) -> None:
        """submit() and map() on a plain ThreadPoolExecutor run with the submitter's store."""
        with ThreadPoolExecutor(max_workers=2) as executor:

            def request() -> tuple[object, list[object]]:
                future = executor.submit(storage.get_store)
                mapped = list(executor.map(lambda _: storage.get_store(), range(3)))
                return future.result(TIMEOUT), mapped

            assert storage.run("A", request) == ("A", ["A", "A", "A"])

    def test_executor_created_before_patch(self, storage: AsyncLocalStorage[object]) -> None:
        """An executor made (and its worker started) before patch() propagates after it."""
        als.unpatch()
        with ThreadPoolExecutor(max_workers=1) as executor:
            executor.submit(lambda: None).result(TIMEOUT)  # the worker thread exists
            als.patch()
            assert storage.run("A", executor.submit, storage.get_store).result(TIMEOUT) == "A"

    def test_nothing_leaks_back_or_across(self, storage: AsyncLocalStorage[object]) -> None:
        """What a task sets reaches neither its submitter nor the same worker's next task."""

        def first() -> int:
            storage.enter_with("set by first")
            task_var.set("set by first")
            return threading.get_ident()

        with ThreadPoolExecutor(max_workers=1) as executor:

            def request() -> tuple[int, int, object, str, object]:
                ident = executor.submit(first).result(TIMEOUT)
                ident2, store, var = executor.submit(
                    lambda: (threading.get_ident(), storage.get_store(), task_var.get())
                ).result(TIMEOUT)
                return ident, ident2, store, var, storage.get_store()

            ident, ident2, store, var, after = storage.run("A", request)
        assert ident == ident2
        assert (store, var, after) == ("A", "unset", "A")

    def test_nested_pool_inside_a_worker(self, storage: AsyncLocalStorage[object]) -> None:
        """A task that fans out to another plain pool hands its store on."""
        with ThreadPoolExecutor(max_workers=1) as outer, ThreadPoolExecutor(max_workers=2) as inner:

            def task() -> list[object]:
                return [f.result(TIMEOUT) for f in [inner.submit(storage.get_store) for _ in range(2)]]

            assert storage.run("A", outer.submit, task).result(TIMEOUT) == ["A", "A"]

    def test_workers_are_not_pinned(self, storage: AsyncLocalStorage[object]) -> None:
        """A worker started while A submits keeps none of A once A's task is done."""
        store = Store("A")
        ref = weakref.ref(store)
        with ThreadPoolExecutor(max_workers=1) as executor:
            storage.run(store, executor.submit, storage.get_store).result(TIMEOUT)
            executor.submit(lambda: None).result(TIMEOUT)  # the worker has let go of A's work item
            del store
            gc.collect()
            assert ref() is None  # the idle worker keeps nothing of request A

    @pytest.mark.skipif(sys.version_info < (3, 14), reason="map(buffersize=) is new in 3.14")
    def test_map_with_buffersize_consumed_elsewhere(self, storage: AsyncLocalStorage[object]) -> None:
        """3.14's real buffersize: items submitted while B's thread consumes still run in A's context."""
        with ThreadPoolExecutor(max_workers=2) as executor:
            results = storage.run(
                "A", executor.map, lambda n: (n, storage.get_store()), range(5), buffersize=1
            )
            consumed = consumed_in_another_thread(storage, "B", results)
        assert consumed == [(n, "A") for n in range(5)]

    def test_map_results_closed_early_cancel_the_rest_as_the_stdlib_does(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        """map()'s results under the patch are a generator: close() reaches the standard library's own,
        which cancels the futures still pending; the items that ran saw map()'s caller's store."""
        started, release = threading.Event(), threading.Event()
        ran = Recorder()

        def item(n: int) -> int:
            ran(f"item {n}", storage.get_store())
            if n == 1:
                started.set()
                wait(release)
            return n

        with ThreadPoolExecutor(max_workers=1) as executor:
            results = storage.run("A", executor.map, item, range(3))
            assert isinstance(results, types.GeneratorType)
            assert next(results) == 0
            wait(started)  # item 1 runs, item 2 waits in the queue
            results.close()
            release.set()
        assert ran.as_dict() == {"item 0": "A", "item 1": "A"}  # item 2 was cancelled

    def test_bind_and_snapshot_are_not_copied_twice(
        self, storage: AsyncLocalStorage[object], copies: list[None]
    ) -> None:
        """A bound function or a snapshot handed to a patched pool runs in its own captured context: the
        pool makes no second copy."""
        with ThreadPoolExecutor(max_workers=1) as executor:
            bound = storage.run("A", als.bind, storage.get_store)
            snap = storage.run("S", als.snapshot)
            copies.clear()
            assert storage.run("B", executor.submit, bound).result(TIMEOUT) == "A"
            assert storage.run("B", executor.submit, snap, storage.get_store).result(TIMEOUT) == "S"
        assert copies == []

    def test_bad_input_keeps_stdlib_behaviour(self) -> None:
        """submit(42) still returns a future that fails as the standard library's would."""
        with ThreadPoolExecutor(max_workers=1) as executor:
            error = executor.submit(42).exception(TIMEOUT)  # type: ignore[arg-type]
        assert isinstance(error, TypeError)
        assert str(error) == "'int' object is not callable"

    def test_exceptions_and_results_unchanged(self) -> None:
        """The future carries the very exception the task raised."""
        error = LookupError("task")

        def fail() -> None:
            raise error

        with ThreadPoolExecutor(max_workers=1) as executor:
            assert executor.submit(fail).exception(TIMEOUT) is error
            assert executor.submit(lambda *, fn: fn, fn=3).result(TIMEOUT) == 3

    def test_als_executors_are_not_copied_twice(
        self, storage: AsyncLocalStorage[object], copies: list[None]
    ) -> None:
        """ContextThreadPoolExecutor and wrap_executor under the patch: one copy per task, map's items
        included."""
        with als.ContextThreadPoolExecutor(max_workers=1) as own, ThreadPoolExecutor(max_workers=1) as plain:
            wrapped = als.wrap_executor(plain)
            hops: dict[str, Callable[[], list[object]]] = {
                "own submit": lambda: [own.submit(storage.get_store).result(TIMEOUT)],
                "wrapped submit": lambda: [wrapped.submit(storage.get_store).result(TIMEOUT)],
                "own map": lambda: list(own.map(lambda _: storage.get_store(), range(2))),
                "wrapped map": lambda: list(wrapped.map(lambda _: storage.get_store(), range(2))),
            }
            seen = {}
            for hop, call in hops.items():
                copies.clear()
                seen[hop] = (storage.run("A", call), len(copies))
        assert seen == {
            "own submit": (["A"], 1),
            "wrapped submit": (["A"], 1),
            "own map": (["A", "A"], 2),
            "wrapped map": (["A", "A"], 2),
        }

    def test_one_copy_per_plain_submit(self, storage: AsyncLocalStorage[object], copies: list[None]) -> None:
        """A plain submit() costs exactly one context copy."""
        with ThreadPoolExecutor(max_workers=1) as executor:
            storage.run("A", executor.submit, storage.get_store).result(TIMEOUT)
        assert len(copies) == 1

    def test_done_callbacks_keep_stdlib_behaviour(self, storage: AsyncLocalStorage[object]) -> None:
        """A plain future's callback still runs where the standard library runs it: in the completing
        worker's own context, not the registrant's (only als's executors change that)."""
        recorder = Recorder()
        release = threading.Event()
        with ThreadPoolExecutor(max_workers=1) as executor:
            future = storage.run("A", executor.submit, wait, release)
            assert type(future) is Future
            storage.run("B", future.add_done_callback, lambda _: recorder("callback", storage.get_store()))
            release.set()
            future.result(TIMEOUT)
        assert recorder.as_dict() == {"callback": None}

    @pytest.mark.skipif(sys.version_info < (3, 14), reason="prepare_context() is new in 3.14")
    def test_a_pool_with_a_worker_context_of_its_own(self, storage: AsyncLocalStorage[object]) -> None:
        """3.14's extension point: a ThreadPoolExecutor subclass whose prepare_context() returns its own
        WorkerContext subclass, running tasks in this process, propagates like a plain pool."""
        from concurrent.futures.thread import WorkerContext  # type: ignore[attr-defined]

        class Counting(WorkerContext):  # type: ignore[misc]
            ran = 0

            def run(self, task: Any) -> Any:
                Counting.ran += 1
                return super().run(task)

        class Pool(ThreadPoolExecutor):
            @classmethod
            def prepare_context(cls, initializer: Any, initargs: Any) -> Any:  # type: ignore[override]
                return Counting.prepare(initializer, initargs)

        with Pool(max_workers=1) as executor:
            assert storage.run("A", executor.submit, storage.get_store).result(TIMEOUT) == "A"
            assert list(storage.run("B", executor.map, lambda _: storage.get_store(), [1])) == ["B"]
        assert Counting.ran == 2

    @pytest.mark.skipif(sys.version_info < (3, 14), reason="InterpreterPoolExecutor is new in 3.14")
    def test_work_sent_to_another_interpreter_gets_no_context(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        """An InterpreterPoolExecutor (a ThreadPoolExecutor subclass) gets no Context, which cannot cross
        into another interpreter: its work runs as it would unpatched (carried stores do cross: see
        test_carry.py)."""
        from concurrent.futures import InterpreterPoolExecutor  # type: ignore[attr-defined]

        with InterpreterPoolExecutor(max_workers=1) as executor:
            assert storage.run("A", executor.submit, len, "abc").result(TIMEOUT) == 3
            assert list(storage.run("A", executor.map, len, ["a", "ab"])) == [1, 2]


@pytest.mark.usefixtures("patched_process")
class TestAsyncio:
    def test_run_in_executor_default_and_explicit(self, storage: AsyncLocalStorage[object]) -> None:
        """loop.run_in_executor on the default executor and on a plain pool sees the task's store."""
        with ThreadPoolExecutor(max_workers=1) as explicit:

            async def request() -> tuple[object, object]:
                loop = asyncio.get_running_loop()
                return (
                    await loop.run_in_executor(None, storage.get_store),
                    await loop.run_in_executor(explicit, storage.get_store),
                )

            async def main() -> list[tuple[object, object]]:
                return await asyncio.gather(*(storage.run(f"req {n}", request) for n in range(3)))

            assert asyncio.run(main()) == [(f"req {n}", f"req {n}") for n in range(3)]

    def test_to_thread_is_copied_once(self, storage: AsyncLocalStorage[object], copies: list[None]) -> None:
        """asyncio.to_thread copies the context itself; the patch adds no second copy."""

        async def main() -> tuple[object, int]:
            # Counted here: asyncio.run's shutdown starts a thread of its own.
            return await asyncio.to_thread(storage.get_store), len(copies)

        assert asyncio.run(storage.run("A", main)) == ("A", 0)

    def test_default_executor_made_before_patch(self, storage: AsyncLocalStorage[object]) -> None:
        """A loop whose default executor already ran work before patch() propagates after it."""
        als.unpatch()

        async def main() -> tuple[object, object]:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: None)
            als.patch()
            return await storage.run("A", loop.run_in_executor, None, storage.get_store), storage.get_store()

        assert asyncio.run(main()) == ("A", None)


@pytest.mark.usefixtures("patched_process")
class TestProcessPool:
    def test_work_goes_unwrapped_and_manager_thread_is_not_pinned(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        """A process pool under the patch runs picklable work as before; its threads keep no request."""
        store = Store("A")
        ref = weakref.ref(store)
        with ProcessPoolExecutor(max_workers=1) as executor:
            pid, name = storage.run(store, executor.submit, pid_and_store, "arg").result(60)
            assert (pid != os.getpid(), name) == (True, "arg")
            del store
            gc.collect()
            assert ref() is None  # the pool's manager thread holds nothing of the request


@needs_fork
class TestForkedWorkers:
    """Under the patch, a process that serves a pool is forked with no request's store, whichever
    thread forks it, since a forked worker keeps its forking thread's context for life. The pools run
    in a child process (tests/fork_peer.py), away from this suite's threads and sockets."""

    def test_without_the_patch_a_pool_made_in_a_request_keeps_it(self) -> None:
        """The danger, shown: a Pool made lazily inside request A shows A to every later task."""
        assert [store for _, store in run_child("fork_peer", "pool-unpatched")] == ["A", "A"]

    def test_pool_made_in_a_request_and_its_re_created_workers(self) -> None:
        """Under the patch, neither the first workers (forked in A's thread) nor the ones the pool
        re-creates (maxtasksperchild=1, forked by its handler thread) keep a request's store, through
        apply, map, imap, starmap and apply_async."""
        results = run_child("fork_peer", "pool-patched")
        assert [store for _, store in results] == [None] * 8
        assert len({pid for pid, _ in results}) == 8  # every task had a re-created worker

    @pytest.mark.parametrize("patch_on", [False, True], ids=["unpatched", "patched"])
    def test_shared_process_pool_first_used_in_a_request(self, patch_on: bool) -> None:
        """A ProcessPoolExecutor made at start-up forks its workers at the first submit: inside request
        A. Without the patch they show A to every later task; under it, nothing."""
        results = run_child("fork_peer", "executor-patched" if patch_on else "executor-unpatched")
        assert [store for _, store in results] == ([None] * 3 if patch_on else ["A"] * 3)


class TestWorkersNeverPinned:
    """Under thread_inherit_context (the free-threaded default) a plain pool's workers inherit the
    first submitter's context; under the patch they never do, flag on or off."""

    @threads_inherit_only
    def test_without_the_patch_a_plain_pool_shows_request_0_to_all(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        """The danger, shown: three requests, one worker, and every request sees request 0's id."""
        with ThreadPoolExecutor(max_workers=1) as pool:
            seen = [storage.run(f"req-{n}", pool.submit, storage.get_store).result(TIMEOUT) for n in range(3)]
        assert seen == ["req-0"] * 3

    @pytest.mark.parametrize("made", ["before patch()", "after patch()"])
    def test_plain_pool_under_the_patch(self, storage: AsyncLocalStorage[object], made: str) -> None:
        """Each request sees its own id, and a task outside any request sees none."""
        pool = ThreadPoolExecutor(max_workers=1) if made == "before patch()" else None
        with als.patched(), pool or ThreadPoolExecutor(max_workers=1) as executor:
            seen = [
                storage.run(f"req-{n}", executor.submit, storage.get_store).result(TIMEOUT) for n in range(3)
            ]
            seen.append(executor.submit(storage.get_store).result(TIMEOUT))
            seen += storage.run("req-map", executor.map, lambda _: storage.get_store(), range(2))
        assert seen == ["req-0", "req-1", "req-2", None, "req-map", "req-map"]

    @pytest.mark.usefixtures("patched_process")
    def test_lazily_started_long_lived_threads_of_the_stdlib(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        """asyncio's default executor, started by request A's first run_in_executor, serves B unpinned."""

        async def request() -> object:
            return await asyncio.get_running_loop().run_in_executor(None, storage.get_store)

        async def main() -> list[object]:
            first = await storage.run("A", request)
            return [first, await storage.run("B", request), await request()]

        assert asyncio.run(main()) == ["A", "B", None]


class TestServiceThreads:
    """Under the patch, threads that serve a stdlib pool or queue (multiprocessing's ThreadPool,
    logging's QueueListener) are never pinned to the request that started them: later work sees no
    store of it (a ThreadPool's task sees its own caller's)."""

    @pytest.mark.usefixtures("patched_process")
    def test_multiprocessing_thread_pool_created_in_a_request(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        from multiprocessing.pool import ThreadPool

        store = Store("A")
        ref = weakref.ref(store)
        pool = storage.run(store, ThreadPool, 2)
        try:
            # Its threads keep nothing of A; a task runs in a copy of its caller's context.
            assert storage.run("B", pool.apply, storage.get_store) == "B"
            assert pool.apply(storage.get_store) is None
            del store
            gc.collect()
            assert ref() is None
        finally:
            pool.close()
            pool.join()

    @pytest.mark.usefixtures("patched_process")
    def test_queue_listener_started_in_a_request(self, storage: AsyncLocalStorage[object]) -> None:
        import logging
        import logging.handlers
        import queue

        seen: list[object] = []

        class Spy(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(storage.get_store())

        records: queue.Queue[logging.LogRecord] = queue.Queue()
        listener = logging.handlers.QueueListener(records, Spy())
        storage.run("A", listener.start)
        try:
            storage.run("B", records.put, logging.makeLogRecord({"msg": "x"}))
        finally:
            listener.stop()
        assert seen == [None]


class TestPeers:
    """als.patch() alongside other instrumentation of the same objects (Sentry, OpenTelemetry, gevent),
    applied before or after it."""

    @pytest.mark.parametrize("order", ["peer first", "als first"])
    def test_sentry_style_run_wrapper(
        self, storage: AsyncLocalStorage[object], monkeypatch: pytest.MonkeyPatch, order: str
    ) -> None:
        """A peer wrapping Thread.start that re-wraps self.run and calls it with self (as Sentry does)."""
        original_start = threading.Thread.start
        recorder = Recorder()

        def peer_start(self: threading.Thread) -> None:
            # As sentry_sdk's threading integration does: the unbound run, called with the thread.
            old_run = getattr(self.run, "__func__", self.run)

            def run(*args: Any, **kwargs: Any) -> Any:
                recorder("peer", True)
                return old_run(threading.current_thread(), *args, **kwargs)

            self.run = run  # type: ignore[method-assign]
            original_start(self)

        class Legacy(threading.Thread):
            def run(self) -> None:
                recorder("thread", storage.get_store())

        if order == "als first":
            als.patch()
        monkeypatch.setattr(threading.Thread, "start", peer_start)
        try:
            als.patch()
            thread = Legacy()
            storage.run("A", thread.start)
            join_all([thread])
        finally:
            als.unpatch()
        assert recorder.as_dict() == {"peer": True, "thread": "A"}

    @pytest.mark.parametrize("order", ["opentelemetry first", "als first"])
    def test_opentelemetry_threading_instrumentor(
        self, storage: AsyncLocalStorage[object], order: str
    ) -> None:
        """Both at once, in either order: Thread, Timer and pool all propagate. Once als is unpatched,
        nothing of als propagates; once both are undone, the originals are back."""
        from opentelemetry.instrumentation.threading import ThreadingInstrumentor

        instrumentor = ThreadingInstrumentor()
        recorder = Recorder()

        def hops(tag: str) -> None:
            thread = threading.Thread(target=lambda: recorder(f"{tag} thread", storage.get_store()))
            timer = threading.Timer(0, lambda: recorder(f"{tag} timer", storage.get_store()))
            with ThreadPoolExecutor(max_workers=1) as pool:
                storage.run("A", lambda: (thread.start(), timer.start()))
                recorder(f"{tag} pool", storage.run("A", pool.submit, storage.get_store).result(TIMEOUT))
            join_all([thread, timer])

        first, second = (instrumentor, als) if order == "opentelemetry first" else (als, instrumentor)
        try:
            (instrumentor.instrument if first is instrumentor else als.patch)()
            (instrumentor.instrument if second is instrumentor else als.patch)()
            hops("both")
            als.unpatch()
            hops("otel only")
        finally:
            als.unpatch()
            instrumentor.uninstrument()
            als.unpatch()  # once OpenTelemetry is gone, the originals come back
        hops("neither")
        seen = recorder.as_dict()
        assert {k: v for k, v in seen.items() if k.startswith("both")} == {
            "both thread": "A",
            "both timer": "A",
            "both pool": "A",
        }
        # Without als, a thread (and a pool's worker) inherits its starter's context only under the flag.
        assert {v for k, v in seen.items() if not k.startswith("both")} == {"A" if THREADS_INHERIT else None}

    @pytest.mark.parametrize("order", ["sentry-first", "als-first", "own-wrappers"])
    def test_sentry_threading_integration(self, order: str) -> None:
        """Sentry's ThreadingIntegration (its defaults) and als.patch(), set up in either order, or als's
        own executor, thread and timer with no patch; three on/off cycles. Every hop sees its request's
        store; a tag a task sets reaches only the task's own event, never the request's; a task's event
        carries the request's user, as with Sentry alone; als's objects are back by identity after each
        cycle and Sentry's wrappers do not pile up. In a child process (tests/sentry_peer.py): Sentry
        patches for the process's life."""
        report = run_child("sentry_peer", order)
        hops = ["submit", "map", "thread", "timer"]
        requests = [f"cycle {cycle} request {n}" for cycle in range(3) for n in range(2)]
        assert sorted(map(tuple, report["seen"])) == sorted(
            (name, hop, name) for name in requests for hop in hops
        )
        events = {event["message"]: event for event in report["events"]}
        assert sorted(events) == sorted(f"{name} {what}" for name in requests for what in [*hops, "request"])
        for name in requests:
            request_event = events[f"{name} request"]
            assert "task" not in request_event.get("tags", {}), request_event
            assert request_event["user"] == {"id": f"user of {name}"}
            for hop in hops:
                event = events[f"{name} {hop}"]
                assert (event["tags"], event["user"]) == ({"task": hop}, {"id": f"user of {name}"})
        before, cycles = report["before"], report["after_cycles"]
        als_owned = ["thread start hook", "work item", "map", "process submit", "contextvars"]
        for after in cycles:
            assert {key: after[key] for key in als_owned} == {key: before[key] for key in als_owned}
            assert after["Thread.start"] == cycles[0]["Thread.start"] != before["Thread.start"]
            assert after["ThreadPoolExecutor.submit"] == cycles[0]["ThreadPoolExecutor.submit"]

    @pytest.mark.parametrize("order", ["gevent-first", "als-first"])
    def test_gevent_monkey_patch_all_in_either_order(self, order: str) -> None:
        """als.patch() before or after gevent.monkey.patch_all(): Thread propagation keeps working, since
        gevent calls als's plugins around its patching of threading, and als patches gevent's functions.
        Threads (greenlets), timers and pools see the store; is_patched() is true; unpatch() leaves
        gevent's functions. In a child process (tests/gevent_peer.py): gevent patches for life."""
        assert run_child("gevent_peer", order) == {
            "thread": "A",
            "timer": "A",
            "pool": "A",
            "is_patched": True,
            "gevent's start after unpatch": True,
        }

    def test_gevent_plugins_are_registered(self) -> None:
        """The installed distribution declares the two plugins gevent looks up, pointing at als."""
        from importlib import metadata

        plugins = {
            "gevent.plugins.monkey.will_patch_module": als._patch.gevent_will_patch_module,
            "gevent.plugins.monkey.did_patch_module": als._patch.gevent_did_patch_module,
        }
        for group, plugin in plugins.items():
            (entry,) = [ep for ep in metadata.entry_points(group=group) if ep.name == "als"]
            assert entry.load() is plugin

    @pytest.mark.parametrize("first", ["opentelemetry first", "als first"])
    @pytest.mark.parametrize("undo", ["in the order done", "in reverse"])
    def test_opentelemetry_cycles_leave_nothing_behind(
        self, storage: AsyncLocalStorage[object], first: str, undo: str
    ) -> None:
        """OpenTelemetry's instrument() and als.patch() in either order, undone in the order done or in
        reverse, three times: every hop propagates each time and afterwards every original is back by
        identity, with no OpenTelemetry wrapper left on ThreadPoolExecutor.submit."""
        from opentelemetry.instrumentation.threading import ThreadingInstrumentor

        instrumentor = ThreadingInstrumentor()
        steps = [(instrumentor.instrument, instrumentor.uninstrument), (als.patch, als.unpatch)]
        if first == "als first":
            steps.reverse()
        undos = [off for _, off in steps]
        if undo == "in reverse":
            undos.reverse()
        originals = (ThreadPoolExecutor.submit, threading.Thread.start, threading.Thread.run)
        timer_had_start = "start" in threading.Timer.__dict__
        recorder = Recorder()
        try:
            for cycle in range(3):
                for on, _ in steps:
                    on()
                thread = threading.Thread(target=lambda: recorder(f"{cycle} thread", storage.get_store()))
                timer = threading.Timer(0, lambda: recorder(f"{cycle} timer", storage.get_store()))
                with ThreadPoolExecutor(max_workers=1) as pool:
                    storage.run("A", lambda: (thread.start(), timer.start()))
                    recorder(
                        f"{cycle} pool", storage.run("A", pool.submit, storage.get_store).result(TIMEOUT)
                    )
                join_all([thread, timer])
                for off in undos:
                    off()
                assert (ThreadPoolExecutor.submit, threading.Thread.start, threading.Thread.run) == originals
                assert_originals()
        finally:
            als.unpatch()
            instrumentor.uninstrument()
            # OpenTelemetry's unwrap leaves Timer.start in Timer's own dict: not als's to keep.
            if not timer_had_start and vars(threading.Timer).get("start") is threading.Thread.start:
                delattr(threading.Timer, "start")
        assert set(recorder.as_dict().values()) == {"A"}
        assert len(recorder.as_dict()) == 9


class TestEveryContextVarRidesAlong:
    """Not only als's stores: any ContextVar crosses the patched hops (what OpenTelemetry and structlog
    users ask for), shown with the real libraries."""

    @pytest.mark.parametrize(
        "patch_on", [True, pytest.param(False, marks=stdlib_loses_context)], ids=["patched", "unpatched"]
    )
    def test_opentelemetry_span_and_structlog_contextvars(self, patch_on: bool) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from structlog.contextvars import bind_contextvars, get_contextvars

        tracer = TracerProvider().get_tracer("als-tests")
        recorder = Recorder()

        def observe(hop: str) -> None:
            span = trace.get_current_span().get_span_context()
            recorder(hop, (span.span_id if span.is_valid else None, get_contextvars().get("request_id")))

        class Legacy(threading.Thread):
            def run(self) -> None:
                observe("thread subclass")

        def request() -> int:
            bind_contextvars(request_id="abc")
            with tracer.start_as_current_span("request") as span, ThreadPoolExecutor(max_workers=1) as pool:
                pool.submit(observe, "pool").result(TIMEOUT)
                thread = Legacy()
                thread.start()
                join_all([thread])
                return int(span.get_span_context().span_id)

        with als.patched() if patch_on else contextlib.nullcontext():
            span_id = contextvars.copy_context().run(request)
        expected = (span_id, "abc") if patch_on else (None, None)
        assert recorder.as_dict() == {"pool": expected, "thread subclass": expected}


class TestPatchState:
    def test_unpatch_restores_the_originals_by_identity(self) -> None:
        """After unpatch(), every patched attribute is the very object it was before."""
        als.patch()
        now = installed()
        assert all(now[label] is not original for label, original in ORIGINALS.items())
        als.unpatch()
        assert_originals()
        assert "map" not in ThreadPoolExecutor.__dict__
        assert ThreadPoolExecutor.map is Executor.map
        assert ThreadPoolExecutor.submit is ThreadPoolExecutor.__dict__["submit"]  # never replaced

    def test_a_python_whose_internals_moved_is_refused_and_nothing_is_replaced(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """patch() on an interpreter that lacks a hook point raises RuntimeError naming it, and replaces
        nothing: a patch that copies nothing would lose ids in silence."""
        owner, name = PATCH_TARGETS["thread start hook"]
        monkeypatch.delattr(owner, name)  # this test starts no thread while it is gone
        with pytest.raises(RuntimeError, match=rf"has no threading\.{name}; nothing was patched"):
            als.patch()
        assert not als.is_patched()
        monkeypatch.undo()
        assert_originals()

    def test_wrappers_keep_names_and_signatures(self) -> None:
        """The replacements carry the originals' names, docstrings and signatures."""
        before = {label: getattr(owner, name) for label, (owner, name) in PATCH_TARGETS.items()}
        with als.patched():
            for label, (owner, name) in PATCH_TARGETS.items():
                original, replacement = before[label], getattr(owner, name)
                assert replacement.__wrapped__ is original  # type: ignore[union-attr]
                if isinstance(original, types.ModuleType):  # threading._contextvars: a stand-in
                    continue
                assert replacement.__name__ == original.__name__  # type: ignore[union-attr]
                assert replacement.__doc__ == original.__doc__
                if isinstance(original, type):  # the work item: a subclass, same constructor
                    assert issubclass(replacement, original)  # type: ignore[arg-type]
                    assert replacement.__qualname__ == original.__qualname__  # type: ignore[union-attr]
                    assert replacement.__module__ == original.__module__
                    parameters = inspect.signature(original).parameters
                    assert list(inspect.signature(replacement).parameters) == list(parameters)
                elif not isinstance(original, types.BuiltinFunctionType):  # builtins have none
                    assert inspect.signature(replacement) == inspect.signature(original)  # type: ignore[arg-type]

    def test_idempotent(self) -> None:
        """patch() twice then unpatch() once: unpatched. unpatch() when unpatched does nothing."""
        als.unpatch()
        assert not als.is_patched()
        als.patch()
        first = installed()
        als.patch()
        assert installed() == first
        assert als.is_patched()
        als.unpatch()
        assert not als.is_patched()
        assert_originals()

    def test_patched_blocks_overlapping_across_threads(self) -> None:
        """X enters patched(), Y enters, X leaves: the process stays patched until Y leaves too."""
        seq = Sequencer()
        recorder = Recorder()

        def x() -> None:
            with contextlib.ExitStack() as block:
                with seq(0):
                    block.enter_context(als.patched())  # X enters
                with seq(2):
                    block.close()  # X leaves

        def y() -> None:
            with contextlib.ExitStack() as block:
                with seq(1):
                    block.enter_context(als.patched())  # Y enters
                with seq(3):
                    recorder("y after x left", als.is_patched())
                    block.close()  # Y leaves
                    recorder("after both", als.is_patched())

        workers = [Worker(x), Worker(y)]
        for w in workers:
            w.start()
        join_all(workers)
        assert recorder.as_dict() == {"y after x left": True, "after both": False}

    def test_patched_restores_the_state_it_found(self) -> None:
        """with patched(): unpatches after if it patched; leaves a patched process patched."""
        with als.patched():
            assert als.is_patched()
        assert not als.is_patched()
        als.patch()
        try:
            with als.patched():
                pass
            assert als.is_patched()
        finally:
            als.unpatch()

    def test_concurrent_patch_and_unpatch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """8 threads patching and unpatching at once leave a consistent state, whichever wins."""
        monkeypatch.setattr(sys, "getswitchinterval", sys.getswitchinterval)
        previous = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as possible, to shake out races
        monkeypatch.setattr(sys, "setswitchinterval", sys.setswitchinterval)
        barrier = threading.Barrier(8, timeout=TIMEOUT)

        def churn(n: int) -> None:
            for _ in range(50):
                barrier.wait()
                (als.patch if n % 2 else als.unpatch)()

        workers = [Worker(churn, n) for n in range(8)]
        try:
            for w in workers:
                w.start()
            join_all(workers)
        finally:
            sys.setswitchinterval(previous)
        now = installed()
        if als.is_patched():
            assert all(now[label] is not original for label, original in ORIGINALS.items())
        else:
            assert_originals()
        als.unpatch()

    def test_running_threads_survive_unpatch(self, storage: AsyncLocalStorage[object]) -> None:
        """A thread started under the patch keeps its context after unpatch()."""
        recorder = Recorder()
        unpatched = threading.Event()

        def target() -> None:
            wait(unpatched)
            recorder("thread", storage.get_store())

        als.patch()
        thread = threading.Thread(target=target)
        storage.run("A", thread.start)
        als.unpatch()
        unpatched.set()
        join_all([thread])
        assert recorder.as_dict() == {"thread": "A"}

    def test_public_names(self) -> None:
        """patch, unpatch, is_patched and patched are public."""
        assert {"patch", "unpatch", "is_patched", "patched"} <= set(als.__all__)
