"""als.web under real WSGI servers: the example's Flask app behind WSGIRequestId, served by wsgiref's
threading server (in this process) and by gunicorn's gthread worker (a subprocess), hostile headers included.

The example's view fans out to a plain ThreadPoolExecutor under ``als.patch()`` and streams its body,
logging while it streams, after the view has returned. Every log line and every response must carry its
own request's id. Gunicorn imports this module and calls ``gunicorn_app()`` in its worker; it serves on a
socket this module bound and listens on, so there is no port race and no wait for it to start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from wsgiref.simple_server import make_server

import flask  # noqa: F401 - the example's framework: a missing install fails the run, never skips
import gunicorn
import httpx
import pytest

import als
from als.logging import install_record_factory
from als.web import WSGIRequestId, is_valid_request_id

from .helpers import EXAMPLES, TIMEOUT, load_example
from .test_web import HOSTILE, UUID, assert_nowhere

# SERVER_OWN below describes the header checks of gunicorn 22 and later.
assert gunicorn.version_info >= (22, 0), gunicorn.__version__

ROOT = EXAMPLES.parent
LOG_ENV = "ALS_TEST_WSGI_LOG"  # where gunicorn's worker writes the app's log lines
ON_INVALID_ENV = "ALS_TEST_WSGI_ON_INVALID"
BODY = b"charge card: done\nreserve stock: done\n"
REJECTED = b"Bad Request: invalid X-Request-ID header\n"
FRESH = re.compile(r"[0-9a-f]{32}").fullmatch  # new_request_id()
HEX_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
LINE = re.compile(r"(?P<id>\S+) +(?P<client>\S+) +(?P<message>.+?) +\[(?P<thread>[^]]+)\]")  # its FORMAT
STEPS = {"charge card", "reserve stock"}  # the view's fan-out, run on the example's pool ("pool_N")


def gunicorn_app() -> Any:
    """Gunicorn's entry, ``tests.test_web_wsgi_servers:gunicorn_app()``, called once in its worker.

    The example's ``wsgi_app`` (or, with ``$ALS_TEST_WSGI_ON_INVALID=reject``, its Flask app behind a
    rejecting WSGIRequestId), its log lines written to ``$ALS_TEST_WSGI_LOG`` one flushed line per
    record, the id put in every record by the record factory, and ``als.patch()`` on for the process.
    """
    web = load_example("web_apps")
    handler = logging.FileHandler(os.environ[LOG_ENV], encoding="utf-8")
    handler.setFormatter(logging.Formatter(web.FORMAT))
    web.log.addHandler(handler)
    web.log.setLevel(logging.INFO)
    web.log.propagate = False
    install_record_factory(web.storage, field="request_id", default="-")
    als.patch()
    if os.environ.get(ON_INVALID_ENV) == "reject":
        return WSGIRequestId(web.flask_app, web.storage, on_invalid="reject")
    return web.wsgi_app


# --- Servers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """A running server: its kind ("wsgiref" or "gunicorn"), its port, and every app log line so far."""

    kind: str
    reject: bool
    port: int
    lines: Callable[[], list[str]]


@pytest.fixture(scope="module")
def web() -> Iterator[ModuleType]:
    """The example module, loaded once; its pool is shut down at the end."""
    module = load_example("web_apps")
    yield module
    module.pool.shutdown(wait=True)


def serve_in_thread(web: ModuleType, app: Any) -> Iterator[int]:
    """Serve ``app`` with the example's threading wsgiref server on a thread; yield its port, then stop it."""
    # The example's server listens 128 deep: a burst of 100 connects would overflow socketserver's 5.
    server = make_server("127.0.0.1", 0, app, web.ThreadingWSGIServer, web.QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="wsgi-server", daemon=True
    )
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()
        assert not thread.is_alive(), "the wsgiref server did not stop"


@pytest.fixture(scope="module")
def wsgiref_replace(web: ModuleType) -> Iterator[int]:
    """The example's own ``wsgi_app`` (on_invalid="replace", the default) under wsgiref."""
    yield from serve_in_thread(web, web.wsgi_app)


@pytest.fixture(scope="module")
def wsgiref_reject(web: ModuleType) -> Iterator[int]:
    """The example's Flask app behind ``WSGIRequestId(..., on_invalid="reject")`` under wsgiref."""
    yield from serve_in_thread(web, WSGIRequestId(web.flask_app, web.storage, on_invalid="reject"))


@pytest.fixture
def wsgi_logs(web: ModuleType) -> Iterator[list[str]]:
    """For the in-process server: the example's log lines kept, the record factory on, als.patch() on.

    All three are undone after the test, so nothing reaches the other tests.
    """
    kept = web.KeepLines()
    level, propagate = web.log.level, web.log.propagate
    web.log.addHandler(kept)
    web.log.setLevel(logging.INFO)
    web.log.propagate = False
    undo = install_record_factory(web.storage, field="request_id", default="-")
    try:
        with als.patched():
            yield kept.lines
    finally:
        undo()
        web.log.removeHandler(kept)
        web.log.setLevel(level)
        web.log.propagate = propagate


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux's /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


@contextlib.contextmanager
def gunicorn_serving(
    spec: str, directory: Path, env: dict[str, str], args: list[str], warm_up: str
) -> Iterator[int]:
    """``gunicorn -k gthread --threads 8 -w 1 ... spec`` on a socket bound here; yields its port.

    The first request (``warm_up``, which must answer 200) waits in the backlog until the worker accepts
    it: no sleep, no port race. After: SIGTERM, a bounded wait for the arbiter and its worker (checked
    gone), a clean exit and no traceback or error in gunicorn's own output.
    """
    errors = directory / "gunicorn.err"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        fd = sock.fileno()
        environ = {k: v for k, v in os.environ.items() if k != "GUNICORN_CMD_ARGS"}
        environ.update(env)
        command = [
            *[sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "8", "-w", "1"],
            *["--bind", f"fd://{fd}", "--chdir", str(ROOT), "--no-control-socket", "--log-level", "warning"],
            *args,
            spec,
        ]
        with errors.open("wb") as stderr:
            process = subprocess.Popen(command, pass_fds=[fd], env=environ, stdout=stderr, stderr=stderr)
        port = sock.getsockname()[1]
        try:
            try:
                warm = httpx.get(f"http://127.0.0.1:{port}{warm_up}", timeout=TIMEOUT)
            except httpx.HTTPError as exc:
                pytest.fail(f"gunicorn did not answer ({exc!r}); its stderr:\n{errors.read_text()}")
            assert warm.status_code == 200, errors.read_text()
            started = child_pids(process.pid)
            assert len(started) == 1, f"gunicorn -w 1 runs {started}"
            yield port
        finally:
            workers = child_pids(process.pid)
            pidfds = [os.pidfd_open(pid) for pid in workers]
            process.terminate()
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                for pid in child_pids(process.pid):
                    os.kill(pid, signal.SIGKILL)
                process.kill()
                process.wait(TIMEOUT)
                pytest.fail(f"gunicorn did not stop on SIGTERM; its stderr:\n{errors.read_text()}")
    try:
        # A pidfd turns readable when its process has exited: a bounded wait for each worker, no polling.
        for pid, pidfd in zip(workers, pidfds, strict=True):
            readable, _, _ = select.select([pidfd], [], [], TIMEOUT)
            assert readable, f"gunicorn's worker {pid} outlived its arbiter"
    finally:
        for pidfd in pidfds:
            os.close(pidfd)
    stderr_text = errors.read_text()
    assert process.returncode == 0, stderr_text
    assert workers == started, "gunicorn's worker was replaced: it crashed or timed out"
    assert "Traceback" not in stderr_text
    assert "[ERROR]" not in stderr_text


def run_gunicorn(directory: Path, on_invalid: str) -> Iterator[Served]:
    """The example's app under gunicorn's gthread worker, its log lines read from a file."""
    log_file = directory / "app.log"
    log_file.touch()

    def lines() -> list[str]:
        return log_file.read_text(encoding="utf-8").split("\n")[:-1]

    env = {LOG_ENV: str(log_file), ON_INVALID_ENV: on_invalid}
    with gunicorn_serving(
        "tests.test_web_wsgi_servers:gunicorn_app()", directory, env, [], "/order/warm-up"
    ) as port:
        yield Served("gunicorn", on_invalid == "reject", port, lines)


@pytest.fixture(scope="module")
def gunicorn_replace(web: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The example's own ``wsgi_app`` under gunicorn's gthread worker."""
    yield from run_gunicorn(tmp_path_factory.mktemp("gunicorn-replace"), "replace")


@pytest.fixture(scope="module")
def gunicorn_reject(web: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The example's Flask app behind ``WSGIRequestId(..., on_invalid="reject")`` under gunicorn."""
    yield from run_gunicorn(tmp_path_factory.mktemp("gunicorn-reject"), "reject")


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Served:
    """The server named by the test's parameter: "wsgiref", "gunicorn", each optionally "-reject"."""
    name = str(request.param)
    fixture = name.replace("-", "_") if name.endswith("-reject") else f"{name}_replace"
    if name.startswith("gunicorn"):
        served: Served = request.getfixturevalue(fixture)
        return served
    port: int = request.getfixturevalue(fixture)
    kept: list[str] = request.getfixturevalue("wsgi_logs")
    return Served("wsgiref", name.endswith("-reject"), port, lambda: list(kept))


REPLACING = ["wsgiref", "gunicorn"]
REJECTING = ["wsgiref-reject", "gunicorn-reject"]


# --- Reading what came back ---------------------------------------------------------------------


def parse_lines(lines: list[str]) -> list[dict[str, str]]:
    """Each example log line as its fields (id, client, message, thread); a line that does not parse fails."""
    parsed = []
    for line in lines:
        match = LINE.fullmatch(line)
        assert match is not None, f"unparsable log line: {line!r}"
        parsed.append(match.groupdict())
    return parsed


def masked(text: str) -> str:
    """``text`` with each 32-hex run blanked: a random id may contain a short raw value by chance (the
    "def" of twice-different), and no hostile value holds 32 hex digits, so this hides no leak."""
    return HEX_ID.sub("<id>", text)


def raw_request(port: int, path: str, header_lines: list[bytes]) -> bytes:
    """Send a GET with ``header_lines`` as they are, over a plain socket; return every byte of the answer."""
    head = [f"GET {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close", *header_lines]
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"".join(line + b"\r\n" for line in head) + b"\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes) -> Answer:
        head, _, _ = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = [(name, value.strip()) for name, _, value in (h.partition(":") for h in header_lines)]
        return cls(int(status_line.split()[1]), headers, raw)

    def ids(self) -> list[str]:
        return [value for name, value in self.headers if name.lower() == "x-request-id"]


# --- 100 concurrent requests --------------------------------------------------------------------


Sent = tuple[str, str, str | None]  # (client tag, path, incoming X-Request-ID)

INVALID = ["x" * 200, "not an id", "a,b", "caf\xe9", "../etc", "", "<script>", "a" * 129, "a;b", "${x}"]


def mixed_requests(prefix: str) -> list[Sent]:
    """100 requests: 60 without an id, 10 with an nginx-like id, 10 with a uuid, 20 with invalid values."""
    incoming: list[str | None] = [None] * 60
    incoming += [os.urandom(16).hex() for _ in range(10)]  # nginx's $request_id: 32 hex digits
    incoming += [str(uuid.uuid4()) for _ in range(10)]
    incoming += INVALID * 2
    # The tag starts with "flask-": the example's check() expects the Flask view's lines for it.
    tags = [f"flask-{prefix}-{n:03}" for n in range(len(incoming))]
    return [(tag, f"/order/{tag}", value) for tag, value in zip(tags, incoming, strict=True)]


def fire(port: int, requests: list[Sent]) -> dict[str, tuple[int, list[str], bytes]]:
    """Send every request at once (a thread and an httpx client each, a barrier); return each one's status,
    ids, body. A client per thread: nothing of httpx's connection pool is shared between threads. They share
    one TLS context (unused over http, but each client would load the CA bundle: 35 ms of CPU apiece), and the
    barrier waits for all of them to be made with a bound of its own, for a loaded machine."""
    barrier = threading.Barrier(len(requests), timeout=3 * TIMEOUT)
    tls = ssl.create_default_context()

    def one(request: Sent) -> tuple[str, tuple[int, list[str], bytes]]:
        tag, path, value = request
        headers = {} if value is None else {"X-Request-ID": value.encode("latin-1")}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT, verify=tls) as client:
            barrier.wait()  # all requests in flight together
            response = client.get(path, headers=headers)
        return tag, (response.status_code, response.headers.get_list("X-Request-ID"), response.content)

    with ThreadPoolExecutor(max_workers=len(requests)) as clients:
        return dict(clients.map(one, requests))


@pytest.mark.parametrize("server", REPLACING, indirect=True)
def test_concurrent_requests_each_log_their_own_id(server: Served, web: ModuleType) -> None:
    """100 concurrent requests (no id, nginx ids, uuids, invalid values): each response carries one id;
    every log line of a request, in the view, on the pool's threads and while its body streams after the
    view returned, carries that id; valid incoming ids are kept, invalid ones replaced, no id is shared."""
    requests = mixed_requests(server.kind)
    before = len(server.lines())
    answers = fire(server.port, requests)
    lines = server.lines()[before:]

    for tag, _, value in requests:
        status, ids, body = answers[tag]
        assert (status, len(ids), body) == (200, 1, BODY), tag
        if value is None or not is_valid_request_id(value):
            assert FRESH(ids[0]), (tag, ids)
    returned = {tag: (status, ids[0]) for tag, (status, ids, _) in answers.items()}
    assert web.check(lines, requests, returned) == []
    assert len(lines) == len(web.FLASK_LINES) * len(requests)
    for value in INVALID:
        assert_nowhere(value, [masked(line) for line in lines])
    for fields in parse_lines(lines):
        # The fan-out really hopped: the steps ran on the example's pool, the rest on the server's threads.
        assert (fields["message"] in STEPS) == fields["thread"].startswith("pool_"), fields


@pytest.mark.parametrize("server", REJECTING, indirect=True)
def test_reject_mode_serves_valid_and_missing_ids(server: Served, web: ModuleType) -> None:
    """on_invalid="reject" answers a valid incoming id, and a request without one, normally: the app runs
    under the kept, or a fresh, id."""
    cases = [("own", UUID), ("nginx", os.urandom(16).hex()), ("none", None)]
    for name, value in cases:
        tag = f"{server.kind}-reject-{name}"
        before = len(server.lines())
        headers = [] if value is None else [b"X-Request-ID: " + value.encode()]
        answer = Answer.parse(raw_request(server.port, f"/order/{tag}", headers))
        lines = parse_lines(server.lines()[before:])
        [request_id] = answer.ids()
        assert answer.status == 200
        if value is None:
            assert FRESH(request_id), request_id
        else:
            assert request_id == value
        assert sorted(f["message"] for f in lines) == sorted(web.FLASK_LINES)
        assert {(f["id"], f["client"]) for f in lines} == {(request_id, tag)}


# --- Hostile headers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """Header lines sent as they are, and the values that must appear in no response byte or log line."""

    name: str
    lines: tuple[bytes, ...]
    forbidden: tuple[str, ...]


CASES = [
    Case(str(p.id), (b"X-Request-ID: " + p.values[0],), (p.values[0].decode("latin-1"),)) for p in HOSTILE
]
CASES += [
    Case("200-chars", (b"X-Request-ID: " + b"a" * 200,), ("a" * 200,)),
    Case("twice-equal", (b"X-Request-ID: abc", b"X-Request-ID: abc"), ("abc,abc",)),
    Case("twice-different", (b"X-Request-ID: abc", b"X-Request-ID: def"), ("abc,def", "def")),
    Case("twice-equal-valid", (f"X-Request-ID: {UUID}".encode(),) * 2, (UUID,)),  # joined "u,u": not an id
    Case("lower-case-name", (b"x-request-id: a b",), ("a b",)),
    Case("underscore-name", (b"X_Request_ID: a b",), ("a b",)),
    Case("dash-and-underscore", (b"X-Request-ID: abc", b"X_Request_ID: def"), ("def",)),
]

REFUSED = "refused by the server"  # its own 4xx; the app never runs
DROPPED = "dropped by the server"  # the app sees no header: a fresh id, in either mode
# What each server does by itself, before the middleware sees the value; any case not listed reaches the
# middleware as sent (repeats joined with ","). Cutting at a line break or trimming edge spaces (RFC 9110
# 5.5) leaves a valid id, which is kept.
SERVER_OWN: dict[str, dict[str, str]] = {
    # wsgiref refuses none of these: http.client's parser ends the value at CR, LF or CRLF, strips edge
    # spaces, and maps X_Request_ID to the same environ key as X-Request-ID (joined when both come).
    "wsgiref": {"crlf-injection": "abc", "lf": "abc", "cr": "abc", "edge-spaces": "abc123"},
    # gunicorn refuses bare LF and CR, NUL, ESC and DEL (400) and a 10 kB field (431, limit 8190); it drops
    # any header with "_" in its name, and accepts tab, C1, non-ASCII and everything else.
    "gunicorn": {
        "crlf-injection": "abc",
        "edge-spaces": "abc123",
        "lf": REFUSED,
        "cr": REFUSED,
        "nul": REFUSED,
        "escape-sequence": REFUSED,
        "del": REFUSED,
        "10kB": REFUSED,
        "underscore-name": DROPPED,
        "dash-and-underscore": "abc",
    },
}


@pytest.mark.parametrize("server", REPLACING + REJECTING, indirect=True)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_hostile_header(server: Served, case: Case, web: ModuleType) -> None:
    """Each hostile X-Request-ID, sent as raw bytes, is refused by the server itself, or replaced by a fresh
    id (on_invalid="replace") in the response and every log line, or answered 400 with a fresh id without
    calling the app (on_invalid="reject"); the raw value reaches no response byte and no log line."""
    own = SERVER_OWN[server.kind].get(case.name)
    tag = f"{server.kind}{'-reject' if server.reject else ''}-{case.name}"
    before = len(server.lines())
    answer = Answer.parse(raw_request(server.port, f"/order/{tag}", list(case.lines)))
    lines = server.lines()[before:]

    if own == REFUSED:
        assert 400 <= answer.status < 500
        assert answer.ids() == []
        assert lines == []
    elif server.reject and own is None:
        [request_id] = answer.ids()
        assert (answer.status, FRESH(request_id) is not None) == (400, True)
        assert answer.raw.endswith(b"\r\n\r\n" + REJECTED)
        assert lines == []  # the app was not called
    else:
        [request_id] = answer.ids()
        assert answer.status == 200
        if own in (None, DROPPED):
            assert FRESH(request_id), request_id
        else:
            assert request_id == own  # what the server made of the bytes: a valid id
        assert BODY.split(b"\n")[0] in answer.raw
        assert BODY.split(b"\n")[1] in answer.raw
        fields = parse_lines(lines)
        assert sorted(f["message"] for f in fields) == sorted(web.FLASK_LINES)
        assert {(f["id"], f["client"]) for f in fields} == {(request_id, tag)}
    for forbidden in case.forbidden:
        assert_nowhere(forbidden, [masked(answer.raw.decode("latin-1"))], lines=False)
        assert_nowhere(forbidden, [masked(line) for line in lines])
