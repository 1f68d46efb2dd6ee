"""Shared test tools: bounded waits, a step sequencer for threads, a locked recorder of what each hop
saw, joins that re-raise."""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.thread
import contextlib
import importlib.util
import json
import logging
import multiprocessing.pool
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

from als import AsyncLocalStorage
from als.logging import install_record_factory

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
    "ProcessPoolExecutor.map": (concurrent.futures.ProcessPoolExecutor, "map"),
    "Pool worker (re)start": (multiprocessing.pool.Pool, "_repopulate_pool_static"),
    "Pool.apply_async": (multiprocessing.pool.Pool, "apply_async"),
    "Pool._map_async": (multiprocessing.pool.Pool, "_map_async"),
    "Pool.imap": (multiprocessing.pool.Pool, "imap"),
    "Pool.imap_unordered": (multiprocessing.pool.Pool, "imap_unordered"),
}
if sys.version_info >= (3, 14):
    PATCH_TARGETS["Thread.start's default contexts"] = (threading, "_contextvars")
    PATCH_TARGETS["InterpreterPoolExecutor.submit"] = (
        concurrent.futures.InterpreterPoolExecutor,  # type: ignore[attr-defined]
        "submit",
    )
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


class Sequencer:
    """Makes blocks in different threads run one after another, in the order of their step numbers.

    A thread version of ``trio.testing.Sequencer``::

        seq = Sequencer()

        def worker() -> None:
            with seq(1):
                ...  # starts once step 0's block has ended

        ...  # start worker
        with seq(0):
            ...  # in this thread, first

    Step ``n`` starts once the blocks of steps 0 to ``n - 1`` have all ended,
    whichever threads run them; nothing relies on time. An exception from a
    block propagates unchanged. What would otherwise hang, or run out of
    order, fails the test with an AssertionError instead:

    * a step that waits longer than ``timeout`` seconds for its turn;
    * a step number used a second time (each step runs once), or a negative one;
    * every step still waiting or still to come, once the sequence is broken
      by one of the above or by an exception from a block: the waiting ones
      are woken, so no thread is left behind.
    """

    def __init__(self, timeout: float = TIMEOUT) -> None:
        self._timeout = timeout
        self._turn = threading.Condition()
        self._next = 0  # the step whose block may start now
        self._claimed: set[int] = set()
        self._waiting: set[int] = set()
        self._broken: str | None = None

    @property
    def waiting(self) -> list[int]:
        """The steps blocked now, waiting for their turn."""
        with self._turn:
            return sorted(self._waiting)

    @contextlib.contextmanager
    def __call__(self, step: int) -> Iterator[None]:
        """Run the ``with`` block as step ``step``: after every lower step's block, before any higher."""
        with self._turn:
            if step < 0:
                self._break(f"step {step}: steps are numbered from 0")
            if step in self._claimed:
                self._break(f"step {step} entered twice")
            self._claimed.add(step)
            self._waiting.add(step)
            self._turn.notify_all()  # for whoever watches `waiting`
            try:
                on_time = self._turn.wait_for(
                    lambda: self._broken is not None or self._next == step, self._timeout
                )
            finally:
                self._waiting.discard(step)
            if self._broken is not None:
                raise AssertionError(f"step {step} cannot run: {self._broken}")
            if not on_time:
                self._break(f"step {step} waited {self._timeout} s for step {self._next}, which never ended")
        try:
            yield
        except BaseException as exc:
            with self._turn:
                if self._broken is None:
                    self._broken = f"step {step} raised {exc!r}"
                self._turn.notify_all()
            raise
        with self._turn:
            self._next += 1
            self._turn.notify_all()

    def _break(self, reason: str) -> NoReturn:
        """Mark the sequence broken (the first reason stays), wake every waiting step, and fail."""
        if self._broken is None:
            self._broken = reason
        self._turn.notify_all()
        raise AssertionError(reason)


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


class Records(logging.Handler):
    """Every record logged in the process while installed (see ``every_record``); a bounded wait for
    the ones a server logs after its response."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._records: list[logging.LogRecord] = []
        self._arrived = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._arrived:
            self._records.append(record)
            self._arrived.notify_all()

    @property
    def records(self) -> list[logging.LogRecord]:
        with self._arrived:
            return list(self._records)

    def wait_until(self, done: Callable[[list[logging.LogRecord]], bool]) -> list[logging.LogRecord]:
        """The records, once ``done(records)`` is true; a timeout fails the test naming what arrived."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: done(self._records), TIMEOUT):
                arrived = [(r.name, r.levelname, r.getMessage()[:80]) for r in self._records]
                pytest.fail(f"timed out after {TIMEOUT} s waiting for log records; these arrived: {arrived}")
            return list(self._records)

    def texts(self) -> list[str]:
        """Each record's message."""
        return [record.getMessage() for record in self.records]


@contextlib.contextmanager
def every_record(
    handler: logging.Handler, storage: AsyncLocalStorage[Any], loggers: Iterable[str]
) -> Iterator[None]:
    """``handler`` on the root logger at INFO, ``loggers`` propagating to it (enabled, level NOTSET), and
    ``%(request_id)s`` in every record (``install_record_factory``); all of it undone after."""
    root = logging.getLogger()
    saved = [
        (logger, logger.level, logger.propagate, logger.disabled)
        for logger in map(logging.getLogger, loggers)
    ]
    root_level = root.level
    undo = install_record_factory(storage, field="request_id", default="-")
    for logger, _, _, _ in saved:
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
        logger.disabled = False
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(root_level)
        for logger, level, propagate, disabled in saved:
            logger.setLevel(level)
            logger.propagate = propagate
            logger.disabled = disabled
        undo()
