"""Outgoing requests carry the request's id: ``forward()`` for the whole process, or one client at a time.

``undo = forward(storage)``: from then on, every HTTP request this process
sends while ``storage`` holds a store carries it as ``X-Request-ID`` (or the
``header`` given), through ``http.client``, ``urllib.request``, ``urllib3``,
``requests``, ``httpx`` (``Client`` and ``AsyncClient``) and aiohttp's
``ClientSession``, clients made before ``forward()`` included. ``undo()``
stops it. For one client only, without touching the process:
``httpx_event_hooks``, ``httpx_async_event_hooks``, ``requests_adapter`` and
``aiohttp_trace_config``.

What is sent, everywhere:

* The store current in the thread or task that sends the request, read when
  the request's headers are written: the one ``storage.get_store()``
  returns there. Nothing when it returns the storage's default (outside any
  ``run``/``enter_with``, or after ``disable()``).
* Only a ``str`` that passes ``als.web.is_safe_header_value`` (1 to 1024
  printable ASCII characters, no space at either end). Any other store is
  not sent: silently, never an error, and its value is never shown.
* Never twice, and never over the caller: a request that already has the
  header (set by the caller, a session's default headers, an event hook or
  an adapter, compared case-insensitively) is sent as it is.
* A request object the caller holds (httpx's ``Request``, requests'
  ``PreparedRequest``) keeps the header it was sent with, where the caller
  can see it. Sent again, it is sent with the store current then, or
  without the header outside a request: a value forwarding set is never
  taken for the caller's.

Importing this module imports no client library: each is imported only by
the helper made for it, or by ``forward()``, which imports httpx and aiohttp
if they are installed, to hook them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from http.client import HTTPConnection
from typing import Any

from als import AsyncLocalStorage
from als._util import ForkSafeLock, wrong_type

from ._common import _SAFE_VALUE, check_header

__all__ = [
    "aiohttp_trace_config",
    "forward",
    "httpx_async_event_hooks",
    "httpx_event_hooks",
    "requests_adapter",
]


class _Forward:
    """One storage sent as one header: by one ``forward()`` call, or by one client's helper."""

    __slots__ = ("default", "get", "header", "length", "lower", "name")

    def __init__(self, function: str, storage: AsyncLocalStorage[Any], header: str) -> None:
        if not isinstance(storage, AsyncLocalStorage):
            raise wrong_type(function, "storage", "an AsyncLocalStorage", storage)
        check_header(f"{function}() argument 'header'", header)
        self.get: Callable[[], object] = storage.get_store  # stays right after disable()
        default = storage.default
        # "" never passes the floor, so it stands for a default that is no str.
        self.default: str = default if isinstance(default, str) else ""
        self.header = header
        self.lower = header.lower()
        self.name = self.lower.encode("ascii")  # as http.client's header lines hold it, lowered
        self.length = len(self.name)

    def value(self) -> str | None:
        """The header's value for a request sent here and now, or None to send none."""
        store = self.get()
        if isinstance(store, str) and store != self.default and _SAFE_VALUE(store) is not None:
            return store
        return None


# On a request object the caller holds: the (lowered name, value) pairs forwarding set on it.
_SET = "_als_forwarded"


def _put(request: Any, forwards: tuple[_Forward, ...], *, mark: bool = True) -> None:
    """Set on ``request.headers`` each forwarded header it lacks, or that forwarding set on an earlier send.

    ``mark``: ``request`` is an object the caller may send again; it is marked
    with what was set, so that the next send tells forwarding's value from the
    caller's. Never raises: a request that cannot take the header goes without.
    """
    try:
        headers = request.headers
        earlier = getattr(request, _SET, None) if mark else None
        now: tuple[tuple[str, str], ...] = ()
        for forward in forwards:
            value = forward.value()
            if earlier is None:  # the request's first send
                if value is None or forward.header in headers:
                    continue
            else:  # sent before: forwarding's value then is not the caller's
                if any(name == forward.lower for name, _ in now):
                    continue
                current = headers.get(forward.header)
                if current is not None and (forward.lower, current) not in earlier:
                    continue
                if value is None:
                    if current is not None:
                        del headers[forward.header]
                    continue
            headers[forward.header] = value
            now = (*now, (forward.lower, value))
        if (now and mark) or earlier is not None:
            setattr(request, _SET, now or None)
    except Exception:
        pass


# --- Per-client helpers ------------------------------------------------------------------------


def httpx_event_hooks(
    storage: AsyncLocalStorage[Any], header: str = "X-Request-ID"
) -> dict[str, list[Callable[..., Any]]]:
    """Event hooks for one ``httpx.Client``: ``httpx.Client(event_hooks=httpx_event_hooks(storage))``.

    Each request the client sends (redirects included) gets ``header`` set,
    on the ``httpx.Request`` itself, to the store current where it is sent,
    unless it has that header already; the rules are the module's. To keep
    hooks of your own, list them beside it:
    ``{"request": [mine, *hooks["request"]]}``.

    Raises:
        TypeError: ``storage`` is not an ``AsyncLocalStorage``, or ``header`` no str.
        ValueError: ``header`` is not a valid header name.
    """
    forwards = (_Forward("httpx_event_hooks", storage, header),)

    def add_request_id(request: Any) -> None:
        _put(request, forwards)

    return {"request": [add_request_id]}


def httpx_async_event_hooks(
    storage: AsyncLocalStorage[Any], header: str = "X-Request-ID"
) -> dict[str, list[Callable[..., Any]]]:
    """``httpx_event_hooks`` for one ``httpx.AsyncClient``: the same rules, with an ``async`` hook.

    ``httpx.AsyncClient(event_hooks=httpx_async_event_hooks(storage))``; the
    store is read in the task that sends the request.

    Raises:
        TypeError: ``storage`` is not an ``AsyncLocalStorage``, or ``header`` no str.
        ValueError: ``header`` is not a valid header name.
    """
    forwards = (_Forward("httpx_async_event_hooks", storage, header),)

    async def add_request_id(request: Any) -> None:
        _put(request, forwards)

    return {"request": [add_request_id]}


def requests_adapter(storage: AsyncLocalStorage[Any], header: str = "X-Request-ID", **kwargs: Any) -> Any:
    """A ``requests.adapters.HTTPAdapter`` whose requests carry the store: mount it on a session.

    ``session.mount("http://", requests_adapter(storage))`` (and
    ``"https://"``); ``kwargs`` go to ``HTTPAdapter`` as they are
    (``pool_maxsize=``, ``max_retries=``...). Each ``PreparedRequest`` the
    adapter sends (a redirect is another one) gets ``header`` set to the store
    current where it is sent; the rules are the module's. The adapter is an
    instance of a subclass of ``HTTPAdapter`` that ``pickle`` cannot find by
    name: a session that mounts it cannot be pickled.

    Raises:
        TypeError: ``storage`` is not an ``AsyncLocalStorage``, or ``header``
            no str; ``HTTPAdapter``'s own errors for ``kwargs``.
        ValueError: ``header`` is not a valid header name.
    """
    forwards = (_Forward("requests_adapter", storage, header),)
    adapter_class = _adapter_class(importlib.import_module("requests.adapters").HTTPAdapter)
    return adapter_class(forwards, **kwargs)


@functools.cache
def _adapter_class(base: type) -> type:
    """The ``HTTPAdapter`` subclass ``requests_adapter`` makes, once per base."""

    class ForwardingAdapter(base):  # type: ignore[misc]
        """An ``HTTPAdapter`` that sends the store as one header (``als.web.outgoing.requests_adapter``)."""

        def __init__(self, forwards: tuple[_Forward, ...], **kwargs: Any) -> None:
            self._als_forwards = forwards
            super().__init__(**kwargs)

        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            _put(request, self._als_forwards)
            return super().send(request, *args, **kwargs)

    ForwardingAdapter.__module__ = __name__
    return ForwardingAdapter


def aiohttp_trace_config(storage: AsyncLocalStorage[Any], header: str = "X-Request-ID") -> Any:
    """An ``aiohttp.TraceConfig`` whose requests carry the store: ``ClientSession(trace_configs=[it])``.

    Its ``on_request_start`` sets ``header`` in the request's headers (the
    session's defaults merged with the call's, a new mapping per request,
    which aiohttp lets a trace change) unless they have it already; read in
    the task that makes the request, once per request, redirects keeping it.
    The rules are the module's. Add callbacks of your own to it before the
    session is made.

    Raises:
        TypeError: ``storage`` is not an ``AsyncLocalStorage``, or ``header`` no str.
        ValueError: ``header`` is not a valid header name.
    """
    forwards = (_Forward("aiohttp_trace_config", storage, header),)
    config = importlib.import_module("aiohttp").TraceConfig()

    async def add_request_id(session: Any, context: Any, params: Any) -> None:
        _put(params, forwards, mark=False)

    config.on_request_start.append(add_request_id)
    return config


# --- forward(): the process-wide hooks ---------------------------------------------------------


class _Hooks:
    """One installation: the forwards its hooks read (a tuple, swapped whole), and what it replaced.

    Off for good once removed: its forwards are then empty, and a hook of it
    that another library's wrapper still holds passes every call through.
    """

    __slots__ = ("forwards", "installed")

    def __init__(self) -> None:
        self.forwards: tuple[_Forward, ...] = ()
        self.installed: list[tuple[type, str, Any]] = []  # (owner, name, replacement)


_lock = ForkSafeLock()
_hooks: _Hooks | None = None
_ABSENT = object()


# HTTPConnection.endheaders's signature on every Python als supports: its hook takes the same, which spares
# packing the arguments of each call (another signature gets a hook that passes them on as they came).
_ENDHEADERS = "(self, message_body=None, *, encode_chunked=False)"


def _endheaders(original: Callable[..., Any], hooks: _Hooks) -> Callable[..., Any]:
    """``HTTPConnection.endheaders``: put each forwarded header the request's lines lack, then send them."""
    if str(inspect.signature(original)) == _ENDHEADERS:

        @functools.wraps(original)
        def endheaders(self: Any, message_body: Any = None, *, encode_chunked: bool = False) -> Any:
            forwards = hooks.forwards
            if forwards:
                _put_lines(self, forwards)
            return original(self, message_body, encode_chunked=encode_chunked)

        return endheaders

    @functools.wraps(original)
    def any_endheaders(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        forwards = hooks.forwards
        if forwards:
            _put_lines(self, forwards)
        return original(self, *args, **kwargs)

    return any_endheaders


def _put_lines(connection: Any, forwards: tuple[_Forward, ...]) -> None:
    """Put each forwarded header the request's header lines lack, with ``connection.putheader``.

    The lines put so far are ``connection._buffer`` (bytes, ``b"Name: value"``,
    after the request line): read once per request, instead of a wrapper on
    every ``putheader``. Never raises: http.client reports a broken state itself.
    """
    try:
        for forward in forwards:
            value = forward.value()
            if value is not None:
                length, name = forward.length, forward.name
                for line in connection._buffer:
                    if len(line) > length and line[length] == 58 and line[:length].lower() == name:
                        break  # b":" right after a name of its length: the caller's, or ours already
                else:
                    connection.putheader(forward.header, value)
    except Exception:
        pass


def _httpx_send(original: Callable[..., Any], hooks: _Hooks) -> Callable[..., Any]:
    """``httpx.Client.send``: the header is set on the ``Request``; redirects copy it."""

    @functools.wraps(original)
    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        forwards = hooks.forwards
        if forwards:
            _put(request, forwards)
        return original(self, request, *args, **kwargs)

    return send


def _httpx_async_send(original: Callable[..., Any], hooks: _Hooks) -> Callable[..., Any]:
    """``httpx.AsyncClient.send``: as ``Client.send``, in the task that awaits it."""

    @functools.wraps(original)
    async def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        forwards = hooks.forwards
        if forwards:
            _put(request, forwards)
        return await original(self, request, *args, **kwargs)

    return send


def _aiohttp_send(original: Callable[..., Any], hooks: _Hooks) -> Callable[..., Any]:
    """``aiohttp.ClientRequest.send``: each request (a redirect is a new one) has its final headers.

    A proxy's ``CONNECT`` is left alone: it goes to the proxy, not to the
    server, as with ``http.client``'s tunnel.
    """

    @functools.wraps(original)
    async def send(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        forwards = hooks.forwards
        if forwards and self.method != "CONNECT":
            _put(self, forwards, mark=False)  # made by the session for this one send
        return await original(self, *args, **kwargs)

    return send


_Make = Callable[[Callable[..., Any], _Hooks], Callable[..., Any]]


def _http_client_lines() -> bool:
    """Whether ``HTTPConnection`` keeps the lines put so far as ``_buffer``, a list (no connection made)."""
    return isinstance(getattr(HTTPConnection("localhost"), "_buffer", None), list)


def _installed(name: str) -> Any:
    """The module ``name``, imported now if it is installed and not yet imported; None if it is not installed.

    One that is installed but fails to import is left alone: nothing can send through it.
    """
    module = sys.modules.get(name)
    if module is None and importlib.util.find_spec(name) is not None:
        try:
            module = importlib.import_module(name)
        except ImportError:
            return None
    return module


def _targets() -> list[tuple[str, object, str, _Make, bool]]:
    """(label, owner or None, attribute, hook maker, whether async) for every client hooked now."""
    targets: list[tuple[str, object, str, _Make, bool]] = [
        ("http.client.HTTPConnection", HTTPConnection, "endheaders", _endheaders, False),
    ]
    httpx = _installed("httpx")
    if httpx is not None:
        targets.append(("httpx.Client", getattr(httpx, "Client", None), "send", _httpx_send, False))
        targets.append(
            ("httpx.AsyncClient", getattr(httpx, "AsyncClient", None), "send", _httpx_async_send, True)
        )
    aiohttp = _installed("aiohttp")
    if aiohttp is not None:
        targets.append(
            ("aiohttp.ClientRequest", getattr(aiohttp, "ClientRequest", None), "send", _aiohttp_send, True)
        )
    return targets


def _sweep(owner: type, name: str) -> None:
    """Put back what a removed installation's hook replaced, wherever one is on top again.

    That happens when another library wrapped our hook, then unwrapped it
    after our last ``undo()`` had to leave it buried (switched off).
    """
    current = vars(owner).get(name, _ABSENT)
    while isinstance(getattr(current, "_als_hooks", None), _Hooks) and current._als_hooks is not _hooks:
        held = current._als_held
        if held is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, held)
        current = held


def _install() -> _Hooks:
    """Hook every client not hooked yet (all of them on the first call); the installation."""
    global _hooks  # noqa: PLW0603 - the process-wide state, under _lock
    hooks = _Hooks() if _hooks is None else _hooks
    hooked = {(owner, name) for owner, name, _ in hooks.installed}
    todo = []
    problems = []
    for label, owner, name, make, is_async in _targets():
        if (owner, name) in hooked:
            continue
        attribute = getattr(owner, name, None) if isinstance(owner, type) else None
        if attribute is None or not callable(attribute):
            problems.append(f"no {label}.{name}" if isinstance(owner, type) else f"no {label}")
        elif is_async != inspect.iscoroutinefunction(attribute):
            problems.append(f"a {label}.{name} that is {'not ' if is_async else ''}a coroutine function")
        elif make is _endheaders and not _http_client_lines():
            problems.append("no http.client.HTTPConnection._buffer list")
        else:
            todo.append((owner, name, make))
    if problems:  # a version whose hook points moved: refuse, rather than hook half of it
        raise RuntimeError(
            f"als.web.outgoing.forward() does not know this version: it found {', '.join(problems)};"
            " nothing was hooked"
        )
    _hooks = hooks
    for owner, name, make in todo:
        assert isinstance(owner, type)
        _sweep(owner, name)
        held = vars(owner).get(name, _ABSENT)
        installed = make(getattr(owner, name), hooks)
        installed._als_hooks = hooks  # type: ignore[attr-defined]
        installed._als_held = held  # type: ignore[attr-defined]
        setattr(owner, name, installed)
        hooks.installed.append((owner, name, installed))
    return hooks


def _uninstall(hooks: _Hooks) -> None:
    """Switch every hook off, and put back what each replaced where it is still on top."""
    global _hooks  # noqa: PLW0603
    hooks.forwards = ()
    _hooks = None
    for owner, name, installed in hooks.installed:
        if vars(owner).get(name, _ABSENT) is installed:
            _sweep(owner, name)
        # else: wrapped since by another library; ours, switched off, passes calls through
    hooks.installed.clear()


def forward(storage: AsyncLocalStorage[Any], header: str = "X-Request-ID") -> Callable[[], None]:
    """Send ``storage``'s store as ``header`` with every HTTP request this process sends; returns ``undo``.

    While ``storage.get_store()`` returns a store (not its default) in the
    thread or task that sends a request, the request carries it as
    ``header``, through every client below, including clients, sessions and
    connections made before ``forward()``. The module's rules hold: only a
    safe ``str`` is sent, never twice, never over a header the request has.

    Hook points, each replaced on its class, for the whole process:

    * ``http.client.HTTPConnection.endheaders``, which puts the header unless
      the request's header lines have it. So ``http.client``,
      ``urllib.request``, ``urllib3`` (its connections subclass
      ``http.client``'s and write through them) and ``requests`` (through
      ``urllib3``), whenever they are imported. A proxy tunnel's
      ``CONNECT`` is written by ``http.client`` without it, and carries no
      id. (It reads the lines from ``HTTPConnection._buffer``: see
      ``als._util``.)
    * ``httpx.Client.send`` and ``httpx.AsyncClient.send``: the header is set
      on the ``Request``; redirects copy it.
    * ``aiohttp.ClientRequest.send``, which every ``ClientSession`` request,
      redirect and retry goes through with its final headers (an undocumented
      method: see ``als._util``). A proxy's ``CONNECT`` carries no id.

    httpx and aiohttp, if installed, are imported by ``forward()`` and
    hooked then, so the order of imports does not matter: a client imported
    after ``forward()`` is covered too. (The ``http.client`` ones are
    covered whenever they are imported.)

    Several forwards may be active at once, of different storages or
    headers, each undone by its own ``undo``. Two that send the same header
    never both send it: the earliest one with a store to send does.
    Forwarding the same storage as the same header again is allowed and
    changes nothing on the wire; the header is sent until both undos have
    run.

    ``undo()`` stops this forward, for requests whose headers are written
    after it; calling it again does nothing; it may run in any thread. The
    last one active puts back every original attribute, exactly. Where
    another library has wrapped a hook since, its wrapper stays and ours
    inside it passes every call through; once that library has unwrapped
    it, the next ``forward()`` puts the original back.

    Raises:
        TypeError: ``storage`` is not an ``AsyncLocalStorage``, or ``header`` no str.
        ValueError: ``header`` is not a valid header name.
        RuntimeError: an imported client lacks the hook point (another
            version): nothing is hooked.
    """
    entry = _Forward("forward", storage, header)
    with _lock:
        hooks = _install()
        hooks.forwards = (*hooks.forwards, entry)
    undone = False

    def undo() -> None:
        """Stop this forward; the last one active puts back every original. Idempotent."""
        nonlocal undone
        with _lock:
            if undone:
                return
            undone = True
            hooks.forwards = tuple(f for f in hooks.forwards if f is not entry)
            if not hooks.forwards:
                _uninstall(hooks)

    return undo
