"""Sentry's threading integration next to als.patch(), in a process of its own.

Sentry patches ``Thread.start`` and ``ThreadPoolExecutor.submit`` once per
process and never undoes it, so the test suite runs this module in a child
process: ``python -m tests.sentry_peer ORDER`` (ORDER: ``sentry-first`` or
``als-first``, for the standard library's hops under ``als.patch()``, or
``own-wrappers``, for als's own executor, thread and timer and no patch). It
runs three on/off cycles, serving two requests per cycle whose pool tasks,
threads and timers set Sentry tags and send events, and prints what every hop
saw and every event Sentry would have sent, as JSON. Events are caught by a transport here: nothing leaves the
process.
"""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import thread as futures_thread
from typing import Any

import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations.threading import ThreadingIntegration
from sentry_sdk.transport import Transport

import als

storage: als.AsyncLocalStorage[str] = als.AsyncLocalStorage(name="request_id")
events: list[dict[str, Any]] = []
seen: list[tuple[str, str, str | None]] = []  # (request, hop, store)
seen_lock = threading.Lock()


class Catching(Transport):
    def capture_envelope(self, envelope: Envelope) -> None:
        for item in envelope.items:
            if item.type == "event" and item.payload.json is not None:
                events.append(item.payload.json)


def sentry_on() -> None:
    sentry_sdk.init(
        dsn="https://key@127.0.0.1/1",
        transport=Catching,
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[ThreadingIntegration()],
    )


def sentry_off() -> None:
    sentry_sdk.get_client().close()
    sentry_sdk.init()  # no DSN: a client without the integration, so Sentry's wrappers pass through


def hop(request: str, kind: str) -> str | None:
    """What a pool task, thread or timer does: tag Sentry's scope, send an event, record the store."""
    store = storage.get_store()
    with seen_lock:
        seen.append((request, kind, store))
    sentry_sdk.set_tag("task", kind)
    sentry_sdk.capture_message(f"{request} {kind}")
    return store


def request(name: str, own: bool) -> None:
    pool_class = als.ContextThreadPoolExecutor if own else ThreadPoolExecutor
    thread_class = als.ContextThread if own else threading.Thread
    timer_class = als.ContextTimer if own else threading.Timer
    with sentry_sdk.isolation_scope():  # what Sentry's web integrations do per request
        sentry_sdk.set_user({"id": f"user of {name}"})
        with pool_class(max_workers=1) as pool:
            pool.submit(hop, name, "submit").result(10)
            list(pool.map(hop, [name], ["map"]))
        threads = [
            thread_class(target=hop, args=(name, "thread")),
            timer_class(0, hop, args=(name, "timer")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        sentry_sdk.capture_message(f"{name} request")


def als_objects() -> dict[str, int]:
    """Identities of what als.patch() replaces, and of what Sentry wraps."""
    objects = {
        "thread start hook": vars(threading).get(
            "_start_joinable_thread", vars(threading).get("_start_new_thread")
        ),
        "work item": futures_thread._WorkItem,
        "map": vars(ThreadPoolExecutor).get("map"),
        "process submit": vars(ProcessPoolExecutor)["submit"],
        "contextvars": vars(threading).get("_contextvars"),
        "Thread.start": threading.Thread.start,
        "ThreadPoolExecutor.submit": vars(ThreadPoolExecutor)["submit"],
    }
    return {name: id(value) for name, value in objects.items()}


def main(order: str) -> dict[str, Any]:
    before = als_objects()
    after_cycles = []
    for cycle in range(3):
        steps = {
            "sentry-first": [sentry_on, als.patch],
            "als-first": [als.patch, sentry_on],
            "own-wrappers": [sentry_on],
        }[order]
        for step in steps:
            step()
        for n in range(2):
            name = f"cycle {cycle} request {n}"
            storage.run(name, request, name, order == "own-wrappers")
        for step in steps:  # each undone in the order done
            (sentry_off if step is sentry_on else als.unpatch)()
        after_cycles.append(als_objects())
    return {"before": before, "after_cycles": after_cycles, "seen": seen, "events": events}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
