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

import pytest
import redis

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
    """100 concurrent requests publish tasks (plain, nested, retried, failing, with a countdown), and
    26 tasks are published outside any request or with a forged header: every line of every task,
    and of the failure handler, carries the id of the request that published it, or none."""
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
    assert summary["tasks"] == 166
    assert summary["lines"] == summary["lines expected"] == 196
    assert (summary["wrong"], summary["missing"], summary["unexpected"], summary["wrong results"]) == (
        [],
        [],
        [],
        [],
    )
