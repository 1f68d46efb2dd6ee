"""Request ids at the edge: WSGI and ASGI middleware that run each request under its id.

``WSGIRequestId(app, storage)`` and ``ASGIRequestId(app, storage)`` take the
caller's ``X-Request-ID`` when it is safe, make one otherwise, run the whole
request with it as ``storage``'s store, and send it back in the response.

Invariants:

* An incoming value is untrusted. It becomes the id only if it passes the
  safety floor (``is_safe_header_value``) and then the validator; a missing
  header is never invalid. A value that fails is dropped: it is never
  echoed, logged, stored, or passed on to the application.
* The application sees the id, and only the id, under the configured header
  name (WSGI environ, ASGI scope), so ``request.headers`` agrees with
  ``storage.get_store()``; the response carries exactly one such header, ours.
* Each request runs in its own copy of the context current when the server
  called the middleware; nothing the request sets reaches the server's
  thread or task.
* Bad configuration fails at construction; a bad id from a custom generator
  fails the request with an error naming the generator, never its value.

Uses only als's public API, its shared helpers (``als._util``) and the
standard library.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from contextvars import Context, copy_context
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, TypeVar

from . import AsyncLocalStorage
from ._util import wrong_type

__all__ = ["ASGIRequestId", "WSGIRequestId", "is_safe_header_value", "is_valid_request_id", "new_request_id"]

_App = TypeVar("_App", bound=Callable[..., Any])

# The default validator: uuids (with or without dashes), nginx's $request_id, ULIDs, X-Ray-ish ids.
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}").fullmatch
# The floor under every validator and generator: printable ASCII, no space at either end, 1024 at most.
_SAFE_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,1022}[\x21-\x7e])?").fullmatch
# RFC 9110 token.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+").fullmatch


def is_valid_request_id(value: str) -> bool:
    """The default validator: 1 to 128 characters, each a letter, digit, ``.``, ``_``, ``:`` or ``-``.

    Accepts uuids (with or without dashes) and nginx's 32-hex ``$request_id``.
    """
    return _VALID_ID(value) is not None


def is_safe_header_value(value: str) -> bool:
    """The floor every id must pass, whatever the validator or generator.

    1 to 1024 characters of printable ASCII (``\\x20``-``\\x7e``), not starting or
    ending with a space. So no id can break a response header (CR, LF), a log
    line (any control character, C1's NEL included), a terminal (escape
    sequences), or a strict HTTP server's header check (space at either end).
    """
    return _SAFE_VALUE(value) is not None


def new_request_id() -> str:
    """The default generator: 32 random hex digits (128 bits from ``os.urandom``).

    The same shape as nginx's ``$request_id`` and ``uuid.uuid4().hex``,
    without building a ``UUID``.
    """
    return os.urandom(16).hex()


class _RequestId(Generic[_App]):
    """The configuration both middlewares share, checked once, and the choice of a request's id."""

    __slots__ = (
        "__weakref__",
        "_app",
        "_generate",
        "_header",
        "_key",
        "_lower",
        "_name",
        "_reject",
        "_storage",
        "_trust",
        "_valid",
    )

    def __init__(
        self,
        app: _App,
        storage: AsyncLocalStorage[Any],
        *,
        header: str = "X-Request-ID",
        trust_incoming: bool = True,
        generator: Callable[[], str] | None = None,
        validator: Callable[[str], bool] | None = None,
        on_invalid: Literal["replace", "reject"] = "replace",
    ) -> None:
        cls = type(self).__name__
        if not callable(app):
            raise wrong_type(cls, "app", "callable", app)
        if not isinstance(storage, AsyncLocalStorage):
            raise wrong_type(cls, "storage", "an AsyncLocalStorage", storage)
        if not isinstance(header, str):
            raise wrong_type(cls, "header", "str", header)
        if _HEADER_NAME(header) is None:
            raise ValueError(
                f"{cls}() argument 'header' must be a valid HTTP header name"
                f" (letters, digits and !#$%&'*+-.^_`|~), got {header!r}"
            )
        if not isinstance(trust_incoming, bool):
            raise wrong_type(cls, "trust_incoming", "bool", trust_incoming)
        for argument, value in (("generator", generator), ("validator", validator)):
            if value is not None and not callable(value):
                raise wrong_type(cls, argument, "callable or None", value)
        if on_invalid not in ("replace", "reject"):
            raise ValueError(
                f"{cls}() argument 'on_invalid' must be 'replace' or 'reject', got {on_invalid!r}"
            )
        self._app = app
        self._storage = storage
        self._header = header
        self._lower = header.lower()
        self._key = "HTTP_" + header.upper().replace("-", "_")  # WSGI's environ key
        self._name = self._lower.encode("ascii")  # ASGI's header name
        self._trust = trust_incoming
        self._reject = on_invalid == "reject"
        self._generate = new_request_id if generator is None else _checked(cls, generator)
        self._valid = _VALID_ID if validator is None else _floored(validator)

    @property
    def app(self) -> _App:
        """The wrapped application."""
        return self._app

    @property
    def storage(self) -> AsyncLocalStorage[Any]:
        """The storage whose store is the request's id."""
        return self._storage

    @property
    def header(self) -> str:
        """The header name, as configured."""
        return self._header

    def _request_id(self, value: str | None, repeated: bool) -> str | None:
        """The id for a request whose header came as ``value``; None if it must be rejected."""
        if value is None or not self._trust:
            return self._generate()
        if not repeated and "," not in value and self._valid(value):
            return value
        return None if self._reject else self._generate()


def _checked(cls: str, generator: Callable[[], str]) -> Callable[[], str]:
    """``generator``, with each id it makes checked against the floor; its value is never shown."""

    def generate() -> str:
        request_id = generator()
        if not isinstance(request_id, str):
            raise TypeError(f"{cls}() argument 'generator' must return str, not {type(request_id).__name__}")
        if _SAFE_VALUE(request_id) is None:
            raise ValueError(
                f"{cls}() argument 'generator' returned a str that is not a safe header value"
                " (1 to 1024 printable ASCII characters, no space at either end)"
            )
        return request_id

    return generate


def _floored(validator: Callable[[str], bool]) -> Callable[[str], bool]:
    """``validator``, called only on values that pass the floor; one that raises rejects the value."""

    def valid(value: str) -> bool:
        if _SAFE_VALUE(value) is None:
            return False
        try:
            return bool(validator(value))
        except Exception:
            # Dropped, not raised: its message may quote the untrusted value
            # (int()'s does), and a raised error would take it into the logs.
            return False

    return valid


# WSGI (PEP 3333). wsgiref.types is 3.11+; these match its shapes.
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


class _StartResponse(Protocol):
    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = ..., /
    ) -> Callable[[bytes], object]: ...


_Environ = dict[str, Any]
_WSGIApp = Callable[[_Environ, _StartResponse], Iterable[bytes]]


# Responses returned as they are: iterating them runs no app code.
_RUN_NO_CODE = frozenset({list, tuple})


class WSGIRequestId(_RequestId[_WSGIApp]):
    """WSGI middleware: each request runs under its id, taken from ``header`` when safe, and returns it.

    ``app = WSGIRequestId(app, storage)``. The id is ``storage``'s store
    (a ``str``) for the whole request: the app callable, ``start_response``,
    and each step of the response iterable and its ``close()``, so a
    streaming body that logs after the app callable has returned still sees
    it. All of them run in one context, a copy of the server thread's made
    per request: what the app sets in any ``ContextVar`` is seen by later
    chunks, and nothing reaches the server's thread.

    Incoming id: ``environ["HTTP_X_REQUEST_ID"]`` for ``X-Request-ID``. It is
    used only if ``trust_incoming`` is true and it passes
    ``is_safe_header_value`` and then ``validator`` (default
    ``is_valid_request_id``; a custom one replaces it, and is called with the
    ``str`` as WSGI delivers it; one that raises rejects the value, and its
    exception, which may quote the value, is dropped). A value with a comma is how servers join a
    repeated header: it is invalid before any validator runs. An invalid
    value is replaced by ``generator()`` (default ``new_request_id``) with
    ``on_invalid="replace"``, or answered with a 400 ``text/plain`` response
    carrying a new id with ``on_invalid="reject"``, without calling the app.
    A missing header is not invalid: a new id is made. The raw value is never
    echoed, logged or passed on. Either way the id replaces the header in the
    environ, so the framework's ``request.headers`` agrees with
    ``get_store()``.

    Response: ``start_response`` gets the app's headers without any
    ``header`` the app set, plus ``(header, id)``; status and ``exc_info``
    pass through, so a 500 that a framework (Flask, Django) sends through
    ``start_response`` carries the id. An app that raises before
    ``start_response`` gets the server's own 500, which no middleware can
    reach: put this one outermost, around the framework's error handling.

    ``wsgi.file_wrapper``: a response that is an instance of that class is
    returned as it is, so the server still sends the file with ``sendfile``;
    its ``close()`` then runs outside the request (it runs no app code). A
    ``list`` or ``tuple`` is returned as it is too: iterating it runs no code.

    Raises:
        TypeError: at construction, an argument of the wrong type; in a
            request, a custom generator's id that is not a ``str``.
        ValueError: at construction, a bad ``header`` or ``on_invalid``; in a
            request, a custom generator's id that fails ``is_safe_header_value``
            (the message never shows it).
    """

    __slots__ = ()

    def __call__(self, environ: _Environ, start_response: _StartResponse) -> Iterable[bytes]:
        key = self._key
        request_id = self._request_id(environ.get(key), False)
        if request_id is None:
            return self._bad_request(start_response)
        environ[key] = request_id
        context = copy_context()
        context.run(self._storage.enter_with, request_id)
        lower = self._lower
        ours = (self._header, request_id)

        def start_response_with_id(  # exc_info by keyword too, as servers accept it
            status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            headers = [item for item in headers if item[0].lower() != lower]
            headers.append(ours)
            return start_response(status, headers, exc_info)

        response: Iterable[bytes] = context.run(self._app, environ, start_response_with_id)
        if type(response) in _RUN_NO_CODE:
            return response
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(response, file_wrapper):
            return response
        return _InContext(context, response)

    def _bad_request(self, start_response: _StartResponse) -> list[bytes]:
        body = f"Bad Request: invalid {self._header} header\n".encode("ascii")
        start_response(
            "400 Bad Request",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                (self._header, self._generate()),
            ],
        )
        return [body]


class _InContext:
    """A WSGI response iterable whose every step and ``close()`` run in the request's context."""

    __slots__ = ("_context", "_iterator", "_response")

    def __init__(self, context: Context, response: Iterable[bytes]) -> None:
        self._context = context
        self._response = response
        try:
            self._iterator = context.run(iter, response)
        except BaseException:
            # The server never gets the response, so it cannot close it: close it here.
            close = getattr(response, "close", None)
            if close is not None:
                try:
                    context.run(close)
                except Exception:  # the iter() error is the one to report
                    pass
            raise

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        close = getattr(self._response, "close", None)
        if close is not None:
            self._context.run(close)


# ASGI 3. The same shapes as Starlette's and asgiref's.
_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]

_WITH_ID = frozenset({"http", "websocket"})
_STARTS = frozenset({"http.response.start", "websocket.accept", "websocket.http.response.start"})
_TEXT = (b"content-type", b"text/plain; charset=utf-8")


class ASGIRequestId(_RequestId[_ASGIApp]):
    """ASGI 3 middleware: each http or websocket request runs under its id, taken from ``header`` when safe.

    ``app = ASGIRequestId(app, storage)``. The id is ``storage``'s store (a
    ``str``) for the whole request: the app is driven by
    ``storage.run(id, app, ...)``, so its whole body, every ``receive`` and
    ``send`` it awaits, the tasks it starts, and the work it hands to threads
    through als or through ``anyio.to_thread`` (Starlette's
    ``run_in_threadpool``) see it. The server's task keeps its own context.
    ``lifespan`` and any other scope type pass through untouched (the same
    scope object, no id).

    Incoming id: the ``header`` entries of ``scope["headers"]``, names
    compared case-insensitively. One entry, decoded as latin-1 (the ``str``
    WSGI would give), is used only if ``trust_incoming`` is true and it
    passes ``is_safe_header_value``, has no comma (a joined repeat), and
    passes ``validator`` (default ``is_valid_request_id``; a custom one
    replaces it; one that raises rejects the value). More than one entry,
    even with equal values, is invalid. An invalid value is replaced by
    ``generator()`` with ``on_invalid="replace"``;
    with ``"reject"`` the app is not called and the middleware answers a 400
    ``text/plain`` response carrying a new id, or, for a websocket, refuses
    the handshake: with that 400 if the server offers the
    ``websocket.http.response`` extension, else with ``websocket.close`` code
    1008 (the server answers 403). A missing header is not invalid. The raw
    value is never echoed, logged or passed on. The app gets a copy of the
    scope whose ``headers`` is a new list with one ``header`` entry, the id;
    the server's scope and list are not changed.

    Response: ``http.response.start``, ``websocket.accept`` and
    ``websocket.http.response.start`` go out with any ``header`` entry the
    app set replaced by one carrying the id (the name in lower case, as ASGI
    requires). Outermost (``ASGIRequestId(app, storage)``), it is outside the
    framework's error handling: Starlette's ``ServerErrorMiddleware`` (and so
    an app's own exception handler) answers through it, under the id, so the
    500 carries the id header. If the app raises in an http scope before it
    started a response, the middleware sends a plain 500 with the id itself,
    then re-raises the same exception, for the server to log; once a
    response has started, it only re-raises. Added inside a framework's app
    (Starlette's and FastAPI's ``app.add_middleware``, which the scope shows
    by naming the app in ``scope["app"]``), it leaves that 500 to the
    framework: the app's own handler answers, with its own body and no id
    header, and the id is left current in the task that called the app, so
    the handler's and the server's error lines carry it. Under an ASGI
    server that task is the request's own and ends with it; a caller that
    runs requests in a task of its own (httpx's ``ASGITransport``) keeps the
    id current there after a failed request, until its next request through
    the middleware. A ``BaseHTTPMiddleware`` between the framework's error
    handling and this one runs the app in a task of its own: the handler
    then sees no id. The middleware's own 500 and 400 are sent with their id as the
    store, as the app's responses are, so a server that logs inside ``send``
    (uvicorn's access log) shows it.

    Raises:
        TypeError: at construction, an argument of the wrong type; in a
            request, a custom generator's id that is not a ``str``.
        ValueError: at construction, a bad ``header`` or ``on_invalid``; in a
            request, a custom generator's id that fails ``is_safe_header_value``
            (the message never shows it).
    """

    __slots__ = ()

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        kind = scope["type"]
        if kind not in _WITH_ID:
            await self._app(scope, receive, send)
            return
        name = self._name
        size = len(name)  # bytes.lower() keeps the length: most names are ruled out without it
        headers: list[tuple[bytes, bytes]] = []
        value: bytes | None = None
        count = 0
        for item in scope["headers"]:
            if len(item[0]) == size and item[0].lower() == name:
                value = item[1]
                count += 1
            else:
                headers.append(item)
        request_id = self._request_id(None if value is None else value.decode("latin-1"), count > 1)
        if request_id is None:
            # Under the new id too, like every response the middleware sees:
            # a server that logs in send() (uvicorn's access log) shows it.
            refused = self._generate()
            await self._storage.run(refused, self._bad_request, scope, receive, send, refused)
            return
        ours = (name, request_id.encode("ascii"))
        headers.append(ours)
        started = False

        async def send_with_id(message: _Message) -> None:
            nonlocal started
            if message["type"] in _STARTS:
                message = {**message, "headers": _replaced(message.get("headers", ()), ours)}
                started = True  # not before: headers we cannot read leave the 500 to us
            await send(message)

        try:
            await self._storage.run(
                request_id, self._app, {**scope, "headers": headers}, receive, send_with_id
            )
        except Exception:
            if kind == "http" and not started:
                if "app" in scope:
                    # Inside a framework's app (Starlette and FastAPI name it in the scope before
                    # their middleware runs, as app.add_middleware places this one): its error
                    # handling, outside this middleware, answers with the app's own handler. The id
                    # stays current in this request's task, so that handler's lines carry it.
                    self._storage.enter_with(request_id)
                else:
                    try:
                        await self._storage.run(
                            request_id, _respond, send, 500, b"Internal Server Error\n", ours
                        )
                    except Exception:
                        pass  # the app's exception is the one to report
            raise

    async def _bad_request(self, scope: _Scope, receive: _Receive, send: _Send, request_id: str) -> None:
        ours = (self._name, request_id.encode("ascii"))
        body = f"Bad Request: invalid {self._header} header\n".encode("ascii")
        if scope["type"] == "http":
            await _respond(send, 400, body, ours)
            return
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await _respond(send, 400, body, ours, "websocket.http.response")
        else:
            await send({"type": "websocket.close", "code": 1008})


def _replaced(headers: Iterable[tuple[bytes, bytes]], ours: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """``headers`` without any entry named as ``ours``, then ``ours``."""
    name = ours[0]
    size = len(name)
    kept = [item for item in headers if len(item[0]) != size or item[0].lower() != name]
    kept.append(ours)
    return kept


async def _respond(
    send: _Send, status: int, body: bytes, ours: tuple[bytes, bytes], prefix: str = "http.response"
) -> None:
    headers = [_TEXT, (b"content-length", str(len(body)).encode("ascii")), ours]
    await send({"type": f"{prefix}.start", "status": status, "headers": headers})
    await send({"type": f"{prefix}.body", "body": body})
