"""A Celery application for the tests: its tasks log the carried request id and return what they saw.

Configured from the environment, as the test starts the worker:
``ALS_TEST_BROKER`` (a redis:// URL) and ``ALS_TEST_LOG`` (the file every task
appends its lines to, one per line: ``<expected>|<seen by the record factory>|<seen directly>|<what>``).
Imported by the test process (to publish) and by the workers.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals

import als.celery
import als.logging

from .carry_tasks import request_id, tenant

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


@app.task
def failing(expected: str) -> None:
    line(expected, "failing")
    raise RuntimeError("task failed on purpose")


@signals.task_failure.connect
def failed(sender: Any = None, args: Any = (), **_: Any) -> None:
    if getattr(sender, "name", None) == failing.name:
        line(args[0], "failure-handler")
