"""Request ids from a web request into Celery tasks, with ``als.celery.install(app)``.

The publishing side (here, three "requests" and one job outside any request)
calls ``delay()`` as usual; ``install(app)`` puts the carried stores in each
message, and sets them in the worker around each task. Tasks log through
``logging`` with ``%(request_id)s`` (``als.logging.install_record_factory``),
and one task publishes another (nested), which keeps the id too.

Run as a program, it starts what it needs and stops it again: Debian's
``redis-server`` on a free port of 127.0.0.1 (in a temporary directory) and a
Celery worker with the threads pool. Needs ``pip install -e '.[examples]'``
and ``redis-server`` (``apt-get install redis-server``).

    python examples/celery_tasks.py    # prints every task's line; exits 1 if one is wrong
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from celery import Celery

import als
import als.celery
from als.logging import install_record_factory
from als.web import is_valid_request_id

request_id: als.AsyncLocalStorage[str] = als.AsyncLocalStorage(
    "request_id", default="-", carry=True, validator=is_valid_request_id
)
broker = os.environ.get("CELERY_TASKS_BROKER", "memory://")
app = Celery("celery_tasks", broker=broker, backend=broker if broker.startswith("redis") else None)
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
als.celery.install(app)  # in the publisher and, on import, in the worker

install_record_factory(request_id)
log = logging.getLogger("tasks")
log.setLevel(logging.INFO)


def logged(message: str) -> str:
    """Log ``message``; return the line as the worker's log shows it."""
    log.info(message)
    record = logging.getLogRecordFactory()("tasks", logging.INFO, __file__, 0, message, (), None)
    return logging.Formatter("%(request_id)s | %(message)s").format(record)


@app.task
def send_receipt(order: str) -> list[str]:
    return [logged(f"receipt for {order} sent")]


@app.task
def charge(order: str) -> tuple[list[str], str]:
    """Charges, then publishes the receipt task (nested: it carries this task's stores)."""
    return [logged(f"{order} charged")], send_receipt.delay(order).id


ORDERS = {"order-1": "req-a1", "order-2": "req-b2", "order-3": "req-c3", "nightly": "-"}


def check(seen: dict[str, list[str]]) -> list[str]:
    """Every line of an order's tasks must start with the id of the request that published it."""
    return [
        f"{order}: {line}"
        for order, lines in seen.items()
        for line in lines
        if not line.startswith(f"{ORDERS[order]} |")
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> int:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("this example needs redis-server (apt-get install redis-server)", file=sys.stderr)
        return 2
    port = free_port()
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen(
            [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        env = {**os.environ, "CELERY_TASKS_BROKER": f"redis://127.0.0.1:{port}/0"}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "celery_tasks",
                "worker",
                "-P",
                "threads",
                "-c",
                "4",
                "--loglevel=WARNING",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=here,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            publisher = subprocess.run(
                [sys.executable, str(here / "celery_tasks.py"), "--publish"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        finally:
            for process in (worker, server):
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
    sys.stdout.write(publisher.stdout)
    sys.stderr.write(publisher.stderr)
    return publisher.returncode


def publish() -> int:
    """The web side: each order published from inside its request (or, nightly, from none)."""
    results: dict[str, Any] = {}
    for order, rid in ORDERS.items():
        if rid == "-":
            results[order] = charge.delay(order)
        else:
            results[order] = request_id.run(rid, charge.delay, order)
    seen: dict[str, list[str]] = {}
    for order, result in results.items():
        lines, receipt = result.get(timeout=60)
        seen[order] = lines + app.AsyncResult(receipt).get(timeout=60)
    for order, lines in seen.items():
        print(f"{order} published by {ORDERS[order]}:")
        for line in lines:
            print(f"  {line}")
    problems = check(seen)
    if problems:
        print("MISMATCH:", *problems, sep="\n  ")
        return 1
    print("OK: every task's line carries the id of the request that published it")
    return 0


if __name__ == "__main__":
    sys.exit(publish() if sys.argv[1:] == ["--publish"] else main())
