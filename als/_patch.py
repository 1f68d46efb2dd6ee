"""patch()/unpatch(): the only code in als that replaces standard-library objects.

Invariants:

* Each replaced attribute is saved with what its owner held (or as absent,
  for an inherited one). ``unpatch()`` puts the original back wherever als's
  replacement is still in place; where another library has wrapped it since
  (OpenTelemetry, Sentry), the buried replacement is switched off instead,
  so the other library keeps working and nothing propagates twice.
  Replacements from an earlier ``patch()`` stay off for good.
* ``patch()``, ``unpatch()`` and ``patched()`` take one lock.
* Threads: on 3.10 to 3.13 the hook is the low-level function
  ``Thread.start`` calls (``threading._start_new_thread`` or
  ``_start_joinable_thread``), read at call time, so every path into a new
  thread is covered, including a ``Thread.start`` that another library
  saved before als patched. On 3.14+ the patch gives the thread its native
  ``_context`` instead (an explicit ``Thread(context=...)`` is kept).
* A replacement keeps the name, docstring and signature of what it wraps,
  its return value and its exceptions; bad input gets the standard
  library's own behaviour.
* Each hop copies the context at most once: a callable that already runs in
  a context (``Context.run``, a ``functools.partial`` over it as
  ``asyncio.to_thread`` passes, als's ``bind``/``snapshot`` and ``map``
  binding) is not wrapped again, and als's own threads copy for themselves.
* Nothing the standard library starts to serve a pool or a queue for its
  whole life is pinned to the request that happened to start it: service
  threads (pool workers, the process pool's manager, ``multiprocessing``
  pool and queue threads, ``QueueListener``) start with an empty context,
  and a process pool's ``submit`` (which may fork workers) runs in one.
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

from ._context import BoundFunction, ForkSafeLock, Snapshot
from ._executors import RunInCopy
from ._threads import _INTERPRETER_COPIES, _RunsInStartersContext

_NATIVE_THREAD_CONTEXT = sys.version_info >= (3, 14)  # Thread(context=...) exists
_LOW_LEVEL_START = "_start_joinable_thread" if sys.version_info >= (3, 13) else "_start_new_thread"

# Standard-library modules whose threads serve a pool or a queue for their
# whole life: they start with an empty context, never the request's.
_SERVICE_MODULES = frozenset(
    {
        "concurrent.futures.thread",
        "concurrent.futures.process",
        "multiprocessing.pool",
        "multiprocessing.queues",
        "multiprocessing.managers",
        "multiprocessing.resource_sharer",
        "logging.handlers",
    }
)
_IN_A_CONTEXT = (RunInCopy, BoundFunction, Snapshot)


class _Generation:
    """The on/off switch of the replacements made by one ``patch()``."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = True


_lock = ForkSafeLock()
_ABSENT = object()
# What the current patch() put in place: (owner, name, replacement); each
# replacement carries what it replaced as ``_als_held``.
_installed: list[tuple[object, str, Any]] = []
_generation: _Generation | None = None
_blocks = 0  # open patched() blocks
_patched_by_blocks = False  # patched by the first patched() block, not by patch()


def _runs_in_a_context(fn: object) -> bool:
    """True for a callable that enters a context itself: no second copy."""
    if type(fn) is functools.partial:
        fn = fn.func
    kind = type(fn)
    if kind in _IN_A_CONTEXT:
        return True
    return kind is types.BuiltinMethodType and type(getattr(fn, "__self__", None)) is Context


def _sends_work_elsewhere(executor: Executor) -> bool:
    """True for 3.14's InterpreterPoolExecutor (a ThreadPoolExecutor subclass): a Context cannot follow."""
    if type(executor) is ThreadPoolExecutor:
        return False
    interpreters = sys.modules.get("concurrent.futures.interpreter")
    return interpreters is not None and isinstance(executor, interpreters.InterpreterPoolExecutor)


def _inherits(thread: threading.Thread) -> bool:
    """Whether a thread about to start should get a copy of its starter's context."""
    if not getattr(thread, "als_inherit_context", True):
        return False
    target = getattr(thread, "_target", None)  # not thread.__dict__: see run_in()
    module = type(thread).__module__ if target is None else getattr(target, "__module__", None)
    return module not in _SERVICE_MODULES


def _low_level_start(original: Callable[..., Any], generation: _Generation) -> Callable[..., Any]:
    """3.10 to 3.13: wrap the function Thread.start hands ``self._bootstrap`` to.

    The new thread runs ``Thread._bootstrap``, and so ``run()``, in a copy of
    the starter's context. Nothing is set on the thread object (an instance
    attribute costs Thread's own code far more on 3.13), and once the thread
    ends nothing refers to the copy. ``MethodType(copy.run, bootstrap)`` is
    a callable that calls ``copy.run(bootstrap)``: unlike a
    ``functools.partial`` it allocates no argument tuple or keyword dict.
    """
    thread_class = threading.Thread

    def copies_for(function: object) -> bool:
        thread = getattr(function, "__self__", None)
        if type(thread) is not thread_class and (
            not isinstance(thread, thread_class)
            or isinstance(thread, _RunsInStartersContext)  # ContextThread/Timer copy for themselves
        ):
            return False
        return generation.active and _inherits(thread)

    if sys.version_info >= (3, 13):
        # Spelled out, as Thread.start passes them: forwarding **kwargs would
        # build a dict on every start.
        def start_thread(function: Any, handle: Any = None, daemon: bool = True) -> Any:
            if copies_for(function):
                function = types.MethodType(copy_context().run, function)
            return original(function, handle=handle, daemon=daemon)

    else:
        # start_new_thread takes positional arguments only.
        def start_thread(function: Any, *args: Any) -> Any:
            if copies_for(function):
                function = types.MethodType(copy_context().run, function)
            return original(function, *args)

    return functools.wraps(original)(start_thread)


def _native_thread_start(original: Callable[[threading.Thread], None], generation: _Generation) -> Any:
    """3.14+: give the thread its native context, unless it has one (Thread(context=...))."""

    @functools.wraps(original)
    def start(self: threading.Thread) -> None:
        if generation.active and self._context is None and not isinstance(self, _RunsInStartersContext):  # type: ignore[attr-defined]
            self._context = copy_context() if _inherits(self) else Context()  # type: ignore[attr-defined]
        original(self)

    return start


def _thread_pool_submit(original: Callable[..., Future[Any]], generation: _Generation) -> Any:
    @functools.wraps(original)
    def submit(self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        # Worker threads it starts are service threads: they start empty.
        # The exact-type tests skip two calls in the usual case (a plain
        # function submitted to a plain pool); the calls decide the rest.
        if (
            generation.active
            and (type(fn) is types.FunctionType or not _runs_in_a_context(fn))
            and (type(self) is ThreadPoolExecutor or not _sends_work_elsewhere(self))
        ):
            return original(self, copy_context().run, fn, *args, **kwargs)
        # Already in a context, or bound for another interpreter: as it is.
        return original(self, fn, *args, **kwargs)

    return submit


def _thread_pool_map(original: Callable[..., Iterator[Any]], generation: _Generation) -> Any:
    @functools.wraps(original)
    def map(  # noqa: A001 - functools.wraps names it map anyway
        self: ThreadPoolExecutor, fn: Callable[..., Any], *iterables: Any, **kwargs: Any
    ) -> Iterator[Any]:
        # Bind every item to map()'s caller now: 3.14's buffersize submits
        # later items from whichever thread consumes the results.
        if (
            generation.active
            and callable(fn)
            and not _runs_in_a_context(fn)
            and not _sends_work_elsewhere(self)
        ):
            fn = RunInCopy(copy_context(), fn)
        return original(self, fn, *iterables, **kwargs)

    return map


def _process_pool_submit(original: Callable[..., Future[Any]], generation: _Generation) -> Any:
    @functools.wraps(original)
    def submit(
        self: ProcessPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Future[Any]:
        if not generation.active:
            return original(self, fn, *args, **kwargs)
        # The work itself goes to another process unchanged; only what
        # submit() starts (manager thread, forked workers) is kept empty.
        return Context().run(original, self, fn, *args, **kwargs)

    return submit


def _targets() -> list[tuple[object, str, Callable[[Any, _Generation], Any]]]:
    targets: list[tuple[object, str, Callable[[Any, _Generation], Any]]] = [
        (ThreadPoolExecutor, "submit", _thread_pool_submit),
        (ThreadPoolExecutor, "map", _thread_pool_map),
        (ProcessPoolExecutor, "submit", _process_pool_submit),
    ]
    if _NATIVE_THREAD_CONTEXT:
        targets.append((threading.Thread, "start", _native_thread_start))
    elif not _INTERPRETER_COPIES:
        targets.append((threading, _LOW_LEVEL_START, _low_level_start))
    return targets


def _sweep(owner: object, name: str) -> None:
    """Put back what a switched-off als replacement took, wherever one is in place again.

    That happens when another library wrapped als's replacement and has since
    unwrapped it, after als's ``unpatch()`` had to leave it buried.
    """
    current = vars(owner).get(name, _ABSENT)
    while (
        isinstance(getattr(current, "_als_generation", None), _Generation)
        and not current._als_generation.active
    ):
        held = current._als_held
        if held is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, held)
        current = held


def _patch() -> None:
    global _generation  # noqa: PLW0603 - the one piece of process-wide state, under _lock
    if _generation is not None:
        return
    generation = _Generation()
    for owner, name, make in _targets():
        _sweep(owner, name)
        held = vars(owner).get(name, _ABSENT)
        installed = make(getattr(owner, name), generation)
        installed._als_generation = generation
        installed._als_held = held
        setattr(owner, name, installed)
        _installed.append((owner, name, installed))
    _generation = generation


def _unpatch() -> None:
    global _generation  # noqa: PLW0603
    if _generation is None:
        for owner, name, _ in _targets():
            _sweep(owner, name)
        return
    _generation.active = False
    for owner, name, installed in _installed:
        if vars(owner).get(name, _ABSENT) is installed:
            _sweep(owner, name)  # the generation is off: puts back what it replaced
        # else: wrapped since by another library; ours is switched off inside it
    _installed.clear()
    _generation = None


def patch() -> None:
    """Make unmodified standard-library code propagate the context on every thread hop.

    Afterwards, process-wide, every hop runs in a fresh copy of the context
    current at its hand-off, as als's own wrappers do:

    * every ``threading.Thread`` started, ``Timer`` and subclasses overriding
      ``run()`` included, runs ``run()`` in a copy of the context of
      ``start()``'s caller (an explicit 3.14 ``Thread(context=...)`` is kept);
    * ``ThreadPoolExecutor.submit`` and ``map``, and so
      ``loop.run_in_executor`` on the default executor or on any thread pool.
      ``asyncio.to_thread``, which copies already, is not copied twice.

    Executors and threads created before ``patch()`` propagate too. Threads
    that serve a standard-library pool or queue for their whole life (pool
    workers, the process pool's manager, ``multiprocessing`` pool and queue
    threads, ``QueueListener``) start with an empty context, as do forked
    process-pool workers: none is pinned to the request that started it. So
    what a pool's ``initializer`` sets on a ``ContextVar`` is not seen by its
    tasks, which run in their submitter's context. Left alone: work sent to
    another process or interpreter, and done callbacks of standard-library
    futures.

    A thread can opt out (it then starts with an empty context, as without
    the patch): set ``als_inherit_context = False`` on it, or on its class,
    before ``start()``.

    Idempotent: calling it again while patched does nothing, and one
    ``unpatch()`` undoes it. Safe to call from several threads at once.
    """
    global _patched_by_blocks  # noqa: PLW0603
    with _lock:
        _patch()
        _patched_by_blocks = False  # patched on purpose: open patched() blocks leave it so


def unpatch() -> None:
    """Undo ``patch()``: put back every object it replaced, exactly; does nothing if not patched.

    Where another library has wrapped a replaced object since, its wrapper is
    left in place and als's inside it stops propagating; once that library
    has undone its wrapper, another ``unpatch()`` puts the original back.
    Threads already started and tasks already submitted keep the context
    they were given.
    """
    global _patched_by_blocks  # noqa: PLW0603
    with _lock:
        _unpatch()
        _patched_by_blocks = False


def is_patched() -> bool:
    """True between ``patch()`` and ``unpatch()``."""
    return _generation is not None


@contextmanager
def patched() -> Iterator[None]:
    """Patch for the duration of a ``with`` block, then restore the state found.

    In a process already patched by ``patch()``, it leaves it patched. Blocks
    may overlap across threads: the patch stays until the last open block
    that applied it ends (an explicit ``unpatch()`` ends it at once).
    """
    global _blocks, _patched_by_blocks  # noqa: PLW0603
    with _lock:
        if _generation is None:
            _patch()
            _patched_by_blocks = True
        _blocks += 1
    try:
        yield
    finally:
        with _lock:
            _blocks -= 1
            if _blocks == 0 and _patched_by_blocks:
                _unpatch()
                _patched_by_blocks = False


__all__ = ["is_patched", "patch", "patched", "unpatch"]
