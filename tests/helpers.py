"""Shared test tools: bounded waits, a locked recorder of what each hop saw, joins that re-raise."""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.thread
import importlib.util
import json
import multiprocessing.pool
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# Generous: only a deadlock ever waits this long. Ordering never relies on time.
TIMEOUT = 10.0
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# CPython 3.14+ may copy the starter's context into new threads by itself.
THREADS_INHERIT = bool(getattr(sys.flags, "thread_inherit_context", False))
stdlib_loses_context = pytest.mark.skipif(
    THREADS_INHERIT, reason="this interpreter copies the context into new threads itself"
)
threads_inherit_only = pytest.mark.skipif(
    not THREADS_INHERIT,
    reason="needs sys.flags.thread_inherit_context: tox -e py314-inherit (PYTHON_THREAD_INHERIT_CONTEXT=1)",
)

# What als.patch() replaces, by (owner, attribute name), and the originals, read
# at import. WARNING: kept in sync by hand with als._patch._targets().
PATCH_TARGETS: dict[str, tuple[object, str]] = {
    "thread start hook": (
        threading,
        "_start_joinable_thread" if sys.version_info >= (3, 13) else "_start_new_thread",
    ),
    "thread pool work item": (concurrent.futures.thread, "_WorkItem"),
    "ThreadPoolExecutor.map": (concurrent.futures.ThreadPoolExecutor, "map"),
    "ProcessPoolExecutor.submit": (concurrent.futures.ProcessPoolExecutor, "submit"),
    "Pool worker (re)start": (multiprocessing.pool.Pool, "_repopulate_pool_static"),
}
if sys.version_info >= (3, 14):
    PATCH_TARGETS["Thread.start's default contexts"] = (threading, "_contextvars")
_ABSENT = object()
ORIGINALS: dict[str, object] = {
    label: vars(owner).get(name, _ABSENT) for label, (owner, name) in PATCH_TARGETS.items()
}


def assert_originals() -> None:
    """Every object als.patch() replaces is the original again, by identity (absent where it was)."""
    for label, (owner, name) in PATCH_TARGETS.items():
        assert vars(owner).get(name, _ABSENT) is ORIGINALS[label], f"{label} was left replaced"


def wait(event: threading.Event) -> None:
    """Wait for ``event``, failing the test instead of hanging."""
    assert event.wait(TIMEOUT), "timed out waiting for an event"


class Recorder:
    """A thread-safe list of (hop, store) pairs, in the order hops recorded them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[tuple[str, Any]] = []

    def __call__(self, hop: str, store: Any) -> None:
        with self._lock:
            self._seen.append((hop, store))

    @property
    def seen(self) -> list[tuple[str, Any]]:
        with self._lock:
            return list(self._seen)

    def as_dict(self) -> dict[str, Any]:
        seen = self.seen
        result = dict(seen)
        assert len(result) == len(seen), f"a hop recorded twice: {seen}"
        return result


class Worker(threading.Thread):
    """A thread that keeps the exception its target raised, for join_all to re-raise."""

    def __init__(self, target: Any, *args: Any) -> None:
        super().__init__(target=target, args=args, daemon=True)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            super().run()
        except BaseException as exc:
            self.error = exc


def join_all(threads: Iterable[threading.Thread]) -> None:
    """Join every thread (bounded), then re-raise the first error a Worker kept."""
    threads = list(threads)
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), f"{thread.name} did not finish"
    for thread in threads:
        error = getattr(thread, "error", None)
        if error is not None:
            raise error


def consumed_in_another_thread(storage: Any, store: object, results: Iterable[Any]) -> list[Any]:
    """Consume ``results`` (a map()'s) in a thread of its own, under ``store``; return what came."""
    consumed: list[Any] = []
    consumer = Worker(lambda: consumed.extend(storage.run(store, list, results)))
    consumer.start()
    join_all([consumer])
    return consumed


def run_child(module: str, *args: str) -> Any:
    """Run ``python -m tests.<module> ARGS`` in a child process (bounded); return the JSON it prints.

    For what lasts a process's life (Sentry's and gevent's patches) or what
    should not meet the suite's own threads and sockets (forking pools).
    """
    child = subprocess.run(
        [sys.executable, "-m", f"tests.{module}", *args],
        cwd=EXAMPLES.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout)


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module of that name (examples are not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
