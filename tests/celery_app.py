"""A Celery application for the tests: its tasks log the carried request id and return what they saw.

Configured from the environment, as the test starts the worker:
``ALS_TEST_BROKER`` (a redis:// URL) and ``ALS_TEST_LOG`` (the file every task
appends its lines to, one per line: ``<expected>|<seen by the record factory>|<seen directly>|<what>``).
Imported by the test process (to publish) and by the workers.
"""

from __future__ import annotations

import contextvars
import logging
import os
from typing import Any

from celery import Celery, signals

import als.celery
import als.logging

from .carry_tasks import local, request_id, tenant

leak: contextvars.ContextVar[str | None] = contextvars.ContextVar("leak", default=None)

app = Celery(
    "als_tests",
    broker=os.environ.get("ALS_TEST_BROKER", "memory://"),
    backend=os.environ.get("ALS_TEST_BROKER"),
)
app.conf.update(
    task_acks_late=False,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)
undo = als.celery.install(app)

log = logging.getLogger("als.tests.celery")
log.setLevel(logging.INFO)
log.propagate = False
if os.environ.get("ALS_TEST_LOG"):
    handler = logging.FileHandler(os.environ["ALS_TEST_LOG"], mode="a")
    handler.setFormatter(logging.Formatter("%(expected)s|%(request_id)s|%(direct)s|%(message)s"))
    log.addHandler(handler)
als.logging.install_record_factory(request_id)


def line(expected: str, what: str) -> None:
    if local.get_store() is not None or leak.get() is not None:  # set by an earlier task: must never show
        what += "-after-a-leak"
    log.info(what, extra={"expected": expected, "direct": request_id.get_store() or "-"})


@app.task
def record(expected: str) -> Any:
    line(expected, "record")
    return request_id.get_store(), tenant.get_store()


@app.task
def nested(expected: str) -> Any:
    line(expected, "nested-outer")
    return record.delay(expected).id


@app.task(bind=True, max_retries=1, default_retry_delay=0)
def retrying(self: Any, expected: str) -> Any:
    line(expected, f"retrying-{self.request.retries}")
    if self.request.retries == 0:
        raise self.retry(countdown=0.05)
    return request_id.get_store()


@app.task(bind=True, max_retries=1, default_retry_delay=0)
def retried_elsewhere(self: Any, expected: str) -> Any:
    """Retries from inside another request: the retry carries that one, not the first message's."""
    if self.request.retries == 0:
        line(expected, "moved-0")
        raise request_id.run(f"{expected}-r", lambda: self.retry(countdown=0.05))
    line(f"{expected}-r", "moved-1")
    return request_id.get_store()


@app.task
def leaky(expected: str) -> None:
    """Sets every kind of context state, none of which may reach the next task."""
    line(expected, "leaky")
    local.enter_with("leaked")
    leak.set("leaked")
    request_id.enter_with("leaked")
    tenant.enter_with({"name": "leaked"})


@app.task
def failing(expected: str) -> None:
    line(expected, "failing")
    raise RuntimeError("task failed on purpose")


@signals.task_failure.connect
def failed(sender: Any = None, args: Any = (), **_: Any) -> None:
    if getattr(sender, "name", None) == failing.name:
        line(args[0], "failure-handler")
