"""asyncio's thread hops: run_in_executor with the context, and a propagating default executor.

Invariants:

* ``run_in_executor`` copies the caller's context when it is called (not
  when it is awaited) and submits at once, like ``loop.run_in_executor``;
  the callable runs in that copy, and what it sets never reaches the task.
* An executor that already propagates (``ContextThreadPoolExecutor``, a
  ``wrap_executor`` wrapper) is not given a second copy.
* A worker that the executor starts lazily is never pinned to the caller's
  context: threads do not inherit contexts, or (where they do, 3.14's flag,
  and for forked worker processes) submission runs in a new, empty ``Context``.
* A process pool gets the caller's carried stores, by value (``CarriedCall``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Executor
from contextvars import copy_context
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from ._carry import carried
from ._executors import ContextThreadPoolExecutor, check_executor, propagates, sends_work_elsewhere
from ._util import INHERITS, not_callable, start_workers_empty, wrong_type

if TYPE_CHECKING:
    import asyncio  # imported when called: `import als` stays light (and imports no ssl before gevent)

P = ParamSpec("P")
R = TypeVar("R")


def run_in_executor(
    executor: Executor | None, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
) -> asyncio.Future[R]:
    """Run ``fn(*args, **kwargs)`` in ``executor`` (None: the default) in a copy of the caller's context.

    ``loop.run_in_executor`` with the context and with keyword arguments:
    submits at once and returns an ``asyncio.Future`` to await. Context: copied
    here, in the calling task; a fresh copy per call; what ``fn`` sets
    reaches neither the task nor the worker's next job. A process pool gets
    the carried stores only, as ``wrap_executor`` gives it.

    Raises:
        TypeError: ``fn`` is not callable (here, not in the worker),
            ``executor`` is neither None nor an ``Executor``, or a carried
            store cannot be pickled for a process pool.
        RuntimeError: no event loop is running in this thread.
    """
    if not callable(fn):
        not_callable("run_in_executor", "fn", fn)
    if executor is not None:
        check_executor("run_in_executor", executor, "a concurrent.futures.Executor or None")
    import asyncio  # noqa: PLC0415 - see the TYPE_CHECKING import

    loop = asyncio.get_running_loop()
    if propagates(executor):
        # It copies the context itself at submit(), which happens right here.
        call: Callable[[], R] = functools.partial(fn, *args, **kwargs)
        return loop.run_in_executor(executor, call)
    if sends_work_elsewhere(executor):  # a process pool: the carried stores, by value
        call = functools.partial(carried(fn), *args, **kwargs)
        return start_workers_empty(loop.run_in_executor, executor, call)
    call = functools.partial(copy_context().run, fn, *args, **kwargs)
    if INHERITS:  # the executor may start a worker inside submit()
        return start_workers_empty(loop.run_in_executor, executor, call)
    return loop.run_in_executor(executor, call)


def install_default_executor(
    loop: asyncio.AbstractEventLoop | None = None, max_workers: int | None = None
) -> ContextThreadPoolExecutor:
    """Make ``loop``'s default executor a ``ContextThreadPoolExecutor``, and return it.

    Afterwards plain ``loop.run_in_executor(None, fn)`` (and so
    ``asyncio.to_thread``) runs ``fn`` in a copy of the calling task's context
    on that loop. ``loop`` defaults to the running loop. An executor the loop
    already had is replaced, not shut down; ``loop.shutdown_default_executor()``
    (which ``asyncio.run`` calls) shuts down the new one.

    Raises:
        RuntimeError: ``loop`` is None and no event loop is running.
        TypeError: ``loop`` is not an event loop, or ``max_workers`` is not an int.
    """
    import asyncio  # noqa: PLC0415 - see the TYPE_CHECKING import

    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "install_default_executor() needs a running event loop; call it from async code or pass loop="
            ) from None
    elif not isinstance(loop, asyncio.AbstractEventLoop):
        raise wrong_type("install_default_executor", "loop", "an asyncio event loop or None", loop)
    if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)):
        raise wrong_type("install_default_executor", "max_workers", "int or None", max_workers)
    executor = ContextThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="asyncio")
    loop.set_default_executor(executor)
    return executor


__all__ = ["install_default_executor", "run_in_executor"]
