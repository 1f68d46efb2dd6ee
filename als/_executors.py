"""Executors whose every task runs in a copy of its submitter's context.

Invariants:

* ``ContextThreadPoolExecutor``: inside ``ThreadPoolExecutor.submit``, in
  the submitter's thread, each task is bound to a fresh ``copy_context()``;
  only the task runs in it. 3.14+: the executor's task resolver
  (``prepare_context``) does it, in place of the plain one; 3.10 to 3.13:
  its work queue's ``put`` (``bind_work_item``). Either is below every
  wrapper of ``submit`` (a subclass's, another library's), so what such a
  wrapper sets for the task runs inside the copy and wins over it; nothing a
  task sets reaches the submitter or the worker's next task, and the copy is
  dropped with the work item.
* ``wrap_executor`` wraps any executor from outside: its ``submit`` hands
  the executor ``copy.run`` as the callable (or, for a callable that copies
  for itself, an ``InCopy``, that callable), above the executor's own
  ``submit`` and anything wrapping it. A process or interpreter pool gets
  a ``CarriedCall`` instead: the submitter's carried stores, by value.
* ``map`` submits every item from the context of ``map()``'s caller: at
  once, or, for those that 3.14's ``buffersize`` submits while another
  thread consumes the results, from a copy of it (``map_from_here``).
* Worker threads start outside any request. Where new threads inherit
  their starter's context (CPython 3.14's ``thread_inherit_context``),
  ``ContextThreadPoolExecutor`` starts them in a new, empty ``Context``
  and ``wrap_executor`` runs a wrapped ``ThreadPoolExecutor``'s ``submit`` in
  one; under ``als.patch()`` pool workers start empty as service threads.
  So a worker started while request A submits is never pinned to A.
* Futures handed back are the executor's own futures, not proxies, so
  ``wait``/``as_completed``/``cancel``/``shutdown(cancel_futures=True)`` see
  one future. ``adopt`` re-classes each one as a ``ContextFuture`` (same
  layout, no new attributes), whose ``add_done_callback`` binds every
  callback to a copy of its registrant's context, also when the future is
  already done; the copy is dropped once the callback has run.
"""

from __future__ import annotations

import functools
import queue
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextvars import Context, copy_context
from typing import Any, ParamSpec, TypeVar

from ._carry import carried
from ._context import InCopy, runs_in_a_context
from ._util import INHERITS, TASK_TUPLE, ForkSafeLock, not_callable, start_workers_empty, wrong_type

P = ParamSpec("P")
R = TypeVar("R")


class _Callback(InCopy):
    """A done callback: ``fn(future)`` once, in a copy of its registrant's context, which is then dropped.

    A ``Future`` keeps its callbacks after running them; the request's store
    must not stay with it.
    """

    __slots__ = ()

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        finally:
            del self._context, self._fn


class ContextFuture(Future[R]):
    """A ``concurrent.futures.Future`` whose done callbacks keep their registrant's context.

    ``add_done_callback(fn)`` captures the caller's context; ``fn(future)``
    runs in that copy whichever thread completes the future (or at once, in
    the caller's thread, if the future is already done). What ``fn`` sets
    leaks nowhere, and the copy is dropped once ``fn`` has run.

    als's executors hand back their executor's own futures re-classed as this
    class (or as its counterpart for a ``Future`` subclass); use it directly
    in executors of your own.
    """

    __slots__ = ()

    def add_done_callback(self, fn: Callable[[Future[R]], object]) -> None:
        """Attach ``fn``, to be called with this future in a copy of the caller's context.

        Raises:
            TypeError: ``fn`` is not callable (here, not when the future completes).
        """
        if not callable(fn):
            not_callable("add_done_callback", "fn", fn)
        super().add_done_callback(_Callback(copy_context(), fn))


_future_classes: dict[type, type | None] = {}
_future_classes_lock = ForkSafeLock()


def _context_future_class(cls: type) -> type | None:
    """The ``ContextFuture`` counterpart of a ``Future`` subclass, made once per class.

    None for a class that refuses the mix-in: its futures are handed back as
    they are.
    """
    with _future_classes_lock:
        if cls not in _future_classes:
            made: type | None
            try:
                made = type(
                    cls.__name__, (ContextFuture, cls), {"__slots__": (), "__module__": cls.__module__}
                )
            except Exception:  # a layout or an __init_subclass__ that refuses it
                made = None
            _future_classes[cls] = made
        return _future_classes[cls]


def adopt(future: Future[R]) -> Future[R]:
    """Make ``future``'s done callbacks run in their registrant's context, in place.

    The future stays the same object, re-classed as ``ContextFuture`` (or a
    ``ContextFuture`` counterpart of its own ``Future`` subclass), so that
    ``add_done_callback`` binds each callback, pending or already done.
    Never raises: the task is already submitted, so anything that cannot be
    adopted (not a ``Future``, an incompatible subclass) comes back as is.
    """
    cls = type(future)
    if cls is Future:
        future.__class__ = ContextFuture
    elif issubclass(cls, Future) and not issubclass(cls, ContextFuture):
        target = _context_future_class(cls)
        if target is not None:
            try:
                future.__class__ = target
            except Exception:  # pragma: no cover - same layout by construction
                pass
    return future


def _resolve_in_copy(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """A task as (fn, args, kwargs), with ``fn`` to run in a copy of the context current here.

    Also 3.14's ``ContextThreadPoolExecutor`` task resolver. A callable that
    enters a context itself is left as it is, and no copy is made.
    """
    if not runs_in_a_context(fn):
        return (copy_context().run, (fn, *args), kwargs)
    return (fn, args, kwargs)


def bind_work_item(item: Any) -> None:
    """Make a thread pool's work item run its task, and only its task, in a copy of the current context.

    The future's ``set_result``/``set_exception``, and so the standard
    library's done callbacks, stay outside it.
    """
    if TASK_TUPLE:  # the other branch goes once 3.14 is the minimum supported Python
        item.task = _resolve_in_copy(*item.task)
    elif not runs_in_a_context(item.fn):
        item.args = (item.fn, *item.args)
        item.fn = copy_context().run


# 3.14+: what ThreadPoolExecutor's own WorkerContext.prepare() resolves tasks with.
_PLAIN_RESOLVER = "WorkerContext.prepare.<locals>.resolve_task"


class _ResolveInCopy:
    """3.14+: another resolver (a subclass's own WorkerContext), its task's callable run in a copy."""

    __slots__ = ("_resolve",)

    def __init__(self, resolve: Callable[..., Any]) -> None:
        self._resolve = resolve

    def __call__(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        task = self._resolve(fn, args, kwargs)
        if type(task) is tuple and len(task) == 3 and callable(task[0]):  # (fn, args, kwargs) again
            return _resolve_in_copy(*task)
        return task


class _WorkQueue(queue.SimpleQueue):  # type: ignore[type-arg]
    """A ``ContextThreadPoolExecutor``'s work queue: binds each item to a copy of its submitter's context.

    ``ThreadPoolExecutor.submit`` puts the item here in the submitter's
    thread, below every wrapper of ``submit`` (a subclass's, Sentry's,
    OpenTelemetry's): the task runs in the copy, with whatever such a wrapper
    sets for it inside, so that wins over the copy. ``None`` (shutdown) and
    items bound already (by ``als.patch()``'s work item) go in as they are.
    """

    __slots__ = ()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:
            bind_work_item(item)
        super().put(item, block, timeout)


class _MapItem:
    """What ``ContextThreadPoolExecutor.map`` submits: ``fn``, marked so that ``submit`` hands it on bare."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, /, *args: Any) -> Any:  # pragma: no cover - submit() unwraps it
        return self.fn(*args)


def map_from_here(
    map_all: Callable[..., Iterator[R]], fn: Any, /, *iterables: Any, **kwargs: Any
) -> Iterator[R]:
    """Call an executor's ``map`` so that every item is submitted from the context current here.

    ``map`` submits every item before it returns, except with 3.14's
    ``buffersize``, where it submits further items while the results are
    consumed, from whichever thread and context consumes them: then each
    step of the results runs in a copy of this context, so those submits
    happen there too; closing the results closes ``map``'s.
    """
    if not kwargs.get("buffersize"):
        return map_all(fn, *iterables, **kwargs)
    context = copy_context()
    return _results_in(context, context.run(map_all, fn, *iterables, **kwargs))


def _results_in(context: Context, results: Iterator[R]) -> Iterator[R]:
    try:
        while True:
            try:
                item = context.run(next, results)
            except StopIteration:
                return
            yield item
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            context.run(close)


def sends_work_elsewhere(executor: object) -> bool:
    """True for an executor that runs work in another process or interpreter: no ``Context`` follows."""
    # Neither kind can exist unless its module is loaded (and `import als` loads neither).
    processes = sys.modules.get("concurrent.futures.process")
    interpreters = sys.modules.get("concurrent.futures.interpreter")
    return (processes is not None and isinstance(executor, processes.ProcessPoolExecutor)) or (
        interpreters is not None and isinstance(executor, interpreters.InterpreterPoolExecutor)
    )


def check_executor(function: str, executor: object, expected: str = "a concurrent.futures.Executor") -> None:
    """Refuse what is not an ``Executor``."""
    if not isinstance(executor, Executor):
        raise wrong_type(function, "executor", expected, executor)


def propagates(executor: object) -> bool:
    """True for an executor that copies its submitter's context itself: als's own and its wrappers."""
    return isinstance(executor, (ContextThreadPoolExecutor, ContextExecutor))


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose every task runs in a copy of its submitter's context.

    Context: copied at ``submit()``, not at construction, a fresh copy per
    task; ``map()`` submits every item from the context current when it is
    called, each into a fresh copy of that. What a task sets reaches neither the submitter nor the
    next task of the same worker thread; stores are shared by reference.

    Worker threads start with an empty context: a worker started while
    request A submits never shows A's store to anything but A's task, and
    keeps none of it once that task is done. For the same reason, what
    ``initializer`` sets on a ``ContextVar`` is not visible to tasks (they run
    in their submitter's context), unlike in a plain ``ThreadPoolExecutor``.

    Returned futures are ``concurrent.futures.Future`` objects whose
    ``add_done_callback(fn)`` runs ``fn`` in a copy of the registering code's
    context, whichever thread completes the future (at once, in the caller's
    thread, if it is already done, as the standard library does). A
    non-callable ``fn`` is a ``TypeError`` at registration while the future
    is pending.
    """

    if TASK_TUPLE:
        # 3.14+: submit() resolves each task through the executor's resolver,
        # below any wrapper of submit(), already a Python call: the copy is
        # taken there, with no call of its own.

        @classmethod
        def prepare_context(
            cls, initializer: Callable[..., object] | None, initargs: tuple[Any, ...], **kwargs: Any
        ) -> tuple[Callable[[], Any], Callable[..., Any]]:
            create_context, resolve_task = super().prepare_context(initializer, initargs, **kwargs)  # type: ignore[misc]
            if getattr(resolve_task, "__qualname__", None) == _PLAIN_RESOLVER:
                return create_context, _resolve_in_copy  # in place of the plain (fn, args, kwargs)
            return create_context, _ResolveInCopy(resolve_task)  # a subclass's own WorkerContext

    else:
        # Until 3.14 is the minimum supported Python: the work queue takes the copy.

        def __init__(
            self,
            max_workers: int | None = None,
            thread_name_prefix: str = "",
            initializer: Callable[..., object] | None = None,
            initargs: tuple[Any, ...] = (),
        ) -> None:
            super().__init__(max_workers, thread_name_prefix, initializer, initargs)
            self._work_queue: queue.SimpleQueue[Any] = _WorkQueue()  # no worker reads the first one yet

    if INHERITS:

        def _adjust_thread_count(self) -> None:
            # Workers start lazily in submit(), under the caller's request.
            start_workers_empty(super()._adjust_thread_count)

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` on a worker, in a copy of the caller's context.

        Raises:
            TypeError: ``fn`` is not callable (here, not in the worker).
            RuntimeError: the executor is shut down (as ``ThreadPoolExecutor``).
        """
        if type(fn) is _MapItem:  # from map(): its futures stay inside map(), as they are
            return super().submit(fn.fn, *args, **kwargs)
        if not callable(fn):
            not_callable("submit", "fn", fn)
        # super().submit per call: a wrapper of ThreadPoolExecutor.submit added later counts.
        # The resolver (3.14+) or the work queue binds the task to a copy of this context,
        # below such wrappers.
        return adopt(super().submit(fn, *args, **kwargs))

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        **kwargs: Any,
    ) -> Iterator[R]:
        """``ThreadPoolExecutor.map``, each call in a copy of the context current here.

        Every item is submitted from that context, also those that 3.14's
        ``buffersize`` submits while another thread consumes the results.

        Raises:
            TypeError: ``fn`` is not callable (here, before anything is submitted).
        """
        if not callable(fn):
            not_callable("map", "fn", fn)
        return map_from_here(
            super().map, _MapItem(fn), *iterables, timeout=timeout, chunksize=chunksize, **kwargs
        )


class ContextExecutor(Executor):
    """An ``Executor`` that runs each task of another one in a copy of its submitter's context.

    Made by ``wrap_executor``; the contract is ``ContextThreadPoolExecutor``'s.
    ``shutdown`` and ``with`` act on the wrapped executor.
    """

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        # Another process or interpreter: only carried storages can follow, by value.
        self._elsewhere = sends_work_elsewhere(executor)
        # A ThreadPoolExecutor starts workers lazily in submit(), and a process pool forks them there.
        self._starts_workers = self._elsewhere or (INHERITS and isinstance(executor, ThreadPoolExecutor))

    @property
    def executor(self) -> Executor:
        """The wrapped executor."""
        return self._executor

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` on the wrapped executor, in a copy of the caller's context.

        For a process or interpreter pool: under the caller's carried stores.

        Raises:
            TypeError: ``fn`` is not callable (here, not in the worker).
        """
        if not callable(fn):
            not_callable("submit", "fn", fn)
        submit: Callable[..., Future[R]] = self._executor.submit  # read per call, as wrapped by then
        if self._starts_workers:
            submit = functools.partial(start_workers_empty, submit)
        if self._elsewhere:
            return adopt(submit(carried(fn), *args, **kwargs))
        if runs_in_a_context(fn):  # a bind() or snapshot() result: it copies for itself
            return adopt(submit(fn, *args, **kwargs))
        return adopt(submit(copy_context().run, fn, *args, **kwargs))

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        **kwargs: Any,
    ) -> Iterator[R]:
        """``Executor.map`` through ``submit``: each call in a copy of the context current here.

        For a process or interpreter pool: the wrapped executor's own ``map``
        (``chunksize`` counts), each call under the carried stores current here.

        Raises:
            TypeError: ``fn`` is not callable (here, before anything is submitted).
        """
        if not callable(fn):
            not_callable("map", "fn", fn)
        if self._elsewhere:
            own_map: Callable[..., Iterator[R]] = self._executor.map
            return start_workers_empty(
                own_map, carried(fn), *iterables, timeout=timeout, chunksize=chunksize, **kwargs
            )
        return map_from_here(super().map, fn, *iterables, timeout=timeout, chunksize=chunksize, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut the wrapped executor down (``cancel_futures`` is passed only when true)."""
        if cancel_futures:
            self._executor.shutdown(wait=wait, cancel_futures=True)
        else:
            self._executor.shutdown(wait=wait)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} wrapping {self._executor!r}>"


def wrap_executor(executor: Executor) -> Executor:
    """Return an executor whose tasks run in a copy of their submitter's context.

    ``executor`` is any ``concurrent.futures.Executor`` (legacy code is
    often handed one). The wrapper's ``submit`` and ``map`` propagate the
    context as ``ContextThreadPoolExecutor`` does; ``shutdown`` and ``with``
    act on ``executor``. An executor that already propagates (a
    ``ContextThreadPoolExecutor`` or a wrapper) is returned as is.

    A ``ProcessPoolExecutor`` (or 3.14's ``InterpreterPoolExecutor``) gets
    only what can cross by value: each task runs in the worker under the
    submitter's carried stores (storages made with ``carry=True``), in a new
    context, with every other storage at its default and nothing the worker
    inherited at fork; the pool's workers start from an empty context.
    ``fn`` and its arguments must be picklable, as always there.

    Raises:
        TypeError: ``executor`` is not an ``Executor``; for a process pool,
            a carried store cannot be pickled (at ``submit``/``map``).
    """
    if propagates(executor):
        return executor
    check_executor("wrap_executor", executor)
    return ContextExecutor(executor)


__all__ = ["ContextFuture", "ContextThreadPoolExecutor", "wrap_executor"]
