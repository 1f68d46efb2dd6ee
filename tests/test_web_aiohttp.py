"""als.web.aiohttp under a real aiohttp server: every response, and every log line of each request.

Each server runs in this process, on a thread with an event loop of its own, on a socket the test bound and
listens on itself: connections wait in its backlog until aiohttp accepts them, so nothing waits for startup.
Every server is stopped (``runner.cleanup()``, then the loop's default executor is shut down) and its thread,
and every thread started meanwhile, joined with a bound, even when a test fails. The client writes raw
HTTP/1.1 on sockets, so it can send what no HTTP client library sends (control bytes, repeated headers).

Log lines carry ``%(request_id)s`` through ``als.logging.install_record_factory``; a request's lines are
found by its tag (the last part of its path): the app's own lines name it, aiohttp's access line shows the
path, aiohttp's "Error handling request" line carries the exception, whose message is the tag.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

import als
from als.web import is_valid_request_id
from als.web.aiohttp import RequestIdMiddleware, request_id_middleware, setup

from . import helpers
from .helpers import TIMEOUT, Worker, every_record, join_all
from .test_web import HOSTILE, NGINX, UUID, assert_nowhere

storage: als.AsyncLocalStorage[str] = als.AsyncLocalStorage(name="aiohttp-request-id")
log = logging.getLogger("tests.aiohttp")

HEADER = "X-Request-ID"
ID = b"x-request-id"
HEX32 = re.compile(r"[0-9a-f]{32}").fullmatch
BAD_REQUEST = b"Bad Request: invalid X-Request-ID header\n"
APP_OWN = "app-own-value"  # what the app puts in the header itself: always replaced
# The response's header, as aiohttp's access logger reads it: the line then shows the id the client got.
ACCESS_FORMAT = '"%r" %s %{X-Request-ID}o'
LOGGERS = ("tests.aiohttp", "aiohttp.access", "aiohttp.server")
# What each endpoint logs (the app's lines, its on_response_prepare handler's, aiohttp's), in order.
EXPECTED = {
    "ok": ["handler", "task", "patched thread", "als thread", "prepare", "access"],
    "boom": ["about to fail", "error", "prepare", "access"],
    "stream": ["handler", "prepare", "chunk 0", "chunk 1", "chunk 2", "access"],
    "forbidden": ["handler", "prepare", "access"],
}
STATUS = {"ok": 200, "boom": 500, "stream": 200, "forbidden": 403}

tags = itertools.count()


def new_tag(kind: str) -> str:
    """A client tag unique in this run: the last part of the path; the app's lines name it."""
    return f"{kind}-{next(tags)}"


def kind_of(tag: str) -> str:
    return tag.partition("-")[0]


# --- The app ------------------------------------------------------------------------------------


class Gate:
    """Holds every arriving handler until ``expected`` have arrived: they all overlap, by construction."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.open = asyncio.Event()  # bound to the server's loop when first awaited there

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.expected:
            self.open.set()
        await asyncio.wait_for(self.open.wait(), TIMEOUT)


GATE = web.AppKey("gate", Gate)
CALLED = web.AppKey("called", list)  # the tags of the handlers that ran


def in_thread(tag: str, hop: str) -> str | None:
    log.info(hop, extra={"tag": tag})
    return storage.get_store()


async def in_task(tag: str) -> str | None:
    log.info("task", extra={"tag": tag})
    return storage.get_store()


async def ok(request: web.Request) -> web.Response:
    """Logs, waits for every other ``ok`` request, then a task and two thread hops; says what it saw."""
    tag = request.match_info["tag"]
    request.app[CALLED].append(tag)
    log.info("handler", extra={"tag": tag})
    gate = request.app.get(GATE)
    if gate is not None:
        await gate.wait()
    task = await asyncio.create_task(in_task(tag))
    loop = asyncio.get_running_loop()
    patched = await loop.run_in_executor(None, in_thread, tag, "patched thread")  # carried by als.patch()
    wrapped = await als.run_in_executor(None, in_thread, tag, "als thread")
    seen = {
        "store": storage.get_store(),
        "headers": request.headers.getall(HEADER, []),
        "raw": [value.decode("latin-1") for name, value in request.raw_headers if name.lower() == ID],
        "hops": [task, patched, wrapped],
    }
    return web.json_response(seen, headers={HEADER: APP_OWN})


async def echo(request: web.Request) -> web.Response:
    """One line; says what it saw, the other headers included."""
    tag = request.match_info["tag"]
    request.app[CALLED].append(tag)
    log.info("handler", extra={"tag": tag})
    seen = {
        "store": storage.get_store(),
        "headers": [[name, value] for name, value in request.headers.items()],
        "raw": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in request.raw_headers],
    }
    return web.Response(text=json.dumps(seen), content_type="application/json")


async def boom(request: web.Request) -> web.StreamResponse:
    tag = request.match_info["tag"]
    request.app[CALLED].append(tag)
    log.info("about to fail", extra={"tag": tag})
    raise RuntimeError(tag)


async def stream(request: web.Request) -> web.StreamResponse:
    """Prepared here, inside the handler: only the on_response_prepare handler reaches its headers."""
    tag = request.match_info["tag"]
    request.app[CALLED].append(tag)
    log.info("handler", extra={"tag": tag})
    response = web.StreamResponse(headers={HEADER: APP_OWN, "Content-Type": "text/plain"})
    await response.prepare(request)
    for n in range(3):
        log.info("chunk %d", n, extra={"tag": tag})
        await response.write(f"{storage.get_store()}\n".encode())
    await response.write_eof()
    return response


async def forbidden(request: web.Request) -> web.StreamResponse:
    tag = request.match_info["tag"]
    request.app[CALLED].append(tag)
    log.info("handler", extra={"tag": tag})
    raise web.HTTPForbidden(text="no\n", headers={HEADER: APP_OWN})


async def log_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """The app's own on_response_prepare handler, appended after setup(): it sees the header already set."""
    log.info(
        "prepare",
        extra={"tag": request.path.rpartition("/")[2], "header": response.headers.getall(HEADER, [])},
    )


def make_app(
    *,
    wiring: str = "setup",
    gate: Gate | None = None,
    middlewares: tuple[Any, ...] = (),
    **options: Any,
) -> web.Application:
    """The app: behind ``setup()``, or with the middleware alone in ``middlewares=[...]`` (``"list"``)."""
    listed = [request_id_middleware(storage, **options)] if wiring == "list" else []
    app = web.Application(middlewares=[*middlewares, *listed])
    app[CALLED] = []
    if gate is not None:
        app[GATE] = gate
    app.router.add_get("/ok/{tag}", ok)
    app.router.add_get("/echo/{tag}", echo)
    app.router.add_get("/boom/{tag}", boom)
    app.router.add_get("/stream/{tag}", stream)
    app.router.add_get("/forbidden/{tag}", forbidden)
    if wiring == "setup":
        setup(app, storage, **options)
    app.on_response_prepare.append(log_prepare)
    return app


# --- Servers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(app: web.Application) -> Iterator[int]:
    """Serve ``app`` with aiohttp on a thread of this process, with a loop of its own; yield its port."""
    before = set(threading.enumerate())
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)  # connections wait in the backlog until the server accepts them

        async def serve() -> None:
            runner = web.AppRunner(app, access_log_format=ACCESS_FORMAT, shutdown_timeout=TIMEOUT / 2)
            await runner.setup()
            try:
                await web.SockSite(runner, sock).start()
                await stop.wait()
            finally:
                await runner.cleanup()

        def run() -> None:
            try:
                loop.run_until_complete(serve())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

        thread = Worker(run)
        thread.start()
        try:
            yield sock.getsockname()[1]
        finally:
            with contextlib.suppress(RuntimeError):  # the loop already closed: the server failed
                loop.call_soon_threadsafe(stop.set)
            join_all([thread])
            join_all(set(threading.enumerate()) - before)


@dataclass
class Served:
    port: int
    app: web.Application

    @property
    def called(self) -> list[str]:
        return self.app[CALLED]


@pytest.fixture(scope="module")
def replacing() -> Iterator[Served]:
    app = make_app()
    with serving(app) as port:
        yield Served(port, app)


@pytest.fixture(scope="module")
def rejecting() -> Iterator[Served]:
    app = make_app(on_invalid="reject")
    with serving(app) as port:
        yield Served(port, app)


# --- Log records --------------------------------------------------------------------------------


class Records(helpers.Records):
    """The records, and each formatted with its id and logger, tracebacks included."""

    def __init__(self) -> None:
        super().__init__()
        self._format = logging.Formatter("%(request_id)s %(name)s %(message)s")

    def formatted(self) -> list[str]:
        """Each record formatted, tracebacks included."""
        return [self._format.format(record) for record in self.records]


@pytest.fixture
def records() -> Iterator[Records]:
    """``%(request_id)s`` in every record, all of them kept; undone after."""
    handler = Records()
    # Before any connection: aiohttp reads the access logger's level once per connection.
    with every_record(handler, storage, LOGGERS):
        yield handler


ACCESS_PATH = re.compile(r'"GET (\S+) HTTP/1\.1" (\d+) (\S+)').fullmatch


def tag_of(record: logging.LogRecord) -> str | None:
    """The request a record belongs to, and None for one that names none."""
    if record.name == "tests.aiohttp":
        return str(record.__dict__["tag"])
    if record.name == "aiohttp.access":
        match = ACCESS_PATH(record.getMessage())
        return None if match is None else match[1].rpartition("/")[2]
    if record.name == "aiohttp.server" and record.getMessage().startswith("Error handling request"):
        error = record.exc_info[1] if record.exc_info else None
        return str(error.args[0]) if isinstance(error, RuntimeError) else None
    return None


def what(record: logging.LogRecord) -> str:
    """A record's step, as EXPECTED names it."""
    if record.name == "aiohttp.access":
        return "access"
    if record.name == "aiohttp.server":
        return "error"
    return record.getMessage()


def lines_of(seen: list[logging.LogRecord], tag: str) -> list[logging.LogRecord]:
    return [record for record in seen if record.name in LOGGERS and tag_of(record) == tag]


# --- A raw HTTP/1.1 client ----------------------------------------------------------------------


@dataclass
class Raw:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    whole: bytes

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]

    def id(self) -> str:
        """The one id header; fails unless there is exactly one."""
        [value] = self.values(ID)
        return value.decode("ascii")

    def json(self) -> Any:
        return json.loads(self.body)


def request_bytes(path: str, ids: list[bytes] | None = None, extra: list[bytes] | None = None) -> bytes:
    """GET ``path`` with an ``X-Request-ID`` line per value in ``ids``, bytes as given."""
    head = [
        f"GET {path} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        *(b"X-Request-ID: " + value for value in ids or []),
        *(extra or []),
    ]
    return b"\r\n".join([*head, b"", b""])


async def read_response(reader: asyncio.StreamReader) -> Raw:
    """One response: its head, then a body by Content-Length, chunked, or to the close."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head[:-4].split(b"\r\n")
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(b":") for line in lines)]
    fields = {name.lower(): value for name, value in headers}
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        chunks = []
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            chunks.append((await reader.readexactly(size + 2))[:-2])
        await reader.readuntil(b"\r\n")
        body = b"".join(chunks)
    elif status_line.split()[1] == b"101":  # switching protocols: what follows is not this response's
        body = b""
    elif b"content-length" in fields:
        body = await reader.readexactly(int(fields[b"content-length"]))
    else:
        body = await reader.read()
    return Raw(int(status_line.split()[1]), headers, body, head + body)


async def exchange(port: int, requests: list[bytes]) -> list[Raw]:
    """Send ``requests`` one after another on one connection (keep-alive); each response in turn."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        responses = []
        for request in requests:
            writer.write(request)
            responses.append(await read_response(reader))
        return responses
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def bounded(coro: Awaitable[Any]) -> Any:
    async def run() -> Any:
        return await asyncio.wait_for(coro, TIMEOUT)

    return asyncio.run(run())


def get(port: int, path: str, ids: list[bytes] | None = None, extra: list[bytes] | None = None) -> Raw:
    """One request on a connection of its own, closed after it."""
    [response] = bounded(exchange(port, [request_bytes(path, ids, [*(extra or []), b"Connection: close"])]))
    return response


def raw_forms(wire: bytes) -> list[str]:
    """A value sent, as it could show up anywhere: read as latin-1, and as aiohttp decodes it."""
    return [wire.decode("latin-1"), wire.decode("utf-8", "surrogateescape")]


# --- Concurrent requests ------------------------------------------------------------------------

# Hostile values that reach the middleware (aiohttp refuses the others itself): each one is replaced.
REACHING = [
    case.values[0]
    for case in HOSTILE
    if case.id not in {"lf", "cr", "nul", "escape-sequence", "del", "10kB", "crlf-injection", "edge-spaces"}
]


def check_responses(requests: list[tuple[str, list[bytes]]], responses: list[Raw]) -> dict[str, str]:
    """Each response's status, its one id header, and what the handler saw; the ids, by tag."""
    answers: dict[str, str] = {}
    for (tag, sent), response in zip(requests, responses, strict=True):
        kind = kind_of(tag)
        assert response.status == STATUS[kind], (tag, response.whole)
        request_id = response.id()
        if len(sent) == 1 and is_valid_request_id(sent[0].decode("latin-1")):
            assert request_id == sent[0].decode(), tag
        else:
            assert HEX32(request_id), (tag, request_id)
        if kind == "ok":
            assert response.json() == {
                "store": request_id,
                "headers": [request_id],
                "raw": [request_id],
                "hops": [request_id] * 3,
            }
        if kind == "stream":
            assert response.body == f"{request_id}\n".encode() * 3
        answers[tag] = request_id
    return answers


class TestConcurrentRequests:
    def test_every_line_and_response_carries_its_own_id(self, records: Records) -> None:
        """100 concurrent requests, each on a connection of its own, over a handler that starts a task and
        hops to threads (``loop.run_in_executor`` under ``als.patch()``, ``als.run_in_executor``), one that
        raises (aiohttp's 500), a streamed response and a raised ``HTTPForbidden``, each with no id, a valid
        one of its own, a hostile value, a repeated header, a comma or an empty value. The ``ok`` handlers
        all wait for each other, so they overlap. Each response has exactly one id header (the app's own
        value replaced); valid ids are kept, every other value replaced by a fresh 32-hex id; ids are
        unique; the handler saw only the id; every line of each request (handler, task, both threads,
        chunks, the app's on_response_prepare handler, aiohttp's access and error lines) carries exactly
        that request's id: none wrong, none missing, none extra; no hostile value appears anywhere."""
        incoming: list[Callable[[int], list[bytes]]] = [
            lambda n: [],
            lambda n: [uuid.UUID(int=n + 1).hex.encode()],
            lambda n: [str(uuid.UUID(int=(n + 1) << 64)).encode()],
            lambda n: [f"edge:4b1d-{n}".encode()],
            lambda n: [REACHING[n % len(REACHING)]],
            lambda n: [f"twice-{n}".encode()] * 2,
            lambda n: [f"one-{n}".encode(), f"two-{n}".encode()],
            lambda n: [b"a,b"],
            lambda n: [b""],
        ]
        kinds = list(EXPECTED)
        requests: list[tuple[str, list[bytes]]] = [
            (new_tag(kinds[n % len(kinds)]), incoming[n % len(incoming)](n)) for n in range(100)
        ]
        gate = Gate(sum(kind_of(tag) == "ok" for tag, _ in requests))

        async def send_all() -> list[Raw]:
            exchanges = [
                exchange(port, [request_bytes(f"/{kind_of(tag)}/{tag}", sent)]) for tag, sent in requests
            ]
            return [response for [response] in await asyncio.gather(*exchanges)]

        with als.patched(), serving(make_app(gate=gate)) as port:
            responses = bounded(send_all())
            expected_lines = sum(len(EXPECTED[kind_of(tag)]) for tag, _ in requests)
            seen = records.wait_until(
                lambda got: sum(r.name in LOGGERS and tag_of(r) is not None for r in got) >= expected_lines
            )

        answers = check_responses(requests, responses)

        checked = wrong = missing = extra = 0
        for tag, _ in requests:
            ours = lines_of(seen, tag)
            expected, steps = Counter(EXPECTED[kind_of(tag)]), Counter(what(record) for record in ours)
            missing += (expected - steps).total()
            extra += (steps - expected).total()
            for record in ours:
                checked += 1
                wrong += record.__dict__["request_id"] != answers[tag]
                if what(record) == "prepare":  # the app's on_response_prepare handler saw the header set
                    wrong += record.__dict__["header"] != [answers[tag]]
                if what(record) == "access":  # the response's header, as aiohttp's access logger read it
                    wrong += record.getMessage().split()[-1] != answers[tag]
        assert (checked, wrong, missing, extra) == (expected_lines, 0, 0, 0)
        ours = [record for record in seen if record.name in LOGGERS]
        assert all(tag_of(record) is not None for record in ours), [r.getMessage() for r in ours]
        assert len(ours) == expected_lines

        for _, sent in requests:
            for wire in sent:
                if not is_valid_request_id(wire.decode("latin-1")):
                    for raw in raw_forms(wire):
                        assert_nowhere(raw, records.texts())
                        assert_nowhere(raw, records.formatted(), lines=False)
                        assert_nowhere(raw, [r.whole.decode("latin-1") for r in responses], lines=False)


# --- Hostile headers: what aiohttp does before the middleware sees them ---------------------------

# aiohttp 3.14 (its C parser and its Python one alike) by itself:
# - refuses with its own 400 (no app, no id header) a bare LF, a bare CR, a NUL, ESC, DEL, SOH (any control
#   character but tab) and a line over 8190 bytes; that 400's body and its "Error handling request" line's
#   traceback quote the value: aiohttp's doing, before any middleware;
# - reads CRLF as the end of the header line: "abc\r\nSet-Cookie: x=1" is the id abc and another header;
# - strips spaces at either end: " abc123 " is the id abc123, "   " is the empty value.
# Everything else reaches the middleware as sent (non-UTF-8 bytes surrogate-escaped), which replaces it.
REFUSED_BY_AIOHTTP = frozenset({"lf", "cr", "nul", "escape-sequence", "del", "10kB", "soh"})
READ_AS_VALID = {"crlf-injection": "abc", "edge-spaces": "abc123"}
REFUSED = "aiohttp-400"
REPLACED = "replaced"


def _case(ids: list[bytes], name: str) -> Any:
    if name in REFUSED_BY_AIOHTTP:
        return pytest.param(ids, REFUSED, id=f"{name}-{REFUSED}")
    if name in READ_AS_VALID:
        return pytest.param(ids, READ_AS_VALID[name], id=f"{name}-read-as-{READ_AS_VALID[name]}")
    return pytest.param(ids, REPLACED, id=name)


WIRE = [
    *(_case([case.values[0]], str(case.id)) for case in HOSTILE),
    _case([b"a" * 200], "200-chars"),
    _case([b"a b"], "a-b"),
    _case([b"abc\x01xyz"], "soh"),
    _case([NGINX.encode(), NGINX.encode()], "twice-equal"),
    _case([NGINX.encode(), UUID.encode()], "twice-different"),
]


def assert_raw_nowhere(ids: list[bytes], response: Raw, records: Records) -> None:
    """No value sent is in any byte of the response or in any record."""
    for wire in ids:
        for raw in raw_forms(wire):
            assert_nowhere(raw, [response.whole.decode("latin-1")], lines=False)
            assert_nowhere(raw, records.texts())
            assert_nowhere(raw, records.formatted(), lines=False)


class TestHostileHeaders:
    @pytest.mark.parametrize(("ids", "outcome"), WIRE)
    def test_replaced_or_refused_by_the_server(
        self, replacing: Served, records: Records, ids: list[bytes], outcome: str
    ) -> None:
        """Raw bytes on a socket: aiohttp refuses the request itself (its 400, no id, no handler), or the
        middleware replaces the value with a fresh 32-hex id that the response, the handler and both lines
        of the request carry; no value sent appears in any response byte or log record."""
        tag = new_tag("hostile")
        response = get(replacing.port, f"/echo/{tag}", ids)
        if outcome == REFUSED:
            assert response.status == 400
            assert response.values(ID) == []
            assert tag not in replacing.called
            return
        assert response.status == 200
        request_id = response.id()
        if outcome == REPLACED:
            assert HEX32(request_id), request_id
            assert_raw_nowhere(ids, response, records)
        else:
            assert request_id == outcome
            assert response.values(b"set-cookie") == []
        seen = response.json()
        assert seen["store"] == request_id
        assert [value for name, value in seen["headers"] if name.lower() == HEADER.lower()] == [request_id]
        assert [value for name, value in seen["raw"] if name.lower() == HEADER.lower()] == [request_id]
        got = records.wait_until(lambda got: len(lines_of(got, tag)) == 3)
        assert sorted(what(r) for r in lines_of(got, tag)) == ["access", "handler", "prepare"]
        assert {r.__dict__["request_id"] for r in lines_of(got, tag)} == {request_id}

    @pytest.mark.parametrize(("ids", "outcome"), WIRE)
    def test_rejected_with_400(
        self, rejecting: Served, records: Records, ids: list[bytes], outcome: str
    ) -> None:
        """on_invalid="reject": each value that reaches the middleware and is not a valid id gets the
        middleware's 400, ``text/plain``, with a fresh 32-hex id; the handler is not called; the access line
        of that 400 carries the new id (current in the request's task); no value sent appears anywhere."""
        tag = new_tag("rejected")
        path = f"/echo/{tag}"
        response = get(rejecting.port, path, ids)
        if outcome == REFUSED:
            assert response.status == 400
            assert response.values(ID) == []
        elif outcome == REPLACED:
            assert response.status == 400
            request_id = response.id()
            assert HEX32(request_id), request_id
            assert response.body == BAD_REQUEST
            assert response.values(b"content-type") == [b"text/plain; charset=utf-8"]
            got = records.wait_until(lambda got: len(lines_of(got, tag)) == 2)
            access = [r for r in lines_of(got, tag) if r.name == "aiohttp.access"]
            assert [(r.__dict__["request_id"], r.getMessage()) for r in access] == [
                (request_id, f'"GET {path} HTTP/1.1" 400 {request_id}')
            ]
            # The app's own on_response_prepare handler, after ours, sees the new id too.
            [prepare] = [r for r in lines_of(got, tag) if what(r) == "prepare"]
            assert (prepare.__dict__["request_id"], prepare.__dict__["header"]) == (request_id, [request_id])
            assert_raw_nowhere(ids, response, records)
        else:
            assert response.status == 200
            assert response.id() == outcome
        assert (tag in rejecting.called) == (outcome not in (REFUSED, REPLACED))

    @pytest.mark.parametrize("sent", [None, NGINX], ids=["missing", "valid"])
    def test_reject_lets_valid_and_missing_through(
        self, rejecting: Served, records: Records, sent: str | None
    ) -> None:
        """on_invalid="reject": no header, or a valid one, is not rejected: the handler runs under the id."""
        tag = new_tag("accepted")
        response = get(rejecting.port, f"/echo/{tag}", [] if sent is None else [sent.encode()])
        assert response.status == 200
        request_id = response.id()
        if sent is None:
            assert HEX32(request_id), request_id
        else:
            assert request_id == sent
        assert tag in rejecting.called
        assert response.json()["store"] == request_id
        got = records.wait_until(lambda got: len(lines_of(got, tag)) == 3)
        assert {r.__dict__["request_id"] for r in lines_of(got, tag)} == {request_id}


# --- The handler's request ----------------------------------------------------------------------


class TestHandlersRequest:
    def test_other_headers_pass_unchanged(self, replacing: Served) -> None:
        """Replacing the id (here: a repeated header) keeps every other header, repeated ones and their
        order included, in ``headers`` and ``raw_headers``; ours comes last, once."""
        response = get(
            replacing.port,
            f"/echo/{new_tag('others')}",
            [b"one", b"two"],
            [b"X-Other: 1", b"Accept: */*", b"X-Other: 2"],
        )
        request_id = response.id()
        seen = response.json()
        expected = [
            ["Host", "127.0.0.1"],
            ["X-Other", "1"],
            ["Accept", "*/*"],
            ["X-Other", "2"],
            ["Connection", "close"],
            [HEADER, request_id],
        ]
        assert seen["headers"] == expected
        assert seen["raw"] == expected

    def test_a_header_that_is_not_utf8_does_not_break_the_clone(self, replacing: Served) -> None:
        """A non-UTF-8 byte in another header (which ``request.clone(headers=...)`` cannot re-encode): the
        handler still gets the id as the only ``X-Request-ID``, and that header as aiohttp gave it: in
        ``headers`` surrogate-escaped, in ``raw_headers`` the bytes sent."""
        response = get(replacing.port, f"/echo/{new_tag('latin1')}", [], [b"User-Agent: caf\xe9"])
        assert response.status == 200
        request_id = response.id()
        assert HEX32(request_id)
        seen = response.json()
        assert ["User-Agent", "caf\udce9"] in seen["headers"]
        assert ["User-Agent", "caf\xe9"] in seen["raw"]  # the raw bytes, read back as latin-1
        assert [value for name, value in seen["headers"] if name == HEADER] == [request_id]
        assert [value for name, value in seen["raw"] if name == HEADER] == [request_id]

    def test_the_request_is_cloned_only_when_its_header_is_not_the_id(self, records: Records) -> None:
        """A probe outside the middleware records the server's request object: the handler gets that very
        object when the request carries exactly the id, a clone (whose state, our ids included, it shares)
        otherwise; the probe, running before the middleware in the request's task, sees no id."""
        server_requests: dict[str, web.Request] = {}
        before_us: list[str | None] = []

        @web.middleware
        async def probe(request: web.Request, handler: Any) -> web.StreamResponse:
            server_requests[request.path] = request
            before_us.append(storage.get_store())
            return await handler(request)

        same: dict[str, bool] = {}

        async def which(request: web.Request) -> web.Response:
            same[request.path] = request is server_requests[request.path]
            return web.Response(text=str(storage.get_store()))

        app = web.Application()
        app.router.add_get("/{tag}", which)
        setup(app, storage)
        app.middlewares.insert(0, probe)  # outside ours, for this test only
        with serving(app) as port:
            exact = get(port, "/exact", [NGINX.encode()])
            missing = get(port, "/missing")
            repeated = get(port, "/repeated", [NGINX.encode(), NGINX.encode()])
        assert (exact.id(), exact.body) == (NGINX, NGINX.encode())
        assert HEX32(missing.id())
        assert HEX32(repeated.id())
        assert same == {"/exact": True, "/missing": False, "/repeated": False}
        assert before_us == [None, None, None]


# --- Responses ----------------------------------------------------------------------------------


class TestWithoutSetup:
    def test_only_what_the_middleware_sees_carries_the_id(self, records: Records) -> None:
        """The middleware alone in ``middlewares=[...]``, no on_response_prepare handler: a returned
        response and a raised HTTPException carry the id (the app's value replaced); a response prepared in
        the handler and aiohttp's own 500 keep what they had (the app's value, nothing); every line still
        carries the id, aiohttp's access and error lines included."""
        tags = {kind: new_tag(kind) for kind in ("echo", "forbidden", "stream", "boom")}
        with serving(make_app(wiring="list")) as port:
            got = {kind: get(port, f"/{kind}/{tag}", [NGINX.encode()]) for kind, tag in tags.items()}
            seen = records.wait_until(lambda got: sum(r.name == "aiohttp.access" for r in got) >= 4)
        assert sum(r.name == "aiohttp.access" for r in seen) == 4
        assert {kind: (r.status, r.values(ID)) for kind, r in got.items()} == {
            "echo": (200, [NGINX.encode()]),
            "forbidden": (403, [NGINX.encode()]),
            "stream": (200, [APP_OWN.encode()]),
            "boom": (500, []),
        }
        assert got["stream"].body == f"{NGINX}\n".encode() * 3
        for tag in tags.values():
            lines = lines_of(seen, tag)
            assert lines
            assert {r.__dict__["request_id"] for r in lines} == {NGINX}, tag
        assert any(what(r) == "error" for r in lines_of(seen, tags["boom"]))

    def test_the_on_response_prepare_handler_by_hand(self, records: Records) -> None:
        """``app.on_response_prepare.append(middleware.on_response_prepare)``, with the middleware listed by
        hand: the streamed response and aiohttp's 500 carry the id too."""
        middleware = request_id_middleware(storage)
        app = web.Application(middlewares=[middleware])
        app[CALLED] = []
        app.router.add_get("/stream/{tag}", stream)
        app.router.add_get("/boom/{tag}", boom)
        app.on_response_prepare.append(middleware.on_response_prepare)
        with serving(app) as port:
            streamed = get(port, f"/stream/{new_tag('stream')}", [UUID.encode()])
            failed = get(port, f"/boom/{new_tag('boom')}")
        assert (streamed.status, streamed.id()) == (200, UUID)
        assert failed.status == 500
        assert HEX32(failed.id())


class TestResponses:
    def test_websocket_handshake_carries_the_id(self, records: Records) -> None:
        """A ``WebSocketResponse`` prepared in the handler: the 101 handshake carries the id (through the
        on_response_prepare handler), and the handler runs under it."""
        tag = new_tag("ws")

        async def socket_handler(request: web.Request) -> web.StreamResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            log.info("ws open", extra={"tag": tag})
            async for _ in ws:  # until the client goes away
                pass
            return ws

        app = web.Application()
        app.router.add_get("/ws", socket_handler)
        setup(app, storage)
        upgrade = [
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            b"Sec-WebSocket-Version: 13",
        ]
        with serving(app) as port:
            [handshake] = bounded(exchange(port, [request_bytes("/ws", [UUID.encode()], upgrade)]))
            seen = records.wait_until(lambda got: len(lines_of(got, tag)) == 1)
        assert (handshake.status, handshake.id()) == (101, UUID)
        assert [r.__dict__["request_id"] for r in lines_of(seen, tag)] == [UUID]

    def test_a_handler_that_returns_nothing_gets_aiohttps_500_with_the_id(self, records: Records) -> None:
        """A handler that returns None: aiohttp's own 500 carries the id, and its "Missing return
        statement" line too."""

        async def forgot(request: web.Request) -> Any:
            return None

        app = web.Application()
        app.router.add_get("/forgot", forgot)
        setup(app, storage)
        with serving(app) as port:
            response = get(port, "/forgot", [NGINX.encode()])
            seen = records.wait_until(lambda got: any(r.name == "aiohttp.access" for r in got))
        assert (response.status, response.id()) == (500, NGINX)
        [missing] = [r for r in seen if r.getMessage().startswith("Missing return statement")]
        assert missing.__dict__["request_id"] == NGINX

    @pytest.mark.parametrize(
        ("generated", "error"),
        [
            (42, "must return str, not int"),
            ("bad\r\nX-Evil: 1", "returned a str that is not a safe header value"),
        ],
        ids=["not-str", "unsafe"],
    )
    def test_a_bad_generated_id_fails_the_request_without_it(
        self, records: Records, generated: Any, error: str
    ) -> None:
        """A custom generator's bad id fails the request before any id is current: aiohttp's 500 without
        an id header, its error line naming the generator and never showing the value."""
        app = web.Application()
        app.router.add_get("/echo/{tag}", echo)
        app[CALLED] = []
        setup(app, storage, generator=lambda: generated)
        with serving(app) as port:
            response = get(port, f"/echo/{new_tag('generated')}")
            seen = records.wait_until(lambda got: any(r.name == "aiohttp.access" for r in got))
        assert response.status == 500
        assert response.values(ID) == []
        assert app[CALLED] == []
        [failed] = [r for r in seen if r.getMessage().startswith("Error handling request")]
        assert failed.__dict__["request_id"] == "-"
        assert failed.exc_info is not None
        assert str(failed.exc_info[1]).startswith(f"setup() argument 'generator' {error}")
        if isinstance(generated, str):
            assert_nowhere(generated, records.formatted(), lines=False)


class TestSubApplications:
    def test_setup_on_the_main_app_covers_a_sub_application(self, records: Records) -> None:
        """``setup()`` on the main app: a sub-application's routes run under the id, and their responses,
        aiohttp's 500 included, carry it."""
        sub = web.Application()
        sub[CALLED] = []
        sub.router.add_get("/echo/{tag}", echo)
        sub.router.add_get("/boom/{tag}", boom)
        app = web.Application()
        setup(app, storage)
        app.add_subapp("/sub", sub)
        with serving(app) as port:
            echoed = get(port, f"/sub/echo/{new_tag('echo')}", [UUID.encode()])
            failed = get(port, f"/sub/boom/{new_tag('boom')}", [NGINX.encode()])
        assert (echoed.status, echoed.id(), echoed.json()["store"]) == (200, UUID, UUID)
        assert (failed.status, failed.id()) == (500, NGINX)


# --- Keep-alive ---------------------------------------------------------------------------------


class TestKeepAlive:
    def test_nothing_leaks_to_the_next_request_on_the_connection(self, records: Records) -> None:
        """Three requests on one connection: with an id, without one, with another. The second gets a NEW
        id; a probe outside the middleware sees no id at the start of any of them (each runs in a task of
        its own) and, after awaiting the middleware, that request's id (``enter_with`` in the task that
        awaited it); no line of the second or third request, nor any line after the first request's,
        carries the first id."""
        before_us: list[str | None] = []
        after_us: list[str | None] = []

        @web.middleware
        async def probe(request: web.Request, handler: Any) -> web.StreamResponse:
            before_us.append(storage.get_store())
            response = await handler(request)  # the middleware, awaited in this task
            after_us.append(storage.get_store())
            return response

        app = make_app()
        app.middlewares.insert(0, probe)  # outside ours: what the request's task starts with
        first, second, third = (new_tag("echo") for _ in range(3))
        with serving(app) as port:
            responses = bounded(
                exchange(
                    port,
                    [
                        request_bytes(f"/echo/{first}", [UUID.encode()]),
                        request_bytes(f"/echo/{second}"),
                        request_bytes(f"/echo/{third}", [NGINX.encode()], [b"Connection: close"]),
                    ],
                )
            )
            seen = records.wait_until(lambda got: sum(r.name == "aiohttp.access" for r in got) >= 3)
        assert sum(r.name == "aiohttp.access" for r in seen) == 3
        ids = [response.id() for response in responses]
        assert ids[0] == UUID
        assert HEX32(ids[1])
        assert ids[1] != UUID
        assert ids[2] == NGINX
        assert [response.json()["store"] for response in responses] == ids
        assert before_us == [None, None, None]
        assert after_us == ids  # left current in the task that awaited it: the request's own
        for tag, request_id in zip((first, second, third), ids, strict=True):
            assert sorted(what(r) for r in lines_of(seen, tag)) == ["access", "handler", "prepare"]
            assert {r.__dict__["request_id"] for r in lines_of(seen, tag)} == {request_id}
        ours = [r for r in seen if r.name in LOGGERS]
        last_of_first = max(i for i, r in enumerate(ours) if tag_of(r) == first)
        assert [r for r in ours[last_of_first + 1 :] if r.__dict__["request_id"] == UUID] == []


# --- Construction and setup() -------------------------------------------------------------------


class TestConstruction:
    @pytest.mark.parametrize(
        ("options", "error", "message"),
        [
            ({"storage": object()}, TypeError, "argument 'storage' must be an AsyncLocalStorage, not object"),
            ({"header": 5}, TypeError, "argument 'header' must be str, not int"),
            ({"header": "X Request"}, ValueError, "argument 'header' must be a valid HTTP header name"),
            ({"trust_incoming": "yes"}, TypeError, "argument 'trust_incoming' must be bool, not str"),
            ({"generator": 5}, TypeError, "argument 'generator' must be callable or None, not int"),
            ({"validator": "x"}, TypeError, "argument 'validator' must be callable or None, not str"),
            ({"on_invalid": "drop"}, ValueError, "argument 'on_invalid' must be 'replace' or 'reject'"),
        ],
    )
    def test_bad_options_name_the_argument(self, options: dict[str, Any], error: type, message: str) -> None:
        """A bad option is refused at once, naming the function called and the argument; ``setup()``
        changes nothing on the app then."""
        arguments = {"storage": storage, **options}
        with pytest.raises(error, match=re.escape(f"request_id_middleware() {message}")):
            request_id_middleware(**arguments)
        app = web.Application()
        with pytest.raises(error, match=re.escape(f"setup() {message}")):
            setup(app, **arguments)
        assert (list(app.middlewares), list(app.on_response_prepare)) == ([], [])

    @pytest.mark.parametrize("app", [object(), None, web.Server], ids=["object", "None", "Server-class"])
    def test_setup_needs_an_application(self, app: Any) -> None:
        with pytest.raises(
            TypeError,
            match=rf"setup\(\) argument 'app' must be an aiohttp.web.Application, not {type(app).__name__}$",
        ):
            setup(app, storage)

    def test_new_style(self) -> None:
        """aiohttp takes it as a new-style middleware: no deprecation warning (which the suite makes an error)
        when the app freezes."""
        middleware = request_id_middleware(storage)
        assert isinstance(middleware, RequestIdMiddleware)
        assert middleware.__middleware_version__ == 1
        assert (middleware.storage, middleware.header) == (storage, HEADER)
        app = web.Application(middlewares=[middleware])
        app.pre_freeze()

    def test_setup_inserts_outermost_and_connects_the_handler(self) -> None:
        """``setup()`` puts the middleware first, before those already listed, and appends its
        ``on_response_prepare`` handler after those already connected."""

        @web.middleware
        async def other(request: web.Request, handler: Any) -> web.StreamResponse:
            return await handler(request)

        app = web.Application(middlewares=[other])
        app.on_response_prepare.append(log_prepare)
        middleware = setup(app, storage, header="X-Correlation-ID", on_invalid="reject")
        assert list(app.middlewares) == [middleware, other]
        assert list(app.on_response_prepare) == [log_prepare, middleware.on_response_prepare]
        assert middleware.header == "X-Correlation-ID"

    def test_setup_on_a_started_app_refuses_and_changes_nothing(self) -> None:
        """aiohttp freezes both lists when the app starts (or becomes a sub-application): ``setup()`` then
        raises aiohttp's RuntimeError, and leaves the app as it was."""
        app = web.Application()
        app.pre_freeze()
        with pytest.raises(RuntimeError, match="frozen"):
            setup(app, storage)
        assert (list(app.middlewares), list(app.on_response_prepare)) == ([], [])
