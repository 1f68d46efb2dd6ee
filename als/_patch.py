"""patch()/unpatch(): the only code in als that replaces standard-library objects.

Invariants:

* Each replaced attribute is saved as it was found in its owner's
  ``__dict__`` (or as absent, for an inherited one), and ``unpatch()`` puts
  exactly that back: ``ThreadPoolExecutor.submit is original`` holds again.
* ``patch()`` and ``unpatch()`` take one lock; the saved state is a single
  object swapped under it, so ``is_patched()`` reads one reference.
* A replacement keeps the name, docstring and signature of what it wraps
  (``functools.wraps``), its return value and its exceptions; bad input gets
  the standard library's own behaviour.
* Each hop copies the context at most once: a callable that already runs in
  a context (``Context.run``, a ``functools.partial`` over it as
  ``asyncio.to_thread`` passes, als's own ``map`` binding) is not wrapped
  again, and als's own threads copy for themselves.
* The pools' own bookkeeping (``submit`` starting worker threads, the
  process pool's manager thread and, under fork, its worker processes) runs
  in a new, empty ``Context``: nothing they start lazily is pinned to the
  request that happened to start it.
"""

from __future__ import annotations

import functools
import sys
import threading
import types
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import Context, copy_context
from typing import Any

from ._context import ForkSafeLock
from ._executors import RunInCopy
from ._threads import _INTERPRETER_COPIES, _RunsInStartersContext, start_in

_lock = ForkSafeLock()
_ABSENT = object()
# (owner, attribute name) -> what the owner's __dict__ held; None: not patched.
_saved: dict[tuple[type, str], object] | None = None


def _runs_in_a_context(fn: object) -> bool:
    """True for a callable that enters a context itself: no second copy."""
    if type(fn) is functools.partial:
        fn = fn.func
    kind = type(fn)
    return kind is RunInCopy or (
        kind is types.BuiltinMethodType and type(getattr(fn, "__self__", None)) is Context
    )


def _sends_work_elsewhere(executor: Executor) -> bool:
    """True for 3.14's InterpreterPoolExecutor (a ThreadPoolExecutor subclass): a Context cannot follow."""
    if type(executor) is ThreadPoolExecutor:
        return False
    interpreters = sys.modules.get("concurrent.futures.interpreter")
    return interpreters is not None and isinstance(executor, interpreters.InterpreterPoolExecutor)


def _thread_start(original: Callable[[threading.Thread], None]) -> Callable[[threading.Thread], None]:
    @functools.wraps(original)
    def start(self: threading.Thread) -> None:
        if isinstance(self, _RunsInStartersContext) or not getattr(self, "als_inherit_context", True):
            original(self)
        else:
            start_in(self, copy_context(), functools.partial(original, self))

    return start


def _thread_pool_submit(original: Callable[..., Future[Any]]) -> Callable[..., Future[Any]]:
    @functools.wraps(original)
    def submit(self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if _runs_in_a_context(fn) or _sends_work_elsewhere(self):
            # Already in a context, or bound for another interpreter: the work
            # goes as it is; the pool's own threads still start outside it.
            return Context().run(original, self, fn, *args, **kwargs)
        return Context().run(original, self, copy_context().run, fn, *args, **kwargs)

    return submit


def _thread_pool_map(original: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    @functools.wraps(original)
    def map(  # noqa: A001 - functools.wraps names it map anyway
        self: ThreadPoolExecutor, fn: Callable[..., Any], *iterables: Any, **kwargs: Any
    ) -> Iterator[Any]:
        # Bind every item to map()'s caller now: 3.14's buffersize submits
        # later items from whichever thread consumes the results.
        if callable(fn) and not _runs_in_a_context(fn) and not _sends_work_elsewhere(self):
            fn = RunInCopy(copy_context(), fn)
        return original(self, fn, *iterables, **kwargs)

    return map


def _process_pool_submit(original: Callable[..., Future[Any]]) -> Callable[..., Future[Any]]:
    @functools.wraps(original)
    def submit(
        self: ProcessPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Future[Any]:
        # The work itself goes to another process unchanged; only what
        # submit() starts (manager thread, forked workers) is kept empty.
        return Context().run(original, self, fn, *args, **kwargs)

    return submit


def _targets() -> list[tuple[type, str, Callable[[Any], Any]]]:
    targets: list[tuple[type, str, Callable[[Any], Any]]] = [
        (ThreadPoolExecutor, "submit", _thread_pool_submit),
        (ThreadPoolExecutor, "map", _thread_pool_map),
        (ProcessPoolExecutor, "submit", _process_pool_submit),
    ]
    if not _INTERPRETER_COPIES:  # 3.14+ may copy into new threads itself
        targets.append((threading.Thread, "start", _thread_start))
    return targets


def patch() -> None:
    """Make unmodified standard-library code propagate the context on every thread hop.

    Afterwards, process-wide, every hop runs in a fresh copy of the context
    current at its hand-off, as als's own wrappers do:

    * ``threading.Thread.start``: every thread, ``Timer`` and subclasses
      overriding ``run()`` included, runs ``run()`` in a copy of the context
      of ``start()``'s caller. Not replaced where the interpreter copies
      into new threads itself (``sys.flags.thread_inherit_context``, 3.14+).
    * ``ThreadPoolExecutor.submit`` and ``map``, and so
      ``loop.run_in_executor`` on the default executor or on any thread pool.
      ``asyncio.to_thread``, which copies already, is not copied twice.

    Executors and threads created before ``patch()`` propagate too. Pool
    worker threads, the process pool's manager thread and forked pool workers
    start with an empty context. Left alone: work sent to another process or
    interpreter, and done callbacks of standard-library futures.

    A thread can opt out (it then starts with an empty context, as without
    the patch): set ``als_inherit_context = False`` on it, or on its class,
    before ``start()``.

    Idempotent: calling it again while patched does nothing, and one
    ``unpatch()`` undoes it. Safe to call from several threads at once.
    """
    global _saved  # noqa: PLW0603 - the one piece of process-wide state
    with _lock:
        if _saved is not None:
            return
        saved: dict[tuple[type, str], object] = {}
        for owner, name, make in _targets():
            saved[(owner, name)] = owner.__dict__.get(name, _ABSENT)
            setattr(owner, name, make(getattr(owner, name)))
        _saved = saved


def unpatch() -> None:
    """Put back every object ``patch()`` replaced, exactly; does nothing if not patched.

    Threads already started and tasks already submitted keep the context they
    were given.
    """
    global _saved  # noqa: PLW0603
    with _lock:
        if _saved is None:
            return
        for (owner, name), original in _saved.items():
            if original is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        _saved = None


def is_patched() -> bool:
    """True between ``patch()`` and ``unpatch()``."""
    return _saved is not None


@contextmanager
def patched() -> Iterator[None]:
    """``patch()`` for the duration of a ``with`` block, then restore the state found.

    Nested in an already patched process, it leaves the process patched.
    """
    was_patched = is_patched()
    patch()
    try:
        yield
    finally:
        if not was_patched:
            unpatch()


__all__ = ["is_patched", "patch", "patched", "unpatch"]
