"""Static checks of als.web: run by ``mypy --strict``, never executed.

The middlewares accept applications typed as typeshed's WSGI types (what
Flask and Werkzeug use) and as Starlette's ASGI types, and are such
applications themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any

from typing_extensions import assert_type

from als import AsyncLocalStorage
from als.web import ASGIRequestId, WSGIRequestId, is_safe_header_value, is_valid_request_id, new_request_id

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

# Starlette's aliases (starlette/types.py).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def wsgi_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b""]


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})


def wsgi(storage: AsyncLocalStorage[str | None]) -> None:
    app = WSGIRequestId(wsgi_app, storage, header="X-Correlation-ID", on_invalid="reject")
    assert_type(app, WSGIRequestId)
    served: WSGIApplication = app
    del served
    WSGIRequestId(WSGIRequestId(wsgi_app, storage), storage, generator=new_request_id)
    WSGIRequestId(wsgi_app, storage, validator=is_valid_request_id)
    WSGIRequestId(wsgi_app, storage, validator=lambda value: is_safe_header_value(value) and len(value) < 64)

    WSGIRequestId(wsgi_app, storage, on_invalid="drop")  # type: ignore[arg-type]
    WSGIRequestId(wsgi_app, storage, "X-Id")  # type: ignore[call-arg]
    WSGIRequestId(wsgi_app, storage, header=b"X-Id")  # type: ignore[arg-type]
    WSGIRequestId(wsgi_app, storage, generator=lambda: 1)  # type: ignore[arg-type, return-value]
    WSGIRequestId(asgi_app, storage)  # type: ignore[arg-type]


def asgi(storage: AsyncLocalStorage[str]) -> None:
    app = ASGIRequestId(asgi_app, storage, trust_incoming=False)
    assert_type(app, ASGIRequestId)
    served: ASGIApp = app
    ASGIRequestId(served, storage)

    ASGIRequestId(asgi_app, storage, on_invalid="ignore")  # type: ignore[arg-type]
    ASGIRequestId(asgi_app, storage, trust_incoming="no")  # type: ignore[arg-type]
    ASGIRequestId(wsgi_app, storage)  # type: ignore[arg-type]
