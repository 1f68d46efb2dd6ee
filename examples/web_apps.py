"""Request ids at the edge: a Flask app (WSGI) and a Starlette app (ASGI), each behind als.web.

Each request gets an id from its ``X-Request-ID`` header when that is safe, or
a new one; the whole request runs under it and the response carries it back.
The log calls know nothing of ids: ``als.logging.install_record_factory``
puts ``storage.get_store()`` into every record as ``%(request_id)s``.

* Flask, served by the standard library's threading WSGI server: the view
  fans out to a plain ``ThreadPoolExecutor`` (``als.patch()`` carries the id
  into it) and streams its body, logging after the view has returned.
* Starlette, served by uvicorn: an async endpoint that hands work to
  Starlette's thread pool, a sync endpoint (which Starlette runs in that
  pool), a background task that logs after the response is sent, and an
  endpoint that raises (its 500 carries the id too).

    pip install -e '.[examples]'
    python examples/web_apps.py

It serves both apps on free ports of 127.0.0.1, sends concurrent requests (some
with an id of their own, one with a value that is not a valid id), prints every
log line, then checks that each line carries its own request's id, the id the
client got back, and exits 1 if one does not.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import uvicorn
from flask import Flask, Response
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import als
from als.logging import install_record_factory
from als.web import ASGIRequestId, WSGIRequestId, is_valid_request_id

storage: als.AsyncLocalStorage[str] = als.AsyncLocalStorage(name="request_id")
log = logging.getLogger("shop")
FORMAT = "%(request_id)-32s %(client)-10s %(message)-22s [%(threadName)s]"
LINE = re.compile(r"(?P<id>\S+) +(?P<client>\S+) +(?P<message>.+?) +\[(?P<thread>[^]]+)\]")


class KeepLines(logging.Handler):
    """Keeps each formatted line, for the check."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def step(client: str, what: str) -> str:
    """A blocking piece of a request, run on a pool's thread."""
    log.info(what, extra={"client": client})
    return f"{what}: done\n"


# --- WSGI: Flask ----------------------------------------------------------

flask_app = Flask("shop")
pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pool")


@flask_app.get("/order/<client>")
def order(client: str) -> Response:
    log.info("order received", extra={"client": client})
    # A plain pool and a plain submit(): als.patch() copies the context.
    futures = [pool.submit(step, client, what) for what in ("charge card", "reserve stock")]
    parts = [future.result() for future in futures]

    def body() -> Iterator[str]:
        # Runs after order() has returned, as the server sends each chunk.
        for part in parts:
            log.info("streaming a chunk", extra={"client": client})
            yield part

    return Response(body(), mimetype="text/plain")


wsgi_app = WSGIRequestId(flask_app, storage)


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default of 5 drops connections in a burst


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # the access log is the app's business here


# --- ASGI: Starlette ------------------------------------------------------


async def async_order(request: Request) -> PlainTextResponse:
    client = request.path_params["client"]
    log.info("order received", extra={"client": client})
    await asyncio.sleep(0)
    part = await run_in_threadpool(step, client, "charge card")  # anyio's thread pool
    done = BackgroundTask(log.info, "background task", extra={"client": client})
    return PlainTextResponse(part, background=done)


def sync_order(request: Request) -> PlainTextResponse:
    # A sync endpoint: Starlette runs it in its thread pool.
    client = request.path_params["client"]
    return PlainTextResponse(step(client, "sync endpoint"))


async def boom(request: Request) -> PlainTextResponse:
    log.info("about to fail", extra={"client": request.path_params["client"]})
    raise RuntimeError("this endpoint always fails")


starlette_app = Starlette(
    routes=[
        Route("/order/{client}", async_order),
        Route("/sync/{client}", sync_order),
        Route("/boom/{client}", boom),
    ]
)
# Outermost, outside Starlette's error middleware: the 500 of /boom carries the id.
asgi_app = ASGIRequestId(starlette_app, storage)


# (client tag, path, incoming X-Request-ID or None): the tag lets the check
# tell a right id from a wrong one, as the server logs it next to the id.
Sent = tuple[str, str, "str | None"]
NGINX_ID = "7f3a9c2e4b1d8f6a0c5e2b9d4a7f1c3e"  # what nginx's $request_id looks like
WSGI_REQUESTS: list[Sent] = [
    *((f"flask-{n}", f"/order/flask-{n}", None) for n in range(4)),
    ("flask-own", "/order/flask-own", NGINX_ID),
    ("flask-bad", "/order/flask-bad", "x" * 200),  # too long: replaced
]
ASGI_REQUESTS: list[Sent] = [
    *((f"async-{n}", f"/order/async-{n}", None) for n in range(3)),
    ("async-own", "/order/async-own", "edge:4b1d-77"),
    ("sync-0", "/sync/sync-0", None),
    ("sync-bad", "/sync/sync-bad", "not an id"),  # spaces: replaced
    ("boom-0", "/boom/boom-0", None),
]
# What each request logs, by the client tag's prefix.
FLASK_LINES = ["order received", "charge card", "reserve stock", "streaming a chunk", "streaming a chunk"]
EXPECTED = {
    "flask": FLASK_LINES,
    "async": ["order received", "charge card", "background task"],
    "sync": ["sync endpoint"],
    "boom": ["about to fail"],
}


# --- Running them ---------------------------------------------------------


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections wait in the backlog until the server accepts them
    return sock


def serve_wsgi() -> tuple[int, Callable[[], None]]:
    """Serve ``wsgi_app`` on a thread; return its port and a function that stops it."""
    server = make_server("127.0.0.1", 0, wsgi_app, ThreadingWSGIServer, QuietHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="wsgi-server")
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join()
        server.server_close()

    return server.server_port, stop


def serve_asgi() -> tuple[int, Callable[[], None]]:
    """Serve ``asgi_app`` with uvicorn on a thread; return its port and a function that stops it."""
    sock = listening_socket()
    # uvicorn logs the traceback of /boom itself, after the request: kept off this output.
    config = uvicorn.Config(asgi_app, log_level="critical", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="asgi-server")
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join()
        sock.close()

    return sock.getsockname()[1], stop


def fire(port: int, requests: list[Sent]) -> dict[str, tuple[int, str]]:
    """Send every ``(client, path, incoming id)`` at once; return each client's status and id back."""
    barrier = threading.Barrier(len(requests), timeout=30)

    def one(request: Sent) -> tuple[str, tuple[int, str]]:
        client, path, incoming = request
        connection = HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            barrier.wait()  # all requests in flight together
            connection.request("GET", path, headers={} if incoming is None else {"X-Request-ID": incoming})
            response = connection.getresponse()
            response.read()
            return client, (response.status, response.headers.get("X-Request-ID", ""))
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(requests)) as clients:
        return dict(clients.map(one, requests))


def check(lines: list[str], requests: list[Sent], answers: dict[str, tuple[int, str]]) -> list[str]:
    """Every problem found: a line with no id or another request's, a lost or wrongly kept id."""
    problems: list[str] = []
    seen: dict[str, list[tuple[str, str]]] = {}
    for line in lines:
        match = LINE.fullmatch(line)
        if match is None:
            problems.append(f"unparsable log line: {line!r}")
            continue
        seen.setdefault(match["client"], []).append((match["id"], match["message"]))
    owners: dict[str, str] = {}
    for client, _path, incoming in requests:
        _status, request_id = answers[client]
        ids = {request_id for request_id, _ in seen.get(client, [])}
        messages = sorted(message for _, message in seen.get(client, []))
        expected = sorted(EXPECTED[client.partition("-")[0]])
        if messages != expected:
            problems.append(f"{client}: logged {messages}, expected {expected}")
        if ids != {request_id}:
            problems.append(f"{client}: got id {request_id!r} back but its lines carry {sorted(ids)}")
        if incoming is not None and is_valid_request_id(incoming) != (request_id == incoming):
            problems.append(f"{client}: sent {incoming!r} and got {request_id!r} back")
        if request_id in owners:
            problems.append(f"{owners[request_id]} and {client} share id {request_id}")
        owners[request_id] = client
    return problems


def run(
    title: str, serve: Callable[[], tuple[int, Callable[[], None]]], requests: list[Sent], kept: KeepLines
) -> list[str]:
    port, stop = serve()
    print(f"{title} on 127.0.0.1:{port}: {len(requests)} concurrent requests\n", flush=True)
    try:
        answers = fire(port, requests)
    finally:
        stop()
    print()
    for client, (status, request_id) in sorted(answers.items()):
        print(f"  {client:<10} HTTP {status}  X-Request-ID: {request_id}")
    print(flush=True)
    return check(kept.lines, requests, answers)


def main() -> int:
    kept = KeepLines()
    install_record_factory(storage, field="request_id", default="-")
    printed = logging.StreamHandler(sys.stdout)
    printed.setFormatter(logging.Formatter(FORMAT))
    for handler in (printed, kept):
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    als.patch()

    problems = run("Flask behind WSGIRequestId, wsgiref's threading server", serve_wsgi, WSGI_REQUESTS, kept)
    kept.lines.clear()
    problems += run("Starlette behind ASGIRequestId, uvicorn", serve_asgi, ASGI_REQUESTS, kept)
    for problem in problems:
        print(f"MISMATCH: {problem}")
    if problems:
        return 1
    print("OK: every log line carries its own request's id, the one its response carried back.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
