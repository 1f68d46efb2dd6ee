"""als.web under a real ASGI server: uvicorn serving the example's Starlette app behind ASGIRequestId.

Each server runs in this process, on a thread, on a socket the test bound and listens on itself: connections
wait in its backlog until uvicorn accepts them, so nothing waits for startup. Every server is stopped
(``should_exit``) and its thread, and every thread it started (anyio's workers), joined with a bound, even
when a test fails.

uvicorn runs with its h11 protocol (httptools is not installed, so ``http="auto"`` is h11 too) and no
websocket library (neither ``websockets`` nor ``wsproto`` is installed): websockets through a real server
are not covered here; tests/test_web.py covers the middleware's websocket messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.middleware import Middleware

import als
from als.web import ASGIRequestId, is_valid_request_id

from . import helpers
from .helpers import TIMEOUT, Worker, every_record, join_all, load_example
from .test_web import HOSTILE, NGINX, UUID, assert_nowhere

web_apps = load_example("web_apps")
storage: als.AsyncLocalStorage[str] = web_apps.storage

ID = b"x-request-id"
HEX32 = re.compile(r"[0-9a-f]{32}").fullmatch
# The example's endpoints, by the client-tag prefix its check() reads (web_apps.EXPECTED: what each logs).
ROUTES = {"async": "/order", "sync": "/sync", "boom": "/boom"}
STATUS = {"async": 200, "sync": 200, "boom": 500}
# Loggers whose records the tests read; uvicorn's default log config (which the example's serve_asgi()
# applies) stops "uvicorn" and "uvicorn.access" propagating, so the fixture makes them propagate for a test.
LOGGERS = ("shop", "uvicorn", "uvicorn.error", "uvicorn.access")

tags = itertools.count()


def new_tag(kind: str) -> str:
    """A client tag unique in this run: it is the last part of the path, and the example logs it."""
    return f"{kind}-{next(tags)}"


def kind_of(tag: str) -> str:
    """The endpoint a tag was made for: its prefix."""
    return tag.partition("-")[0]


def _text(sent: str | bytes) -> str:
    """An id as sent, as the middleware reads it: bytes decoded as latin-1."""
    return sent.decode("latin-1") if isinstance(sent, bytes) else sent


# --- Servers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(app: Any, **options: Any) -> Iterator[int]:
    """Serve ``app`` with uvicorn on a thread of this process; yield its port.

    On exit: ``should_exit``, then a bounded join of the server's thread and of every thread started
    meanwhile (anyio's worker threads stop when uvicorn's event loop ends); an error in the server thread
    (a failed startup's ``SystemExit``, say) is re-raised.
    """
    before = set(threading.enumerate())
    options.setdefault("lifespan", "off")
    # Connections still open at shutdown are cut after this, so the join below always has time to succeed.
    options.setdefault("timeout_graceful_shutdown", TIMEOUT / 2)
    # log_config=None, log_level=None: uvicorn leaves the process's logging configuration alone.
    config = uvicorn.Config(app, http="h11", log_config=None, log_level=None, **options)
    server = uvicorn.Server(config)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)  # connections wait in the backlog until the server accepts them
        thread = Worker(server.run, [sock])
        thread.start()
        try:
            yield sock.getsockname()[1]
        finally:
            server.should_exit = True
            join_all([thread])
            join_all(set(threading.enumerate()) - before)


@pytest.fixture(scope="module")
def example_server() -> Iterator[int]:
    """uvicorn serving the example's ``asgi_app``: Starlette behind ``ASGIRequestId``, bad ids replaced."""
    with serving(web_apps.asgi_app) as port:
        yield port


@dataclass
class Rejecting:
    port: int
    called: list[str]  # the paths the Starlette app was called with


@pytest.fixture(scope="module")
def rejecting_server() -> Iterator[Rejecting]:
    """uvicorn serving the example's Starlette app behind ``ASGIRequestId(on_invalid="reject")``, with a
    record of each path the app is called with."""
    called: list[str] = []

    async def recorded(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["path"])
        await web_apps.starlette_app(scope, receive, send)

    with serving(ASGIRequestId(recorded, storage, on_invalid="reject")) as port:
        yield Rejecting(port, called)


# --- Log records --------------------------------------------------------------------------------


class Records(helpers.Records):
    """The records, and the example's lines among them as the example formats them."""

    def __init__(self) -> None:
        super().__init__()
        self._lines = logging.Formatter(web_apps.FORMAT)

    def lines(self, records: list[logging.LogRecord] | None = None) -> list[str]:
        """The example's log lines, formatted as it formats them: id, client, message, thread."""
        chosen = self.records if records is None else records
        return [self._lines.format(record) for record in chosen if record.name == "shop"]


def of_client(records: list[logging.LogRecord], client: str) -> list[logging.LogRecord]:
    return [r for r in records if r.name == "shop" and r.__dict__.get("client") == client]


def uvicorn_errors(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """uvicorn's own report of an exception that came out of the app, logged after the response."""
    return [
        r for r in records if r.name == "uvicorn.error" and r.getMessage().startswith("Exception in ASGI")
    ]


def reports_of(records: list[logging.LogRecord], raised: BaseException) -> list[logging.LogRecord]:
    """uvicorn's reports of the exception object ``raised``: a test waits for its own request's report by
    the object, not for a count, which another server's late report (or two arriving between two wakeups
    of the waiting thread) would throw off."""
    return [r for r in uvicorn_errors(records) if r.exc_info and r.exc_info[1] is raised]


def reports_saying(records: list[logging.LogRecord], message: str) -> list[logging.LogRecord]:
    """uvicorn's reports of exceptions whose message is ``message``."""
    return [r for r in uvicorn_errors(records) if r.exc_info and str(r.exc_info[1]) == message]


@pytest.fixture
def records() -> Iterator[Records]:
    """``%(request_id)s`` in every record (``install_record_factory``), all of them kept; undone after."""
    handler = Records()
    with every_record(handler, storage, LOGGERS):
        yield handler


# --- A raw HTTP/1.1 client, for what httpx refuses to send ----------------------------------------


@dataclass
class Raw:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    whole: bytes

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]


def raw_get(port: int, path: str, ids: list[bytes]) -> Raw:
    """GET ``path`` with an ``X-Request-ID`` line per value in ``ids``, bytes as given; read to the close."""
    head = [f"GET {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", *(b"X-Request-ID: " + v for v in ids)]
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        conn.sendall(b"\r\n".join([*head, b"Connection: close", b"", b""]))
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    whole = b"".join(chunks)
    top, _, body = whole.partition(b"\r\n\r\n")
    status_line, *lines = top.split(b"\r\n")
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(b":") for line in lines)]
    return Raw(int(status_line.split()[1]), headers, body, whole)


# --- Hostile headers: what uvicorn does before the middleware sees them ----------------------------

# uvicorn's h11 (0.16) by itself:
# - refuses with its own 400 (no app, no id header) a bare LF, a bare CR and a NUL in the value;
# - reads CRLF as the end of the header line: "abc\r\nSet-Cookie: x=1" is the id abc and another header;
# - strips spaces at either end (HTTP's optional whitespace): " abc123 " is the id abc123.
# Everything else reaches the middleware as sent: tab, ESC, DEL, SOH, C1 and other non-ASCII bytes, 10 kB,
# an empty value, the header twice. The middleware must replace (or reject) each of those.
REFUSED_BY_UVICORN = frozenset({"lf", "cr", "nul"})
READ_AS_VALID = {"crlf-injection": "abc", "edge-spaces": "abc123"}
REFUSED = "uvicorn-400"
REPLACED = "replaced"


def _case(ids: list[bytes], name: str) -> Any:
    """A hostile case; its outcome (refused, replaced, or read as a valid id) is in its test id too."""
    if name in REFUSED_BY_UVICORN:
        return pytest.param(ids, REFUSED, id=f"{name}-{REFUSED}")
    if name in READ_AS_VALID:
        return pytest.param(ids, READ_AS_VALID[name], id=f"{name}-read-as-{READ_AS_VALID[name]}")
    return pytest.param(ids, REPLACED, id=name)


WIRE = [
    *(_case([case.values[0]], str(case.id)) for case in HOSTILE),  # test_web's table, one header each
    _case([b"a" * 200], "200-chars"),
    _case([b"a b"], "a-b"),
    _case([b"abc\x01xyz"], "soh"),
    _case([NGINX.encode(), NGINX.encode()], "twice-equal"),
    _case([NGINX.encode(), UUID.encode()], "twice-different"),
]


def assert_raw_nowhere(ids: list[bytes], response: Raw, records: Records) -> None:
    """No value sent is in any byte of the response, in any of the example's lines, in any record."""
    for wire in ids:
        raw = wire.decode("latin-1")
        assert_nowhere(raw, [response.whole.decode("latin-1")], lines=False)
        assert_nowhere(raw, records.lines())
        assert_nowhere(raw, records.texts(), lines=False)


# --- The tests ----------------------------------------------------------------------------------


class TestConcurrentRequests:
    def test_every_line_and_response_carries_its_own_id(self, example_server: int, records: Records) -> None:
        """100 concurrent httpx requests over the async (thread pool + background task), sync and raising
        endpoints, with no id, valid ids of their own or invalid ones: each response (500s included) has one
        id header; every line of a request, the background task's and the one logged before raising
        included, and uvicorn's access line, carries exactly that id; ids are unique; valid incoming ids
        are kept, invalid ones replaced by fresh 32-hex ids; uvicorn reports each exception from its own
        context, with no id."""
        incoming: list[Callable[[int], str | bytes | None]] = [
            lambda n: None,
            lambda n: uuid.UUID(int=n + 1).hex,  # 32 hex digits, as nginx's $request_id
            lambda n: str(uuid.UUID(int=(n + 1) << 64)),
            lambda n: f"edge:4b1d-{n}",
            lambda n: "not an id",
            lambda n: "x" * 200,
            lambda n: "caf\xe9".encode("latin-1"),
            lambda n: "",
            lambda n: "a,b",
        ]
        requests: list[tuple[str, str, str | bytes | None]] = []
        for n in range(100):
            kind = list(ROUTES)[n % 3]
            tag = new_tag(kind)
            requests.append((tag, f"{ROUTES[kind]}/{tag}", incoming[(n // 3) % len(incoming)](n)))

        async def send_all() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=len(requests))
            async with httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as client:
                return await asyncio.gather(
                    *(
                        client.get(
                            f"http://127.0.0.1:{example_server}{path}",
                            headers={} if sent is None else {"X-Request-ID": sent},
                        )
                        for _, path, sent in requests
                    )
                )

        responses = asyncio.run(send_all())

        answers: dict[str, tuple[int, str]] = {}
        for (tag, _, sent), response in zip(requests, responses, strict=True):
            [request_id] = response.headers.get_list("x-request-id")
            assert response.status_code == STATUS[kind_of(tag)], tag
            if sent is None or not is_valid_request_id(_text(sent)):
                assert HEX32(request_id), (tag, request_id)
            answers[tag] = (response.status_code, request_id)
        booms = sum(path.startswith("/boom/") for _, path, _ in requests)
        lines = sum(len(web_apps.EXPECTED[kind_of(tag)]) for tag, _, _ in requests)
        seen = records.wait_until(
            lambda got: (
                len([r for r in got if r.name == "shop"]) >= lines and len(uvicorn_errors(got)) >= booms
            )
        )
        problems = web_apps.check(
            records.lines(seen),
            [(tag, path, None if sent is None else _text(sent)) for tag, path, sent in requests],
            answers,
        )
        assert problems == []
        access = {r.args[2]: r.__dict__["request_id"] for r in seen if r.name == "uvicorn.access"}
        assert access == {path: answers[tag][1] for tag, path, _ in requests}
        errors = uvicorn_errors(seen)
        assert len(errors) == booms
        assert {r.__dict__["request_id"] for r in errors} == {"-"}
        assert all(isinstance(r.exc_info and r.exc_info[1], RuntimeError) for r in errors)


class TestRaising:
    def test_example_500_and_the_line_before_it_carry_the_id(
        self, example_server: int, records: Records
    ) -> None:
        """The raising endpoint: Starlette's 500 goes out through the middleware with the caller's id, and
        the line logged before raising carries that id."""
        tag = new_tag("boom")
        url = f"http://127.0.0.1:{example_server}/boom/{tag}"
        response = httpx.get(url, headers={"X-Request-ID": NGINX}, timeout=TIMEOUT)
        assert response.status_code == 500
        assert response.headers.get_list("x-request-id") == [NGINX]
        # The example raises a new exception each time, so its report is known by the message.
        seen = records.wait_until(lambda got: bool(reports_saying(got, "this endpoint always fails")))
        assert len(reports_saying(seen, "this endpoint always fails")) == 1
        assert [(r.__dict__["request_id"], r.getMessage()) for r in of_client(seen, tag)] == [
            (NGINX, "about to fail")
        ]

    def test_app_raising_before_start_gets_the_middlewares_500(self, records: Records) -> None:
        """A raw ASGI app that logs, then raises before starting a response, with no framework around it:
        the 500 the client gets is the middleware's, carrying the id (not uvicorn's own, without it), the
        line carries the id, and uvicorn, which logs the exception after, does so from its own context."""

        failure = RuntimeError("raw app failed")

        async def app(scope: Any, receive: Any, send: Any) -> None:
            web_apps.log.info("about to fail", extra={"client": "raw"})
            raise failure

        with serving(ASGIRequestId(app, storage)) as port:
            response = httpx.get(f"http://127.0.0.1:{port}/", headers={"X-Request-ID": UUID}, timeout=TIMEOUT)
            seen = records.wait_until(lambda got: bool(reports_of(got, failure)))
        assert response.status_code == 500
        assert response.headers.get_list("x-request-id") == [UUID]
        assert response.text == "Internal Server Error\n"
        assert [(r.__dict__["request_id"], r.getMessage()) for r in of_client(seen, "raw")] == [
            (UUID, "about to fail")
        ]
        [error] = reports_of(seen, failure)
        assert error.__dict__["request_id"] == "-"


class TestFrameworkErrorHandlers:
    """An app's own exception handler keeps its response, and its log lines the id, whichever way the
    middleware is added: FastAPI's usual ``app.add_middleware`` (inside Starlette's error middleware),
    Starlette's ``middleware=[...]`` (the same place), or wrapped around the app."""

    @staticmethod
    def fastapi_app(wiring: str, failure: Exception) -> Any:
        def crash(request: Request, exc: Exception) -> JSONResponse:
            web_apps.log.info("handler saw %s", type(exc).__name__, extra={"client": request.url.path})
            return JSONResponse({"detail": "our own error page"}, status_code=500)

        middleware = [Middleware(ASGIRequestId, storage=storage)] if wiring == "middleware=[...]" else []
        app = FastAPI(middleware=middleware, exception_handlers={Exception: crash})

        @app.get("/fail")
        async def fail(request: Request) -> None:
            web_apps.log.info("about to fail", extra={"client": request.url.path})
            raise failure

        @app.get("/ok")
        async def ok(request: Request) -> dict[str, object]:
            web_apps.log.info("fine", extra={"client": request.url.path})
            return {"id": storage.get_store()}

        if wiring == "add_middleware":
            app.add_middleware(ASGIRequestId, storage=storage)
            return app
        return ASGIRequestId(app, storage) if wiring == "wrapped around" else app

    @pytest.mark.parametrize("wiring", ["add_middleware", "middleware=[...]", "wrapped around"])
    def test_handler_keeps_its_response_and_its_lines_the_id(self, records: Records, wiring: str) -> None:
        failure = RuntimeError("endpoint failed")
        with serving(self.fastapi_app(wiring, failure)) as port:
            failed = httpx.get(
                f"http://127.0.0.1:{port}/fail", headers={"X-Request-ID": UUID}, timeout=TIMEOUT
            )
            fine = httpx.get(f"http://127.0.0.1:{port}/ok", headers={"X-Request-ID": NGINX}, timeout=TIMEOUT)
            seen = records.wait_until(lambda got: bool(reports_of(got, failure)))
        assert (failed.status_code, failed.json()) == (500, {"detail": "our own error page"})
        # Outermost, the handler's 500 goes out through the middleware; inside, the framework sends it.
        assert failed.headers.get_list("x-request-id") == ([UUID] if wiring == "wrapped around" else [])
        assert (fine.status_code, fine.json(), fine.headers.get_list("x-request-id")) == (
            200,
            {"id": NGINX},
            [NGINX],
        )
        assert [(r.__dict__["request_id"], r.getMessage()) for r in of_client(seen, "/fail")] == [
            (UUID, "about to fail"),
            (UUID, "handler saw RuntimeError"),
        ]
        assert [(r.__dict__["request_id"], r.getMessage()) for r in of_client(seen, "/ok")] == [
            (NGINX, "fine")
        ]
        # The server's report of the exception: under the id when the middleware is inside the app.
        [error] = reports_of(seen, failure)
        assert error.__dict__["request_id"] == ("-" if wiring == "wrapped around" else UUID)


class TestHostileHeaders:
    @pytest.mark.parametrize(("ids", "outcome"), WIRE)
    def test_replaced_or_refused_by_the_server(
        self, example_server: int, records: Records, ids: list[bytes], outcome: str
    ) -> None:
        """Raw bytes on a socket: uvicorn refuses the request itself (its 400, no id, app not run), or the
        middleware replaces the value with a fresh 32-hex id that the response and every line of the request
        carry; no value sent appears in any response byte or log record."""
        tag = new_tag("hostile")
        response = raw_get(example_server, f"/order/{tag}", ids)
        if outcome == REFUSED:
            assert response.status == 400
            assert response.values(ID) == []
            assert of_client(records.records, tag) == []
        else:
            [echoed] = response.values(ID)
            assert response.status == 200
            if outcome == REPLACED:
                assert HEX32(echoed.decode()), echoed
                assert echoed not in ids
            else:
                assert echoed == outcome.encode()
                assert response.values(b"set-cookie") == []
            seen = records.wait_until(lambda got: len(of_client(got, tag)) == 3)
            assert {r.__dict__["request_id"] for r in of_client(seen, tag)} == {echoed.decode()}
        if outcome in (REFUSED, REPLACED):
            assert_raw_nowhere(ids, response, records)

    @pytest.mark.parametrize(("ids", "outcome"), WIRE)
    def test_rejected_with_400(
        self, rejecting_server: Rejecting, records: Records, ids: list[bytes], outcome: str
    ) -> None:
        """on_invalid="reject" through uvicorn: each value that reaches the middleware and is not a valid id
        gets the middleware's 400 with a fresh 32-hex id, the app not called, no line logged; no value sent
        appears in any response byte or log record."""
        tag = new_tag("rejected")
        path = f"/order/{tag}"
        response = raw_get(rejecting_server.port, path, ids)
        if outcome == REFUSED:
            assert response.status == 400
            assert response.values(ID) == []
        elif outcome == REPLACED:
            assert response.status == 400
            [echoed] = response.values(ID)
            assert HEX32(echoed.decode()), echoed
            assert echoed not in ids
            assert response.body == b"Bad Request: invalid X-Request-ID header\n"
        else:
            assert response.status == 200
            assert response.values(ID) == [outcome.encode()]
            seen = records.wait_until(lambda got: len(of_client(got, tag)) == 3)
            assert {r.__dict__["request_id"] for r in of_client(seen, tag)} == {outcome}
        assert (path in rejecting_server.called) == (outcome not in (REFUSED, REPLACED))
        if outcome in (REFUSED, REPLACED):
            assert of_client(records.records, tag) == []
            assert_raw_nowhere(ids, response, records)

    @pytest.mark.parametrize("sent", [None, NGINX], ids=["missing", "valid"])
    def test_reject_lets_valid_and_missing_through(
        self, rejecting_server: Rejecting, records: Records, sent: str | None
    ) -> None:
        """on_invalid="reject": no header, or a valid one, is not rejected: the app runs under the id."""
        tag = new_tag("accepted")
        response = raw_get(rejecting_server.port, f"/sync/{tag}", [] if sent is None else [sent.encode()])
        assert response.status == 200
        [echoed] = response.values(ID)
        if sent is None:
            assert HEX32(echoed.decode()), echoed
        else:
            assert echoed == sent.encode()
        assert f"/sync/{tag}" in rejecting_server.called
        assert [r.__dict__["request_id"] for r in of_client(records.records, tag)] == [echoed.decode()]


class TestLifespan:
    def test_lifespan_passes_through_untouched(self) -> None:
        """uvicorn with lifespan="on": the app behind the middleware gets uvicorn's very lifespan scope,
        receive and send, unchanged, and no id at startup or at shutdown (after a request ran); an http
        request on the same server gets a copy of its scope, with an id."""
        local: als.AsyncLocalStorage[str] = als.AsyncLocalStorage(name="lifespan-test")
        # What uvicorn passed (scope, a copy of it, receive, send); what the app behind the middleware got.
        given: list[tuple[Any, dict[str, Any], Any, Any]] = []
        got: list[tuple[Any, Any, Any]] = []
        stores: list[tuple[str, str | None]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            got.append((scope, receive, send))
            if scope["type"] == "http":
                stores.append(("http", local.get_store()))
                headers = [(b"content-type", b"text/plain")]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": b"ok"})
                return
            while True:
                message = await receive()
                stores.append((message["type"], local.get_store()))
                await send({"type": f"{message['type']}.complete"})
                if message["type"] == "lifespan.shutdown":
                    return

        middleware = ASGIRequestId(app, local)

        async def server_side(scope: Any, receive: Any, send: Any) -> None:
            given.append((scope, dict(scope), receive, send))
            await middleware(scope, receive, send)

        with serving(server_side, lifespan="on") as port:
            response = httpx.get(
                f"http://127.0.0.1:{port}/", headers={"X-Request-ID": NGINX}, timeout=TIMEOUT
            )
        assert response.headers.get_list("x-request-id") == [NGINX]
        [(lifespan, before, receive, send), (http, _, _, _)] = given
        assert lifespan["type"] == "lifespan"
        assert got[0][0] is lifespan
        assert got[0][1] is receive
        assert got[0][2] is send
        assert lifespan == before
        assert ID not in dict(lifespan.get("headers", []))
        assert got[1][0] is not http
        assert [v for k, v in got[1][0]["headers"] if k == ID] == [NGINX.encode()]
        assert stores == [("lifespan.startup", None), ("http", NGINX), ("lifespan.shutdown", None)]
