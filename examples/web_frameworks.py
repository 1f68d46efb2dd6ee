"""The id at every web edge: a Django app and an aiohttp app take it in, log it, and pass it on.

Both call an "inventory" service (the standard library's HTTP server, here in the
same process) with an HTTP client of their own, `requests` from Django and
`httpx` from aiohttp, and neither sets any header: `als.web.forward(storage)`
sends the id along. Each app gets two requests, one carrying an id of its own,
one carrying a value that is not an id, which is replaced (by a counter here, so
that the output is the same on every run). Every line shows the id current
where it was logged, or "-" where there is none (the inventory is another
service: it only reports the header it received).

    pip install -e '.[examples]' && python examples/web_frameworks.py
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from wsgiref.simple_server import WSGIRequestHandler, make_server

import django
import httpx
import requests
from aiohttp import web
from django.conf import settings

import als
from als.logging import install_record_factory
from als.web import forward

storage: als.AsyncLocalStorage[str] = als.AsyncLocalStorage(name="request_id")
log = logging.getLogger("app")
lines: list[str] = []


class Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        lines.append(self.format(record))


# --- The service both apps call --------------------------------------------------------------------


class Inventory(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        log.info("inventory got X-Request-ID: %s", self.headers.get("X-Request-ID"))
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"12\n")

    def log_message(self, *args: object) -> None:
        pass


# --- Django: one MIDDLEWARE entry and a settings dict ------------------------------------------------


def counter(prefix: str) -> Callable[[], str]:
    """A generator of ids: ``prefix-1``, ``prefix-2``... (the default makes 32 random hex digits)."""
    numbers = itertools.count(1)
    return lambda: f"{prefix}-{next(numbers)}"


def django_app(inventory: str) -> object:
    settings.configure(
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["127.0.0.1"],
        MIDDLEWARE=["als.web.django.RequestIdMiddleware"],
        ALS_REQUEST_ID={"storage": storage, "generator": counter("django")},
        LOGGING={"version": 1, "disable_existing_loggers": False},
    )
    django.setup()
    from django.core.signals import request_finished  # noqa: PLC0415 - Django wants its settings first
    from django.core.wsgi import get_wsgi_application  # noqa: PLC0415
    from django.http import HttpRequest, HttpResponse  # noqa: PLC0415
    from django.urls import path  # noqa: PLC0415

    def order(request: HttpRequest) -> HttpResponse:
        log.info("django view: order received")
        stock = requests.get(inventory, timeout=10).text.strip()
        return HttpResponse(f"in stock: {stock}\n")

    request_finished.connect(lambda sender, **kwargs: log.info("django: request finished"), weak=False)
    globals()["urlpatterns"] = [path("order", order)]
    return get_wsgi_application()


# --- aiohttp: setup(app, storage) ------------------------------------------------------------------------


def aiohttp_app(inventory: str) -> web.Application:
    from als.web.aiohttp import setup  # noqa: PLC0415

    async def order(request: web.Request) -> web.Response:
        log.info("aiohttp handler: order received")
        async with httpx.AsyncClient() as client:
            stock = (await client.get(inventory)).text.strip()
        return web.Response(text=f"in stock: {stock}\n")

    app = web.Application()
    app.router.add_get("/order", order)
    setup(app, storage, generator=counter("aiohttp"))
    return app


async def serve_aiohttp(app: web.Application, sent: list[str | None]) -> list[str]:
    runner = web.AppRunner(app, access_log_format='"%r" %s')
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    answers = []
    async with httpx.AsyncClient() as client:
        for incoming in sent:
            headers = {} if incoming is None else {"X-Request-ID": incoming}
            response = await client.get(f"http://127.0.0.1:{port}/order", headers=headers)
            answers.append(response.headers["X-Request-ID"])
    await runner.cleanup()
    return answers


class Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def main() -> int:
    handler = Keep()
    handler.setFormatter(logging.Formatter("%(request_id)-12s %(message)s"))
    for name in ("app", "aiohttp.access"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    install_record_factory(storage)
    undo = forward(storage)

    downstream = ThreadingHTTPServer(("127.0.0.1", 0), Inventory)
    threading.Thread(target=downstream.serve_forever, daemon=True).start()
    inventory = f"http://127.0.0.1:{downstream.server_port}/stock"
    sent = ["order-17", "not an id!"]

    server = make_server("127.0.0.1", 0, django_app(inventory), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("Django behind als.web.django.RequestIdMiddleware, requests forwarding the id:")
    answers = []
    for incoming in sent:
        headers = {} if incoming is None else {"X-Request-ID": incoming}
        response = requests.get(f"http://127.0.0.1:{server.server_port}/order", headers=headers, timeout=10)
        answers.append(response.headers["X-Request-ID"])
    server.shutdown()
    django_lines = list(lines)
    print(*django_lines, sep="\n")

    print("\naiohttp behind als.web.aiohttp.setup, httpx forwarding the id:")
    lines.clear()
    answers += asyncio.run(serve_aiohttp(aiohttp_app(inventory), sent))
    print(*lines, sep="\n")
    downstream.shutdown()
    undo()

    print("\nresponses carried back:", ", ".join(answers))
    ok = answers == ["order-17", "django-1", "order-17", "aiohttp-1"]
    ok &= django_lines == expected("django view: order received", "django: request finished", answers[:2])
    ok &= lines == expected("aiohttp handler: order received", '"GET /order HTTP/1.1" 200', answers[2:])
    print(
        "OK: each request's lines, its response and the inventory's header carry one id" if ok else "MISMATCH"
    )
    return 0 if ok else 1


def expected(first: str, last: str, ids: list[str]) -> list[str]:
    """Each request's three lines, in order: its own id on its own lines, and as the header sent on."""
    return [
        line
        for rid in ids
        for line in (
            f"{rid:<12} {first}",
            f"{'-':<12} inventory got X-Request-ID: {rid}",
            f"{rid:<12} {last}",
        )
    ]


if __name__ == "__main__":
    sys.exit(main())
