"""Publishes to a running Celery worker from 100 concurrent requests and checks every task's log line.

``python -m tests.celery_peer`` with ``ALS_TEST_BROKER`` and ``ALS_TEST_LOG``
set as for the worker (tests/celery_app.py). Prints, as JSON: tasks published,
lines expected and found, and the wrong and missing ones. Each request
publishes ``record``; some also a nested task, a retrying one, a failing one
and one with a countdown. Tasks published outside any request, and tasks
whose header a hostile publisher forged, must see no id.
"""

from __future__ import annotations

import collections
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import als.celery

from .carry_tasks import in_request
from .celery_app import app, failing, leaky, nested, record, retried_elsewhere, retrying, undo

REQUESTS = 100
OUTSIDE = 20
HOSTILE: list[Any] = [
    {"request_id": "bad\r\nSet-Cookie: x"},
    {"request_id": "x" * 300},
    {"request_id": 12345},
    {"request_id": ["a"]},
    "not a mapping",
    ["request_id", "abc"],
    # tenant has no validator: the floor for broker values still applies.
    {"tenant": "line\r\nFAKE LOG LINE"},
    {"tenant": {"name": Decimal("1.5")}},  # kombu sends it typed, and decodes it into a Decimal again
    {"tenant": {"name": b"bytes"}},
    {"tenant": [[[[[[[[[["deep"]]]]]]]]]]},
    {"tenant": {"n": list(range(300))}},
]
LEAKY = 10


def request(n: int) -> list[tuple[Any, bool]]:
    """One request: what it published, each with whether the task is expected to fail."""
    rid = f"req-{n:03d}"

    def handler() -> list[tuple[Any, bool]]:
        published = [(record.delay(rid), False)]
        kind = n % 10
        if kind == 0:
            published.append((nested.delay(rid), False))
        elif kind == 1:
            published.append((retrying.delay(rid), False))
        elif kind == 2:
            published.append((failing.delay(rid), True))
        elif kind == 3:
            published.append((record.apply_async((rid,), countdown=0.2), False))
        elif kind == 4:
            published.append((retried_elsewhere.delay(rid), False))
        return published

    return in_request(rid, handler)  # type: ignore[return-value]


def expected_lines() -> collections.Counter[tuple[str, str]]:
    lines: collections.Counter[tuple[str, str]] = collections.Counter()
    for n in range(REQUESTS):
        rid = f"req-{n:03d}"
        lines[(rid, "record")] += 1
        kind = n % 10
        if kind == 0:
            lines[(rid, "nested-outer")] += 1
            lines[(rid, "record")] += 1
        elif kind == 1:
            lines[(rid, "retrying-0")] += 1
            lines[(rid, "retrying-1")] += 1
        elif kind == 2:
            lines[(rid, "failing")] += 1
            lines[(rid, "failure-handler")] += 1
        elif kind == 3:
            lines[(rid, "record")] += 1
        elif kind == 4:
            lines[(rid, "moved-0")] += 1
            lines[(f"{rid}-r", "moved-1")] += 1
    lines[("-", "record")] += OUTSIDE + len(HOSTILE)
    lines[("-", "leaky")] += LEAKY
    return lines


def main() -> dict[str, Any]:
    published = [(leaky.delay("-"), False) for _ in range(LEAKY)]  # first: what they set must not show
    with ThreadPoolExecutor(max_workers=20) as publishers:
        published += [item for batch in publishers.map(request, range(REQUESTS)) for item in batch]
    published += [(record.delay("-"), False) for _ in range(OUTSIDE)]
    undo()  # a publisher without als: the forged header reaches the worker as it is
    hostile = [record.apply_async(("-",), headers={als.celery.HEADER: h}) for h in HOSTILE]
    als.celery.install(app)
    wrong_results = []
    for result, fails in published:
        value = result.get(timeout=60, propagate=False)
        if fails != isinstance(value, Exception):
            wrong_results.append(repr(value))
    for result in hostile:  # the forged stores were all dropped: both storages at their defaults
        value = result.get(timeout=60, propagate=False)
        if value != [None, None]:
            wrong_results.append(repr(value))
    for result, _ in published:  # nested tasks: wait for the inner one too
        if isinstance(result.result, str) and len(result.result) == 36:
            app.AsyncResult(result.result).get(timeout=60)
    expected = expected_lines()
    deadline = time.monotonic() + 30
    while True:  # the failure handler's line can follow the result by a moment
        with open(os.environ["ALS_TEST_LOG"]) as log:
            rows = [line.rstrip("\n").split("|") for line in log if line.strip()]
        if len(rows) >= sum(expected.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    found: collections.Counter[tuple[str, str]] = collections.Counter()
    wrong = []
    for row in rows:
        want, by_factory, direct, what = row
        if not (want == by_factory == direct):
            wrong.append(row)
        found[(want, what)] += 1
    return {
        "tasks": len(published) + len(hostile),
        "lines expected": sum(expected.values()),
        "lines": len(rows),
        "wrong": wrong,
        "missing": sorted(map(list, (expected - found).elements())),
        "unexpected": sorted(map(list, (found - expected).elements())),
        "wrong results": wrong_results,
    }


if __name__ == "__main__":
    print(json.dumps(main()))
