"""ASGI 3 middleware: each http or websocket request runs under its id.

Re-exported by ``als.web``; see ``ASGIRequestId``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from contextvars import copy_context
from types import CoroutineType
from typing import Any

from als._context import ContextCoroutine

from ._common import Wrapper

__all__ = ["ASGIRequestId"]


# ASGI 3. The same shapes as Starlette's and asgiref's.
_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]
_Header = tuple[bytes, bytes]

_WITH_ID = frozenset({"http", "websocket"})
_STARTS = frozenset({"http.response.start", "websocket.accept", "websocket.http.response.start"})
_TEXT = (b"content-type", b"text/plain; charset=utf-8")


class ASGIRequestId(Wrapper[_ASGIApp]):
    """ASGI 3 middleware: each http or websocket request runs under its id, taken from ``header`` when safe.

    ``app = ASGIRequestId(app, storage)``. The id is ``storage``'s store (a
    ``str``) for the whole request: the app runs as under
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
        headers = list(scope["headers"])  # a new list: the server's is not changed
        found: list[bytes] = []
        for item in headers:
            if len(key := item[0]) == size and key.lower() == name:
                headers, found = _split(headers, name)
                break
        if not found:
            request_id = self._generate()  # what _request_id(None, False) returns, without the call
        else:
            value = found[0].decode("latin-1")
            chosen = self._request_id(value, len(found) > 1)
            if chosen is None:
                # Under the new id too, like every response the middleware sees:
                # a server that logs in send() (uvicorn's access log) shows it.
                refused = self._generate()
                await self._storage.run(refused, self._bad_request, scope, receive, send, refused)
                return
            request_id = chosen
        ours = (name, request_id.encode("ascii"))
        headers.append(ours)
        inner = scope.copy() if type(scope) is dict else {**scope}
        inner["headers"] = headers
        started = False

        # A plain function returning the server's awaitable: no coroutine of ours per message.
        def send_with_id(message: _Message) -> Awaitable[None]:
            nonlocal started
            if message["type"] in _STARTS:
                kept = list(message.get("headers", ()))
                for item in kept:
                    if len(key := item[0]) == size and key.lower() == name:
                        kept = _split(kept, name)[0]
                        break
                kept.append(ours)
                message = message.copy() if type(message) is dict else {**message}
                message["headers"] = kept
                started = True  # not before: headers we cannot read leave the 500 to us
            return send(message)

        try:
            # What storage.run(request_id, self._app, ...) does, without its checks of fn and args.
            context = copy_context()
            context.run(self._storage.enter_with, request_id)
            app = context.run(self._app, inner, receive, send_with_id)
            if type(app) is CoroutineType or isinstance(app, Coroutine):
                await ContextCoroutine(context, app)
            else:
                await app  # another awaitable: only what the call started carries the id, as with run()
        except Exception:
            if kind == "http" and not started:
                await self._failed_before_start(scope, send, request_id, ours)
            raise

    async def _failed_before_start(self, scope: _Scope, send: _Send, request_id: str, ours: _Header) -> None:
        """The app raised in an http scope before it started a response: a 500, or the framework's turn."""
        if "app" in scope:
            # Inside a framework's app (Starlette and FastAPI name it in the scope before
            # their middleware runs, as app.add_middleware places this one): its error
            # handling, outside this middleware, answers with the app's own handler. The id
            # stays current in this request's task, so that handler's lines carry it.
            self._storage.enter_with(request_id)
            return
        try:
            await self._storage.run(request_id, _respond, send, 500, b"Internal Server Error\n", ours)
        except Exception:
            pass  # the app's exception is the one to report

    async def _bad_request(self, scope: _Scope, receive: _Receive, send: _Send, request_id: str) -> None:
        ours = (self._name, request_id.encode("ascii"))
        body = self._bad_request_body()
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


def _split(headers: list[_Header], name: bytes) -> tuple[list[_Header], list[bytes]]:
    """``headers`` without the entries named ``name`` (lower case), and their values, in order.

    The slow path, for a list known to hold one: the callers' own loops rule out the
    usual case, no such entry, without a call.
    """
    size = len(name)
    kept: list[_Header] = []
    found: list[bytes] = []
    for item in headers:
        if len(key := item[0]) == size and key.lower() == name:
            found.append(item[1])
        else:
            kept.append(item)
    return kept, found


async def _respond(
    send: _Send, status: int, body: bytes, ours: _Header, prefix: str = "http.response"
) -> None:
    headers = [_TEXT, (b"content-length", str(len(body)).encode("ascii")), ours]
    await send({"type": f"{prefix}.start", "status": status, "headers": headers})
    await send({"type": f"{prefix}.body", "body": body})
