"""The hop primitive: capture a context once, run each call in a fresh copy of it.

Invariants every other module relies on:

* A hop never runs in the capturing ``Context`` object itself, nor in the
  worker's own context: each call gets a fresh copy, so what one call sets is
  seen neither by the code that captured the context nor by the next call.
* When a call returns a coroutine, the caller gets a ``ContextCoroutine`` that
  drives every step of that coroutine inside the one context the call ran in;
  anything else a call returns comes back unchanged (a ``Future``, a ``Task``,
  an async generator, any other awaitable).
* Nothing here touches a standard-library object or takes a lock on a hot path.
"""

from __future__ import annotations

import collections.abc
import functools
import types
from collections.abc import Callable, Generator
from contextvars import Context, copy_context
from typing import Any, NoReturn, ParamSpec, TypeVar, cast

P = ParamSpec("P")
R = TypeVar("R")

_CoroutineT = collections.abc.Coroutine[Any, Any, R]


class ContextCoroutine(collections.abc.Coroutine[Any, Any, R]):
    """A coroutine that runs each step of another one inside a given context.

    Every ``send``, ``throw`` and ``close`` enters ``context`` for exactly that
    step, so the wrapped coroutine's whole body, across every ``await``, sees
    ``context`` and tasks it creates inherit it, while whoever drives this
    object (an asyncio task, a trio task, an ``await`` in another coroutine)
    keeps its own context before, during and after. It needs no event loop:
    what the wrapped coroutine yields passes through untouched.

    Cancellation and ``throw()`` reach the wrapped coroutine as they are;
    its exceptions reach the driver as they are (same object).
    """

    __slots__ = ("_context", "_coro")

    def __init__(self, context: Context, coro: collections.abc.Coroutine[Any, Any, R]) -> None:
        self._context = context
        self._coro = coro

    def send(self, value: Any, /) -> Any:
        return self._context.run(self._coro.send, value)

    def __next__(self) -> Any:
        return self._context.run(self._coro.send, None)

    def throw(self, typ: Any, val: Any = None, tb: Any = None, /) -> Any:
        if val is None and tb is None:
            return self._context.run(self._coro.throw, typ)
        # The legacy three-argument form: pass it on so that the wrapped
        # coroutine behaves (and warns, on 3.12+) exactly as it would alone.
        return self._context.run(self._coro.throw, typ, val, tb)

    def close(self) -> None:
        self._context.run(self._coro.close)

    def __await__(self) -> Generator[Any, None, R]:
        # This object is its own iterator (send/throw/close/__next__), which
        # is what ``await`` and ``yield from`` delegate to.
        return cast("Generator[Any, None, R]", self)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the class lacks: lets asyncio's task
        # repr show the wrapped coroutine's name instead of this class's.
        if name in ("__name__", "__qualname__"):
            return getattr(self._coro, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} driving {self._coro!r}>"


# type -> "is a coroutine" for results of calls: an ABC isinstance check costs
# about ten times a dict lookup, and sync calls return a handful of types.
_IS_COROUTINE: dict[type, bool] = {
    types.CoroutineType: True,
    ContextCoroutine: True,
    type(None): False,
}
_IS_COROUTINE_LIMIT = 512


def in_context(context: Context, result: R) -> R:
    """Return ``result``, wrapped to keep running in ``context`` if it is a coroutine."""
    kind = type(result)
    is_coroutine = _IS_COROUTINE.get(kind)
    if is_coroutine is None:
        is_coroutine = issubclass(kind, collections.abc.Coroutine)
        if len(_IS_COROUTINE) < _IS_COROUTINE_LIMIT:
            _IS_COROUTINE[kind] = is_coroutine
    if is_coroutine:
        return cast(R, ContextCoroutine(context, cast("_CoroutineT[Any]", result)))
    return result


def not_callable(function: str, argument: str, value: object) -> NoReturn:
    """Raise the TypeError for a non-callable ``argument`` of ``function``."""
    if isinstance(value, collections.abc.Coroutine):
        name = getattr(value, "__qualname__", None) or "handler"
        raise TypeError(
            f"{function}() argument {argument!r} must be callable, not a coroutine object:"
            f" pass the async function and its arguments, {function}(..., {name}, *args),"
            f" instead of calling it, {function}(..., {name}(*args))"
        )
    raise TypeError(f"{function}() argument {argument!r} must be callable, not {type(value).__name__}")


def bind(fn: Callable[P, R], /) -> Callable[P, R]:
    """Return ``fn`` bound to the context current now, for every storage.

    Context: captured once, here. Each call of the result runs ``fn`` in a
    fresh copy of that capture, so the result may be called concurrently from
    many threads, and what one call sets (any ``ContextVar``, any storage) is
    seen neither by the caller nor by the next call. If ``fn`` returns a
    coroutine, its whole body runs in that call's copy.

    Raises:
        TypeError: ``fn`` is not callable (here, not when the result is called).
    """
    if not callable(fn):
        not_callable("bind", "fn", fn)
    captured = copy_context()

    @functools.wraps(fn)
    def bound(*args: P.args, **kwargs: P.kwargs) -> R:
        context = captured.copy()
        return in_context(context, context.run(fn, *args, **kwargs))

    return bound


class Snapshot:
    """Runs functions in the context captured when it was created.

    ``snapshot(fn, *args, **kwargs)`` runs ``fn(*args, **kwargs)`` in a fresh
    copy of that capture and returns its result (driving a coroutine result in
    the same copy, as ``bind`` does). Safe to call from many threads at once.
    """

    __slots__ = ("_context",)

    def __init__(self) -> None:
        self._context = copy_context()

    def __call__(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        if not callable(fn):
            not_callable("snapshot", "fn", fn)
        context = self._context.copy()
        return in_context(context, context.run(fn, *args, **kwargs))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self._context)} context variables>"


def snapshot() -> Snapshot:
    """Capture the current context (every storage) for running functions in later.

    The same as ``bind`` for many functions at once: see ``Snapshot``.
    """
    return Snapshot()
