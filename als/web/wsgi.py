"""WSGI (PEP 3333) middleware: each request runs under its id, in one context for its whole life.

Re-exported by ``als.web``; see ``WSGIRequestId``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextvars import Context, copy_context
from types import TracebackType
from typing import Any, Protocol

from ._common import Wrapper

__all__ = ["WSGIRequestId"]


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


class WSGIRequestId(Wrapper[_WSGIApp]):
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
        body = self._bad_request_body()
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
