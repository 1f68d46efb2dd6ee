"""What every als module may import: argument errors, a fork-safe lock, the stdlib internals used.

This is the only module whose private names cross into other modules, and
the only one that needs no other part of als. Two exceptions, each within a
package's own walls: ``als.web``'s modules share ``als.web._common``, and
``als.web.asgi`` and ``als.web.django`` drive the app with ``als._context``'s
``ContextCoroutine``, as ``AsyncLocalStorage.run`` does, in a context they
make themselves (Django's, kept for the response's later steps).

Private standard-library parts als relies on, each checked on CPython 3.10
to 3.15 by the test suite on every interpreter CI runs. ``als.patch()``
checks that the ones it replaces exist before it replaces anything, so an
interpreter that renamed one gets a ``RuntimeError`` there, never a patch
that copies nothing. The rest are read
where they are used; if one changes, the test suite for that interpreter
fails, and the hop it serves runs in the worker's own, empty context (the
store is missing, never another request's):

* ``threading._start_new_thread`` (3.10 to 3.12) and
  ``threading._start_joinable_thread`` (3.13+), called by ``Thread.start``
  with the bound ``_bootstrap``: the patch's thread hook (``LOW_LEVEL_START``).
* ``Thread._bootstrap``: ``ContextThread`` overrides it to run in its copy
  (3.10 to 3.13) and to drop its context at the end (3.14+).
* ``Thread._target``: read by the patch to tell a pool's or a queue's
  service thread from any other.
* ``Thread._context`` and ``threading._contextvars`` (3.14+,
  ``NATIVE_CONTEXT``): the interpreter's own per-thread context, and the
  module ``Thread.start`` makes a default one with.
* ``concurrent.futures.thread._WorkItem``: ``fn``, ``args``, ``kwargs``
  before 3.14, the resolved ``task`` tuple from it (``TASK_TUPLE``); the
  patch subclasses it. ``ThreadPoolExecutor._work_queue`` (before 3.14),
  ``_adjust_thread_count`` and 3.14's ``prepare_context`` and
  ``WorkerContext``: ``ContextThreadPoolExecutor`` overrides them.
* ``multiprocessing.pool.Pool._repopulate_pool_static`` and ``_map_async``
  (behind ``map``, ``starmap`` and their ``_async`` forms): wrapped by the patch.
* Celery (``als.celery``): ``app.amqp.send_task_message`` and the
  ``_create_task_sender`` that makes it, and ``app.Task``; checked with
  Celery 5.7 by the tests against real workers.
* HTTP clients (``als.web.outgoing.forward``): aiohttp's
  ``ClientRequest.send``, not documented, which every ``ClientSession``
  request, redirect and retry passes through with its final headers; and
  ``http.client.HTTPConnection._buffer``, the header lines put so far
  (bytes, ``b"Name: value"``, after the request line), read by its hook on
  the public ``endheaders`` (which ``urllib3`` 2's connections inherit)
  to tell whether the caller put the header, once per request instead of a
  wrapper on every ``putheader``. ``forward()`` checks that both exist
  (the first a coroutine function, the second a list) before it hooks
  anything, a ``RuntimeError`` naming the missing one otherwise. Checked
  with aiohttp 3.14, httpx 0.28, urllib3 2.8 and requests 2.34 by the tests
  against a real server.
* Django (``als.web.django``): ``django.utils.log.log_response``, which
  marks the response it logs so that Django skips it later; the
  ``request.headers`` cached property (dropped from ``request.__dict__``
  when the id replaces the header); ``HttpResponseBase.close`` replaced on
  the instance. Checked with Django 5.2 and 6.1 under gunicorn and uvicorn.
* ``Logger.makeRecord``'s code object and its caller's frame
  (``sys._getframe``): ``als.logging`` lets ``extra=`` win over its field.
* aiohttp (``als.web.aiohttp``): a request's ``_message`` (a
  ``RawRequestMessage``, ``_replace``-d) and ``_headers``, set on a
  ``clone()`` only when ``clone(headers=...)`` cannot re-encode another
  header that is not UTF-8; checked with aiohttp 3.14 by the tests against
  a real server.
"""

from __future__ import annotations

import collections.abc
import os
import sys
import threading
import weakref
from collections.abc import Callable
from contextvars import Context
from typing import NoReturn, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

# Until 3.14 is the minimum supported Python: Thread(context=), Thread._context
# and threading._contextvars exist from 3.14.
NATIVE_CONTEXT = sys.version_info >= (3, 14)
# Until 3.14 is the minimum supported Python: a pool's work item holds fn/args/kwargs
# before it, the executor's resolved task (fn, args, kwargs) from it.
TASK_TUPLE = NATIVE_CONTEXT
# Until 3.13 is the minimum supported Python: before it, Thread.start calls _start_new_thread.
LOW_LEVEL_START = "_start_joinable_thread" if sys.version_info >= (3, 13) else "_start_new_thread"
# 3.14+: new threads start in a copy of their starter's context (the default of
# free-threaded builds). Fixed for the life of the process.
INHERITS = bool(getattr(sys.flags, "thread_inherit_context", False))


def wrong_type(function: str, argument: str, expected: str, value: object) -> TypeError:
    """The TypeError for ``function()``'s ``argument``: what it must be, and the type that came."""
    return TypeError(f"{function}() argument {argument!r} must be {expected}, not {type(value).__name__}")


def not_callable(function: str, argument: str, value: object) -> NoReturn:
    """Raise the TypeError for a non-callable ``argument`` of ``function``."""
    if isinstance(value, collections.abc.Coroutine):
        name = getattr(value, "__qualname__", None) or "handler"
        raise TypeError(
            f"{function}() argument {argument!r} must be callable, not a coroutine object:"
            f" pass the async function and its arguments, {function}(..., {name}, *args),"
            f" instead of calling it, {function}(..., {name}(*args))"
        )
    raise wrong_type(function, argument, "callable", value)


class ForkSafeLock:
    """A ``threading.Lock`` that ``os.fork()`` never copies half-way through a critical section.

    The forking thread acquires it just before the fork and releases it just
    after, in the parent and in the child, as the standard library does for
    its own module locks. So a fork waits for another thread's critical
    section to end, the child finds the state it guards whole, and the lock
    free. Not reentrant: never fork while holding one.
    """

    __slots__ = ("__weakref__", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows
            # Weakly: a lock that is gone must not be kept alive by the interpreter's fork hooks.
            ref = weakref.ref(self)
            taken: list[threading.Lock] = []  # by this fork's acquire(): a lock made meanwhile has none

            def acquire() -> None:
                lock = ref()
                if lock is not None:
                    lock._lock.acquire()
                    taken.append(lock._lock)

            def release() -> None:
                while taken:
                    taken.pop().release()

            os.register_at_fork(before=acquire, after_in_parent=release, after_in_child=release)

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *_: object) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


def start_workers_empty(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Call ``fn``, which may start a pool's workers, so that none starts in this context.

    A process pool forks its workers lazily, and a forked worker keeps the
    forking thread's context for its whole life; where new threads inherit
    their starter's context (``INHERITS``), so does a thread pool's worker.
    ``fn`` runs in a new, empty ``Context`` then: a worker started while
    request A submits is never pinned to A.
    """
    return Context().run(fn, *args, **kwargs)
