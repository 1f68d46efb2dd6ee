"""als.celery for real: a Redis server and Celery workers (prefork, threads, solo) started here.

The Redis server is Debian's ``redis-server`` (``.ci/run`` installs it when
missing), on 127.0.0.1, on a port chosen here, in a temporary directory. The
publishing side runs in a child process (tests/celery_peer.py), which checks
every log line of every task; this module owns and stops every process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from .carry_tasks import in_request, request_id, tenant
from .helpers import EXAMPLES

ROOT = EXAMPLES.parent
STOP_WITHIN = 20  # seconds, for each process this module started


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (a worker's children too), SIGKILL if it outlives the bound."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_WITHIN)
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return
    os.killpg(process.pid, signal.SIGKILL)  # a child left behind: never let it outlive the test


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is missing: install Debian's redis-server (.ci/run does)"
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:  # readiness, not ordering: the server answers once it listens
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                assert server.poll() is None, "redis-server exited"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
        client.flushall()
    finally:
        stop(server)


@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 2), ("threads", 4), ("solo", 1)])
def test_every_task_line_carries_its_publishers_id(
    broker: str, tmp_path: Path, pool: str, concurrency: int
) -> None:
    """100 concurrent requests publish tasks (plain, nested, retried, retried from inside another
    request, failing, with a countdown), and 41 tasks are published outside any request, with a
    forged header, or to set every kind of context state: every line of every task, and of the
    failure handler, carries the id of the request that published it (a retry's, the request it was
    retried from), or none, and no task sees what an earlier one set."""
    log = tmp_path / "tasks.log"
    log.touch()
    env = {**os.environ, "ALS_TEST_BROKER": broker, "ALS_TEST_LOG": str(log)}
    worker_log = (tmp_path / "worker.err").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.celery_app",
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "--loglevel=WARNING",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"{pool}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=worker_log,
        start_new_session=True,
    )
    try:
        peer = subprocess.run(
            [sys.executable, "-m", "tests.celery_peer"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        assert peer.returncode == 0, peer.stderr + (tmp_path / "worker.err").read_text()[-3000:]
        summary = json.loads(peer.stdout)
    finally:
        stop(worker)
        worker_log.close()
    assert worker.returncode is not None
    print(pool, {k: v if isinstance(v, int) else len(v) for k, v in summary.items()})
    assert summary["tasks"] == 191
    assert summary["lines"] == summary["lines expected"] == 231
    assert (summary["wrong"], summary["missing"], summary["unexpected"], summary["wrong results"]) == (
        [],
        [],
        [],
        [],
    )


class TestInstall:
    """The publishing side and eager tasks, in this process, on kombu's in-memory transport."""

    @pytest.fixture
    def app(self) -> Iterator[Any]:
        from celery import Celery

        app = Celery("als_install_test", broker="memory://")
        app.conf.task_ignore_result = True
        yield app
        app.close()

    def published_headers(self, app: Any, publish: Any) -> dict[str, Any]:
        """The headers of the one message that ``publish()`` sends."""
        with app.connection_for_write() as connection:
            connection.default_channel.queue_purge("celery")
            publish()
            queue = connection.SimpleQueue("celery")
            message = queue.get(timeout=5)
            message.ack()
            queue.close()
            return dict(message.headers)

    def test_publish_carries_the_stores_and_undo_stops_it(self, app: Any) -> None:
        """Inside a request the message carries the carried stores (no local one); outside, no header;
        after undo(), none either; a second undo() does nothing."""
        import als.celery

        @app.task
        def task() -> None:  # pragma: no cover - never consumed
            pass

        undo = als.celery.install(app)
        try:
            inside = self.published_headers(app, lambda: in_request("A", task.delay))
            outside = self.published_headers(app, task.delay)
        finally:
            undo()
        after = self.published_headers(app, lambda: in_request("A", task.delay))
        undo()
        assert inside[als.celery.HEADER] == {"request_id": "A", "tenant": {"name": "t-A"}}
        assert als.celery.HEADER not in outside
        assert als.celery.HEADER not in after

    def test_a_store_json_cannot_encode_fails_at_publish(self, app: Any) -> None:
        import als.celery

        @app.task
        def task() -> None:  # pragma: no cover - never consumed
            pass

        undo = als.celery.install(app)
        try:
            with pytest.raises(TypeError, match=r"carried storage 'tenant' is not JSON-serialisable"):
                tenant.run({"ids": {1, 2}}, task.delay)  # type: ignore[dict-item]
        finally:
            undo()

    def test_an_eager_task_runs_in_its_callers_context(self, app: Any) -> None:
        """apply() (and task_always_eager) runs the task here, as a call: the caller's stores stay."""
        import als.celery

        @app.task
        def task() -> object:
            return request_id.get_store()

        undo = als.celery.install(app)
        try:
            assert in_request("A", lambda: task.apply().get()) == "A"
        finally:
            undo()

    def test_install_needs_an_app(self) -> None:
        import als.celery

        with pytest.raises(TypeError, match=r"argument 'app' must be a celery.Celery application, not str$"):
            als.celery.install("app")

    def test_installing_twice_is_refused_until_undone(self, app: Any) -> None:
        import als.celery

        undo = als.celery.install(app)
        with pytest.raises(TypeError, match=r"called for this app already"):
            als.celery.install(app)
        undo()
        als.celery.install(app)()  # installed again, and undone

    def test_a_run_set_up_before_undo_is_still_put_back(self, app: Any) -> None:
        """prerun sets every carried storage (to its default: the message carried none); an undo() while
        the task runs still lets postrun put back what was current before."""
        import contextvars

        from celery import signals

        import als.celery

        @app.task
        def task() -> None:  # pragma: no cover - never run: its signals are sent by hand
            pass

        def worker_thread() -> list[object]:
            request_id.enter_with("left by the thread")
            undo = als.celery.install(app)
            signals.task_prerun.send(sender=task, task_id="t-1", task=task, args=(), kwargs={})
            during = request_id.get_store()
            undo()
            signals.task_postrun.send(sender=task, task_id="t-1", task=task, args=(), kwargs={})
            return [during, request_id.get_store()]

        assert contextvars.copy_context().run(worker_thread) == [None, "left by the thread"]
