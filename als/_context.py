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
import inspect
import types
from collections.abc import Callable, Generator
from contextvars import Context, copy_context
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from ._util import not_callable

P = ParamSpec("P")
R = TypeVar("R")


class ContextCoroutine(collections.abc.Coroutine[Any, Any, R]):
    """A coroutine that runs each step of another one inside a given context.

    Every ``send``, ``throw`` and ``close`` enters ``context`` for exactly that
    step, so the wrapped coroutine's whole body, across every ``await``, sees
    ``context`` and tasks it creates inherit it, while whoever drives this
    object (an asyncio task, a trio task, an ``await`` in another coroutine)
    keeps its own context before, during and after. It needs no event loop:
    what the wrapped coroutine yields passes through untouched.

    Cancellation and ``throw()`` reach the wrapped coroutine as they are; its
    exceptions reach the driver as they are (same object). Once the wrapped
    coroutine ends, the context is dropped: a finished task keeps no store
    alive. If this object is garbage-collected while the wrapped coroutine is
    suspended, the coroutine is closed inside the context, so its cleanup
    still sees the store. ``cr_frame``, ``cr_await``, ``cr_code`` and
    ``cr_running`` are the wrapped coroutine's, for debuggers and task reprs.
    """

    __slots__ = ("__weakref__", "_context", "_coro")

    def __init__(self, context: Context, coro: collections.abc.Coroutine[Any, Any, R]) -> None:
        self._context = context
        self._coro = coro

    def send(self, value: Any, /) -> Any:
        try:
            return self._context.run(self._coro.send, value)
        except BaseException:  # StopIteration included: the coroutine is done
            self._context = Context()
            raise

    def __next__(self) -> Any:
        # What ``await`` calls for each plain resumption: send(None), inlined.
        try:
            return self._context.run(self._coro.send, None)
        except BaseException:
            self._context = Context()
            raise

    def throw(self, typ: Any, val: Any = None, tb: Any = None, /) -> Any:
        try:
            if val is None and tb is None:
                return self._context.run(self._coro.throw, typ)
            # The legacy three-argument form: pass it on so that the wrapped
            # coroutine behaves (and warns, on 3.12+) exactly as it would alone.
            return self._context.run(self._coro.throw, typ, val, tb)
        except BaseException:
            self._context = Context()
            raise

    def close(self) -> Any:
        try:
            # 3.13+ returns what the coroutine returned on GeneratorExit.
            return self._context.run(self._coro.close)
        finally:
            self._context = Context()

    def __await__(self) -> Generator[Any, None, R]:
        # This object is its own iterator (send/throw/close/__next__), which
        # is what ``await`` and ``yield from`` delegate to.
        return self

    __iter__ = __await__  # ``yield from`` in a @types.coroutine generator

    def __del__(self) -> None:
        coro = self._coro
        if (
            type(coro) is types.CoroutineType
            and coro.cr_frame is not None  # None once finished or closed: the usual case, decided here
            and inspect.getcoroutinestate(coro) == inspect.CORO_SUSPENDED
        ):
            # Collected mid-flight (a dropped task, say): close it here, in its
            # own context, rather than later in whatever context is current.
            self._context.run(coro.close)

    @property
    def cr_frame(self) -> Any:
        return getattr(self._coro, "cr_frame", None)

    @property
    def cr_await(self) -> Any:
        return getattr(self._coro, "cr_await", None)

    @property
    def cr_code(self) -> Any:
        return getattr(self._coro, "cr_code", None)

    @property
    def cr_running(self) -> bool:
        return bool(getattr(self._coro, "cr_running", False))

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the class lacks: lets asyncio's task
        # repr show the wrapped coroutine's name instead of this class's.
        if name in ("__name__", "__qualname__"):
            return getattr(self._coro, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} driving {self._coro!r}>"


# type -> whether it is a Coroutine, for the types calls return (a handful, in
# practice; bounded all the same). A dict lookup rather than an ABC isinstance
# check or an lru_cache on every run() and bind() call: measured, both cost
# the call more.
_IS_COROUTINE: dict[type, bool] = {types.CoroutineType: True, type(None): False}


def in_context(context: Context, result: R) -> R:
    """Return ``result``, wrapped to keep running in ``context`` if it is a coroutine."""
    kind = type(result)
    is_coroutine = _IS_COROUTINE.get(kind)
    if is_coroutine is None:
        is_coroutine = issubclass(kind, collections.abc.Coroutine)
        if len(_IS_COROUTINE) < 512:
            _IS_COROUTINE[kind] = is_coroutine
    if is_coroutine:
        return ContextCoroutine(context, result)  # type: ignore[return-value, arg-type]
    return result


class InCopy:
    """``fn(*args, **kwargs)`` in a fresh copy of a captured context, per call: the hop primitive.

    Every als hop that captures a context for later (``bind``, ``snapshot``,
    done callbacks) is one of these, so that a thread pool recognises, by
    ``isinstance`` alone, a callable that needs no second copy. Calls may
    run concurrently: each has its own copy. A coroutine result is driven in
    its call's copy.
    """

    __slots__ = ("_context", "_fn")

    def __init__(self, context: Context, fn: Callable[..., Any]) -> None:
        self._context = context
        self._fn = fn

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        context = self._context.copy()
        return in_context(context, context.run(self._fn, *args, **kwargs))


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

    if inspect.iscoroutinefunction(fn):
        # Stay an async function, so that frameworks that ask
        # inspect.iscoroutinefunction() still await it.
        @functools.wraps(fn)
        async def bound_async(*args: P.args, **kwargs: P.kwargs) -> Any:
            context = captured.copy()
            return await ContextCoroutine(context, context.run(fn, *args, **kwargs))

        return cast("Callable[P, R]", bound_async)

    return cast("Callable[P, R]", BoundFunction(captured, fn))


class BoundFunction(InCopy):
    """What ``bind`` returns for a synchronous function: an ``InCopy`` that looks like the function.

    ``functools.update_wrapper`` gives it the function's name, docstring and
    ``__wrapped__``; it binds as a method when set on a class.
    """

    __slots__ = ("__dict__",)  # for update_wrapper

    def __init__(self, context: Context, fn: Callable[..., Any]) -> None:
        super().__init__(context, fn)
        functools.update_wrapper(self, fn)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        return self if instance is None else types.MethodType(self, instance)

    def __repr__(self) -> str:
        return f"<bound to a context: {self._fn!r}>"


def _call(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """A ``Snapshot``'s function, run in each call's copy: calls the function it is given."""
    if not callable(fn):
        not_callable("snapshot", "fn", fn)
    return fn(*args, **kwargs)


class Snapshot(InCopy):
    """Runs functions in the context captured when it was created.

    ``snapshot(fn, *args, **kwargs)`` runs ``fn(*args, **kwargs)`` in a fresh
    copy of that capture and returns its result (driving a coroutine result in
    the same copy, as ``bind`` does). Safe to call from many threads at once.
    A non-callable ``fn`` is a ``TypeError``.
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(copy_context(), _call)

    if TYPE_CHECKING:

        def __call__(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self._context)} context variables>"


def snapshot() -> Snapshot:
    """Capture the current context (every storage) for running functions in later.

    The same as ``bind`` for many functions at once: see ``Snapshot``.
    """
    return Snapshot()


def runs_in_a_context(fn: object) -> bool:
    """True for a callable that enters a context itself, so that a hop adds no copy of its own.

    An ``InCopy`` (``bind`` and ``snapshot`` results, done callbacks), a
    ``Context.run`` (als's executors pass ``copy.run``) or a
    ``functools.partial`` over one (``asyncio.to_thread``).
    """
    kind = type(fn)
    if kind is types.FunctionType:  # the usual task: a plain function, which enters no context
        return False
    if isinstance(fn, InCopy):
        return True
    if kind is functools.partial:
        fn = fn.func  # type: ignore[attr-defined]
    return type(fn) is types.BuiltinMethodType and type(getattr(fn, "__self__", None)) is Context
