"""The shared helpers: the fork-safe lock that guards als's own shared state, and argument errors."""

from __future__ import annotations

import os
import threading

import pytest

from als._util import ForkSafeLock, not_callable, wrong_type

from .helpers import Worker, join_all, wait


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# 3.12+ warns on any fork() with other threads alive: here that is the point.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_fork_waits_for_another_threads_critical_section() -> None:
    """Forking while another thread holds the lock: the child sees the section's state whole, lock free.

    The holder is half-way through (state "half") when the fork begins. A fork
    hook registered after the lock runs before the lock's own (hooks run in
    reverse order): it lets the holder finish, so the fork can only go on once
    the holder has released the lock. A lock that only renews itself in the
    child would let the child see "half".
    """
    lock = ForkSafeLock()
    state = ["before"]
    held = threading.Event()
    forking = threading.Event()
    os.register_at_fork(before=forking.set)  # never unregistered: setting a spent Event is harmless

    def hold() -> None:
        with lock:
            state[0] = "half"
            held.set()
            wait(forking)
            state[0] = "whole"

    holder = Worker(hold)
    holder.start()
    wait(held)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            ok = state[0] == "whole" and lock._lock.acquire(timeout=5)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        forking.set()
        join_all([holder])
    assert os.waitstatus_to_exitcode(status) == 0
    assert state == ["whole"]
    assert not lock.locked()  # released in the parent too


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# 3.12+ warns on any fork() with other threads alive: a thread another test left, or pytest-xdist's own.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_fork_with_the_lock_free_leaves_it_free_in_both_processes() -> None:
    """No holder: the fork takes and gives back the lock; the child can take it, the parent too."""
    lock = ForkSafeLock()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os._exit(0 if lock._lock.acquire(timeout=5) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not lock.locked()
    with lock:
        assert lock.locked()


def test_lock_excludes() -> None:
    """It is a lock: a second holder waits for the first."""
    lock = ForkSafeLock()
    with lock:
        assert lock.locked()
        assert not lock._lock.acquire(blocking=False)
    assert not lock.locked()


def test_argument_errors_name_the_function_the_argument_and_what_came() -> None:
    """wrong_type() and not_callable() say which call, which argument, what was expected and what came."""
    error = wrong_type("wrap_executor", "executor", "a concurrent.futures.Executor", 3)
    assert str(error) == "wrap_executor() argument 'executor' must be a concurrent.futures.Executor, not int"
    with pytest.raises(TypeError, match=r"^run\(\) argument 'fn' must be callable, not str$"):
        not_callable("run", "fn", "x")

    async def handler() -> None:
        pass

    coroutine = handler()
    try:
        with pytest.raises(TypeError, match=r"not a coroutine object: pass the async function"):
            not_callable("run", "fn", coroutine)
    finally:
        coroutine.close()
