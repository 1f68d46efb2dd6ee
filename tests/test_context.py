"""The hop primitive's helpers: the fork-safe lock als's own shared state uses."""

from __future__ import annotations

import os
import threading

import pytest

from als._context import ForkSafeLock

from .helpers import Worker, join_all, wait


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# 3.12+ warns on any fork() with other threads alive: here that is the point.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_lock_held_by_another_thread_is_free_in_a_forked_child() -> None:
    """Regression (review #7): a child forked while another thread holds the lock can take it."""
    lock = ForkSafeLock()
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            wait(release)

    holder = Worker(hold)
    holder.start()
    wait(held)
    try:
        pid = os.fork()  # the holder thread does not exist in the child
        if pid == 0:  # pragma: no cover - runs in the child
            acquired = lock._lock.acquire(timeout=5)
            os._exit(0 if acquired else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        join_all([holder])
    assert os.waitstatus_to_exitcode(status) == 0
    assert not lock.locked()


def test_lock_excludes() -> None:
    """It is a lock: a second holder waits for the first."""
    lock = ForkSafeLock()
    with lock:
        assert lock.locked()
        assert not lock._lock.acquire(blocking=False)
    assert not lock.locked()
