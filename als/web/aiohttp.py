"""aiohttp middleware: each request runs under its id, in aiohttp's own task for that request.

Set up with one line::

    from als.web.aiohttp import setup
    setup(app, storage)  # outermost middleware, plus an on_response_prepare handler

or listed by hand: ``web.Application(middlewares=[request_id_middleware(storage), ...])``
(then see ``RequestIdMiddleware`` for what only the ``on_response_prepare``
handler reaches).

Importing this module imports aiohttp; importing ``als.web`` does not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from als import AsyncLocalStorage
from als._util import wrong_type

from ._common import Policy, argument

__all__ = ["RequestIdMiddleware", "request_id_middleware", "setup"]

# What a middleware awaits: aiohttp.typedefs.Handler.
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Each request's ids, by middleware: one key for the module, since an aiohttp key made at run time
# may find no module frame to name it by (RequestKey's constructor looks for one). A clone shares the
# dict (clone() copies the request's state shallowly), so the server's request and the handler's agree.
# Until aiohttp 3.14 is the minimum supported version: web.RequestKey is new in 3.14, which warns
# (NotAppKeyWarning) on a request key of any other type; the releases before it take a str.
_IDS: Any = web.RequestKey("ids", dict) if hasattr(web, "RequestKey") else f"{__name__}:ids"


class RequestIdMiddleware(Policy):
    """aiohttp middleware: each request runs under its id, taken from ``header`` when safe, and returns it.

    Made by ``request_id_middleware(storage, ...)`` or ``setup(app, storage,
    ...)`` (built directly, it also takes ``label``: how its errors name the
    arguments); ``__middleware_version__ = 1`` makes it a new-style
    middleware (what ``@web.middleware`` marks). The options, their defaults
    and their checks are those of ``als.web.WSGIRequestId``.

    Context: the middleware makes the id current with
    ``storage.enter_with(id)`` in the task it is awaited in. aiohttp's server
    runs each request in a task of its own (a fresh copy of the connection
    task's context), which runs the middleware chain and the handler, then,
    in the same task, its error handling (the ``aiohttp.server`` logger's
    "Error handling request" line and its 500), ``prepare()`` of the response
    (so ``on_response_prepare`` handlers), the last write and the access log
    line (``aiohttp.access``). All of them see the id: what happens after the
    handler returned or raised needs nothing from this middleware. The task
    ends with the request, so nothing reaches the connection's task or the
    next request on a keep-alive connection. Tasks the handler starts, and
    work it hands to threads through als or, under ``als.patch()``, through
    ``loop.run_in_executor``, see the id as any context does. Awaited
    outside aiohttp's per-request task (a unit test awaiting the middleware
    directly), it leaves the id current in the caller's task, for the rest of
    that task or until the caller's enclosing ``run``/``Context.run`` ends,
    as ``ASGIRequestId`` does inside a framework.

    Incoming id: ``request.headers.getall(header)``. One value is used only
    if ``trust_incoming`` is true and it passes ``is_safe_header_value``, has
    no comma (a joined repeat), and passes ``validator`` (default
    ``is_valid_request_id``; a custom one replaces it and gets the ``str``
    aiohttp decoded; one that raises rejects the value). More than one value,
    even equal ones, is invalid. An invalid value is replaced by
    ``generator()`` with ``on_invalid="replace"``; with ``"reject"`` the
    handler (and every middleware inside this one) is not called: the
    middleware returns a 400 ``text/plain`` response whose ``header`` is a
    new id, and makes that id current, so the access line of the 400 carries
    it. A missing header is not invalid: a new id is made. The raw value is
    never echoed, logged, stored or passed on by this middleware. aiohttp
    refuses some values itself before any middleware runs (a bare CR or LF, a
    NUL or another control character, a line over its size limit): its own
    400 carries no id, and aiohttp quotes the value in that 400's body and in
    its error log.

    The handler: unless the request carries exactly one ``header`` and it is
    the id, the handler gets ``request.clone(headers=...)`` whose only
    ``header`` is the id, so ``request.headers`` (and ``raw_headers``) agree
    with ``get_store()``; every other header reaches it as aiohttp parsed it,
    in the same order (a clone needs a body nobody has read yet: keep this
    middleware outside any that reads it). The server's request object is
    not changed: an access log format that reads the request header
    (``%{X-Request-ID}i``) shows what the client sent, so log the
    response's (``%{X-Request-ID}o``), or ``%(request_id)s`` through
    ``als.logging``. The request's ids are kept
    under a private key of the request, which the clone shares, so the
    ``on_response_prepare`` handler stamps each response with its own
    request's id, never the current store.

    Response: the one the handler returns and an ``HTTPException`` it raises
    (re-raised unchanged, the same object) leave with exactly one
    ``header``, the id (replacing any the application set), if they are not
    prepared yet; the middleware does this by itself. What the middleware
    never sees needs ``on_response_prepare`` (``setup()`` connects it): a
    ``StreamResponse`` or ``WebSocketResponse`` the handler prepared itself,
    aiohttp's 500 (or 504) for an exception that came out of the chain, its
    500 for a handler that returned no response, and responses made by
    middlewares outside this one. That handler sets the header on every
    response prepared for a request this middleware ran for, replacing the
    value of any handler that ran before it; responses of requests it never
    saw (aiohttp's 400 for a request it could not parse, an ``Expect``
    refusal) are left alone. It must be outermost for the server's own 500:
    that 500 is prepared with the request aiohttp made, and a middleware
    outside this one that passes on a clone hides the ids from it. A handler
    appended to ``on_response_prepare`` after this one runs after it, and
    sees the header.

    Errors from the application pass through unchanged. A custom generator
    whose id is not a ``str``, or fails ``is_safe_header_value``, fails the
    request (aiohttp's 500, without an id) with an error naming the
    generator, never its value.
    """

    __slots__ = ()

    __middleware_version__: ClassVar[int] = 1  # aiohttp: a new-style middleware, as @web.middleware marks

    async def __call__(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Run the rest of the chain under the request's id; see the class."""
        header = self._header
        values = request.headers.getall(header, ())
        request_id = self._request_id(values[0] if values else None, len(values) > 1)
        if request_id is None:
            refused = self._generate()
            self._storage.enter_with(refused)
            self._remember(request, refused)
            return web.Response(
                status=400,
                body=self._bad_request_body(),
                content_type="text/plain",
                charset="utf-8",
                headers={header: refused},
            )
        self._storage.enter_with(request_id)
        self._remember(request, request_id)
        if len(values) != 1 or values[0] != request_id:
            request = self._with_id(request, request_id)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            # aiohttp 3's HTTPException is a Response; the server prepares it as it is.
            headers = getattr(exc, "headers", None)
            if isinstance(headers, CIMultiDict):
                headers[header] = request_id
            raise
        if isinstance(response, web.StreamResponse) and not response.prepared:
            response.headers[header] = request_id
        return response

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """An ``on_response_prepare`` handler: ``response`` gets ``request``'s id as its one ``header``.

        A response for a request this middleware did not run for is left as
        it is. ``setup()`` connects it; by hand:
        ``app.on_response_prepare.append(middleware.on_response_prepare)``.
        """
        ids = request.get(_IDS)
        if ids is not None:
            request_id = ids.get(self)
            if request_id is not None:
                response.headers[self._header] = request_id

    def _remember(self, request: web.Request, request_id: str) -> None:
        ids = request.get(_IDS)
        if ids is None:
            request[_IDS] = {self: request_id}
        else:
            ids[self] = request_id

    def _with_id(self, request: web.Request, request_id: str) -> web.Request:
        """A clone of ``request`` whose only ``header`` is ``request_id``."""
        headers = CIMultiDict(request.headers)
        headers.popall(self._header, None)
        headers[self._header] = request_id
        try:
            return request.clone(headers=headers)
        except UnicodeEncodeError:
            pass
        # Another header carries bytes that are not UTF-8: aiohttp decodes them with surrogateescape,
        # and clone(headers=) re-encodes every value as strict UTF-8, which fails. Clone as it is, then
        # give the clone our headers and the raw ones as they came, but ours.
        name = self._name
        raw = (
            *(item for item in request.raw_headers if item[0].lower() != name),
            (self._header.encode("ascii"), request_id.encode("ascii")),
        )
        clone = request.clone()
        message = request._message._replace(headers=CIMultiDictProxy(headers), raw_headers=raw)
        clone._message = message
        clone._headers = message.headers
        return clone


def request_id_middleware(
    storage: AsyncLocalStorage[Any],
    *,
    header: str = "X-Request-ID",
    trust_incoming: bool = True,
    generator: Callable[[], str] | None = None,
    validator: Callable[[str], bool] | None = None,
    on_invalid: Literal["replace", "reject"] = "replace",
) -> RequestIdMiddleware:
    """The middleware, for ``web.Application(middlewares=[...])``: first in the list is outermost.

    Alone it stamps the responses it returns or sees raised; connect its
    ``on_response_prepare`` too (or use ``setup()``) for the ones it never
    sees: see ``RequestIdMiddleware``.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a bad ``header`` or ``on_invalid``.
    """
    return RequestIdMiddleware(
        storage,
        header=header,
        trust_incoming=trust_incoming,
        generator=generator,
        validator=validator,
        on_invalid=on_invalid,
        label=argument("request_id_middleware"),
    )


def setup(
    app: web.Application,
    storage: AsyncLocalStorage[Any],
    *,
    header: str = "X-Request-ID",
    trust_incoming: bool = True,
    generator: Callable[[], str] | None = None,
    validator: Callable[[str], bool] | None = None,
    on_invalid: Literal["replace", "reject"] = "replace",
) -> RequestIdMiddleware:
    """Make ``app``'s requests run under their ids; return the middleware.

    Inserts the middleware first in ``app.middlewares`` (outermost, around
    every middleware already there or added later) and appends its
    ``on_response_prepare`` handler to ``app.on_response_prepare``. On the
    main application it covers the routes of its sub-applications too. Call
    it before the application starts, or is added as a sub-application
    (aiohttp freezes both lists then, and refuses with a ``RuntimeError``);
    nothing is changed when an argument is refused.

    Raises:
        TypeError: ``app`` is not an ``aiohttp.web.Application``, or another
            argument of the wrong type.
        ValueError: a bad ``header`` or ``on_invalid``.
    """
    if not isinstance(app, web.Application):
        raise wrong_type("setup", "app", "an aiohttp.web.Application", app)
    middleware = RequestIdMiddleware(
        storage,
        header=header,
        trust_incoming=trust_incoming,
        generator=generator,
        validator=validator,
        on_invalid=on_invalid,
        label=argument("setup"),
    )
    app.middlewares.insert(0, middleware)
    app.on_response_prepare.append(middleware.on_response_prepare)
    return middleware
