"""AsyncLocalStorage: one ContextVar per instance, Node's API on top of it.

Invariants:

* The store lives in ``self._var``, a ``ContextVar`` whose default is the
  storage's default, so ``get_store()`` is a single attribute read and
  ``ContextVar.get()``: no lock, no allocation.
* ``disable()`` replaces ``self._var`` with a new, empty variable. Every
  context that bound the old one keeps that binding, but nothing reads it any
  more, so every thread and task (and every ``get_store`` captured earlier)
  sees the default until ``run``/``enter_with`` binds the new variable.
* ``run`` and ``exit`` never change the caller's context: they work in a copy.
  ``enter_with`` and ``scope`` change the current context, by design.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from contextvars import ContextVar, Token, copy_context
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypeVar, overload

from ._carry import register
from ._context import bind, in_context, snapshot
from ._util import ForkSafeLock, not_callable, wrong_type

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_names = itertools.count(1)
_names_lock = ForkSafeLock()


def _generated_name() -> str:
    with _names_lock:
        return f"AsyncLocalStorage-{next(_names)}"


class AsyncLocalStorage(Generic[T]):
    """A value that follows the logical flow of a request, like Node's AsyncLocalStorage.

    ``run(store, fn)`` makes ``store`` what ``get_store()`` returns inside
    ``fn`` and everything it starts: across ``await``, in tasks it creates,
    and across thread hops made through als's wrappers or under
    ``als.patch()``. Outside any run, ``get_store()`` returns ``default``.

    Each storage owns one ``ContextVar`` (named ``als:<name>``); stores are
    shared by reference, never copied. Storages never interfere with each
    other, even when they share a name.

    ``carry=True`` (which needs a ``name``, unique among carried storages in
    the process) makes the store cross process boundaries by value: into
    process pools wrapped by ``wrap_executor`` or under ``als.patch()``,
    Celery tasks (``als.celery``) and any transport through ``als.capture()``
    and ``als.run_captured()``. It must then be picklable (and, for Celery's
    default serializer, JSON-serialisable). ``validator`` (a callable taking
    a store, returning a bool) checks stores that arrive from outside; give
    one to a storage whose values can come from a broker.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: ``carry=True`` without a name, or with the name of
            another carried storage alive in this process.
    """

    __slots__ = ("__weakref__", "_carry", "_default", "_name", "_validator", "_var")

    @overload
    def __init__(
        self: AsyncLocalStorage[T | None],
        name: str | None = None,
        *,
        carry: bool = False,
        validator: Callable[[Any], bool] | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self,
        name: str | None = None,
        *,
        default: T,
        carry: bool = False,
        validator: Callable[[Any], bool] | None = None,
    ) -> None: ...
    def __init__(
        self,
        name: str | None = None,
        *,
        default: Any = None,
        carry: bool = False,
        validator: Callable[[Any], bool] | None = None,
    ) -> None:
        if not isinstance(carry, bool):
            raise wrong_type("AsyncLocalStorage", "carry", "bool", carry)
        if validator is not None and not callable(validator):
            raise wrong_type("AsyncLocalStorage", "validator", "callable or None", validator)
        if name is None:
            if carry:
                raise ValueError(
                    "AsyncLocalStorage() with carry=True needs a name: the name is the key its store"
                    " travels under, and must be the same in every process"
                )
            name = _generated_name()
        elif not isinstance(name, str):
            raise wrong_type("AsyncLocalStorage", "name", "str or None", name)
        self._name = name
        self._default: T = default
        self._carry = carry
        self._validator = validator
        self._var: ContextVar[T] = ContextVar(f"als:{name}", default=default)
        if carry:
            register(self)

    @property
    def name(self) -> str:
        """The name given at construction, or a generated one unique in the process."""
        return self._name

    @property
    def carry(self) -> bool:
        """Whether the store crosses process boundaries (``als.capture()``, process pools, Celery)."""
        return self._carry

    @property
    def validator(self) -> Callable[[Any], bool] | None:
        """What a store arriving from outside (``run_captured``) must pass, or None to take any."""
        return self._validator

    def accepts(self, store: object) -> bool:
        """Whether a store arriving from outside passes ``validator`` (one that raises refuses it)."""
        validator = self._validator
        if validator is None:
            return True
        try:
            return bool(validator(store))
        except Exception:  # its message may quote the untrusted value: dropped, not raised
            return False

    @property
    def default(self) -> T:
        """What ``get_store()`` returns outside any ``run``/``enter_with``."""
        return self._default

    def get_store(self) -> T:
        """Return the current store, or ``default`` outside any run.

        Reads the current context only: no lock, no allocation. Correct after
        ``disable()``, also when captured earlier (``get = storage.get_store``).
        """
        return self._var.get()

    def run(self, store: T, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` with ``store`` current, and return its result.

        Context: ``fn`` runs in a copy of the caller's context with ``store``
        set in it, so whatever ``fn`` sets (``enter_with``, nested runs, any
        ``ContextVar``) is gone when ``run`` returns or raises: the caller sees
        exactly what it saw before, for every storage. Exceptions from ``fn``
        reach the caller unchanged.

        Async: if ``fn`` returns a coroutine (``fn`` is an ``async def``
        function), ``run`` returns a coroutine that drives it step by step in
        that one copy: its whole body, across every ``await``, sees ``store``,
        and tasks it creates inherit it. Await it, or hand it to
        ``asyncio.create_task`` or a trio nursery; no event loop is assumed.
        Only what ``fn`` starts synchronously carries ``store`` when ``fn``
        returns another awaitable (a ``Future``, a ``Task``): that is
        returned unchanged.

        Raises:
            TypeError: ``fn`` is not callable (a coroutine object included:
                pass the async function and its arguments instead).
        """
        if not callable(fn):
            not_callable("run", "fn", fn)
        context = copy_context()
        context.run(self._var.set, store)
        return in_context(context, context.run(fn, *args, **kwargs))

    def exit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn(*args, **kwargs)`` outside this storage: ``get_store()`` returns ``default``.

        The same contract as ``run`` (a copy of the caller's context, a
        coroutine driven in it, nothing leaks back); other storages keep
        their stores inside ``fn``.

        Raises:
            TypeError: ``fn`` is not callable.
        """
        if not callable(fn):
            not_callable("exit", "fn", fn)
        context = copy_context()
        context.run(self._var.set, self._default)
        return in_context(context, context.run(fn, *args, **kwargs))

    def enter_with(self, store: T) -> None:
        """Make ``store`` current for the rest of the current context.

        That is: the rest of the current task, or of the thread's context, or
        until the enclosing ``run`` (or ``Context.run``) returns. The caller of
        that ``run`` and sibling tasks never see it. Prefer ``run`` or
        ``scope``, which end by themselves.
        """
        self._var.set(store)

    def scope(self, store: T) -> Scope[T]:
        """Return a context manager that makes ``store`` current inside its block.

        On exit the previous binding is restored exactly (a ``ContextVar``
        token reset), also after an exception. It may span ``await`` within
        one task. An exit that runs in another context than the enter (a
        streaming generator closed by the server from another task or thread)
        neither raises nor touches that other context's binding.

        Scopes entered in one context must exit in reverse order, as ``with``
        blocks do. Exited out of order (two generators, each holding a scope
        across a ``yield``, closed in the order they were opened), the last
        exit restores what was current when it entered, as tokens do: the
        store of a scope that has already exited.
        """
        return Scope(self, store)

    def disable(self) -> None:
        """Exit every context linked to this storage, in every thread and task.

        Afterwards ``get_store()`` returns ``default`` everywhere, also in
        functions bound earlier by ``bind``/``snapshot`` and through a
        ``get_store`` captured earlier, until ``run`` or ``enter_with`` binds a
        store again; a ``run`` elsewhere brings no old binding back. Stores
        still bound in live contexts are no longer read and are released
        when those contexts are. ``get_store()`` costs the same as before.
        """
        self._var = ContextVar(f"als:{self._name}", default=self._default)

    bind = staticmethod(bind)
    snapshot = staticmethod(snapshot)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self._name!r}>"


class Scope(Generic[T]):
    """``with storage.scope(store):`` - see ``AsyncLocalStorage.scope``.

    ``__enter__`` returns the store. One block at a time: entering it again
    before it has exited is a ``RuntimeError``; after the exit it may be
    entered again.
    """

    __slots__ = ("_storage", "_store", "_token")

    def __init__(self, storage: AsyncLocalStorage[T], store: T) -> None:
        self._storage = storage
        self._store = store
        self._token: Token[T] | None = None

    def __enter__(self) -> T:
        if self._token is not None:
            raise RuntimeError("this scope() is already entered; call scope() again for another block")
        self._token = self._storage._var.set(self._store)
        return self._store

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is None:
            return
        try:
            # token.var, not the storage's current variable: after disable()
            # the new variable must stay untouched.
            token.var.reset(token)
        except ValueError:
            # Entered in another context (e.g. a generator closed from another
            # task or thread): that context's binding is out of reach, and a
            # crash in cleanup would be worse than leaving this one as it is.
            pass


__all__ = ["AsyncLocalStorage", "Scope"]
