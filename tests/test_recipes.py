"""examples/recipes/, each run as its users run it, against the real framework and server.

Each server is a subprocess started from examples/recipes/ (so the recipes import each other as a user's
project would), sent concurrent requests with distinct ids, and stopped within a bound; its output is read
once it has exited, so every line it writes after a response has gone (gunicorn's access line, uvicorn's
traceback) is there. Every app line, access line and response must carry its own request's id.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from .helpers import EXAMPLES, TIMEOUT
from .test_celery import (
    broker,  # noqa: F401 - the fixture: a redis-server of this module's own
    free_port,
)
from .test_web_wsgi_servers import Sent, fire, gunicorn_serving

RECIPES = EXAMPLES / "recipes"
FRESH = re.compile(r"[0-9a-f]{32}").fullmatch
STOP_WITHIN = 20  # seconds, for each process this module starts


# Run a command with Ctrl+C as a terminal delivers it. A command started in the background of a
# non-interactive shell (as CI may start .ci/run) inherits SIGINT ignored, and Python then installs
# no KeyboardInterrupt handler: flask run would never stop on it. exec keeps the default.
DEFAULT_SIGINT = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])
"""


class PortTaken(Exception):
    """The server could not bind the port it was given: something took it after ``free_port`` freed it."""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without settings that would change how a recipe runs, plus ``extra``."""
    dropped = ("FLASK_", "DJANGO_", "GUNICORN_", "CELERY_", "UVICORN_")
    return {k: v for k, v in os.environ.items() if not k.startswith(dropped)} | extra


@contextlib.contextmanager
def running(
    command: list[str],
    output: Path,
    ready: str,
    env: dict[str, str] | None = None,
    stop: signal.Signals = signal.SIGINT,
) -> Iterator[None]:
    """Run ``command`` in examples/recipes/, its stdout and stderr into ``output``; yield once it is up.

    Up: ``ready``, a line only this server prints once it listens, appears in ``output``, polled with a
    deadline; it never orders anything else. An exit saying the address is in use raises ``PortTaken``.
    After: ``stop`` (Ctrl+C by default), a bounded wait for a clean exit (status 0), and its whole process
    group gone (SIGKILL, and a failure, otherwise).
    """
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", DEFAULT_SIGINT, *command],
            cwd=RECIPES,
            env=clean_env() if env is None else env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 3 * TIMEOUT
        while ready not in (text := output.read_text()):
            if process.poll() is not None and "address already in use" in text.lower():
                raise PortTaken(text)
            assert process.poll() is None, f"{command[2]} exited:\n{output.read_text()}"
            assert time.monotonic() < deadline, f"{command[2]} did not start:\n{text}"
            time.sleep(0.05)
        yield
    finally:
        process.send_signal(stop)
        try:
            process.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            pass
        left = process.poll() is None or group_alive(process.pid)
        if left:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_WITHIN)
    assert not left, f"{command[2]} did not stop on {stop.name}:\n{output.read_text()}"
    assert process.returncode == 0, output.read_text()


@contextlib.contextmanager
def serving(command: list[str], output: Path, ready: str) -> Iterator[int]:
    """``running([*command, port], output, ready.format(port=port))`` on a port that was free a moment
    before; yield the port. The other xdist worker binds ports too and may take this one before the server
    does: then, and only then, again on a fresh port (three tries). Waiting for the server's own startup
    line rather than for the port to accept means another process there cannot pass for it."""
    for attempt in range(3):
        port = free_port()
        try:
            with running([*command, str(port)], output, ready.format(port=port)):
                yield port
        except PortTaken:
            if attempt == 2:
                raise
            continue
        return


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def sent(prefix: str, path: str, count: int = 6) -> list[Sent]:
    """``count`` requests to ``path``/<tag>: every other one with an id of its own, the rest without."""
    return [
        (tag, f"{path}/{tag}", f"edge-{tag}" if n % 2 else None)
        for n, tag in enumerate(f"{prefix}-{n}" for n in range(count))
    ]


def returned_ids(requests: list[Sent], answers: dict[str, tuple[int, list[str], bytes]]) -> dict[str, str]:
    """Each request's one returned id, by tag: its own if it sent one, a fresh one otherwise; none shared."""
    ids = {}
    for tag, _, value in requests:
        status, [returned], _ = answers[tag]
        assert status == 200, tag
        assert returned == value if value else FRESH(returned), (tag, value, returned)
        ids[tag] = returned
    assert len(set(ids.values())) == len(ids)
    return ids


def matches(pattern: str, text: str) -> list[tuple[str, ...]]:
    """Every line of ``text`` that matches ``pattern`` in full, as its groups."""
    line = re.compile(pattern)
    return [m.groups() for m in map(line.fullmatch, text.splitlines()) if m]


# --- Flask: flask run, and gunicorn with gunicorn.conf.py -----------------------------------------


def test_flask_run(tmp_path: Path) -> None:
    """Under ``flask run`` (werkzeug's threaded dev server), each concurrent request's line and response
    carry its id; werkzeug's own access line does not: it is logged outside the app, in the server thread."""
    output = tmp_path / "flask.out"
    requests = sent("flask", "/order")
    command = [sys.executable, "-m", "flask", "--app", "flask_app", "run", "--port"]
    with serving(command, output, "Running on http://127.0.0.1:{port}") as port:
        answers = fire(port, requests)
    ids = returned_ids(requests, answers)
    text = output.read_text()
    assert sorted(matches(r"(\S+) flask_app INFO order (\S+) received", text)) == sorted(
        (ids[tag], tag) for tag in ids
    )
    access = matches(r'(\S+) werkzeug INFO 127\.0\.0\.1 - - \[.*\] "GET /order/(\S+) HTTP/1\.1" 200 -', text)
    assert sorted(access) == sorted(("-", tag) for tag in ids)
    assert answers["flask-0"][2] == b"order flask-0: done\n"


def test_gunicorn_conf_with_flask(tmp_path: Path) -> None:
    """gunicorn with gunicorn.conf.py serving flask_app: each access line shows the id its response carried
    (the response header, ``%({x-request-id}o)s``), each app line its request's id."""
    requests = sent("gunicorn", "/order")
    args = ["-c", str(RECIPES / "gunicorn.conf.py"), "--chdir", str(RECIPES)]
    with gunicorn_serving("flask_app:app", tmp_path, clean_env(), args, "/order/warm-up") as port:
        answers = fire(port, requests)
    ids = returned_ids(requests, answers)
    text = (tmp_path / "gunicorn.err").read_text()  # gunicorn_serving's: stdout and stderr
    app_lines = matches(r"(\S+) flask_app INFO order (\S+) received", text)
    assert sorted(app_lines) == sorted([*((ids[tag], tag) for tag in ids), (app_lines[0][0], "warm-up")])
    access = matches(r'127\.0\.0\.1 "GET /order/(\S+) HTTP/1\.1" 200 \d+ id=(\S+)', text)
    assert sorted(access) == sorted([*ids.items(), ("warm-up", app_lines[0][0])])


# --- FastAPI under uvicorn, with uvicorn_logging.json ---------------------------------------------


def fastapi_requests(prefix: str) -> list[Sent]:
    """Async and sync (thread pool) endpoints, with and without an id of their own, and one that raises."""
    return [*sent(f"{prefix}-order", "/order", 4), *sent(f"{prefix}-report", "/report", 4)]


def serve_fastapi(
    module: str, tmp_path: Path, requests: list[Sent]
) -> tuple[dict[str, str], httpx.Response, str]:
    """``uvicorn <module>:app --log-config`` uvicorn_logging.json (its storage pointed at ``module``'s):
    every request sent at once, and a failing one with an id of its own; the ids, the 500, the output."""
    config = json.loads((RECIPES / "uvicorn_logging.json").read_text())
    filter_config = config["filters"]["request_id"]
    assert filter_config["storage"] == "ext://fastapi_app.storage"
    filter_config["storage"] = f"ext://{module}.storage"
    log_config = tmp_path / "uvicorn_logging.json"
    log_config.write_text(json.dumps(config))
    output = tmp_path / "uvicorn.out"
    command = [sys.executable, "-m", "uvicorn", f"{module}:app", "--log-config", str(log_config), "--port"]
    with serving(command, output, "running on http://127.0.0.1:{port}") as port:
        answers = fire(port, requests)
        boom = httpx.get(f"http://127.0.0.1:{port}/boom", headers={"X-Request-ID": "boom-1"}, timeout=TIMEOUT)
    ids = returned_ids(requests, answers)
    text = output.read_text()
    # The handlers', on the event loop and on the thread pool.
    assert sorted(matches(rf"(\S+) {module} INFO (?:order|report) (\S+) (?:received|built)", text)) == sorted(
        (returned, tag) for tag, returned in ids.items()
    )
    access = matches(r'(\S+) uvicorn\.access 127\.0\.0\.1:\d+ "GET /\w+/(\S+) HTTP/1\.1" 200 OK', text)
    assert sorted(access) == sorted((returned, tag) for tag, returned in ids.items())
    assert matches(r'(\S+) uvicorn\.access 127\.0\.0\.1:\d+ "GET /boom HTTP/1\.1" (.*)', text) == [
        ("boom-1", "500 Internal Server Error")
    ]
    assert f"boom-1 {module} INFO about to fail" in text.splitlines()
    # Outside any request: uvicorn's own lines get the filter's default.
    assert "- uvicorn.error INFO Application startup complete." in text.splitlines()
    return ids, boom, text


def test_fastapi_wrapped_under_uvicorn(tmp_path: Path) -> None:
    """fastapi_app (ASGIRequestId outermost): handler lines, a sync endpoint's, uvicorn's access lines and
    the responses carry each request's id; the 500 carries it too, but uvicorn's traceback, logged after
    the app (and the middleware) returned, does not."""
    _, boom, text = serve_fastapi("fastapi_app", tmp_path, fastapi_requests("wrapped"))
    assert (boom.status_code, boom.headers.get_list("x-request-id")) == (500, ["boom-1"])
    assert "- uvicorn.error ERROR Exception in ASGI application" in text.splitlines()


def test_fastapi_add_middleware_under_uvicorn(tmp_path: Path) -> None:
    """fastapi_middleware (app.add_middleware): the same for every request, but the exception handler's 500
    has no id header; the handler's line and uvicorn's traceback carry the id."""
    _, boom, text = serve_fastapi("fastapi_middleware", tmp_path, fastapi_requests("inside"))
    assert (boom.status_code, boom.text, boom.headers.get_list("x-request-id")) == (
        500,
        "something went wrong\n",
        [],
    )
    assert "boom-1 fastapi_middleware ERROR failed: RuntimeError('boom')" in text.splitlines()
    assert "boom-1 uvicorn.error ERROR Exception in ASGI application" in text.splitlines()


# --- Django under gunicorn --------------------------------------------------------------------------


def test_django_site_under_gunicorn(tmp_path: Path) -> None:
    """django_site behind RequestIdMiddleware, with gunicorn.conf.py: the view's lines, Django's "Not Found"
    line, gunicorn's access lines and the responses carry each request's id."""
    requests = sent("django", "/order")
    args = ["-c", str(RECIPES / "gunicorn.conf.py"), "--chdir", str(RECIPES)]
    env = clean_env(DJANGO_SETTINGS_MODULE="django_site.settings")
    with gunicorn_serving("django_site.wsgi", tmp_path, env, args, "/order/warm-up") as port:
        answers = fire(port, requests)
        missing = httpx.get(
            f"http://127.0.0.1:{port}/missing", headers={"X-Request-ID": "nf-1"}, timeout=TIMEOUT
        )
    ids = returned_ids(requests, answers)
    assert (missing.status_code, missing.headers.get_list("x-request-id")) == (404, ["nf-1"])
    assert answers["django-0"][2] == b"order django-0: done\n"
    text = (tmp_path / "gunicorn.err").read_text()
    app_lines = matches(r"(\S+) django_site\.urls INFO order (\S+) received", text)
    warm_id = {tag: rid for rid, tag in app_lines}["warm-up"]
    assert sorted(app_lines) == sorted([*((ids[tag], tag) for tag in ids), (warm_id, "warm-up")])
    assert matches(r"(\S+) django\.request WARNING Not Found: (\S+)", text) == [("nf-1", "/missing")]
    access = matches(r'127\.0\.0\.1 "GET /(?:order/)?(\S+) HTTP/1\.1" (\d+) \d+ id=(\S+)', text)
    expected = [(tag, "200", rid) for tag, rid in [*ids.items(), ("warm-up", warm_id)]]
    assert sorted(access) == sorted([*expected, ("missing", "404", "nf-1")])


# --- structlog and loguru -------------------------------------------------------------------------

STRUCTLOG_OUTPUT = """\
request_id='-' level='info' event='starting'
request_id='req-7f3a' level='info' event='order received' order='order-1'
request_id='req-7f3a' level='info' event='card charged' order='order-1'
request_id='req-9b21' level='info' event='order received' order='order-2'
request_id='req-9b21' level='info' event='card charged' order='order-2'
"""

LOGURU_OUTPUT = """\
- INFO starting
req-7f3a INFO order order-1 received
req-7f3a INFO card charged for order-1
req-9b21 INFO order order-2 received
req-9b21 INFO card charged for order-2
"""


def run_recipe(name: str) -> str:
    """Run ``python examples/recipes/<name>.py``; it must exit 0 and write nothing to stderr."""
    result = subprocess.run(
        [sys.executable, str(RECIPES / f"{name}.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean_env(),
    )
    assert (result.returncode, result.stderr) == (0, "")
    return result.stdout


def test_structlog_setup() -> None:
    """Each event carries its request's id, on the request's thread and on a plain pool's, or "-" outside."""
    assert run_recipe("structlog_setup") == STRUCTLOG_OUTPUT


def test_loguru_setup() -> None:
    """Each record carries its request's id, on the request's thread and on a plain pool's, or "-" outside."""
    assert run_recipe("loguru_setup") == LOGURU_OUTPUT


# --- Celery ---------------------------------------------------------------------------------------

CELERY_OUTPUT = """\
o-1 charged for req-a1
o-2 charged for req-b2
nightly charged for -
"""


def test_celery_app(broker: str, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    """A real worker (the prefork pool) on a real Redis: each task's result and log line carry the id of
    the request that published it, or "-" for the job published outside any request."""
    env = clean_env(CELERY_BROKER_URL=broker, CELERY_RESULT_BACKEND=broker)
    output = tmp_path / "worker.out"
    command = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--loglevel=INFO", "-c", "2"]
    command += ["--without-heartbeat", "--without-gossip", "--without-mingle", "-n", "recipes@%h"]
    # SIGTERM: the worker's warm shutdown, exit status 0 (Ctrl+C's is 1).
    with running(command, output, " ready.", env, signal.SIGTERM):
        publisher = subprocess.run(
            [sys.executable, "celery_app.py"],
            cwd=RECIPES,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert (publisher.returncode, publisher.stderr) == (0, ""), output.read_text()
    assert publisher.stdout == CELERY_OUTPUT
    lines = matches(r"\[[^]]+: INFO\] (\S+) celery_app\.charge: charging (\S+)", output.read_text())
    assert sorted(lines) == [("-", "nightly"), ("req-a1", "o-1"), ("req-b2", "o-2")]
