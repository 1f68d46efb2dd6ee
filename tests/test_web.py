"""als.web: request ids at the edge, WSGI and ASGI middleware called directly, hostile headers included."""

from __future__ import annotations

import contextvars
import io
import itertools
import logging
import sys
import threading
import wsgiref.util
import wsgiref.validate
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import anyio
import anyio.to_thread
import pytest

import als
import als.web
from als import AsyncLocalStorage
from als.logging import ContextFilter
from als.web import (
    ASGIRequestId,
    WSGIRequestId,
    is_safe_header_value,
    is_valid_request_id,
    new_request_id,
)

from .helpers import TIMEOUT, Recorder, Worker, join_all

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
NGINX = "6e7f1b0a9c3d4e5f60718293a4b5c6d7"  # nginx's $request_id: 32 hex digits
KEY = "HTTP_X_REQUEST_ID"
NAME = b"x-request-id"

var: contextvars.ContextVar[str] = contextvars.ContextVar("als-test-web", default="unset")
log = logging.getLogger("als.tests.web")

Headers = list[tuple[str, str]]


def counting_generator(prefix: str = "gen") -> Callable[[], str]:
    """A generator of predictable ids: gen-1, gen-2, ..."""
    numbers = itertools.count(1)
    return lambda: f"{prefix}-{next(numbers)}"


# --- WSGI tools ---------------------------------------------------------------------------------


def make_environ(value: str | None = None, **extra: Any) -> dict[str, Any]:
    """A complete PEP 3333 environ, with X-Request-ID set to ``value`` unless it is None."""
    environ: dict[str, Any] = {"QUERY_STRING": "", **extra}
    wsgiref.util.setup_testing_defaults(environ)
    if value is not None:
        environ[KEY] = value
    return environ


class StartResponse:
    """A server's start_response that records each call, and what the app writes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Headers, Any]] = []
        self.written: list[bytes] = []

    def __call__(self, status: str, headers: Headers, exc_info: Any = None) -> Callable[[bytes], object]:
        self.calls.append((status, list(headers), exc_info))
        return self.written.append

    @property
    def status(self) -> str:
        return self.calls[-1][0]

    @property
    def headers(self) -> Headers:
        return self.calls[-1][1]


def values(headers: Iterable[tuple[Any, Any]], name: Any) -> list[Any]:
    """The values of every header called ``name``, case-insensitively."""
    return [value for key, value in headers if key.lower() == name.lower()]


def serve(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> tuple[StartResponse, bytes]:
    """Call a WSGI app as a server does: call, iterate, close. Returns the recorder and the body."""
    start_response = StartResponse()
    response = app(environ, start_response)
    try:
        body = b"".join(response)
    finally:
        close = getattr(response, "close", None)
        if close is not None:
            close()
    return start_response, b"".join(start_response.written) + body


def linted(app: Any) -> Any:
    """wsgiref's PEP 3333 validator, around an app or around the middleware."""
    return wsgiref.validate.validator(app)


def hello_app(
    storage: AsyncLocalStorage[object], seen: list[tuple[str | None, object]] | None = None
) -> Callable[..., Iterable[bytes]]:
    """A WSGI app answering 200, recording (the id header it sees, the store)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if seen is not None:
            seen.append((environ.get(KEY), storage.get_store()))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    return app


# --- ASGI tools ---------------------------------------------------------------------------------


def http_scope(*headers: tuple[bytes, bytes], kind: str = "http", **extra: Any) -> dict[str, Any]:
    scope = {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "path": "/",
        "headers": [(b"host", b"example.com"), *headers, (b"accept", b"*/*")],
    }
    scope.update(extra)
    return scope


class Channel:
    """The server's side of an ASGI connection: queued events in, sent messages out.

    Both callables record the store current where they are called: the app
    calls them from inside the request.
    """

    def __init__(self, storage: AsyncLocalStorage[object], *events: dict[str, Any]) -> None:
        self.storage = storage
        self.events = list(events) or [{"type": "http.request", "body": b"", "more_body": False}]
        self.sent: list[dict[str, Any]] = []
        self.seen: list[tuple[str, object]] = []

    async def receive(self) -> dict[str, Any]:
        self.seen.append(("receive", self.storage.get_store()))
        return self.events.pop(0)

    async def send(self, message: Any) -> None:
        self.seen.append((f"send {message['type']}", self.storage.get_store()))
        self.sent.append(message)

    async def serve(self, app: Callable[..., Any], scope: dict[str, Any]) -> None:
        """Run ``app`` (an ASGI app or middleware) on ``scope`` over this channel."""
        await app(scope, self.receive, self.send)

    def starts(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"].endswith(("response.start", ".accept"))]

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"].endswith("response.body"))


def asgi_hello(
    storage: AsyncLocalStorage[object], seen: list[tuple[Any, object]] | None = None
) -> Callable[..., Any]:
    """An ASGI app answering 200, recording (the scope it got, the store)."""

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if seen is not None:
            seen.append((scope, storage.get_store()))
        await receive()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"hello"})

    return app


# --- The defaults -------------------------------------------------------------------------------


class TestDefaults:
    @pytest.mark.parametrize("value", [UUID, NGINX, UUID.replace("-", ""), "a" * 128, "req.1_a:B-2"])
    def test_valid_ids(self, value: str) -> None:
        """uuids, nginx ids and 1-128 characters of [A-Za-z0-9._:-] pass the default validator."""
        assert is_valid_request_id(value)

    @pytest.mark.parametrize("value", ["", "a" * 129, "abc\n", "abc def", "abc/def", "caf\xe9", "a,b"])
    def test_invalid_ids(self, value: str) -> None:
        """Empty, too long, a trailing newline (fullmatch, not $), and any other character fail."""
        assert not is_valid_request_id(value)

    def test_new_ids_are_unique_hex_and_valid(self) -> None:
        """The default generator makes 32 hex digits, distinct, accepted by the default validator."""
        ids = [new_request_id() for _ in range(1000)]
        assert len(set(ids)) == 1000
        assert all(len(i) == 32 and int(i, 16) >= 0 and is_valid_request_id(i) for i in ids)

    def test_safety_floor(self) -> None:
        """The floor: 1-1024 printable ASCII characters, no space at either end."""
        assert is_safe_header_value("a")
        assert is_safe_header_value("a b")
        assert is_safe_header_value("!" + "x" * 1022 + "~")
        assert not is_safe_header_value("x" * 1025)
        for bad in ["", " ", " a", "a ", "a\tb", "a\r\nb", "a\x00", "a\x7f", "a\x85", "caf\xe9", "\u0430"]:
            assert not is_safe_header_value(bad), repr(bad)

    def test_module_surface(self) -> None:
        """__all__ lists the public names, sorted; each is documented and defined in als.web."""
        assert als.web.__all__ == sorted(als.web.__all__)
        for name in als.web.__all__:
            obj = getattr(als.web, name)
            assert obj.__module__ == "als.web", name
            assert obj.__doc__, name
        assert "web" not in als.__all__


# --- Construction -------------------------------------------------------------------------------


MIDDLEWARES = [pytest.param(WSGIRequestId, id="wsgi"), pytest.param(ASGIRequestId, id="asgi")]


@pytest.mark.parametrize("middleware", MIDDLEWARES)
class TestConstruction:
    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"app": 42}, TypeError, r"argument 'app' must be callable, not int"),
            ({"storage": "s"}, TypeError, r"argument 'storage' must be an AsyncLocalStorage, not str"),
            ({"header": b"X-Request-ID"}, TypeError, r"argument 'header' must be str, not bytes"),
            ({"header": "X Request ID"}, ValueError, r"argument 'header' must be a valid HTTP header name"),
            ({"header": ""}, ValueError, r"argument 'header' must be a valid HTTP header name.*got ''"),
            ({"header": "X-Request-ID\n"}, ValueError, r"argument 'header' must be a valid HTTP header name"),
            ({"header": "X-Request-ID:"}, ValueError, r"argument 'header' must be a valid HTTP header name"),
            ({"header": "Content-Type"}, ValueError, r"argument 'header' must not be a header HTTP itself"),
            ({"header": "content-length"}, ValueError, r"argument 'header' must not.*'content-length'"),
            ({"header": "Host"}, ValueError, r"argument 'header' must not be a header HTTP itself uses"),
            ({"trust_incoming": "yes"}, TypeError, r"argument 'trust_incoming' must be bool, not str"),
            ({"generator": "uuid4"}, TypeError, r"argument 'generator' must be callable or None, not str"),
            ({"validator": 1}, TypeError, r"argument 'validator' must be callable or None, not int"),
            (
                {"on_invalid": "drop"},
                ValueError,
                r"argument 'on_invalid' must be 'replace' or 'reject', got 'drop'",
            ),
            (
                {"on_invalid": None},
                ValueError,
                r"argument 'on_invalid' must be 'replace' or 'reject', got None",
            ),
        ],
    )
    def test_bad_configuration_fails_at_construction(
        self,
        middleware: type[Any],
        storage: AsyncLocalStorage[object],
        kwargs: dict[str, Any],
        error: type[Exception],
        message: str,
    ) -> None:
        """Each bad argument raises at construction, naming the class, the argument and what came."""
        arguments: dict[str, Any] = {"app": hello_app(storage), "storage": storage, **kwargs}
        app, storage_argument = arguments.pop("app"), arguments.pop("storage")
        with pytest.raises(error, match=rf"^{middleware.__name__}\(\) {message}"):
            middleware(app, storage_argument, **arguments)

    def test_options_are_keyword_only(
        self, middleware: type[Any], storage: AsyncLocalStorage[object]
    ) -> None:
        """Options after app and storage must be named: WSGIRequestId(app, storage, 'X-Id') is refused."""
        with pytest.raises(TypeError, match="positional argument"):
            middleware(hello_app(storage), storage, "X-Id")

    def test_configuration_read_back(self, middleware: type[Any], storage: AsyncLocalStorage[object]) -> None:
        """app, storage and header read back as given."""
        app = hello_app(storage)
        wrapped = middleware(app, storage, header="X-Correlation-ID")
        assert (wrapped.app, wrapped.storage, wrapped.header) == (app, storage, "X-Correlation-ID")


# --- WSGI ---------------------------------------------------------------------------------------


class TestWSGIIncoming:
    @pytest.mark.parametrize("incoming", [UUID, NGINX, "a" * 128])
    def test_valid_id_is_stored_echoed_and_in_the_environ(
        self, storage: AsyncLocalStorage[object], incoming: str
    ) -> None:
        """A valid incoming id is the store in the app, the environ's header, and the response's header."""
        seen: list[tuple[str | None, object]] = []
        app = linted(WSGIRequestId(linted(hello_app(storage, seen)), storage))
        start_response, body = serve(app, make_environ(incoming))
        assert seen == [(incoming, incoming)]
        assert start_response.status == "200 OK"
        assert values(start_response.headers, "X-Request-ID") == [incoming]
        assert body == b"hello"
        assert storage.get_store() is None

    def test_missing_header_generates(self, storage: AsyncLocalStorage[object]) -> None:
        """Without the header, a new default id is made, stored, placed in the environ and echoed."""
        seen: list[tuple[str | None, object]] = []
        start_response, _ = serve(linted(WSGIRequestId(hello_app(storage, seen), storage)), make_environ())
        [(in_environ, stored)] = seen
        assert isinstance(stored, str)
        assert len(stored) == 32
        assert is_valid_request_id(stored)
        assert in_environ == stored
        assert values(start_response.headers, "X-Request-ID") == [stored]

    def test_each_request_gets_its_own_id(self, storage: AsyncLocalStorage[object]) -> None:
        """Two requests without the header get two different ids."""
        seen: list[tuple[str | None, object]] = []
        app = WSGIRequestId(hello_app(storage, seen), storage)
        serve(app, make_environ())
        serve(app, make_environ())
        assert seen[0][1] != seen[1][1]

    def test_untrusted_incoming_is_replaced(self, storage: AsyncLocalStorage[object]) -> None:
        """trust_incoming=False: even a valid id is replaced, in the store, the environ and the response."""
        seen: list[tuple[str | None, object]] = []
        app = WSGIRequestId(
            hello_app(storage, seen), storage, trust_incoming=False, generator=counting_generator()
        )
        start_response, _ = serve(linted(app), make_environ(UUID))
        assert seen == [("gen-1", "gen-1")]
        assert values(start_response.headers, "X-Request-ID") == ["gen-1"]

    def test_untrusted_never_rejects(self, storage: AsyncLocalStorage[object]) -> None:
        """trust_incoming=False with on_invalid='reject': an invalid header is replaced, not answered 400."""
        seen: list[tuple[str | None, object]] = []
        app = WSGIRequestId(
            hello_app(storage, seen),
            storage,
            trust_incoming=False,
            on_invalid="reject",
            generator=counting_generator(),
        )
        start_response, _ = serve(app, make_environ("bad value"))
        assert start_response.status == "200 OK"
        assert seen == [("gen-1", "gen-1")]

    def test_configured_header_name(self, storage: AsyncLocalStorage[object]) -> None:
        """header='x-correlation-id' reads HTTP_X_CORRELATION_ID and answers with the configured name."""
        seen: list[tuple[str | None, object]] = []

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            seen.append((environ.get("HTTP_X_CORRELATION_ID"), storage.get_store()))
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b""]

        middleware = WSGIRequestId(app, storage, header="x-correlation-id")
        environ = make_environ(UUID)  # X-Request-ID is not the configured header: ignored, untouched
        environ["HTTP_X_CORRELATION_ID"] = NGINX
        start_response, _ = serve(linted(middleware), environ)
        assert seen == [(NGINX, NGINX)]
        assert [name for name, _ in start_response.headers] == ["Content-Type", "x-correlation-id"]
        assert values(start_response.headers, "x-correlation-id") == [NGINX]
        assert environ[KEY] == UUID


class TestWSGIResponse:
    def test_app_set_header_is_not_duplicated(self, storage: AsyncLocalStorage[object]) -> None:
        """An id header the app set, in any case, is replaced by ours: exactly one in the response."""

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            start_response(
                "200 OK",
                [("x-request-id", "made-by-app"), ("Content-Type", "text/plain"), ("X-REQUEST-ID", "again")],
            )
            return [b""]

        start_response, _ = serve(linted(WSGIRequestId(linted(app), storage)), make_environ(UUID))
        assert start_response.headers == [("Content-Type", "text/plain"), ("X-Request-ID", UUID)]

    def test_app_headers_list_is_not_mutated(self, storage: AsyncLocalStorage[object]) -> None:
        """The list the app passed to start_response is left as it was (it may be shared)."""
        shared = [("Content-Type", "text/plain")]

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            start_response("200 OK", shared)
            return [b""]

        serve(WSGIRequestId(app, storage), make_environ(UUID))
        assert shared == [("Content-Type", "text/plain")]

    def test_exc_info_passes_through_and_carries_the_id(self, storage: AsyncLocalStorage[object]) -> None:
        """A second start_response with exc_info reaches the server unchanged, with the id header."""
        exc_info: list[Any] = []

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            try:
                raise ValueError("boom")
            except ValueError:
                exc_info.append(sys.exc_info())
                start_response("500 Internal Server Error", [("Content-Type", "text/plain")], exc_info[0])
            return [b"error"]

        start_response, body = serve(linted(WSGIRequestId(linted(app), storage)), make_environ(UUID))
        [(_, first, none), (status, headers, passed)] = start_response.calls
        assert none is None
        assert passed is exc_info[0]
        assert status == "500 Internal Server Error"
        assert values(first, "X-Request-ID") == values(headers, "X-Request-ID") == [UUID]
        assert body == b"error"

    def test_server_write_callable_is_returned(self, storage: AsyncLocalStorage[object]) -> None:
        """start_response returns the server's own write callable; what the app writes reaches it."""

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            write(b"written ")
            return [b"returned"]

        _, body = serve(linted(WSGIRequestId(linted(app), storage)), make_environ(UUID))
        assert body == b"written returned"

    def test_list_response_is_returned_as_is(self, storage: AsyncLocalStorage[object]) -> None:
        """A list runs no code when iterated: it is returned itself, so servers can still take its len()."""
        body = [b"hello"]

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return body

        assert WSGIRequestId(app, storage)(make_environ(UUID), StartResponse()) is body

    def test_file_wrapper_is_returned_untouched(self, storage: AsyncLocalStorage[object]) -> None:
        """An instance of environ['wsgi.file_wrapper'] is returned itself, so sendfile still applies."""
        wrappers: list[Any] = []

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            wrappers.append(environ["wsgi.file_wrapper"](io.BytesIO(b"file body"), 4))
            return wrappers[0]

        environ = make_environ(UUID, **{"wsgi.file_wrapper": wsgiref.util.FileWrapper})
        start_response = StartResponse()
        response = WSGIRequestId(app, storage)(environ, start_response)
        assert response is wrappers[0]
        assert b"".join(response) == b"file body"
        assert values(start_response.headers, "X-Request-ID") == [UUID]

    def test_file_wrapper_that_is_not_a_class(self, storage: AsyncLocalStorage[object]) -> None:
        """A wsgi.file_wrapper that is a function cannot be recognised: the response is wrapped, and works."""

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return environ["wsgi.file_wrapper"](io.BytesIO(b"file body"))

        environ = make_environ(
            UUID, **{"wsgi.file_wrapper": lambda f, size=8192: wsgiref.util.FileWrapper(f, size)}
        )
        _, body = serve(WSGIRequestId(app, storage), environ)
        assert body == b"file body"


class TestWSGIStreaming:
    def test_every_step_and_close_run_under_the_id(self, storage: AsyncLocalStorage[object]) -> None:
        """Each chunk and close() see the id after the app callable returned; the server thread never does,
        and a ContextVar set by one chunk is seen by the next."""
        recorder = Recorder()

        class Body:
            def __iter__(self) -> Iterator[bytes]:
                recorder("iter", storage.get_store())
                return self.chunks()

            def chunks(self) -> Iterator[bytes]:
                recorder("chunk 1", (storage.get_store(), var.get()))
                var.set("set by chunk 1")
                yield b"1"
                recorder("chunk 2", (storage.get_store(), var.get()))
                yield b"2"

            def close(self) -> None:
                recorder("close", (storage.get_store(), var.get()))

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            recorder("app", storage.get_store())
            start_response("200 OK", [("Content-Type", "text/plain")])
            return Body()

        response = linted(WSGIRequestId(app, storage))(make_environ(UUID), StartResponse())
        recorder("server after call", (storage.get_store(), var.get()))
        iterator = iter(response)
        first = next(iterator)
        recorder("server between chunks", (storage.get_store(), var.get()))
        rest = list(iterator)
        response.close()
        recorder("server after close", (storage.get_store(), var.get()))
        assert [first, *rest] == [b"1", b"2"]
        assert recorder.seen == [
            ("app", UUID),
            ("iter", UUID),
            ("server after call", (None, "unset")),
            ("chunk 1", (UUID, "unset")),
            ("server between chunks", (None, "unset")),
            ("chunk 2", (UUID, "set by chunk 1")),
            ("close", (UUID, "set by chunk 1")),
            ("server after close", (None, "unset")),
        ]

    def test_generator_app_logs_with_the_id(self, storage: AsyncLocalStorage[object]) -> None:
        """A generator app (start_response called on the first step) logs the id at every step and in its
        finally block, run by close() before the end."""
        handler_records: list[str] = []

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                handler_records.append(self.format(record))

        handler = Handler()
        handler.setFormatter(logging.Formatter("%(request_id)s %(message)s"))
        handler.addFilter(ContextFilter(storage))
        log.addHandler(handler)
        try:

            def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
                start_response("200 OK", [("Content-Type", "text/plain")])
                try:
                    for n in range(3):
                        log.warning("chunk %d", n)
                        yield b"x"
                finally:
                    log.warning("cleanup")

            start_response = StartResponse()
            response = WSGIRequestId(app, storage)(make_environ(NGINX), start_response)
            log.warning("server")
            iterator = iter(response)
            next(iterator)
            next(iterator)
            response.close()  # before the end: the generator's finally runs now
        finally:
            log.removeHandler(handler)
        assert handler_records == ["- server", f"{NGINX} chunk 0", f"{NGINX} chunk 1", f"{NGINX} cleanup"]
        assert values(start_response.headers, "X-Request-ID") == [NGINX]

    def test_app_exception_propagates_without_leak(self, storage: AsyncLocalStorage[object]) -> None:
        """An app that raises before start_response: the same exception reaches the server, no store leaks."""
        error = RuntimeError("app failed")

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            raise error

        with pytest.raises(RuntimeError) as info:
            WSGIRequestId(app, storage)(make_environ(UUID), StartResponse())
        assert info.value is error
        assert storage.get_store() is None

    def test_concurrent_requests_never_cross(self, storage: AsyncLocalStorage[object]) -> None:
        """Threads streaming through one middleware at once each see only their own id, at every chunk."""
        n = 8
        barrier = threading.Barrier(n, timeout=TIMEOUT)
        recorder = Recorder()

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            for chunk in range(3):
                barrier.wait()  # every request is inside a chunk at once
                recorder(f"{environ['REQUEST_ID_EXPECTED']} chunk {chunk}", storage.get_store())
                yield b"x"

        middleware = WSGIRequestId(app, storage)

        def request(i: int) -> None:
            environ = make_environ(f"req-{i}", REQUEST_ID_EXPECTED=f"req-{i}")
            start_response, _ = serve(middleware, environ)
            recorder(f"req-{i} echoed", values(start_response.headers, "X-Request-ID")[0])
            recorder(f"req-{i} after", storage.get_store())

        workers = [Worker(request, i) for i in range(n)]
        for worker in workers:
            worker.start()
        join_all(workers)
        expected: dict[str, object] = {}
        for i in range(n):
            expected.update({f"req-{i} chunk {c}": f"req-{i}" for c in range(3)})
            expected.update({f"req-{i} echoed": f"req-{i}", f"req-{i} after": None})
        assert recorder.as_dict() == expected


class TestWSGIReject:
    def test_invalid_is_answered_400_without_calling_the_app(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        """on_invalid='reject': a 400 with a new, valid id in the header; the app is not called."""
        seen: list[tuple[str | None, object]] = []
        app = linted(WSGIRequestId(hello_app(storage, seen), storage, on_invalid="reject"))
        start_response, body = serve(app, make_environ("not valid!"))
        assert seen == []
        assert start_response.status == "400 Bad Request"
        [echoed] = values(start_response.headers, "X-Request-ID")
        assert is_valid_request_id(echoed)
        assert values(start_response.headers, "Content-Type") == ["text/plain; charset=utf-8"]
        assert values(start_response.headers, "Content-Length") == [str(len(body))]
        assert body == b"Bad Request: invalid X-Request-ID header\n"

    def test_missing_header_is_not_invalid(self, storage: AsyncLocalStorage[object]) -> None:
        """on_invalid='reject' without the header: the app runs with a generated id."""
        seen: list[tuple[str | None, object]] = []
        app = WSGIRequestId(
            hello_app(storage, seen), storage, on_invalid="reject", generator=counting_generator()
        )
        start_response, _ = serve(app, make_environ())
        assert start_response.status == "200 OK"
        assert seen == [("gen-1", "gen-1")]

    def test_valid_is_accepted(self, storage: AsyncLocalStorage[object]) -> None:
        """on_invalid='reject' lets a valid id through."""
        seen: list[tuple[str | None, object]] = []
        serve(WSGIRequestId(hello_app(storage, seen), storage, on_invalid="reject"), make_environ(UUID))
        assert seen == [(UUID, UUID)]


class TestValidatorAndGenerator:
    def test_custom_validator_gets_str_and_replaces_the_default(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        """A custom validator is called with the str value and alone decides: a 200-character id passes,
        a uuid fails."""
        calls: list[object] = []

        def long_ids_only(value: str) -> bool:
            calls.append(value)
            return len(value) == 200

        seen: list[tuple[str | None, object]] = []
        app = WSGIRequestId(
            hello_app(storage, seen), storage, validator=long_ids_only, generator=counting_generator()
        )
        serve(app, make_environ("a" * 200))
        serve(app, make_environ(UUID))
        assert calls == ["a" * 200, UUID]
        assert seen == [("a" * 200, "a" * 200), ("gen-1", "gen-1")]

    @pytest.mark.parametrize(
        "value",
        ["abc\r\nSet-Cookie: x=1", "abc\x00", "abc\x85", "caf\xe9", " abc", "abc ", "", "a" * 1025, "a,b"],
    )
    def test_floor_applies_under_any_validator(self, storage: AsyncLocalStorage[object], value: str) -> None:
        """validator=lambda v: True still never sees control characters, non-ASCII, edge spaces, overlong
        or comma-joined values: they are replaced before it is called."""
        calls: list[str] = []

        def anything(value: str) -> bool:
            calls.append(value)
            return True

        seen: list[tuple[str | None, object]] = []
        app = WSGIRequestId(
            hello_app(storage, seen), storage, validator=anything, generator=counting_generator()
        )
        start_response, _ = serve(app, make_environ(value))
        assert calls == []
        assert seen == [("gen-1", "gen-1")]
        assert values(start_response.headers, "X-Request-ID") == ["gen-1"]

    def test_floor_admits_up_to_1024(self, storage: AsyncLocalStorage[object]) -> None:
        """Under a custom validator, a 1024-character printable value is passed to it."""
        seen: list[tuple[str | None, object]] = []
        serve(
            WSGIRequestId(hello_app(storage, seen), storage, validator=lambda v: True),
            make_environ("a b" * 341 + "c"),
        )
        assert seen == [("a b" * 341 + "c", "a b" * 341 + "c")]

    def test_custom_generator_is_used(self, storage: AsyncLocalStorage[object]) -> None:
        """A custom generator makes the id of each request without a usable header."""
        seen: list[tuple[str | None, object]] = []
        app = WSGIRequestId(hello_app(storage, seen), storage, generator=counting_generator("mine"))
        serve(app, make_environ())
        serve(app, make_environ("bad id"))
        assert seen == [("mine-1", "mine-1"), ("mine-2", "mine-2")]

    @pytest.mark.parametrize("middleware", MIDDLEWARES)
    @pytest.mark.parametrize(
        ("made", "error", "message"),
        [
            (42, TypeError, r"argument 'generator' must return str, not int"),
            (b"abc", TypeError, r"argument 'generator' must return str, not bytes"),
            (
                "evil\r\nSet-Cookie: x=1",
                ValueError,
                r"argument 'generator' returned a str that is not a safe",
            ),
            ("", ValueError, r"argument 'generator' returned a str that is not a safe"),
        ],
    )
    def test_bad_generated_id_fails_the_request_without_showing_it(
        self,
        storage: AsyncLocalStorage[object],
        middleware: type[Any],
        made: object,
        error: type[Exception],
        message: str,
    ) -> None:
        """A generator that makes a non-str or unsafe id fails the request with an error naming the
        generator, never showing the value; the app is not called."""
        seen: list[tuple[Any, object]] = []
        if middleware is WSGIRequestId:
            app = middleware(hello_app(storage, seen), storage, generator=lambda: made)
            call: Callable[[], object] = lambda: app(make_environ(), StartResponse())  # noqa: E731
        else:
            app = middleware(asgi_hello(storage, seen), storage, generator=lambda: made)
            call = lambda: _run_asgi(app, http_scope(), Channel(storage))  # noqa: E731
        with pytest.raises(error, match=rf"^{middleware.__name__}\(\) {message}") as info:
            call()
        assert "evil" not in str(info.value)
        assert "Set-Cookie" not in str(info.value)
        assert seen == []


def _run_asgi(app: Any, scope: dict[str, Any], channel: Channel) -> None:
    anyio.run(app, scope, channel.receive, channel.send)


# --- ASGI ---------------------------------------------------------------------------------------


@pytest.mark.anyio
class TestASGIIncoming:
    @pytest.mark.parametrize("incoming", [UUID, NGINX])
    async def test_valid_id_is_stored_echoed_and_in_the_scope(
        self, storage: AsyncLocalStorage[object], incoming: str
    ) -> None:
        """A valid id is the store in the app and at every receive and send; the app's scope carries it."""
        seen: list[tuple[Any, object]] = []
        channel = Channel(storage)
        await channel.serve(
            ASGIRequestId(asgi_hello(storage, seen), storage), http_scope((NAME, incoming.encode()))
        )
        [(scope, stored)] = seen
        assert stored == incoming
        assert values(scope["headers"], NAME) == [incoming.encode()]
        assert channel.seen == [
            ("receive", incoming),
            ("send http.response.start", incoming),
            ("send http.response.body", incoming),
        ]
        [start] = channel.starts()
        assert start["headers"] == [(b"content-type", b"text/plain"), (NAME, incoming.encode())]
        assert storage.get_store() is None

    async def test_missing_header_generates(self, storage: AsyncLocalStorage[object]) -> None:
        """Without the header, a new default id is stored, added to the app's scope and echoed."""
        seen: list[tuple[Any, object]] = []
        channel = Channel(storage)
        await channel.serve(ASGIRequestId(asgi_hello(storage, seen), storage), http_scope())
        [(scope, stored)] = seen
        assert isinstance(stored, str)
        assert is_valid_request_id(stored)
        assert values(scope["headers"], NAME) == [stored.encode()]
        assert values(channel.starts()[0]["headers"], NAME) == [stored.encode()]

    async def test_server_scope_is_not_changed(self, storage: AsyncLocalStorage[object]) -> None:
        """The app gets a copy of the scope with a new header list; the server's scope and list stay as they
        were, and the other headers keep their order."""
        seen: list[tuple[Any, object]] = []
        channel = Channel(storage)
        server_scope = http_scope((b"X-Request-ID", b"bad value"), (b"x-other", b"1"))
        server_headers = server_scope["headers"]
        before = {**server_scope, "headers": list(server_headers)}
        middleware = ASGIRequestId(asgi_hello(storage, seen), storage, generator=counting_generator())
        await channel.serve(middleware, server_scope)
        assert server_scope == before
        assert server_scope["headers"] is server_headers
        [(scope, _)] = seen
        assert scope is not server_scope
        assert scope["headers"] == [
            (b"host", b"example.com"),
            (b"x-other", b"1"),
            (b"accept", b"*/*"),
            (NAME, b"gen-1"),
        ]
        assert {k: v for k, v in scope.items() if k != "headers"} == {
            k: v for k, v in server_scope.items() if k != "headers"
        }

    async def test_names_compared_case_insensitively(self, storage: AsyncLocalStorage[object]) -> None:
        """A server that does not lowercase names: X-Request-ID is still found, and replaced by one entry."""
        seen: list[tuple[Any, object]] = []
        channel = Channel(storage)
        await channel.serve(
            ASGIRequestId(asgi_hello(storage, seen), storage, header="X-Request-ID"),
            http_scope((b"X-Request-ID", NGINX.encode())),
        )
        [(scope, stored)] = seen
        assert stored == NGINX
        assert values(scope["headers"], NAME) == [NGINX.encode()]
        assert [name for name, _ in scope["headers"]].count(NAME) == 1

    async def test_untrusted_incoming_is_replaced(self, storage: AsyncLocalStorage[object]) -> None:
        """trust_incoming=False: a valid id is replaced everywhere."""
        seen: list[tuple[Any, object]] = []
        channel = Channel(storage)
        middleware = ASGIRequestId(
            asgi_hello(storage, seen), storage, trust_incoming=False, generator=counting_generator()
        )
        await channel.serve(middleware, http_scope((NAME, UUID.encode())))
        [(scope, stored)] = seen
        assert stored == "gen-1"
        assert values(scope["headers"], NAME) == [b"gen-1"]
        assert values(channel.starts()[0]["headers"], NAME) == [b"gen-1"]

    async def test_validator_gets_latin1_str(self, storage: AsyncLocalStorage[object]) -> None:
        """A custom validator gets the bytes decoded as latin-1, as WSGI would give them."""
        calls: list[object] = []

        def record(value: str) -> bool:
            calls.append(value)
            return True

        seen: list[tuple[Any, object]] = []
        channel = Channel(storage)
        await channel.serve(
            ASGIRequestId(asgi_hello(storage, seen), storage, validator=record), http_scope((NAME, b"a b~c"))
        )
        assert calls == ["a b~c"]
        assert seen[0][1] == "a b~c"

    @pytest.mark.parametrize("on_invalid", ["replace", "reject"])
    @pytest.mark.parametrize("second", [UUID.encode(), NGINX.encode()], ids=["equal", "different"])
    async def test_repeated_header_is_invalid(
        self, storage: AsyncLocalStorage[object], on_invalid: str, second: bytes
    ) -> None:
        """Two entries of the header, even with equal values, are invalid: replaced or rejected."""
        seen: list[tuple[Any, object]] = []
        channel = Channel(storage)
        middleware = ASGIRequestId(
            asgi_hello(storage, seen), storage, on_invalid=on_invalid, generator=counting_generator()
        )
        await channel.serve(middleware, http_scope((NAME, UUID.encode()), (NAME, second)))
        [start] = channel.starts()
        assert values(start["headers"], NAME) == [b"gen-1"]
        if on_invalid == "replace":
            assert seen[0][1] == "gen-1"
            assert values(seen[0][0]["headers"], NAME) == [b"gen-1"]
        else:
            assert seen == []
            assert start["status"] == 400


@pytest.mark.anyio
class TestASGIResponse:
    async def test_app_set_header_is_not_duplicated(self, storage: AsyncLocalStorage[object]) -> None:
        """An id header the app sends is replaced by ours; the app's message and list are not changed."""
        app_headers = [(b"x-request-id", b"made-by-app"), (b"content-type", b"text/plain")]
        app_message = {"type": "http.response.start", "status": 200, "headers": app_headers}

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send(app_message)
            await send({"type": "http.response.body", "body": b""})

        channel = Channel(storage)
        await channel.serve(ASGIRequestId(app, storage), http_scope((NAME, UUID.encode())))
        [start] = channel.starts()
        assert start["headers"] == [(b"content-type", b"text/plain"), (NAME, UUID.encode())]
        assert start["status"] == 200
        assert app_message["headers"] is app_headers
        assert app_headers == [(b"x-request-id", b"made-by-app"), (b"content-type", b"text/plain")]

    async def test_start_without_headers_gets_ours(self, storage: AsyncLocalStorage[object]) -> None:
        """http.response.start without a headers key still goes out with the id."""

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 204})
            await send({"type": "http.response.body", "body": b""})

        channel = Channel(storage)
        await channel.serve(ASGIRequestId(app, storage), http_scope((NAME, UUID.encode())))
        assert channel.starts() == [
            {"type": "http.response.start", "status": 204, "headers": [(NAME, UUID.encode())]}
        ]
        assert channel.sent[1] == {"type": "http.response.body", "body": b""}

    async def test_lifespan_passes_through(self, storage: AsyncLocalStorage[object]) -> None:
        """lifespan: the app gets the server's very scope, receive and send, and no id."""
        seen: list[tuple[Any, object]] = []
        channel = Channel(storage, {"type": "lifespan.startup"})

        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen.append((scope, storage.get_store()))
            seen.append(((receive, send), None))
            await receive()
            await send({"type": "lifespan.startup.complete"})

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
        await channel.serve(ASGIRequestId(app, storage), scope)
        assert seen[0][0] is scope
        assert seen[0][1] is None
        assert seen[1][0] == (channel.receive, channel.send)
        assert scope == {"type": "lifespan", "asgi": {"version": "3.0"}}
        assert channel.sent == [{"type": "lifespan.startup.complete"}]

    async def test_websocket_gets_an_id(self, storage: AsyncLocalStorage[object]) -> None:
        """websocket: the id is the store throughout, in the scope, and on websocket.accept's headers."""
        channel = Channel(
            storage, {"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}
        )
        seen: list[tuple[Any, object]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen.append((scope, storage.get_store()))
            await receive()
            await send({"type": "websocket.accept", "headers": [(b"x-request-id", b"app")]})
            await send({"type": "websocket.send", "text": "hi"})
            await receive()

        scope = http_scope((NAME, UUID.encode()), kind="websocket", scheme="ws")
        await channel.serve(ASGIRequestId(app, storage), scope)
        assert seen[0][1] == UUID
        assert values(seen[0][0]["headers"], NAME) == [UUID.encode()]
        assert channel.sent[0] == {"type": "websocket.accept", "headers": [(NAME, UUID.encode())]}
        assert channel.sent[1] == {"type": "websocket.send", "text": "hi"}
        assert {store for _, store in channel.seen} == {UUID}

    async def test_websocket_accept_without_headers(self, storage: AsyncLocalStorage[object]) -> None:
        """websocket.accept without headers goes out with the id header added."""
        channel = Channel(storage, {"type": "websocket.connect"})

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "websocket.accept", "subprotocol": None})

        await channel.serve(ASGIRequestId(app, storage), http_scope(kind="websocket"))
        [accept] = channel.sent
        assert accept["subprotocol"] is None
        [echoed] = values(accept["headers"], NAME)
        assert is_valid_request_id(echoed.decode())

    async def test_websocket_reject_closes_1008(self, storage: AsyncLocalStorage[object]) -> None:
        """on_invalid='reject' on a websocket: the connect event is taken, then the handshake is refused
        with websocket.close 1008; the app is not called."""
        seen: list[tuple[Any, object]] = []
        channel = Channel(storage, {"type": "websocket.connect"})
        middleware = ASGIRequestId(asgi_hello(storage, seen), storage, on_invalid="reject")
        await channel.serve(middleware, http_scope((NAME, b"bad id"), kind="websocket"))
        assert seen == []
        assert channel.events == []
        assert channel.sent == [{"type": "websocket.close", "code": 1008}]

    async def test_websocket_reject_with_http_response_extension(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        """A server offering websocket.http.response gets a 400 denial response carrying a new id."""
        channel = Channel(storage, {"type": "websocket.connect"})
        middleware = ASGIRequestId(
            asgi_hello(storage), storage, on_invalid="reject", generator=counting_generator()
        )
        scope = http_scope((NAME, b"bad id"), kind="websocket", extensions={"websocket.http.response": {}})
        await channel.serve(middleware, scope)
        [start, body] = channel.sent
        assert start["type"] == "websocket.http.response.start"
        assert start["status"] == 400
        assert values(start["headers"], NAME) == [b"gen-1"]
        assert body == {
            "type": "websocket.http.response.body",
            "body": b"Bad Request: invalid X-Request-ID header\n",
        }

    async def test_websocket_reject_after_disconnect_sends_nothing(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        """A client gone before the handshake: nothing to refuse, nothing sent."""
        channel = Channel(storage, {"type": "websocket.disconnect", "code": 1006})
        await channel.serve(
            ASGIRequestId(asgi_hello(storage), storage, on_invalid="reject"),
            http_scope((NAME, b"bad id"), kind="websocket"),
        )
        assert channel.sent == []

    async def test_http_reject(self, storage: AsyncLocalStorage[object]) -> None:
        """on_invalid='reject': a 400 text/plain with a new id, no echo of the value; the app is not run."""
        seen: list[tuple[Any, object]] = []
        channel = Channel(storage)
        middleware = ASGIRequestId(asgi_hello(storage, seen), storage, on_invalid="reject")
        await channel.serve(middleware, http_scope((NAME, b"bad id")))
        assert seen == []
        [start] = channel.starts()
        assert start["status"] == 400
        [echoed] = values(start["headers"], NAME)
        assert is_valid_request_id(echoed.decode())
        assert values(start["headers"], b"content-length") == [str(len(channel.body())).encode()]
        assert channel.body() == b"Bad Request: invalid X-Request-ID header\n"

    async def test_reject_missing_header_runs_the_app(self, storage: AsyncLocalStorage[object]) -> None:
        """on_invalid='reject' without the header: the app runs under a generated id."""
        seen: list[tuple[Any, object]] = []
        channel = Channel(storage)
        middleware = ASGIRequestId(
            asgi_hello(storage, seen), storage, on_invalid="reject", generator=counting_generator()
        )
        await channel.serve(middleware, http_scope())
        assert seen[0][1] == "gen-1"
        assert channel.starts()[0]["status"] == 200


@pytest.mark.anyio
class TestASGIErrors:
    async def test_raise_before_start_sends_500_with_id_and_reraises(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        """An app raising before http.response.start: the middleware sends a 500 with the id, then re-raises
        the same exception object."""
        error = RuntimeError("app failed")

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            raise error

        channel = Channel(storage)
        with pytest.raises(RuntimeError) as info:
            await channel.serve(ASGIRequestId(app, storage), http_scope((NAME, UUID.encode())))
        assert info.value is error
        [start] = channel.starts()
        assert start["status"] == 500
        assert values(start["headers"], NAME) == [UUID.encode()]
        assert channel.body() == b"Internal Server Error\n"
        assert storage.get_store() is None

    async def test_inside_a_framework_leaves_the_500_to_it(self, storage: AsyncLocalStorage[object]) -> None:
        """Where the scope names an app (Starlette's add_middleware puts the middleware inside its error
        handling), a raise before the start sends nothing: the framework's own handler answers. The same
        exception comes out, with the id current in the calling task for that handler."""
        error = RuntimeError("app failed")

        async def app(scope: Any, receive: Any, send: Any) -> None:
            raise error

        async def framework() -> object:
            channel = Channel(storage)
            with pytest.raises(RuntimeError) as info:
                await channel.serve(
                    ASGIRequestId(app, storage), {**http_scope((NAME, UUID.encode())), "app": app}
                )
            assert info.value is error
            assert channel.sent == []
            return storage.get_store()  # what the framework's handler, next in this task, sees

        assert await storage.run("outer", framework) == UUID  # the framework's task: here, run's context
        assert storage.get_store() is None

    async def test_raise_after_start_only_reraises(self, storage: AsyncLocalStorage[object]) -> None:
        """An app raising after it started the response: the same exception, no second start."""
        error = RuntimeError("late")

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise error

        channel = Channel(storage)
        with pytest.raises(RuntimeError) as info:
            await channel.serve(ASGIRequestId(app, storage), http_scope((NAME, UUID.encode())))
        assert info.value is error
        assert [m["status"] for m in channel.starts()] == [200]
        assert len(channel.sent) == 1

    async def test_framework_500_goes_through_the_middleware(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        """Error middleware inside (as Starlette's ServerErrorMiddleware): its 500 carries the id, and the
        middleware adds no response of its own when the exception comes out."""
        error = ValueError("handler failed")

        async def handler(scope: Any, receive: Any, send: Any) -> None:
            raise error

        async def server_error_middleware(scope: Any, receive: Any, send: Any) -> None:
            try:
                await handler(scope, receive, send)
            except Exception:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"text/html")],
                    }
                )
                await send({"type": "http.response.body", "body": b"oops"})
                raise

        channel = Channel(storage)
        with pytest.raises(ValueError, match="handler failed") as info:
            await channel.serve(
                ASGIRequestId(server_error_middleware, storage), http_scope((NAME, NGINX.encode()))
            )
        assert info.value is error
        [start] = channel.starts()
        assert start["headers"] == [(b"content-type", b"text/html"), (NAME, NGINX.encode())]
        assert channel.body() == b"oops"

    async def test_failing_500_send_keeps_the_app_error(self, storage: AsyncLocalStorage[object]) -> None:
        """If sending the 500 fails too (the client is gone), the app's exception is the one raised."""
        error = RuntimeError("app failed")

        async def app(scope: Any, receive: Any, send: Any) -> None:
            raise error

        async def broken_send(message: Any) -> None:
            raise OSError("connection lost")

        with pytest.raises(RuntimeError) as info:
            await ASGIRequestId(app, storage)(http_scope(), Channel(storage).receive, broken_send)
        assert info.value is error

    async def test_websocket_raise_before_accept_only_reraises(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        """In a websocket scope the middleware sends no 500: it re-raises for the server to refuse."""
        error = RuntimeError("ws failed")

        async def app(scope: Any, receive: Any, send: Any) -> None:
            raise error

        channel = Channel(storage, {"type": "websocket.connect"})
        with pytest.raises(RuntimeError) as info:
            await channel.serve(ASGIRequestId(app, storage), http_scope(kind="websocket"))
        assert info.value is error
        assert channel.sent == []

    async def test_cancellation_is_not_answered(self, storage: AsyncLocalStorage[object]) -> None:
        """A cancelled request gets no 500: cancellation passes through untouched."""
        channel = Channel(storage)
        started = anyio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            started.set()
            await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ASGIRequestId(app, storage), http_scope(), channel.receive, channel.send)
            await started.wait()
            tg.cancel_scope.cancel()
        assert channel.sent == []


@pytest.mark.anyio
class TestASGIConcurrency:
    async def test_concurrent_requests_never_cross(self, storage: AsyncLocalStorage[object]) -> None:
        """Requests interleaved in one task group each see only their own id, at every receive and send."""
        gate = anyio.Event()
        channels = [Channel(storage) for _ in range(5)]

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await gate.wait()  # all requests are suspended here before any goes on
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        middleware = ASGIRequestId(app, storage)
        async with anyio.create_task_group() as tg:
            for n, channel in enumerate(channels):
                tg.start_soon(
                    middleware, http_scope((NAME, f"req-{n}".encode())), channel.receive, channel.send
                )
            await anyio.wait_all_tasks_blocked()
            gate.set()
        for n, channel in enumerate(channels):
            assert channel.seen == [
                ("receive", f"req-{n}"),
                ("send http.response.start", f"req-{n}"),
                ("send http.response.body", f"req-{n}"),
            ]
            assert values(channel.starts()[0]["headers"], NAME) == [f"req-{n}".encode()]
        assert storage.get_store() is None

    async def test_thread_work_sees_the_id(self, storage: AsyncLocalStorage[object]) -> None:
        """anyio.to_thread.run_sync (Starlette's run_in_threadpool) and als's executor see the id; the
        calling task's store is unchanged after."""
        recorder = Recorder()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            recorder("anyio thread", await anyio.to_thread.run_sync(storage.get_store))
            with als.ContextThreadPoolExecutor(max_workers=1) as pool:
                recorder("als pool", pool.submit(storage.get_store).result(TIMEOUT))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        async def server() -> None:
            channel = Channel(storage)
            await channel.serve(ASGIRequestId(app, storage), http_scope((NAME, UUID.encode())))
            recorder("server after", storage.get_store())

        await storage.run("the server's own", server)
        assert recorder.as_dict() == {
            "anyio thread": UUID,
            "als pool": UUID,
            "server after": "the server's own",
        }


# --- Hostile headers ----------------------------------------------------------------------------

# What a client may put on the wire. WSGI gets these bytes decoded as latin-1 (PEP 3333); ASGI gets them.
# What follows a break ("xyz") holds no hex digit: assert_nowhere looks for it in lines that carry random hex
# ids, and a piece such as "def" is in one of those by chance about once in 140 (CI on 3.14 met it).
HOSTILE = [
    pytest.param(b"abc\r\nSet-Cookie: x=1", id="crlf-injection"),
    pytest.param(b"abc\nxyz", id="lf"),
    pytest.param(b"abc\rxyz", id="cr"),
    pytest.param(b"abc\x00xyz", id="nul"),
    pytest.param(b"abc\txyz", id="tab"),
    pytest.param(b"abc\x1b[31mxyz", id="escape-sequence"),
    pytest.param(b"abc\x7fxyz", id="del"),
    pytest.param(b"abc\x85xyz", id="c1-nel"),
    pytest.param(b"a" * 10240, id="10kB"),
    pytest.param(b"a" * 129, id="129-chars"),
    pytest.param(b"", id="empty"),
    pytest.param(b"   ", id="whitespace-only"),
    pytest.param(b" abc123 ", id="edge-spaces"),
    pytest.param("caf\xe9".encode("latin-1"), id="latin-1"),
    pytest.param("caf\xe9".encode(), id="utf-8"),
    pytest.param("req-\u0430bc".encode(), id="cyrillic-a"),
    pytest.param("\uff11\uff12\uff13".encode(), id="fullwidth-digits"),
    pytest.param("abc\u200bxyz".encode(), id="zero-width-space"),
    pytest.param("abc\u202exyz".encode(), id="rtl-override"),
    pytest.param(b"abc,abc", id="comma-joined-equal"),
    pytest.param(b"abc, xyz", id="comma-joined"),
    pytest.param(b'"abc"', id="quotes"),
    pytest.param(b"<script>alert(1)</script>", id="script"),
    pytest.param(b"../../etc/passwd", id="path-traversal"),
    pytest.param(b"${jndi:ldap://x}", id="jndi"),
    pytest.param(b"abc%0d%0aSet-Cookie:%20x=1", id="percent-crlf"),
    pytest.param(b"abc;xyz", id="semicolon"),
    pytest.param(b"abc xyz", id="inner-space"),
]


class Captured(logging.Handler):
    """Every record logged anywhere while installed on the root logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def ours(self) -> list[str]:
        """The messages logged by the test's app (asyncio, say, logs too)."""
        return [record.getMessage() for record in self.records if record.name == log.name]


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def assert_nowhere(raw: str, texts: Iterable[str], *, lines: bool = True) -> None:
    """``raw`` is none of ``texts``, and, unless it is too short to mean anything, in none of them;
    nor are its pieces around a line break. ``lines``: each text is one line, without control characters."""
    pieces = [raw] if len(raw.strip()) >= 3 else []
    pieces += [piece for piece in raw.replace("\r", "\n").split("\n")[1:] if piece]  # what follows a break
    for text in texts:
        assert not raw or text != raw
        for piece in pieces:
            assert piece not in text
        assert not lines or not any(c in text for c in "\r\n\x00\x85")


@pytest.mark.parametrize("on_invalid", ["replace", "reject"])
@pytest.mark.parametrize("wire", HOSTILE)
class TestHostileHeaders:
    def test_wsgi(
        self, storage: AsyncLocalStorage[object], captured: Captured, wire: bytes, on_invalid: str
    ) -> None:
        """Each hostile value is replaced (a fresh id stored, echoed and in the environ) or rejected (400, app
        not called); the raw value reaches no response header, body, log record or environ value."""
        raw = wire.decode("latin-1")
        environs: list[dict[str, Any]] = []

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            environs.append(dict(environ))
            log.info("request %s, header %s", storage.get_store(), environ.get(KEY))
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [f"id {storage.get_store()}".encode()]

        middleware = WSGIRequestId(
            linted(app), storage, on_invalid=on_invalid, generator=counting_generator()
        )
        start_response, body = serve(linted(middleware), make_environ(raw))
        assert values(start_response.headers, "X-Request-ID") == ["gen-1"]
        if on_invalid == "replace":
            assert start_response.status == "200 OK"
            assert body == b"id gen-1"
            [environ] = environs
            assert environ[KEY] == "gen-1"
            assert captured.ours() == ["request gen-1, header gen-1"]
            assert_nowhere(raw, [v for v in environ.values() if isinstance(v, str)])
        else:
            assert start_response.status == "400 Bad Request"
            assert environs == []
            assert captured.ours() == []
        assert_nowhere(raw, [f"{k}: {v}" for k, v in start_response.headers])
        assert_nowhere(raw, [body.decode("latin-1")], lines=False)
        assert_nowhere(raw, [r.getMessage() for r in captured.records])

    @pytest.mark.anyio
    async def test_asgi(
        self, storage: AsyncLocalStorage[object], captured: Captured, wire: bytes, on_invalid: str
    ) -> None:
        """The same through ASGI, the value arriving as the bytes on the wire: replaced in store, scope and
        response, or rejected; the raw value reaches no header, body, log record or scope."""
        raw = wire.decode("latin-1")
        scopes: list[Any] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            scopes.append(scope)
            [header] = values(scope["headers"], NAME)
            log.info("request %s, header %s", storage.get_store(), header.decode("latin-1"))
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
            )
            await send({"type": "http.response.body", "body": f"id {storage.get_store()}".encode()})

        channel = Channel(storage)
        middleware = ASGIRequestId(app, storage, on_invalid=on_invalid, generator=counting_generator())
        await channel.serve(middleware, http_scope((NAME, wire)))
        [start] = channel.starts()
        assert values(start["headers"], NAME) == [b"gen-1"]
        if on_invalid == "replace":
            assert start["status"] == 200
            assert channel.body() == b"id gen-1"
            [scope] = scopes
            assert values(scope["headers"], NAME) == [b"gen-1"]
            assert captured.ours() == ["request gen-1, header gen-1"]
            assert_nowhere(raw, [v.decode("latin-1") for _, v in scope["headers"]])
        else:
            assert start["status"] == 400
            assert scopes == []
            assert captured.ours() == []
        assert_nowhere(raw, [f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in start["headers"]])
        assert_nowhere(raw, [channel.body().decode("latin-1")], lines=False)
        assert_nowhere(raw, [r.getMessage() for r in captured.records])


# --- What the middleware sends itself, and awkward apps -------------------------------------------


def raising_validator(value: str) -> bool:
    """A validator with a bug: int() raises, quoting the value in its message."""
    return int(value, 16) >= 0


@pytest.mark.anyio
class TestASGIOwnResponses:
    async def test_own_500_is_sent_under_the_id(self, storage: AsyncLocalStorage[object]) -> None:
        """The middleware's 500 is sent in the request's context: a server that logs in send() (uvicorn's
        access log) sees the id it carries."""

        async def app(scope: Any, receive: Any, send: Any) -> None:
            raise RuntimeError("app failed")

        channel = Channel(storage)
        with pytest.raises(RuntimeError):
            await channel.serve(ASGIRequestId(app, storage), http_scope((NAME, UUID.encode())))
        assert channel.seen == [("send http.response.start", UUID), ("send http.response.body", UUID)]

    async def test_reject_400_is_sent_under_its_new_id(self, storage: AsyncLocalStorage[object]) -> None:
        """The 400 of on_invalid="reject" is sent with the new id it carries as the store."""
        channel = Channel(storage)
        await channel.serve(
            ASGIRequestId(asgi_hello(storage), storage, on_invalid="reject", generator=lambda: "new-1"),
            http_scope((NAME, b"bad id")),
        )
        [start] = channel.starts()
        assert (start["status"], values(start["headers"], NAME)) == (400, [b"new-1"])
        assert channel.seen == [("send http.response.start", "new-1"), ("send http.response.body", "new-1")]

    async def test_configured_header_name_in_and_out(self, storage: AsyncLocalStorage[object]) -> None:
        """header="X-Correlation-ID": read from that header, echoed under it (lower case), and the 400 of
        reject carries it; X-Request-ID is then just another header, passed on untouched."""
        name = b"x-correlation-id"
        seen: list[tuple[Any, object]] = []
        middleware = ASGIRequestId(asgi_hello(storage, seen), storage, header="X-Correlation-ID")
        channel = Channel(storage)
        await channel.serve(middleware, http_scope((b"X-Correlation-ID", NGINX.encode()), (NAME, b"other")))
        [start] = channel.starts()
        assert values(start["headers"], name) == [NGINX.encode()]
        assert values(start["headers"], NAME) == []
        [(scope, store)] = seen
        assert store == NGINX
        assert values(scope["headers"], name) == [NGINX.encode()]
        assert values(scope["headers"], NAME) == [b"other"]

        rejecting = ASGIRequestId(
            asgi_hello(storage), storage, header="X-Correlation-ID", on_invalid="reject"
        )
        channel = Channel(storage)
        await channel.serve(rejecting, http_scope((name, b"bad id")))
        [start] = channel.starts()
        assert start["status"] == 400
        assert len(values(start["headers"], name)) == 1
        assert values(start["headers"], NAME) == []

    async def test_app_sent_websocket_denial_carries_the_id(self, storage: AsyncLocalStorage[object]) -> None:
        """An app that denies a websocket handshake with websocket.http.response.start: the id replaces
        the one it set."""

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            headers = [(b"x-request-id", b"app-made"), (b"content-type", b"text/plain")]
            await send({"type": "websocket.http.response.start", "status": 403, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": b"no"})

        channel = Channel(storage, {"type": "websocket.connect"})
        scope = http_scope(
            (NAME, UUID.encode()), kind="websocket", extensions={"websocket.http.response": {}}
        )
        await channel.serve(ASGIRequestId(app, storage), scope)
        [start] = channel.starts()
        assert (start["status"], values(start["headers"], NAME)) == (403, [UUID.encode()])

    async def test_unreadable_start_headers_leave_the_500_to_the_middleware(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        """A start message whose headers cannot be read fails in the app's send(); nothing has been
        sent, so the middleware still sends its 500 with the id, and re-raises."""

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": None})

        channel = Channel(storage)
        with pytest.raises(TypeError):
            await channel.serve(ASGIRequestId(app, storage), http_scope((NAME, UUID.encode())))
        [start] = channel.starts()
        assert (start["status"], values(start["headers"], NAME)) == (500, [UUID.encode()])


class TestValidatorThatRaises:
    @pytest.mark.parametrize("middleware", MIDDLEWARES)
    def test_raising_validator_rejects_the_value(
        self, middleware: type[Any], storage: AsyncLocalStorage[object]
    ) -> None:
        """A validator that raises rejects the value: replaced (or answered 400 under reject), and its
        exception, whose message quotes the value, never escapes."""
        raw = "not-hex-but-safe"
        for on_invalid, status in (("replace", 200), ("reject", 400)):
            if middleware is WSGIRequestId:
                app: Any = WSGIRequestId(
                    hello_app(storage), storage, validator=raising_validator, on_invalid=on_invalid
                )
                start_response, _ = serve(app, make_environ(raw))
                code, ids = int(start_response.status[:3]), values(start_response.headers, "X-Request-ID")
            else:
                channel = Channel(storage)
                app = ASGIRequestId(
                    asgi_hello(storage), storage, validator=raising_validator, on_invalid=on_invalid
                )
                _run_asgi(app, http_scope((NAME, raw.encode())), channel)
                [start] = channel.starts()
                code, ids = start["status"], [value.decode() for value in values(start["headers"], NAME)]
            assert code == status
            [request_id] = ids
            assert request_id != raw
            assert is_valid_request_id(request_id)
        assert middleware(hello_app(storage), storage, validator=raising_validator)._valid("ff") is True


class TestWSGIAwkwardApps:
    def test_iter_raising_closes_the_response(self, storage: AsyncLocalStorage[object]) -> None:
        """A response whose iter() raises never reaches the server, so the middleware closes it (under the
        id) before the error propagates."""
        closed: list[object] = []
        error = RuntimeError("iter failed")

        class Body:
            def __iter__(self) -> Iterator[bytes]:
                raise error

            def close(self) -> None:
                closed.append(storage.get_store())

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            start_response("200 OK", [])
            return Body()

        with pytest.raises(RuntimeError) as info:
            WSGIRequestId(app, storage)(make_environ(UUID), StartResponse())
        assert info.value is error
        assert closed == [UUID]

    def test_exc_info_by_keyword(self, storage: AsyncLocalStorage[object]) -> None:
        """start_response(status, headers, exc_info=...) works, as servers accept it, and carries the id."""

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            start_response("200 OK", [])
            try:
                raise ValueError("late failure")
            except ValueError:
                start_response("500 Internal Server Error", [], exc_info=sys.exc_info())
            return [b"failed"]

        start_response, body = serve(WSGIRequestId(app, storage), make_environ(UUID))
        assert start_response.status.startswith("500")
        assert values(start_response.headers, "X-Request-ID") == [UUID]
        assert start_response.calls[-1][2][0] is ValueError
        assert body == b"failed"

    def test_reject_400_under_configured_header_name(self, storage: AsyncLocalStorage[object]) -> None:
        """The 400 of reject carries the configured header name, and only that one."""
        app = WSGIRequestId(hello_app(storage), storage, header="X-Correlation-ID", on_invalid="reject")
        start_response, _ = serve(app, make_environ(HTTP_X_CORRELATION_ID="bad id"))
        assert start_response.status.startswith("400")
        assert len(values(start_response.headers, "X-Correlation-ID")) == 1
        assert values(start_response.headers, "X-Request-ID") == []
