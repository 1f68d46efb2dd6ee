"""ContextThread and ContextTimer: threads that run in their starter's context.

Invariants:

* The context is copied when ``start()`` is called, in the caller's thread
  (not at construction), and ``run()`` runs in that copy, including a
  subclass's overridden ``run()``: CPython 3.14's ``Thread(context=...)``
  behaviour on 3.10+. An explicit ``context=`` is used as is, not copied.
* The thread drops its context when it ends: a finished thread object keeps
  no store alive (the interpreter itself keeps a 3.14 thread's ``_context``).
* One mechanism per interpreter family. 3.14+: the interpreter's own
  ``Thread._context``, set by ``start()`` to the copy, so nothing is copied a
  second time where the interpreter would copy too
  (``sys.flags.thread_inherit_context``). 3.10 to 3.13: ``start()`` hands
  the copy to the new thread (``_als_run_in``), whose whole ``_bootstrap``
  runs in it. Either way the copy is entered outside ``run()``, so a wrapper
  that another library puts on ``run()`` (Sentry's per-thread scopes) runs
  inside it, and what that wrapper sets for the thread wins.
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Callable, Iterable, Mapping
from contextvars import Context, copy_context
from typing import Any

from ._util import NATIVE_CONTEXT, not_callable, wrong_type


def _check_context(function: str, context: object) -> None:
    if context is not None and not isinstance(context, Context):
        raise wrong_type(function, "context", "a contextvars.Context or None", context)


def _set_context(thread: RunsInStartersContext, context: Context) -> None:
    """Keep a ``context=`` given at construction, where ``start()`` looks for it."""
    if NATIVE_CONTEXT:
        thread._context = context
    else:
        thread._als_context = context


class RunsInStartersContext(threading.Thread):
    """Mix-in: ``run()`` runs in a copy of the context of ``start()``'s caller."""

    if NATIVE_CONTEXT:
        _context: Context | None  # Thread's own, 3.14+ (typeshed for 3.10 has none)

        def start(self) -> None:
            made = self._context is None  # no context= given
            if made:
                self._context = copy_context()
            try:
                super().start()
            except BaseException:  # started before, or no thread could be started
                if made:
                    self._context = None
                raise

        def _bootstrap(self) -> None:
            try:
                super()._bootstrap()  # type: ignore[misc]
            finally:
                # The interpreter keeps _context after the thread ends.
                self._context = None

    else:
        # Until 3.14 is the minimum supported Python: start() hands the copy
        # to the new thread, which runs its whole bootstrap, and so run()
        # (any override, and any wrapper another library set on the instance),
        # in it, as the patch's start hook does for plain threads.
        _als_context: Context | None = None  # given at construction (context=)
        _als_run_in: Context | None = None  # handed from start() to the new thread, then dropped

        def start(self) -> None:
            context = self._als_context
            self._als_run_in = copy_context() if context is None else context
            try:
                super().start()
            except BaseException:  # started before (its bootstrap has taken its context), or no thread
                self._als_run_in = None
                raise

        def _bootstrap(self) -> None:
            # Taken, and the attribute cleared, first: a finished thread keeps no context.
            context, self._als_run_in = self._als_run_in, None
            if context is None:  # started by other means
                super()._bootstrap()  # type: ignore[misc]
            else:
                context.run(super()._bootstrap)  # type: ignore[misc]


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
        if context is not None:  # else None: one instance attribute fewer before 3.14
            _set_context(self, context)


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
            _set_context(self, context)


__all__ = ["ContextThread", "ContextTimer"]
