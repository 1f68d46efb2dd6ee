"""ContextThread and ContextTimer: threads that run in their starter's context.

Invariants:

* The context is copied when ``start()`` is called, in the caller's thread
  (not at construction), and ``run()`` runs in that copy, including a
  subclass's overridden ``run()``: CPython 3.14's ``Thread(context=...)``
  behaviour on 3.10+. An explicit ``context=`` is used as is, not copied.
* The thread drops its context when it ends: a finished thread object keeps
  no store alive (the interpreter itself keeps a 3.14 thread's ``_context``).
* One mechanism per interpreter family, ``bootstrap_in``, shared with the
  patch's thread hook: ``Thread.start`` hands the new thread a wrapped
  ``_bootstrap``. 3.14+: the new thread first sets its native
  ``Thread._context`` (where the interpreter copies by itself,
  ``sys.flags.thread_inherit_context``, its copy is kept, not made twice).
  3.10 to 3.13: its whole bootstrap runs in the copy. Either way the copy is
  entered outside ``run()``, so a wrapper that another library puts on
  ``run()`` (Sentry's per-thread scopes) runs inside it, and what that
  wrapper sets for the thread wins.
"""

from __future__ import annotations

import functools
import numbers
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from contextvars import Context, copy_context
from typing import Any

from ._util import INHERITS, NATIVE_CONTEXT, not_callable, wrong_type


def _check_context(function: str, context: object) -> None:
    if context is not None and not isinstance(context, Context):
        raise wrong_type(function, "context", "a contextvars.Context or None", context)


if NATIVE_CONTEXT:  # the other branch goes once 3.14 is the minimum supported Python

    def _run_bootstrap(context: Context | None, bootstrap: Callable[[], None]) -> None:
        thread: Any = bootstrap.__self__  # type: ignore[attr-defined]
        if context is not None:
            thread._context = context
        try:
            bootstrap()
        finally:
            thread._context = None  # the interpreter keeps it after the thread ends

    def bootstrap_in(context: Context | None, bootstrap: Callable[[], None]) -> Callable[[], None]:
        """What to hand the low-level thread start in place of ``thread._bootstrap``: the one way a
        thread gets its context.

        3.14+: the new thread sets its native ``_context`` to ``context`` (None:
        keeps the one ``Thread.start`` made), runs, and drops it when it ends.
        """
        return functools.partial(_run_bootstrap, context, bootstrap)

else:

    def bootstrap_in(context: Context | None, bootstrap: Callable[[], None]) -> Callable[[], None]:
        """What to hand the low-level thread start in place of ``thread._bootstrap``: the one way a
        thread gets its context.

        3.10 to 3.13: the new thread's whole bootstrap, and so ``run()``, runs
        in ``context`` (never None here); nothing refers to it once the
        thread ends. ``copy.run`` bound as a method: no argument tuple per start.
        """
        return types.MethodType(context.run, bootstrap)  # type: ignore[union-attr]


class RunsInStartersContext(threading.Thread):
    """Mix-in: ``run()`` runs in a copy of the context of ``start()``'s caller."""

    _als_context: Context | None = None  # given at construction (context=)
    _bootstrap: Callable[[], None]  # Thread's own (typeshed has none)

    def start(self) -> None:
        context = self._als_context
        if context is None and not INHERITS:  # else the interpreter copies in start() itself
            context = copy_context()
        # Thread.start hands self._bootstrap to the new thread: for this start only, the one in context.
        self._bootstrap = bootstrap_in(context, self._bootstrap)
        try:
            super().start()
        finally:
            del self._bootstrap


class ContextThread(RunsInStartersContext):
    """A ``threading.Thread`` whose ``run()`` runs in a copy of its starter's context.

    Context: copied when ``start()`` is called, in the caller's thread, not at
    construction. ``target``, or a subclass's overridden ``run()``, runs in
    that copy: what it sets never reaches the starter. ``context=ctx`` runs the
    thread in ``ctx`` itself, as CPython 3.14's ``Thread(context=)`` does:
    what the thread sets is visible in ``ctx`` afterwards, and ``ctx`` cannot
    be entered by two threads at once.

    Raises:
        TypeError: ``target`` is not callable or ``context`` is not a
            ``contextvars.Context`` (at construction).
    """

    def __init__(
        self,
        group: None = None,
        target: Callable[..., object] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        daemon: bool | None = None,
        context: Context | None = None,
    ) -> None:
        if target is not None and not callable(target):
            not_callable("ContextThread", "target", target)
        if context is not None:
            _check_context("ContextThread", context)
        super().__init__(group, target, name, args, kwargs, daemon=daemon)
        if context is not None:
            self._als_context = context


class ContextTimer(RunsInStartersContext, threading.Timer):
    """A ``threading.Timer`` whose function runs in a copy of its starter's context.

    The same rule as ``ContextThread``: the context is copied at ``start()``;
    ``context=ctx`` runs the timer in ``ctx`` itself. ``cancel()`` works as in
    ``threading.Timer``.

    Raises:
        TypeError: ``interval`` is not a number, ``function`` is not callable,
            or ``context`` is not a ``contextvars.Context`` (at construction).
    """

    def __init__(
        self,
        interval: float,
        function: Callable[..., object],
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        context: Context | None = None,
    ) -> None:
        seconds: object = interval  # typed float, but any object can come
        if type(seconds) not in (int, float) and (
            isinstance(seconds, bool) or not isinstance(seconds, numbers.Real)
        ):
            raise wrong_type("ContextTimer", "interval", "a number of seconds", seconds)
        if not callable(function):
            not_callable("ContextTimer", "function", function)
        if context is not None:
            _check_context("ContextTimer", context)
        super().__init__(interval, function, args, kwargs)
        if context is not None:
            self._als_context = context


__all__ = ["ContextThread", "ContextTimer"]
