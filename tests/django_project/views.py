"""Views that reach every place a request's id must be seen: threads, tasks, asgiref's bridges, chunks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.core.cache import caches
from django.core.signals import request_finished
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse

from .context import request_id, tag

log = logging.getLogger("tests.django")
# A plain pool: under als.patch() its tasks run in their submitter's context.
pool = ThreadPoolExecutor(4, thread_name_prefix="django-pool")


def _step(name: str) -> str:
    log.info("%s %s", tag.get(), name)
    return str(request_id.get_store())


def _start(request: HttpRequest, name: str) -> str:
    tag.set(name)
    return _step("view")


def _seen(request: HttpRequest, seen: list[str]) -> HttpResponse:
    """The stores each step saw, then the id in ``request.headers``: one line, ``|``-separated."""
    return HttpResponse(
        f"{'|'.join(seen)}|{request.headers.get('X-Request-ID')}\n", content_type="text/plain"
    )


def ok(request: HttpRequest, name: str) -> HttpResponse:
    seen = [_start(request, name), pool.submit(_step, "thread").result()]
    return HttpResponse(
        f"{'|'.join(seen)}|{request.headers.get('X-Request-ID')}\n", content_type="text/plain"
    )


async def aview(request: HttpRequest, name: str) -> HttpResponse:
    seen = [_start(request, name)]
    seen.append(await asyncio.create_task(_in_task()))
    seen.append(await sync_to_async(_step)("sync_to_async"))
    return HttpResponse(
        f"{'|'.join(seen)}|{request.headers.get('X-Request-ID')}\n", content_type="text/plain"
    )


async def _in_task() -> str:
    return _step("task")


def bridged(request: HttpRequest, name: str) -> HttpResponse:
    seen = [_start(request, name), async_to_sync(_in_task)()]
    return HttpResponse(
        f"{'|'.join(seen)}|{request.headers.get('X-Request-ID')}\n", content_type="text/plain"
    )


def stream(request: HttpRequest, name: str) -> StreamingHttpResponse:
    _start(request, name)

    def chunks() -> Iterator[str]:
        for n in range(3):
            yield _step(f"chunk {n}") + "\n"

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def astream(request: HttpRequest, name: str) -> StreamingHttpResponse:
    _start(request, name)

    async def chunks() -> AsyncIterator[str]:
        for n in range(3):
            await asyncio.sleep(0)  # a real suspension between chunks, not an ordering device
            yield _step(f"chunk {n}") + "\n"

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def boom(request: HttpRequest, name: str) -> HttpResponse:
    _start(request, name)
    raise RuntimeError("the view failed")


def missing(request: HttpRequest, name: str) -> HttpResponse:
    _start(request, name)
    raise Http404("no such thing")


def gone(request: HttpRequest, name: str) -> HttpResponse:
    """A 410 the view returns (not raises): Django logs it after the middleware chain, unless we do first."""
    _start(request, name)
    return HttpResponse("gone\n", status=410, content_type="text/plain")


def own_header(request: HttpRequest, name: str) -> HttpResponse:
    _start(request, name)
    response = HttpResponse("ok\n", content_type="text/plain")
    response["x-request-id"] = "set-by-the-view"
    return response


def _finished(sender: object, **kwargs: object) -> None:
    _step("finished")


request_finished.connect(_finished, dispatch_uid="als-tests-finished")


_served = iter(range(1_000_000))


def cached(request: HttpRequest, name: str) -> HttpResponse:
    """Cacheable (a plain 200 to a GET): its body counts the times the view itself ran."""
    _start(request, name)
    return HttpResponse(f"served {next(_served)}\n", content_type="text/plain")


def cache_object(request: HttpRequest, name: str) -> HttpResponse:
    """The identity of the default cache backend, as this request sees it."""
    _start(request, name)
    return HttpResponse(str(id(caches["default"])), content_type="text/plain")


def scope_header(request: HttpRequest, name: str) -> HttpResponse:
    """Under ASGI: the id header's values in the scope Django's request holds."""
    _start(request, name)
    scope: Any = getattr(request, "scope", {})
    values = [value.decode("latin-1") for key, value in scope.get("headers", ()) if key == b"x-request-id"]
    return HttpResponse(repr(values), content_type="text/plain")
