"""als.web.django.RequestIdMiddleware in a real Django project (tests/django_project), in and out of servers.

In this process: Django's test clients (sync and async) for the configuration errors, the untrusted-input
rules, reject mode, the response header, file responses and leaks. Under real servers: gunicorn's gthread
worker (a subprocess, Django's sync chain) and uvicorn (a thread here, Django's async chain), each sent 100
concurrent requests of every kind; every response and every line of every request is checked.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import logging
import os
import pickle
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import django
import httpx
import pytest
from asgiref.sync import iscoroutinefunction

# Named for django.setup() only: left in the environment, it would reach every subprocess the suite
# starts, and Celery, seeing it, would set Django up in its workers (the Celery demo then hangs).
if "DJANGO_SETTINGS_MODULE" in os.environ:
    django.setup()
else:
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.django_project.settings"
    try:
        django.setup()
    finally:
        del os.environ["DJANGO_SETTINGS_MODULE"]

# Imported once Django has its settings.
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIHandler
from django.http import FileResponse, HttpRequest, HttpResponse
from django.test import AsyncClient, Client, override_settings

import als
from als.logging import ContextFilter
from als.web.django import RequestIdMiddleware

from .django_project import views
from .django_project.context import request_id as storage
from .django_project.logs import OneLine
from .test_web import HOSTILE, UUID, assert_nowhere
from .test_web_asgi_servers import serving
from .test_web_wsgi_servers import gunicorn_serving

NAME = "X-Request-ID"
FRESH = re.compile(r"[0-9a-f]{32}").fullmatch
LOGGERS = ("tests.django", "django.request")
# What each view logs, in its request's context; Django's own line names the path.
EXPECTED = {
    "ok": ["view", "thread", "finished"],
    "aview": ["view", "task", "sync_to_async", "finished"],
    "bridged": ["view", "task", "finished"],
    "stream": ["view", "chunk 0", "chunk 1", "chunk 2", "finished"],
    "astream": ["view", "chunk 0", "chunk 1", "chunk 2", "finished"],
    "boom": ["view", "Internal Server Error: /boom/{tag}", "finished"],
    "missing": ["view", "Not Found: /missing/{tag}", "finished"],
    "gone": ["view", "Gone: /gone/{tag}", "finished"],
}
STATUS = {"boom": 500, "missing": 404, "gone": 410}
DJANGO_LINE = re.compile(r"[A-Za-z ]+: /(?P<kind>[a-z_]+)/(?P<tag>\S+)").fullmatch


class Lines(logging.Handler):
    """The project's lines, formatted with the id (``ContextFilter`` on this handler), while installed."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(OneLine())
        self.addFilter(ContextFilter(storage))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def lines() -> Iterator[list[str]]:
    handler = Lines()
    saved = [(logger, logger.level, logger.propagate) for logger in map(logging.getLogger, LOGGERS)]
    for logger, _, _ in saved:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield handler.lines
    finally:
        for logger, level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


def by_tag(lines: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Each request's lines, as (id, message without the tag), keyed by the request's tag."""
    grouped: dict[str, list[tuple[str, str]]] = {}
    for line in lines:
        request_id, _, message = line.split("|", 2)
        django_line = DJANGO_LINE(message)
        if django_line is not None:
            tag, text = django_line["tag"], message.replace(django_line["tag"], "{tag}")
        else:
            tag, _, text = message.partition(" ")
        grouped.setdefault(tag, []).append((request_id, text))
    return grouped


# --- Configuration ---------------------------------------------------------------------------------


def get_response(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


S = "tests.django_project.context.request_id"
BAD_SETTINGS = [
    pytest.param(None, "needs settings.ALS_REQUEST_ID", id="missing"),
    pytest.param(["storage"], "must be a dict, not list", id="not-a-dict"),
    pytest.param({}, 'needs "storage"', id="no-storage"),
    pytest.param(
        {"storage": S, "headers": "X-Id"},
        "unknown keys 'headers'",
        id="unknown-key",
    ),
    pytest.param({"storage": "tests.django_project.context.nothing"}, "['storage']", id="not-importable"),
    pytest.param({"storage": "os.path"}, "['storage'] must be an AsyncLocalStorage", id="not-a-storage"),
    pytest.param({"storage": S, "header": "X Id"}, "['header'] must be a valid HTTP header", id="header"),
    pytest.param({"storage": S, "trust_incoming": "yes"}, "['trust_incoming'] must be bool", id="trust"),
    pytest.param({"storage": S, "on_invalid": "drop"}, "must be 'replace' or", id="on-invalid"),
    pytest.param({"storage": S, "generator": "os.sep"}, "['generator'] must be callable", id="generator"),
    pytest.param({"storage": S, "validator": 3}, "['validator'] must be callable", id="validator"),
    pytest.param({"storage": ".request_id"}, "['storage'] = '.request_id' cannot be imported", id="relative"),
    pytest.param(
        {"storage": S, "header": "Content-Type"}, "must not be a header HTTP itself uses", id="http-own"
    ),
]


@pytest.mark.parametrize(("value", "message"), BAD_SETTINGS)
def test_a_bad_setting_is_improperly_configured_at_start_up(value: object, message: str) -> None:
    with override_settings(ALS_REQUEST_ID=value):
        if value is None:
            delattr(settings, "ALS_REQUEST_ID")  # undone with the override
        with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
            RequestIdMiddleware(get_response)
        # Django makes its middleware when a handler starts: the first request of a new client.
        with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
            Client().get("/ok/config")


def test_a_storage_module_that_fails_to_import_shows_its_own_error() -> None:
    with (
        override_settings(ALS_REQUEST_ID={"storage": "tests.django_project.broken.request_id"}),
        pytest.raises(RuntimeError, match="the storage module itself is broken"),
    ):
        RequestIdMiddleware(get_response)


def test_get_response_must_be_callable() -> None:
    with pytest.raises(TypeError, match=r"argument 'get_response' must be callable, not str"):
        RequestIdMiddleware("view")  # type: ignore[arg-type]


def test_paths_and_objects_are_both_accepted() -> None:
    options = {"storage": storage, "generator": "als.web.new_request_id", "validator": str.isdigit}
    with override_settings(ALS_REQUEST_ID=options):
        middleware = RequestIdMiddleware(get_response)
    assert middleware.storage is storage
    assert middleware.header == "X-Request-ID"


# --- In this process: Django's test clients -----------------------------------------------------------


def test_the_whole_request_runs_under_the_incoming_id(lines: list[str]) -> None:
    """A valid incoming id is the store in the view, its thread hop, request.headers, the response header
    and every line, request_finished's included; nothing is left in the caller's context."""
    with als.patched():
        response = Client().get("/ok/t1", HTTP_X_REQUEST_ID=UUID)
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == UUID
    assert response.content.decode() == f"{UUID}|{UUID}|{UUID}\n"
    assert by_tag(lines) == {"t1": [(UUID, "view"), (UUID, "thread"), (UUID, "finished")]}
    assert storage.get_store() is None


@pytest.mark.parametrize("raw", HOSTILE)
def test_a_hostile_id_is_replaced_and_shown_nowhere(raw: bytes, lines: list[str]) -> None:
    value = raw.decode("latin-1")
    with als.patched():
        response = Client().get("/ok/t2", HTTP_X_REQUEST_ID=value)
    fresh = response.headers["X-Request-ID"]
    assert FRESH(fresh)
    assert response.content.decode() == f"{fresh}|{fresh}|{fresh}\n"
    assert {request_id for request_id, _ in by_tag(lines)["t2"]} == {fresh}
    assert_nowhere(value, [*lines, response.content.decode().strip(), *response.headers.values()])


def test_a_missing_id_is_made_and_a_repeated_one_replaced(lines: list[str]) -> None:
    with als.patched():
        made = Client().get("/ok/t3")
        joined = Client().get("/ok/t4", HTTP_X_REQUEST_ID=f"{UUID},{UUID}")
    for response in (made, joined):
        assert FRESH(response.headers["X-Request-ID"])
    assert made.headers["X-Request-ID"] != joined.headers["X-Request-ID"]


def test_reject_mode_answers_400_under_a_new_id_without_calling_the_view(lines: list[str]) -> None:
    options = {"storage": "tests.django_project.context.request_id", "on_invalid": "reject"}
    records_requests: list[HttpRequest] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records_requests.append(record.__dict__["request"])

    keep = Keep()
    logging.getLogger("django.request").addHandler(keep)
    with override_settings(ALS_REQUEST_ID=options), contextlib.ExitStack() as stack:
        stack.callback(logging.getLogger("django.request").removeHandler, keep)
        client = Client()
        refused = client.get("/ok/t5", HTTP_X_REQUEST_ID="not valid!")
        kept = client.get("/ok/t6", HTTP_X_REQUEST_ID=UUID)
    assert refused.status_code == 400
    assert refused.content == b"Bad Request: invalid X-Request-ID header\n"
    fresh = refused.headers["X-Request-ID"]
    assert FRESH(fresh)
    assert kept.status_code == 200
    # Django's own "Bad Request" line, and request_finished, under the new id; the view never ran.
    assert [line for line in lines if "t6" not in line and "|tests.django|" not in line] == [
        f"{fresh}|django.request|Bad Request: /ok/t5"
    ]
    assert f"{fresh}|tests.django|untagged finished" in lines
    # What reads the request (the record's request=, an error reporter) sees the new id, never the raw one.
    [record_request] = records_requests
    assert record_request.META["HTTP_X_REQUEST_ID"] == fresh
    assert record_request.headers["X-Request-ID"] == fresh
    assert not any("t5 view" in line for line in lines)
    assert_nowhere("not valid!", lines)


def test_the_response_carries_exactly_one_id_header() -> None:
    response = Client().get("/own_header/t7", HTTP_X_REQUEST_ID=UUID)
    assert [value for name, value in response.items() if name.lower() == "x-request-id"] == [UUID]


@pytest.mark.parametrize(("kind", "status"), [("boom", 500), ("missing", 404), ("gone", 410)])
def test_errors_their_page_and_djangos_line_carry_the_id(kind: str, status: int, lines: list[str]) -> None:
    client = Client(raise_request_exception=False)
    response = client.get(f"/{kind}/t8", HTTP_X_REQUEST_ID=UUID)
    assert response.status_code == status
    assert response.headers["X-Request-ID"] == UUID
    expected = [(UUID, text.format(tag="{tag}")) for text in EXPECTED[kind]]
    assert by_tag(lines)["t8"] == expected


def test_streaming_chunks_and_close_run_in_the_request_context(lines: list[str]) -> None:
    response = Client().get("/stream/t9", HTTP_X_REQUEST_ID=UUID)
    # The test client closes a streaming response when its content is used up, as a server does.
    assert b"".join(response.streaming_content) == f"{UUID}\n".encode() * 3  # type: ignore[attr-defined]
    assert by_tag(lines)["t9"] == [(UUID, text) for text in EXPECTED["stream"]]
    assert storage.get_store() is None


def test_an_os_file_response_keeps_its_file_and_closes_under_the_id(tmp_path: Path, lines: list[str]) -> None:
    """Reading an OS file runs no app code: the response still streams its file (servers use sendfile);
    only its close(), which sends request_finished, is run in the request's context."""
    path = tmp_path / "body.txt"
    path.write_bytes(b"file body\n")

    def file_view(request: HttpRequest) -> FileResponse:
        views.tag.set("t10")
        return FileResponse(path.open("rb"))

    response = RequestIdMiddleware(file_view)(request_with(UUID))
    assert isinstance(response, FileResponse)
    assert response.file_to_stream is not None
    assert b"".join(response.streaming_content) == b"file body\n"
    response.close()
    assert lines == [f"{UUID}|tests.django|t10 finished"]
    assert storage.get_store() is None


class Reader(io.RawIOBase):
    """A file-like object whose reads run code (a decrypting or remote reader): no fileno()."""

    def __init__(self) -> None:
        self.chunks = [b"one\n", b"two\n"]

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        views.log.info("%s read", views.tag.get())
        return self.chunks.pop(0) if self.chunks else b""


def test_a_file_like_response_reads_under_the_id(lines: list[str]) -> None:
    def file_view(request: HttpRequest) -> FileResponse:
        views.tag.set("t11")
        return FileResponse(Reader())

    response = RequestIdMiddleware(file_view)(request_with(UUID))
    assert b"".join(response.streaming_content) == b"one\ntwo\n"
    response.close()
    assert by_tag(lines)["t11"] == [(UUID, "read")] * 3 + [(UUID, "finished")]


def request_with(incoming: str | None) -> HttpRequest:
    request = HttpRequest()
    request.method = "GET"
    if incoming is not None:
        request.META["HTTP_X_REQUEST_ID"] = incoming
    return request


def test_a_response_served_twice_closes_in_each_requests_context(lines: list[str]) -> None:
    shared = HttpResponse("the same object each time\n")

    def view(request: HttpRequest) -> HttpResponse:
        views.tag.set("t12")
        return shared

    middleware = RequestIdMiddleware(view)
    for incoming in ("first-id", "second-id"):
        assert middleware(request_with(incoming)) is shared
        shared.close()
    assert lines == ["first-id|tests.django|t12 finished", "second-id|tests.django|t12 finished"]


def test_a_wrapper_set_on_the_response_before_ours_still_runs(lines: list[str]) -> None:
    calls: list[object] = []

    def view(request: HttpRequest) -> HttpResponse:
        response = HttpResponse("ok\n")
        plain = response.close

        def close() -> None:
            calls.append(storage.get_store())
            plain()

        response.close = close  # type: ignore[method-assign]
        return response

    RequestIdMiddleware(view)(request_with(UUID)).close()
    assert calls == [UUID]


def test_the_response_pickles_as_a_plain_one() -> None:
    """Django's cache pickles responses; what it gets back closes as any response does."""
    response = RequestIdMiddleware(get_response)(request_with(UUID))
    copy = pickle.loads(pickle.dumps(response))
    assert copy.headers["X-Request-ID"] == UUID
    copy.close()
    assert copy.closed


CACHED = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "als-tests"}}


def test_under_djangos_cache_middleware_each_hit_gets_its_own_id(lines: list[str]) -> None:
    """UpdateCacheMiddleware first, as Django asks: the response is cached (pickled), and a hit served
    from the cache goes out with the id of the request it answers."""
    middleware = [
        "django.middleware.cache.UpdateCacheMiddleware",
        "als.web.django.RequestIdMiddleware",
        "django.middleware.cache.FetchFromCacheMiddleware",
    ]
    with override_settings(CACHES=CACHED, MIDDLEWARE=middleware):
        client = Client()
        first = client.get("/cached/t13", HTTP_X_REQUEST_ID="first-id")
        hit = client.get("/cached/t13", HTTP_X_REQUEST_ID="second-id")
    assert first.status_code == hit.status_code == 200
    assert hit.content == first.content  # from the cache: the view ran once
    assert first.headers["X-Request-ID"] == "first-id"
    assert hit.headers["X-Request-ID"] == "second-id"


def test_requests_share_the_threads_cache_backend() -> None:
    """Each request's context is a copy, but Django's cache backends (an asgiref Local, copied on write)
    are made in the thread's own context first: three requests, one backend, as without the middleware."""
    with override_settings(CACHES=CACHED):
        client = Client()
        seen = {client.get(f"/cache_object/t14-{n}").content for n in range(3)}
    assert len(seen) == 1


def test_under_asgi_the_scope_holds_the_id_not_the_raw_value() -> None:
    async def main() -> bytes:
        response = await AsyncClient().get("/scope_header/t15", headers={"X-Request-ID": "not valid!"})
        return response.content

    body = asyncio.run(main())
    [fresh] = ast.literal_eval(body.decode())
    assert FRESH(fresh)


def test_the_async_chain_and_its_stream_run_under_the_id(lines: list[str]) -> None:
    """Under Django's async handler (AsyncClient): async view, its task, sync_to_async, an async stream and
    request_finished carry the id; the caller's task is left as it was."""

    async def main() -> list[Any]:
        client = AsyncClient()
        got = [await client.get("/aview/a1", headers={"X-Request-ID": UUID})]
        streamed = await client.get("/astream/a2")
        got.append(streamed)
        got.append(b"".join([chunk async for chunk in streamed.streaming_content]))
        got.append(storage.get_store())
        return got

    with als.patched():
        aview, streamed, body, after = asyncio.run(main())
    assert aview.content.decode() == f"{UUID}|{UUID}|{UUID}|{UUID}\n"
    fresh = streamed.headers["X-Request-ID"]
    assert FRESH(fresh)
    assert body == f"{fresh}\n".encode() * 3
    assert after is None
    grouped = by_tag(lines)
    assert grouped["a1"] == [(UUID, text) for text in EXPECTED["aview"]]
    assert grouped["a2"] == [(fresh, text) for text in EXPECTED["astream"]]


def test_the_middleware_is_a_coroutine_function_only_in_an_async_chain() -> None:
    async def async_get_response(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    assert not iscoroutinefunction(RequestIdMiddleware(get_response))
    assert iscoroutinefunction(RequestIdMiddleware(async_get_response))
    assert RequestIdMiddleware.sync_capable
    assert RequestIdMiddleware.async_capable


# --- Under real servers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    kind: str
    tag: str
    incoming: str | None  # the X-Request-ID sent, if any

    @property
    def kept(self) -> bool:
        return self.incoming is not None and self.incoming.startswith("in-")


def mixed(kinds: list[str], count: int = 100) -> list[Sent]:
    incoming = [lambda i: f"in-{i}-{uuid.uuid4().hex}", lambda i: None, lambda i: f"bad id {i}!"]
    return [
        Sent(kinds[i % len(kinds)], f"r{i}x{uuid.uuid4().hex[:8]}", incoming[i % 3](i)) for i in range(count)
    ]


def fire(port: int, sent: list[Sent]) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(sent))
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
        ) as client:
            return await asyncio.gather(
                *(
                    client.get(
                        f"/{one.kind}/{one.tag}",
                        headers={} if one.incoming is None else {"X-Request-ID": one.incoming},
                    )
                    for one in sent
                )
            )

    return asyncio.run(main())


def check(sent: list[Sent], responses: list[httpx.Response], lines: list[str]) -> dict[str, int]:
    """Every response and every line of every request: its own id, no other; the counts checked."""
    grouped = by_tag(lines)
    ids = set()
    checked = 0
    for one, response in zip(sent, responses, strict=True):
        assert response.status_code == STATUS.get(one.kind, 200), (one, response.text)
        [request_id] = response.headers.get_list("x-request-id")
        ids.add(request_id)
        if one.kept:
            assert request_id == one.incoming
        else:
            assert FRESH(request_id), one
        if one.kind in ("ok", "aview", "bridged"):
            seen = response.text.rstrip("\n").split("|")
            assert seen == [request_id] * len(seen), (one, response.text)
        elif one.kind in ("stream", "astream"):
            assert response.text == f"{request_id}\n" * 3
        expected = [(request_id, text) for text in EXPECTED[one.kind]]
        assert sorted(grouped.pop(one.tag)) == sorted(expected), one
        checked += len(expected)
        if one.incoming is not None and not one.kept:
            assert_nowhere(one.incoming, lines)
            assert_nowhere(one.incoming, [response.text], lines=False)
    assert len(ids) == len(sent)
    assert grouped == {}, f"lines of no request: {grouped}"
    return {"requests": len(sent), "lines": checked}


def test_gunicorn_gthread_100_concurrent_requests(tmp_path: Path) -> None:
    """Django's sync chain under gunicorn's gthread worker (8 threads), als.patch() on in the worker. The
    access line shows the id through gunicorn's own format, from the response header."""
    log = tmp_path / "app.log"
    access = tmp_path / "access.log"
    env = {"ALS_DJANGO_LOG": str(log), "DJANGO_SETTINGS_MODULE": "tests.django_project.settings"}
    args = ["--access-logfile", str(access), "--access-logformat", "%(U)s id=%({x-request-id}o)s"]
    sent = mixed(["ok", "aview", "bridged", "stream", "boom", "missing", "gone"])
    with gunicorn_serving("tests.django_project.wsgi:application", tmp_path, env, args, "/ok/warm") as port:
        responses = fire(port, sent)
    # Stopped gracefully: every request's close() (request_finished) has run before the lines are read.
    app_lines = [line for line in log.read_text().splitlines() if "warm" not in line]
    counts = check(sent, responses, app_lines)
    assert counts == {"requests": 100, "lines": sum(len(EXPECTED[one.kind]) for one in sent)}
    access_ids = dict(line.split(" id=") for line in access.read_text().splitlines() if "warm" not in line)
    assert access_ids == {
        f"/{one.kind}/{one.tag}": response.headers["x-request-id"]
        for one, response in zip(sent, responses, strict=True)
    }


@contextlib.contextmanager
def fresh_pool() -> Iterator[None]:
    """The views' pool, new and shut down (its threads joined) before the server checks for stray threads."""
    saved = views.pool
    views.pool = ThreadPoolExecutor(4, thread_name_prefix="django-pool")
    try:
        yield
    finally:
        views.pool.shutdown(wait=True)
        views.pool = saved


def test_uvicorn_100_concurrent_requests(lines: list[str]) -> None:
    """Django's async chain (ASGIHandler) under uvicorn, in this process, with als.patch() on."""
    sent = mixed(["ok", "aview", "bridged", "astream", "boom", "missing", "gone"])
    with als.patched(), serving(ASGIHandler()) as port, fresh_pool():
        responses = fire(port, sent)
    # Stopped: every request's close() (request_finished) has run before the lines are read.
    counts = check(sent, responses, list(lines))
    assert counts == {"requests": 100, "lines": sum(len(EXPECTED[one.kind]) for one in sent)}
    assert storage.get_store() is None
