"""Carried storages: stores that cross into other processes, by value, under their storage's name.

Invariants:

* Only storages made with ``carry=True`` cross. Every other storage, and
  every other ``ContextVar``, arrives at its default: a ``Context`` cannot be
  pickled (PEP 567), so nothing crosses unless it was asked to, by name.
* ``capture()`` is a plain ``dict`` {name: store} of the carried storages
  whose store is not their default; a store that cannot make the trip
  (not picklable, or not JSON-serialisable when asked) is a ``TypeError`` at
  the capture, naming the storage, never a silent drop.
* ``run_captured`` runs in a new, empty ``Context`` with exactly the
  accepted stores set: nothing the receiving process or thread had current
  (a forked worker's inherited context, the previous task's stores) shows
  through, and nothing the call sets leaks out.
* What arrives is untrusted: names no carried storage has here are
  ignored, and a store that its storage's ``validator`` refuses (or that
  makes it raise) is dropped, so that storage stays at its default. A
  refused value is never echoed.
"""

from __future__ import annotations

import functools
import json as _json
import pickle
import weakref
from collections.abc import Callable, Mapping
from contextvars import Context
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._context import in_context
from ._util import ForkSafeLock, not_callable, wrong_type

if TYPE_CHECKING:
    from ._storage import AsyncLocalStorage

P = ParamSpec("P")
R = TypeVar("R")

# name -> the carried storage of that name, weakly: a storage that is gone frees its name (its dead
# reference stays, harmless). Changed only under the lock; readers take _all, rebuilt on each change.
_carried: dict[str, weakref.ref[AsyncLocalStorage[Any]]] = {}
_all: tuple[weakref.ref[AsyncLocalStorage[Any]], ...] = ()
_carried_lock = ForkSafeLock()
# Stores of these types make any trip as they are: no check needed.
_PLAIN = frozenset({str, int, float, bool, type(None)})


def register(storage: AsyncLocalStorage[Any]) -> None:
    """Enter a ``carry=True`` storage under its name, which must be free in this process."""
    global _all  # noqa: PLW0603 - copy on write, under the lock
    name = storage.name
    with _carried_lock:
        held = _carried.get(name)
        if held is not None and held() is not None:
            raise ValueError(
                f"AsyncLocalStorage() argument 'name': a carried storage named {name!r} exists"
                " already in this process; carried storages need unique names (the name is the key"
                " their store travels under)"
            )
        _carried[name] = weakref.ref(storage)
        _all = tuple(_carried.values())


def lookup(name: object) -> AsyncLocalStorage[Any] | None:
    """The carried storage named ``name`` in this process, if any."""
    ref = _carried.get(name) if type(name) is str else None
    return None if ref is None else ref()


def carried_storages() -> list[AsyncLocalStorage[Any]]:
    """The carried storages alive in this process."""
    return [storage for ref in _all if (storage := ref()) is not None]


def _check_portable(name: str, store: object, as_json: bool) -> None:
    try:
        pickle.dumps(store)
    except Exception as error:
        raise TypeError(
            f"the store of carried storage {name!r} cannot be pickled to cross a process boundary:"
            f" {type(store).__name__} ({type(error).__name__})"
        ) from error
    if as_json:
        try:
            _json.dumps(store)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"the store of carried storage {name!r} is not JSON-serialisable, as this transport"
                f" needs: {type(store).__name__}"
            ) from error


def capture(*, json: bool = False) -> dict[str, Any]:
    """The current stores of the carried storages (``carry=True``), by name, as a plain ``dict``.

    Only storages whose current store is not their default are included, so
    outside any request the result is ``{}``. Hand it, with a function, to
    another process or a task queue, and call ``run_captured`` there. Stores
    are included by reference; it is the transport that copies them.

    Raises:
        TypeError: a store cannot be pickled, or with ``json=True`` (for
            transports that serialise as JSON, such as Celery's default) is
            not JSON-serialisable. The message names the storage, never the value.
    """
    captured: dict[str, Any] = {}
    for ref in _all:
        storage = ref()
        if storage is None:
            continue
        store = storage.get_store()
        if store is not storage.default:
            if type(store) not in _PLAIN:
                _check_portable(storage.name, store, json)
            captured[storage.name] = store
    return captured


def accepted(captured: object) -> list[tuple[AsyncLocalStorage[Any], Any]]:
    """The (storage, store) pairs of ``captured`` that this process takes in; see ``run_captured``."""
    if not isinstance(captured, Mapping):
        raise wrong_type("run_captured", "captured", "a dict made by als.capture()", captured)
    pairs = []
    for name, store in captured.items():
        storage = lookup(name)
        if storage is not None and storage.accepts(store):
            pairs.append((storage, store))
    return pairs


def run_captured(captured: Mapping[str, Any], fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Call ``fn(*args, **kwargs)`` with exactly the stores in ``captured`` current; return its result.

    ``captured`` is what ``capture()`` returned, usually in another process.
    ``fn`` runs in a new, empty ``Context``: each carried storage named in
    ``captured`` has its store, every other storage and ``ContextVar`` its
    default, whatever was current here; nothing ``fn`` sets leaks out. A
    coroutine result is driven in that context, as ``run`` does.

    Untrusted input is expected: a name that no carried storage has in this
    process, or that is not a ``str``, is ignored; a store that the
    storage's ``validator`` refuses (or that makes it raise) is dropped, and
    that storage keeps its default.

    Raises:
        TypeError: ``captured`` is not a mapping, or ``fn`` is not callable.
    """
    if not callable(fn):
        not_callable("run_captured", "fn", fn)
    pairs = accepted(captured)
    context = Context()
    for storage, store in pairs:
        context.run(storage.enter_with, store)
    return in_context(context, context.run(fn, *args, **kwargs))


class CarriedCall:
    """``fn(*args, **kwargs)`` under stores captured at the hand-off: what crosses into a worker process.

    Picklable whenever ``fn`` is (by reference, as process pools need). In
    the worker it calls ``run_captured``.
    """

    __slots__ = ("captured", "fn")

    def __init__(self, captured: dict[str, Any], fn: Callable[..., Any]) -> None:
        self.captured = captured
        self.fn = fn

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        return run_captured(self.captured, self.fn, *args, **kwargs)

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any], Callable[..., Any]]]:
        return CarriedCall, (self.captured, self.fn)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.fn!r} with {sorted(self.captured)}>"


def carried(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with the carried stores current now, for another process.

    Already carried (a ``CarriedCall``, or a ``functools.partial`` over one or
    holding one first, as ``run_in_executor`` and a process pool's ``map``
    chunks hand on): as it is.
    """
    if type(fn) is functools.partial and (
        type(fn.func) is CarriedCall or (fn.args and type(fn.args[0]) is CarriedCall)
    ):
        return fn
    if type(fn) is CarriedCall:
        return fn
    return CarriedCall(capture(), fn)
