"""ContextThread and ContextTimer: run() in a copy of the context of start()'s caller."""

from __future__ import annotations

import contextvars
import gc
import os
import sys
import threading
import weakref
from typing import Any

import pytest

from als import AsyncLocalStorage, ContextThread, ContextTimer

from .helpers import (
    THREADS_INHERIT,
    TIMEOUT,
    Recorder,
    join_all,
    stdlib_loses_context,
    threads_inherit_only,
    wait,
)

thread_var: contextvars.ContextVar[str] = contextvars.ContextVar("thread_var", default="unset")


class Store:
    pass


@pytest.fixture
def excepthook_calls(monkeypatch: pytest.MonkeyPatch) -> list[threading.ExceptHookArgs]:
    """Collect what reaches threading.excepthook instead of printing it."""
    calls: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", calls.append)
    return calls


class TestContextThread:
    def test_target_sees_the_starters_store(self, storage: AsyncLocalStorage[object]) -> None:
        """target runs with the store of the code that called start()."""
        recorder = Recorder()
        thread = ContextThread(target=lambda: recorder("thread", storage.get_store()))
        storage.run("A", thread.start)
        join_all([thread])
        assert recorder.as_dict() == {"thread": "A"}

    def test_copied_at_start_not_at_construction(self, storage: AsyncLocalStorage[object]) -> None:
        """A thread built in request A and started in request B runs with B."""
        recorder = Recorder()
        thread = storage.run("A", ContextThread, target=lambda: recorder("thread", storage.get_store()))
        storage.run("B", thread.start)
        join_all([thread])
        assert recorder.as_dict() == {"thread": "B"}

    def test_overridden_run_in_a_subclass(self, storage: AsyncLocalStorage[object]) -> None:
        """A subclass that overrides run() runs it in the starter's context too."""
        recorder = Recorder()

        class Legacy(ContextThread):
            def run(self) -> None:
                recorder("run", storage.get_store())

        thread = Legacy()
        storage.run("A", thread.start)
        join_all([thread])
        assert recorder.as_dict() == {"run": "A"}

    def test_nothing_leaks_back(self, storage: AsyncLocalStorage[object]) -> None:
        """What the thread sets never reaches the starter."""
        started = threading.Event()

        def target() -> None:
            storage.enter_with("set in thread")
            thread_var.set("set in thread")
            started.set()

        def request() -> tuple[object, str]:
            thread = ContextThread(target=target)
            thread.start()
            wait(started)
            join_all([thread])
            return storage.get_store(), thread_var.get()

        assert storage.run("A", request) == ("A", "unset")

    def test_explicit_context_is_used_itself(self, storage: AsyncLocalStorage[object]) -> None:
        """context=ctx runs the thread in ctx: what the thread sets is visible in ctx afterwards."""
        ctx = contextvars.Context()
        ctx.run(storage.enter_with, "in ctx")

        def target() -> None:
            thread_var.set("set by thread")

        recorder = Recorder()
        thread = ContextThread(
            target=lambda: (recorder("thread", storage.get_store()), target()), context=ctx
        )
        storage.run("starter", thread.start)
        join_all([thread])
        assert recorder.as_dict() == {"thread": "in ctx"}
        assert ctx[thread_var] == "set by thread"
        assert thread_var.get() == "unset"

    def test_arguments_name_and_daemon(self, storage: AsyncLocalStorage[object]) -> None:
        """args, kwargs, name and daemon work as in threading.Thread."""
        recorder = Recorder()
        thread = ContextThread(
            target=lambda a, *, b: recorder("call", (a, b, storage.get_store())),
            args=(1,),
            kwargs={"b": 2},
            name="worker-1",
            daemon=True,
        )
        assert (thread.name, thread.daemon) == ("worker-1", True)
        storage.run("A", thread.start)
        join_all([thread])
        assert recorder.as_dict() == {"call": (1, 2, "A")}

    def test_overridden_run_calling_super(self, storage: AsyncLocalStorage[object]) -> None:
        """An override that calls super().run() runs the target once, in the one copy."""
        recorder = Recorder()

        class Wrapping(ContextThread):
            def run(self) -> None:
                recorder("before", storage.get_store())
                storage.enter_with("set by run")
                super().run()

        thread = Wrapping(target=lambda: recorder("target", storage.get_store()))
        storage.run("A", thread.start)
        join_all([thread])
        assert recorder.seen == [("before", "A"), ("target", "set by run")]
        assert storage.get_store() is None

    def test_run_called_directly(self, storage: AsyncLocalStorage[object]) -> None:
        """run() called without start() runs the target in the caller's own context, like Thread."""
        recorder = Recorder()
        thread = ContextThread(target=lambda: recorder("target", storage.get_store()))
        storage.run("A", thread.run)
        assert recorder.as_dict() == {"target": "A"}

    @pytest.mark.parametrize("overridden", [False, True], ids=["target", "overridden run"])
    def test_finished_thread_keeps_no_store(
        self, storage: AsyncLocalStorage[object], overridden: bool
    ) -> None:
        """Once run() ends, the thread object no longer holds the starter's context."""
        store = Store()
        ref = weakref.ref(store)

        class Overriding(ContextThread):
            def run(self) -> None:
                storage.get_store()

        thread = Overriding() if overridden else ContextThread(target=storage.get_store)
        storage.run(store, thread.start)
        join_all([thread])
        del store
        gc.collect()
        assert ref() is None
        assert "run" not in thread.__dict__

    def test_exception_goes_to_excepthook_unchanged(
        self, storage: AsyncLocalStorage[object], excepthook_calls: list[threading.ExceptHookArgs]
    ) -> None:
        """An exception in target reaches threading.excepthook as the same object."""
        error = ValueError("in thread")

        def target() -> None:
            raise error

        thread = ContextThread(target=target)
        storage.run("A", thread.start)
        join_all([thread])
        assert [call.exc_value for call in excepthook_calls] == [error]
        assert excepthook_calls[0].thread is thread

    def test_start_twice_keeps_the_stdlib_error(self, storage: AsyncLocalStorage[object]) -> None:
        """A second start() raises threading's own RuntimeError."""
        thread = ContextThread(target=lambda: None)
        thread.start()
        join_all([thread])
        with pytest.raises(RuntimeError, match="threads can only be started once"):
            thread.start()

    def test_start_twice_before_run_keeps_the_first_context(self, storage: AsyncLocalStorage[object]) -> None:
        """A second start(), made while the thread has not yet begun run(), changes nothing it sees."""
        entering = threading.Event()
        release = threading.Event()
        run_code = ContextThread.run.__code__

        def hold_before_run(frame: Any, event: str, arg: object) -> None:
            if event == "call" and frame.f_code is run_code:
                entering.set()
                wait(release)

        seen = Recorder()
        thread = ContextThread(target=lambda: seen("thread", storage.get_store()))
        threading.setprofile(hold_before_run)  # only threads started from now on
        try:
            storage.run("A", thread.start)
        finally:
            threading.setprofile(None)  # type: ignore[arg-type]
        wait(entering)
        with pytest.raises(RuntimeError, match="threads can only be started once"):
            storage.run("B", thread.start)
        release.set()
        join_all([thread])
        assert seen.as_dict() == {"thread": "A"}

    def test_bad_input(self) -> None:
        """A non-callable target or a non-Context context is refused at construction."""
        with pytest.raises(
            TypeError, match=r"^ContextThread\(\) argument 'target' must be callable, not int$"
        ):
            ContextThread(target=42)  # type: ignore[arg-type]
        with pytest.raises(
            TypeError,
            match=r"^ContextThread\(\) argument 'context' must be a contextvars.Context or None, not dict$",
        ):
            ContextThread(target=print, context={})  # type: ignore[arg-type]

    def test_is_a_thread(self) -> None:
        """ContextThread and ContextTimer are drop-in subclasses."""
        assert issubclass(ContextThread, threading.Thread)
        assert issubclass(ContextTimer, threading.Timer)


class TestContextTimer:
    def test_function_sees_the_starters_store(self, storage: AsyncLocalStorage[object]) -> None:
        """The timer's function runs with the store of start()'s caller, with its arguments."""
        recorder = Recorder()
        timer = ContextTimer(0, lambda a, *, b: recorder("timer", (a, b, storage.get_store())), [1], {"b": 2})
        storage.run("A", timer.start)
        join_all([timer])
        assert recorder.as_dict() == {"timer": (1, 2, "A")}

    def test_copied_at_start(self, storage: AsyncLocalStorage[object]) -> None:
        """Built in A, started in B: the function sees B; nothing it sets leaks back."""
        recorder = Recorder()

        def function() -> None:
            recorder("timer", storage.get_store())
            storage.enter_with("leak")

        timer = storage.run("A", ContextTimer, 0, function)
        storage.run("B", timer.start)
        join_all([timer])
        assert recorder.as_dict() == {"timer": "B"}
        assert storage.get_store() is None

    def test_cancel(self, storage: AsyncLocalStorage[object]) -> None:
        """A timer cancelled before it fires never calls its function."""
        recorder = Recorder()
        timer = ContextTimer(TIMEOUT * 10, lambda: recorder("fired", None))
        storage.run("A", timer.start)
        timer.cancel()
        join_all([timer])
        assert recorder.seen == []

    def test_explicit_context(self, storage: AsyncLocalStorage[object]) -> None:
        """context=ctx runs the timer in ctx itself."""
        ctx = contextvars.Context()
        ctx.run(storage.enter_with, "in ctx")
        recorder = Recorder()
        timer = ContextTimer(0, lambda: recorder("timer", storage.get_store()), context=ctx)
        storage.run("starter", timer.start)
        join_all([timer])
        assert recorder.as_dict() == {"timer": "in ctx"}

    def test_bad_input(self) -> None:
        """A non-number interval, non-callable function or non-Context context is refused at construction."""
        with pytest.raises(
            TypeError, match=r"^ContextTimer\(\) argument 'interval' must be a number of seconds, not str$"
        ):
            ContextTimer("soon", print)  # type: ignore[arg-type]
        with pytest.raises(
            TypeError, match=r"^ContextTimer\(\) argument 'function' must be callable, not str$"
        ):
            ContextTimer(1, "nope")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"argument 'context' must be a contextvars\.Context"):
            ContextTimer(1, print, context=1)  # type: ignore[arg-type]


@stdlib_loses_context
def test_plain_thread_and_timer_lose_the_store(storage: AsyncLocalStorage[object]) -> None:
    """The problem als solves: threading.Thread and Timer start with an empty context."""
    recorder = Recorder()
    thread = threading.Thread(target=lambda: recorder("thread", storage.get_store()))
    timer = threading.Timer(0, lambda: recorder("timer", storage.get_store()))
    storage.run("A", lambda: (thread.start(), timer.start()))
    join_all([thread, timer])
    assert recorder.as_dict() == {"thread": None, "timer": None}


@threads_inherit_only
def test_where_threads_already_inherit(storage: AsyncLocalStorage[object]) -> None:
    """Where new threads inherit by themselves (3.14's flag), a ContextThread copies once, as a plain
    thread does, and drops the copy when it ends (the interpreter keeps a plain thread's)."""
    recorder = Recorder()
    store = Store()
    ref = weakref.ref(store)
    thread = ContextThread(target=lambda: recorder("thread", storage.get_store() is ref()))
    plain = threading.Thread(target=lambda: recorder("plain", storage.get_store() is ref()))
    storage.run(store, thread.start)
    storage.run(store, plain.start)
    join_all([thread, plain])
    assert recorder.as_dict() == {"thread": True, "plain": True}
    assert thread._context is None  # type: ignore[attr-defined]
    del plain  # the interpreter keeps the plain thread's copy: as it does without als
    del store
    gc.collect()
    assert ref() is None


def test_the_inherit_environments_really_set_the_flag() -> None:
    """tox's py314-inherit/py315-inherit set PYTHON_THREAD_INHERIT_CONTEXT=1: the interpreter must honour
    it, or those environments would prove nothing about free-threaded builds' default."""
    if os.environ.get("PYTHON_THREAD_INHERIT_CONTEXT") == "1" and sys.version_info >= (3, 14):
        assert sys.flags.thread_inherit_context == 1
    assert bool(getattr(sys.flags, "thread_inherit_context", 0)) is THREADS_INHERIT
