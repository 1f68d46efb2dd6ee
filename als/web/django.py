"""Django middleware: a ``MIDDLEWARE`` entry that runs each request, to its last byte, under its id.

Configured in settings::

    MIDDLEWARE = ["als.web.django.RequestIdMiddleware", ...]  # first: outermost
    ALS_REQUEST_ID = {"storage": "myproject.context.request_id"}

Importing this module imports Django (and asgiref, which Django requires);
importing ``als.web`` does not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import Context, copy_context
from functools import partial
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django import conf
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBadRequest
from django.http.response import HttpResponseBase
from django.utils.log import log_response
from django.utils.module_loading import import_string

from als._context import ContextCoroutine

from ._common import Policy

__all__ = ["RequestIdMiddleware"]

_SETTING = "ALS_REQUEST_ID"  # the name of the settings dict RequestIdMiddleware reads

# The options of the dict; each as als.web's middlewares take it. Dotted paths are imported.
_IMPORTED = ("storage", "generator", "validator")
_OPTIONS = frozenset({*_IMPORTED, "header", "trust_incoming", "on_invalid"})


def _label(name: str) -> str:
    return f"settings.{_SETTING}[{name!r}]"


def _configured() -> dict[str, Any]:
    """The settings dict as ``Policy``'s keyword arguments, dotted paths imported."""
    options = getattr(conf.settings, _SETTING, None)
    if options is None:
        raise ImproperlyConfigured(
            f"als.web.django.RequestIdMiddleware needs settings.{_SETTING},"
            ' a dict with at least "storage": an AsyncLocalStorage or the dotted path to one'
        )
    if not isinstance(options, dict):
        raise ImproperlyConfigured(f"settings.{_SETTING} must be a dict, not {type(options).__name__}")
    unknown = sorted(map(repr, options.keys() - _OPTIONS))
    if unknown:
        raise ImproperlyConfigured(
            f"settings.{_SETTING} has unknown keys {', '.join(unknown)};"
            f" the keys are {', '.join(sorted(_OPTIONS))}"
        )
    if "storage" not in options:
        raise ImproperlyConfigured(
            f'settings.{_SETTING} needs "storage": an AsyncLocalStorage or the dotted path to one'
        )
    resolved = dict(options)
    for name in _IMPORTED:
        path = resolved.get(name)
        if isinstance(path, str):
            try:
                resolved[name] = import_string(path)
            except (ImportError, ValueError) as exc:  # ValueError: a relative or empty module name
                raise ImproperlyConfigured(f"{_label(name)} = {path!r} cannot be imported: {exc}") from exc
    return resolved


class RequestIdMiddleware(Policy):
    """Django middleware: the whole request runs under its id, taken from ``header`` when safe.

    List it first in ``MIDDLEWARE``, so that it is outermost, and configure
    it with ``settings.ALS_REQUEST_ID``, a dict: ``"storage"`` (required: an
    ``AsyncLocalStorage`` or the dotted path to one), and optionally
    ``"header"``, ``"trust_incoming"``, ``"generator"``, ``"validator"`` (each
    a callable or the dotted path to one) and ``"on_invalid"``, with the
    meanings and defaults of ``als.web.WSGIRequestId``'s arguments. Django
    makes its middleware when the handler starts: a missing or bad setting,
    an unknown key or a path that does not import is an
    ``ImproperlyConfigured`` then, naming the key.

    Incoming id: ``request.META["HTTP_X_REQUEST_ID"]`` for ``X-Request-ID``,
    under the rules of ``als.web`` (untrusted: used only if ``trust_incoming``
    and it passes ``is_safe_header_value``, has no comma, which is how servers
    join a repeated header, and passes the validator; otherwise replaced by a
    new id, or with ``"on_invalid": "reject"`` answered with a 400
    ``text/plain`` response under a new id, without calling the view). The raw
    value is never echoed, logged or passed on: the id (when refused, the new
    one) replaces it in ``request.META`` and, under ASGI, in a copy of
    ``request.scope``, so ``request.headers``, and anything that reads the
    request (a log record's ``request``, an error reporter), agree with
    ``get_store()``.

    Under the id: every middleware after this one, the view, exception
    handling and the 500 page Django renders, Django's "Not Found: ..." and
    "Internal Server Error: ..." log lines (for a response of 400 or more that
    Django has not logged yet, this middleware makes Django's own log call
    itself, under the id; Django then skips it), each chunk of a
    ``StreamingHttpResponse`` (sync or async iterator) and the response's
    ``close()``, so ``request_finished`` receivers too. All of them run in one
    context, a copy of the one the handler called the middleware in, made per
    request: what the view sets in any ``ContextVar`` is seen by later chunks
    and by ``close()``; nothing reaches the server's thread or task. Threads
    (under ``als.patch()`` or the wrappers), ``sync_to_async`` and
    ``async_to_sync`` carry the id, as they carry any context. Outside it:
    ``request_started`` receivers and the server's own access line, which run
    before and after the middleware (gunicorn's ``access_log_format`` can show
    the response header with ``%({x-request-id}o)s``); and, under ASGI, what
    Django does for a client that went away: ``request_finished`` when it
    left before the response, and the clean-up of an async stream it left in
    the middle of, which runs when the stream is collected.

    Django's cache backends (an asgiref ``Local``, which each context copies
    on write) are made in the worker thread's own context before the
    request's copy, so requests share them as they do without this
    middleware; under ASGI each request makes its own, as Django does.

    Sync and async capable: under an ASGI handler with an async chain, the
    middleware is a coroutine function and awaits the chain in that context.

    Response: exactly one ``header``, the id, set last (replacing one the view
    set). A ``FileResponse`` of an OS file (one with a ``fileno()``) is not
    wrapped, since reading it runs no app code, so servers still send it
    with ``sendfile``; its ``close()`` is. One of any other file-like object
    reads under the id. The response still pickles (Django's cache
    middleware), as a plain one.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        if not callable(get_response):
            raise TypeError(
                f"RequestIdMiddleware() argument 'get_response' must be callable,"
                f" not {type(get_response).__name__}"
            )
        options = _configured()
        try:
            super().__init__(**options, label=_label)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(str(exc)) from None
        self._get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self._acall(request)
        # Django's caches live in an asgiref Local that each context copies on write: made in the
        # request's copy, a cache backend (a Redis client and its pool) would be made anew for every
        # request. Made here first, in the worker thread's own context, every request shares it.
        for alias in conf.settings.CACHES:
            caches[alias]
        context, request_id = self._start(request)
        response = self._refused() if request_id is None else context.run(self._get_response, request)
        if response.status_code >= 400:
            context.run(_log, response, request)
        return self._finished(context, response)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        context, request_id = self._start(request)
        if request_id is None:
            response = self._refused()
        else:
            response = await ContextCoroutine(context, context.run(self._get_response, request))
        if response.status_code >= 400:
            # Off the event loop, as Django logs these.
            await sync_to_async(context.run, thread_sensitive=False)(_log, response, request)
        return self._finished(context, response)

    def _start(self, request: HttpRequest) -> tuple[Context, str | None]:
        """The request's context, its id current there; the id is None if the request must be refused.

        Either way the header's value in the request becomes the id (or, refused, the new one), so that
        nothing that reads the request (a log record's ``request``, an error reporter) sees the raw value.
        """
        key = self._key
        request_id = self._request_id(request.META.get(key), False)
        shown = self._generate() if request_id is None else request_id
        request.META[key] = shown
        request.__dict__.pop("headers", None)  # a cached request.headers would show the old value
        scope = getattr(request, "scope", None)  # ASGI: the scope's headers too, in a copy of it
        if isinstance(scope, dict) and "headers" in scope:
            name = self._name
            headers = [item for item in scope["headers"] if bytes(item[0]).lower() != name]
            headers.append((name, shown.encode("ascii")))
            request.scope = {**scope, "headers": headers}
        context = copy_context()
        context.run(self._storage.enter_with, shown)
        return context, request_id

    def _refused(self) -> HttpResponseBase:
        """The 400 for a request whose id is invalid (sent under the new id ``_start`` chose)."""
        return HttpResponseBadRequest(self._bad_request_body(), content_type="text/plain; charset=utf-8")

    def _finished(self, context: Context, response: HttpResponseBase) -> HttpResponseBase:
        """``response`` with the id as its header, its later steps (chunks, ``close()``) in ``context``."""
        response.headers[self._header] = context.run(self._storage.get_store)
        file = getattr(response, "file_to_stream", None)
        if getattr(response, "streaming", False) and not _is_os_file(file):
            streaming: Any = response
            content = streaming.streaming_content
            streaming.streaming_content = (
                _AsyncChunks(context, content) if streaming.is_async else _Chunks(context, content)
            )
        # An instance attribute: servers (and Django's file wrapper path) call response.close().
        close = response.__dict__.get("close")
        if isinstance(close, _CloseIn):
            close = close.wrapped  # a response served again: closed in this request's context
        response.close = _CloseIn(context, response, close)
        return response


def _is_os_file(file: object) -> bool:
    """Whether ``file`` is an open OS file, which a server may ``sendfile``: reading it runs no code."""
    try:
        return isinstance(file.fileno(), int)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the last two
        return False


class _CloseIn:
    """A response's ``close()``, run in its request's context; pickled (Django's cache) as the plain one."""

    __slots__ = ("_context", "_response", "wrapped")

    def __init__(
        self, context: Context, response: HttpResponseBase, close: Callable[[], None] | None
    ) -> None:
        self._context = context
        self._response = response
        self.wrapped = close  # another wrapper set on the instance before ours, if any

    def __call__(self) -> None:
        if self.wrapped is None:
            self._context.run(type(self._response).close, self._response)
        else:
            self._context.run(self.wrapped)

    def __reduce__(self) -> tuple[Any, ...]:
        # A Context cannot be pickled; a cached response needs no request's context.
        return (partial, (type(self._response).close, self._response))


def _log(response: HttpResponseBase, request: HttpRequest) -> None:
    """Django's own log line for an error response; it marks the response, so Django skips it later."""
    log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)


class _Chunks:
    """A sync iterator whose every step runs in the request's context."""

    __slots__ = ("_context", "_iterator")

    def __init__(self, context: Context, iterable: Iterator[bytes]) -> None:
        self._context = context
        self._iterator = iter(iterable)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return self._context.run(next, self._iterator)


class _AsyncChunks:
    """An async iterator whose every step runs in the request's context."""

    __slots__ = ("_context", "_iterator")

    def __init__(self, context: Context, iterable: AsyncIterator[bytes]) -> None:
        self._context = context
        self._iterator = aiter(iterable)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        return ContextCoroutine(self._context, _next_chunk(self._iterator))


async def _next_chunk(iterator: AsyncIterator[bytes]) -> bytes:
    return await anext(iterator)
