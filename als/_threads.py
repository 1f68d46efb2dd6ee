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
  the copy to ``run()`` (``_als_run_in``), or wraps an overridden ``run()``
  on the instance (``start_in``).
"""

from __future__ import annotations

import numbers
import sys
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from contextvars import Context, copy_context
from typing import Any

from ._context import not_callable

# Until 3.14 is the minimum supported Python: Thread(context=) and Thread._context exist from 3.14.
NATIVE_CONTEXT = sys.version_info >= (3, 14)
# 3.14+: new threads start in a copy of their starter's context (on by default
# in free-threaded builds). Fixed for the life of the process.
INHERITS = bool(getattr(sys.flags, "thread_inherit_context", False))


def _check_context(function: str, context: object) -> None:
    if context is not None and not isinstance(context, Context):
        raise TypeError(
            f"{function}() argument 'context' must be a contextvars.Context or None,"
            f" not {type(context).__name__}"
        )


def _set_context(thread: _RunsInStartersContext, context: Context) -> None:
    """Keep a ``context=`` given at construction, where ``start()`` looks for it."""
    if NATIVE_CONTEXT:
        thread._context = context
    else:
        thread._als_context = context


def run_in(thread: threading.Thread, context: Context) -> Callable[[], None]:
    """Make ``thread.run()`` run in ``context``; return a function that undoes it.

    ``run`` becomes an instance attribute (a method bound to the thread, as
    other instrumentation expects), so that Thread's bootstrap calls it in
    place of ``run()`` whatever class defines ``run()``. It undoes itself when
    ``run()`` ends, so a finished thread keeps no context, and puts back a
    ``run`` that the instance had of its own.

    Attribute access only, never ``thread.__dict__``: on CPython 3.11+ that
    turns the thread's inline attribute values into a real dict, which makes
    every later attribute access of Thread's own start/join code slower (about
    1.5% of a thread's start+join, more than the rest of this together).
    """
    run = thread.run  # the class's run(), a subclass's override, or another wrapper
    # A method bound from the class's own function is not the instance's own:
    # undo deletes the instance attribute. Anything else is put back.
    from_class = getattr(run, "__func__", None) is getattr(type(thread), "run", None)
    own = None if from_class else run

    def undo() -> None:
        if own is not None:
            thread.run = own  # type: ignore[method-assign]
            return
        try:
            del thread.run
        except AttributeError:  # pragma: no cover - removed by someone else meanwhile
            pass

    def run_in_context(self: threading.Thread) -> None:
        try:
            context.run(run)
        finally:
            # Thread.run drops target/args for the same reason: a finished
            # thread must not keep the request's store alive.
            undo()

    thread.run = types.MethodType(run_in_context, thread)  # type: ignore[method-assign]
    return undo


def start_in(thread: threading.Thread, context: Context, start: Callable[[], None]) -> None:
    """Call ``start()`` (which starts ``thread``) with the thread's ``run()`` running in ``context``."""
    if thread.ident is not None:  # started before: let Thread raise its own error
        start()
        return
    undo = run_in(thread, context)
    try:
        start()
    except BaseException:
        undo()
        raise


class _RunsInStartersContext(threading.Thread):
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
        # Where run() is this class's own (no override), start() leaves the
        # context in _als_run_in and run() takes it from there: no instance
        # attribute run, which costs Thread's own code more on 3.11+. An
        # overridden run() is wrapped on the instance by start_in.
        _als_context: Context | None = None  # given at construction (context=)
        _als_run_in: Context | None = None  # handed from start() to run(), then dropped

        def start(self) -> None:
            context = self._als_context
            if context is None:
                context = copy_context()
            if type(self).run is not _RunsInStartersContext.run:  # a subclass overrides run()
                start_in(self, context, super().start)
            elif self._ident is not None:  # type: ignore[attr-defined]
                # Started before: let Thread raise its own error. (``_ident`` is
                # what the ``ident`` property returns, read without the call.)
                super().start()
            else:
                self._als_run_in = context
                try:
                    super().start()
                except BaseException:
                    self._als_run_in = None
                    raise

        def run(self) -> None:
            # Taken, and the attribute cleared, first: a finished thread keeps no context.
            context, self._als_run_in = self._als_run_in, None
            if context is None:  # started by other means, or run() called directly
                super().run()
            else:
                context.run(super().run)


class ContextThread(_RunsInStartersContext):
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


class ContextTimer(_RunsInStartersContext, threading.Timer):
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
            kind = type(seconds).__name__
            raise TypeError(f"ContextTimer() argument 'interval' must be a number of seconds, not {kind}")
        if not callable(function):
            not_callable("ContextTimer", "function", function)
        if context is not None:
            _check_context("ContextTimer", context)
        super().__init__(interval, function, args, kwargs)
        if context is not None:
            _set_context(self, context)


__all__ = ["ContextThread", "ContextTimer"]
