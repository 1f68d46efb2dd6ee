"""Legacy code in one line: request ids through code you cannot change, with ``als.patch()``.

The "legacy" functions below use only the standard library and know nothing
of als or of request ids. They fan work out to a ``ThreadPoolExecutor`` (with a
nested pool inside a worker), hand an audit line to a pool shared by every
request, run a ``Thread`` subclass that overrides ``run()``, start a ``Timer``,
and call ``loop.run_in_executor(None, ...)``. They log through ``logging``;
``als.logging.install_record_factory`` adds ``%(request_id)s`` to every record.

Four requests run at once, twice: once as is, and once after a single
``als.patch()``, where every line shows its own request's id. As is, a line
logged on another thread shows ``-`` (lost), except where threads inherit
their starter's context (``-X thread_inherit_context=1``, the default of
free-threaded builds): there the shared pool's one worker keeps the id of the
request that happened to start it, and shows it on the other requests' audit
lines (wrong, which is worse). Each line also names its request as plain data
(``order=...``), which is how the check below knows the right id.

    python examples/legacy_threads.py      # prints both runs side by side;
                                           # exits 1 if any patched line is wrong
    python -X thread_inherit_context=1 examples/legacy_threads.py   # 3.14+: wrong ids, unpatched
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import als
from als.logging import install_record_factory

# ---------------------------------------------------------------------------
# The legacy module: imagine it inside a library you cannot edit.

log = logging.getLogger("legacy")
audit_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")  # shared by every request


def process(order: str, item: int) -> int:
    log.info("order=%s pool worker, item %d", order, item)
    with ThreadPoolExecutor(max_workers=1) as inner:  # a nested pool inside a worker
        inner.submit(log.info, "order=%s nested pool, item %d", order, item).result()
    return item


class Auditor(threading.Thread):
    def __init__(self, order: str) -> None:
        super().__init__()
        self.order = order

    def run(self) -> None:  # overrides run(): OpenTelemetry's patch misses these
        log.info("order=%s Thread subclass", self.order)


async def notify(order: str) -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, log.info, "order=%s run_in_executor(None)", order)


def handle_order(order: str) -> None:
    log.info("order=%s request start", order)
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(process, [order, order], [1, 2]))
    audit_pool.submit(log.info, "order=%s shared pool", order).result()
    auditor = Auditor(order)
    auditor.start()
    auditor.join()
    timer = threading.Timer(0, log.info, args=("order=%s Timer", order))
    timer.start()
    timer.join()
    asyncio.run(notify(order))
    log.info("order=%s request end", order)


# ---------------------------------------------------------------------------
# The application: one request id per order, set once at the edge.

storage: als.AsyncLocalStorage[str | None] = als.AsyncLocalStorage(name="request_id")
ORDERS = {"order-1": "req-a1", "order-2": "req-b2", "order-3": "req-c3", "order-4": "req-d4"}
LINE = re.compile(r"order=(?P<order>\S+) (?P<message>.+)")
# What each order logs, in the order it logs it.
MESSAGES = [
    "request start",
    "pool worker, item 1",
    "nested pool, item 1",
    "pool worker, item 2",
    "nested pool, item 2",
    "shared pool",
    "Thread subclass",
    "Timer",
    "run_in_executor(None)",
    "request end",
]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[tuple[str, str], str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = LINE.fullmatch(record.getMessage())
        if match is not None:
            self.seen[(match["order"], match["message"])] = record.request_id  # type: ignore[attr-defined]


def serve_all() -> dict[tuple[str, str], str]:
    """Run every order at once, each in its own request thread under its own id."""
    collect = Collect()
    log.addHandler(collect)
    start = threading.Barrier(len(ORDERS), timeout=30)

    def request(order: str, request_id: str) -> None:
        start.wait()
        storage.run(request_id, handle_order, order)

    threads = [threading.Thread(target=request, args=item) for item in ORDERS.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    log.removeHandler(collect)
    return collect.seen


def main() -> int:
    log.setLevel(logging.INFO)
    log.propagate = False
    undo = install_record_factory(storage, field="request_id", default="-")
    try:
        before = serve_all()
        with als.patched():  # the one line: als.patch() at start-up
            after = serve_all()
    finally:
        undo()

    print(f"{'order':<8} {'logged from':<22} {'without patch':<14} with als.patch()")
    for order in ORDERS:
        for message in MESSAGES:
            key = (order, message)
            print(
                f"{order:<8} {message:<22} {before.get(key, '(missing)'):<14} {after.get(key, '(missing)')}"
            )
    lost = sum(1 for value in before.values() if value == "-")
    wrong = sum(1 for (order, _), value in before.items() if value not in ("-", ORDERS[order]))
    print(
        f"\nwithout the patch: {lost} of {len(before)} lines lost their request id,"
        f" {wrong} carried another request's id"
    )
    problems = check(after)
    for problem in problems:
        print(f"MISMATCH: {problem}")
    if problems:
        return 1
    print(f"with the patch: all {len(after)} lines carry their own request's id")
    return 0


def check(seen: dict[tuple[str, str], str]) -> list[str]:
    """Every line that is missing, or carries no id or another request's id."""
    problems = []
    for order, expected in ORDERS.items():
        for message in MESSAGES:
            got = seen.get((order, message))
            if got != expected:
                problems.append(f"{order} '{message}': expected {expected}, got {got or 'no line'}")
    return problems


if __name__ == "__main__":
    sys.exit(main())
