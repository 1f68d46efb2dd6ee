"""patch()/unpatch(): the only code in als that replaces standard-library objects.

Invariants:

* Each replaced attribute is saved with what its owner held (or as absent,
  for an inherited one). ``unpatch()`` puts the original back wherever als's
  replacement is still in place; where another library has wrapped it since,
  the buried replacement is switched off instead (its ``_Generation``), so
  the other library keeps working and nothing propagates twice.
* ``patch()``, ``unpatch()`` and ``patched()`` take one lock.
* The hooks sit at the lowest hand-off point the standard library offers,
  below anything another library wraps (``Thread.start``, ``Timer.start``,
  ``ThreadPoolExecutor.submit``: OpenTelemetry, Sentry, profilers). So a
  wrapper installed before or after als is never bypassed, what it sets
  for one hop runs inside that hop's copy, and its own undo never meets als.
* Threads: the low-level function ``Thread.start`` calls, read at call
  time, so a ``start`` saved before the patch is covered too. 3.10 to 3.13:
  the new thread's bootstrap runs in a copy of the starter's context. 3.14+:
  the thread's native ``_context``; ``threading._contextvars`` is replaced
  by a recorder, so that the hook tells the default ``Thread.start`` made
  from an explicit ``Thread(context=...)``, which is kept as given.
* Pool tasks: ``concurrent.futures.thread._WorkItem`` is replaced by a
  subclass that binds the task to its copy when ``submit()`` makes it, in
  the submitter's thread; done callbacks keep the standard library's
  behaviour. ``map`` is replaced for 3.14's ``buffersize`` only.
* A replacement keeps the name, docstring and signature of what it wraps,
  its return value and its exceptions.
* Each hop copies the context at most once (``runs_in_a_context``), and
  als's own threads copy for themselves.
* Threads and processes that serve a pool or a queue for their whole life
  start with an empty context, never pinned to the request that started them.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import sys
import threading
import types
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import thread as _futures_thread
from contextlib import contextmanager
from contextvars import Context, copy_context
from typing import Any

from ._carry import carried
from ._context import InCopy
from ._executors import ContextThreadPoolExecutor, bind_work_item, map_from_here
from ._threads import bootstrap_in
from ._util import INHERITS, LOW_LEVEL_START, NATIVE_CONTEXT, ForkSafeLock, start_workers_empty

# Standard-library modules whose threads serve a pool or a queue for their
# whole life: they start with an empty context, never the request's.
# WARNING: kept in sync by hand with the standard library's thread starters;
# tests/test_patch.py's service-thread tests start one thread of each.
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


def _inherits(thread: threading.Thread) -> bool:
    """Whether a thread about to start should get a copy of its starter's context."""
    if not getattr(thread, "als_inherit_context", True):
        return False
    target = getattr(thread, "_target", None)  # not vars(thread): that would make a dict per thread
    module = type(thread).__module__ if target is None else getattr(target, "__module__", None)
    return module not in _SERVICE_MODULES


# 3.14+: OS thread id -> the context Thread.start just made for a thread given
# none; the start hook, next in the same thread, takes it out.
_made_by_start: dict[int, Context] = {}


class _StartDefaults:
    """3.14+: stands in for ``threading._contextvars``, which only ``Thread.start`` uses.

    ``Thread.start`` calls ``Context()`` (or ``copy_context()`` under
    ``thread_inherit_context``) exactly when the thread was given no context;
    each context so made is recorded for the start hook, then returned as is.
    Every other attribute is the real module's.
    """

    def __init__(self, real: types.ModuleType, generation: _Generation) -> None:
        self._real = real
        self._generation = generation
        self.__wrapped__ = real

    def Context(self) -> contextvars.Context:  # the name Thread.start calls
        return self._record(self._real.Context())

    def copy_context(self) -> contextvars.Context:
        return self._record(self._real.copy_context())  # the interpreter's copy, not one of als's

    def _record(self, context: contextvars.Context) -> contextvars.Context:
        if self._generation.active:
            _made_by_start[threading.get_ident()] = context
        return context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _context_for(thread: threading.Thread, made: Context | None) -> Context | None:
    """The context a thread about to start gets under the patch; None leaves it as it is.

    ``made``: 3.14+, the default ``Thread.start`` just made for it (never
    before 3.14); a thread it made none for was given ``context=``, kept as given.
    """
    if NATIVE_CONTEXT and (made is None or thread._context is not made):  # type: ignore[attr-defined]
        return None
    if _inherits(thread):
        return made if INHERITS else copy_context()  # where the interpreter copies, its copy is kept
    return Context() if INHERITS else made  # a service thread: empty, as without the patch


def _low_level_start(original: Callable[..., Any], generation: _Generation) -> Callable[..., Any]:
    """Wrap the function Thread.start hands ``self._bootstrap`` to: the thread hook.

    A thread gets its context through ``bootstrap_in``, as a ``ContextThread``
    does (whose wrapped bootstrap is no ``Thread`` method, so the hook leaves
    it alone).
    """
    thread_class = threading.Thread

    def start(function: Any, /, *args: Any, **kwargs: Any) -> Any:
        made = _made_by_start.pop(threading.get_ident(), None) if _made_by_start else None
        thread = getattr(function, "__self__", None)
        if generation.active and isinstance(thread, thread_class):
            context = _context_for(thread, made)
            if context is not None:
                function = bootstrap_in(context, function)
        return original(function, *args, **kwargs)

    return functools.wraps(original)(start)


def _work_item(original: type, generation: _Generation) -> type:
    """Subclass the thread pool's work item, which ``submit()`` makes in the submitter's thread.

    The copy is taken there, below every wrapper of ``submit()`` (another
    library's, a subclass's), so what such a wrapper sets for the task runs
    inside the task's copy and wins over it. Only the task runs in the copy:
    ``set_result`` and with it the future's done callbacks keep the standard
    library's behaviour.
    """
    base_init: Callable[..., None] = original.__init__  # type: ignore[misc]

    if NATIVE_CONTEXT:
        # 3.14+: the item holds the executor's resolved task, bound here like
        # any other; which WorkerContext runs it is known only in the worker.
        # An InterpreterPoolExecutor's sends the task to another interpreter:
        # it gets the task unbound. Any other runs (fn, args, kwargs) here.
        class WorkItem14(original):  # type: ignore[misc]
            def __init__(self, future: Future[Any], task: Any) -> None:
                base_init(self, future, task)
                self._als_unbound = None
                if generation.active and type(task) is tuple:
                    bind_work_item(self)
                    if self.task[0] is not task[0]:  # bound: keep the task as resolved, for run()
                        self._als_unbound = task

            def run(self, ctx: Any) -> None:
                unbound = self._als_unbound
                if unbound is not None:
                    self._als_unbound = None
                    interpreters = sys.modules.get("concurrent.futures.interpreter")
                    if interpreters is not None and isinstance(ctx, interpreters.WorkerContext):
                        self.task = unbound  # for another interpreter: as the executor resolved it
                original.run(self, ctx)  # type: ignore[attr-defined]

        made: type = WorkItem14
    else:  # until 3.14 is the minimum supported Python

        class WorkItem(original):  # type: ignore[misc]
            def __init__(self, future: Future[Any], fn: Any, args: Any, kwargs: Any) -> None:
                base_init(self, future, fn, args, kwargs)
                if generation.active:
                    bind_work_item(self)

        made = WorkItem
    made.__name__ = original.__name__
    made.__qualname__ = original.__qualname__
    made.__module__ = original.__module__
    made.__doc__ = original.__doc__
    made.__wrapped__ = original  # type: ignore[attr-defined]
    return made


def _thread_pool_map(original: Callable[..., Iterator[Any]], generation: _Generation) -> Any:
    """``map`` submits every item from the context current when it is called (``map_from_here``).

    The items are plain submits, so the work item takes each one's copy below
    any wrapper of ``submit()``.
    """

    @functools.wraps(original)
    def map(  # noqa: A001 - functools.wraps names it map anyway
        self: ThreadPoolExecutor, fn: Callable[..., Any], *iterables: Any, **kwargs: Any
    ) -> Iterator[Any]:
        if (
            not generation.active or isinstance(self, ContextThreadPoolExecutor)  # does it itself
        ):
            return original(self, fn, *iterables, **kwargs)
        return map_from_here(types.MethodType(original, self), fn, *iterables, **kwargs)

    return map


def _elsewhere_submit(original: Callable[..., Future[Any]], generation: _Generation) -> Any:
    """A process (or interpreter) pool's ``submit``: the task carries the submitter's carried stores.

    In the worker it runs under them alone, in a new context
    (``CarriedCall``). What ``submit()`` starts (the manager thread, forked
    workers) starts in an empty context.
    """

    @functools.wraps(original)
    def submit(self: Executor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if not generation.active:
            return original(self, fn, *args, **kwargs)
        return start_workers_empty(original, self, carried(fn), *args, **kwargs)

    return submit


def _carrying_map(original: Callable[..., Iterator[Any]], generation: _Generation) -> Any:
    """A process pool's ``map``: each call under the carried stores of ``map()``'s caller.

    ``fn`` is carried once, here, so that each item of a chunk runs in a new
    context of its own; the chunks' submits leave it as it is.
    """

    @functools.wraps(original)
    def map(self: Executor, fn: Callable[..., Any], *iterables: Any, **kwargs: Any) -> Iterator[Any]:  # noqa: A001
        if not generation.active:
            return original(self, fn, *iterables, **kwargs)
        return start_workers_empty(original, self, carried(fn), *iterables, **kwargs)

    return map


def _pool_task(original: Callable[..., Any], generation: _Generation) -> Any:
    """A way into ``multiprocessing.Pool`` (``apply_async``, ``_map_async``, ``imap``, ``imap_unordered``).

    A process pool's task carries the caller's carried stores; a
    ``ThreadPool``'s runs in a copy of the caller's context, as any thread hop.
    """
    from multiprocessing.pool import ThreadPool  # noqa: PLC0415 - loaded by _targets() already

    @functools.wraps(original)
    def hand_in(self: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if generation.active:
            func = InCopy(copy_context(), func) if isinstance(self, ThreadPool) else carried(func)
        return original(self, func, *args, **kwargs)

    return hand_in


def _pool_workers(original: Any, generation: _Generation) -> Any:
    """``multiprocessing.Pool``'s worker (re)start, which forks: run it in an empty context.

    Called from ``Pool.__init__`` in whichever thread creates the pool (a
    request's, for a pool made lazily) and from the pool's handler thread.
    A forked worker keeps the forking thread's context for its whole life.
    """
    # ``original`` is the function inside the staticmethod: getattr() on the class unwrapped it.

    @functools.wraps(original)
    def repopulate(*args: Any, **kwargs: Any) -> Any:
        if not generation.active:
            return original(*args, **kwargs)
        return Context().run(original, *args, **kwargs)

    return staticmethod(repopulate)


def _targets() -> list[tuple[object, str, Callable[[Any, _Generation], Any]]]:
    # Imported here, when patching, not with als: `import als` loads no multiprocessing.
    import multiprocessing.pool  # noqa: PLC0415
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

    Pool = multiprocessing.pool.Pool
    targets: list[tuple[object, str, Callable[[Any, _Generation], Any]]] = [
        (threading, LOW_LEVEL_START, _low_level_start),
        (_futures_thread, "_WorkItem", _work_item),
        (ThreadPoolExecutor, "map", _thread_pool_map),
        (ProcessPoolExecutor, "submit", _elsewhere_submit),
        (ProcessPoolExecutor, "map", _carrying_map),
        (Pool, "_repopulate_pool_static", _pool_workers),
        (Pool, "apply_async", _pool_task),
        (Pool, "_map_async", _pool_task),  # map, map_async, starmap, starmap_async
        (Pool, "imap", _pool_task),
        (Pool, "imap_unordered", _pool_task),
    ]
    if NATIVE_CONTEXT:
        targets.append((threading, "_contextvars", _StartDefaults))
        try:  # absent from builds without subinterpreters
            interpreter_pool = getattr(concurrent.futures, "InterpreterPoolExecutor", None)
        except ImportError:  # pragma: no cover
            interpreter_pool = None
        if interpreter_pool is not None:
            targets.append((interpreter_pool, "submit", _elsewhere_submit))
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
    targets = _targets()
    missing = [f"{owner.__name__}.{name}" for owner, name, _ in targets if not hasattr(owner, name)]  # type: ignore[attr-defined]
    if missing:  # a Python whose internals moved: refuse, rather than patch what copies nothing
        raise RuntimeError(
            f"als.patch() does not know this Python ({sys.version.split()[0]}): it has no"
            f" {', '.join(missing)}; nothing was patched"
        )
    generation = _Generation()
    for owner, name, make in targets:
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
    _made_by_start.clear()  # a start caught between recording and the hook keeps nothing
    for owner, name, installed in _installed:
        if vars(owner).get(name, _ABSENT) is installed:
            _sweep(owner, name)  # the generation is off: puts back what it replaced
        # else: wrapped since by another library; ours is switched off inside it
    _installed.clear()
    _generation = None


# gevent: monkey.patch_all() replaces the very function the thread hook wraps,
# so a patch() made before it would be lost in silence. gevent calls these two
# plugins (entry points in setup.cfg; als never imports gevent) around its
# patching of ``threading``: als steps aside, then patches gevent's functions.
_repatch_after_gevent = False


def _patches_threading(event: Any) -> bool:
    return getattr(event, "module_name", None) == "threading"


def gevent_will_patch_module(event: Any) -> None:
    """gevent plugin: about to patch ``threading``; unpatch first, to patch again after it."""
    global _repatch_after_gevent  # noqa: PLW0603
    if _patches_threading(event):
        with _lock:
            if _generation is not None:
                _unpatch()
                _repatch_after_gevent = True


def gevent_did_patch_module(event: Any) -> None:
    """gevent plugin: ``threading`` is patched; put back a patch() that was in place before."""
    global _repatch_after_gevent  # noqa: PLW0603
    if _patches_threading(event):
        with _lock:
            if _repatch_after_gevent:
                _repatch_after_gevent = False
                _patch()


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
    threads, ``QueueListener``) start with an empty context, and the
    processes that serve a pool (``ProcessPoolExecutor`` and
    ``multiprocessing.Pool`` workers, re-created ones too) are forked from
    one: none is pinned to the request that started it. So what a pool's
    ``initializer`` sets on a ``ContextVar`` is not seen by its tasks, which
    run in their submitter's context. Work sent to another process or
    interpreter (``ProcessPoolExecutor``, ``multiprocessing.Pool``, 3.14's
    ``InterpreterPoolExecutor``) runs under its submitter's carried stores
    (storages made with ``carry=True``) and nothing else; a
    ``multiprocessing.pool.ThreadPool``'s tasks run in a copy of their
    caller's context. Left alone: done callbacks of standard-library futures.

    Other libraries' wrappers of the same hand-offs (OpenTelemetry, Sentry,
    profilers), installed before or after, are never bypassed, and what they
    set for one hop runs inside that hop's copy. ``gevent.monkey.patch_all()``
    may come before or after (through gevent's plugins, when als is
    installed as a distribution).

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
