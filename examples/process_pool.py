"""Request ids in a process pool: lost as is, kept with ``als.wrap_executor``.

A service makes one ``ProcessPoolExecutor`` at start-up and every request
sends work to it. A ``contextvars.Context`` cannot be pickled, so no store
reaches a worker process by itself: the worker's log lines show ``-``. A
storage made with ``carry=True`` crosses by value: wrapped by
``als.wrap_executor``, each task runs in the worker under the carried stores
of the request that submitted it (and nothing else). The worker logs through
``logging`` with ``%(request_id)s`` from ``als.logging.install_record_factory``.

    python examples/process_pool.py     # prints both runs; exits 1 if a wrapped line is wrong
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import ClassVar

import als
from als.logging import install_record_factory
from als.web import is_valid_request_id

request_id: als.AsyncLocalStorage[str] = als.AsyncLocalStorage(
    "request_id", default="-", carry=True, validator=is_valid_request_id
)
install_record_factory(request_id)  # in the parent and, on import, in every worker


class Lines(logging.Handler):
    """Keeps the worker's formatted log lines, for the task to hand back."""

    lines: ClassVar[list[str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


log = logging.getLogger("resizer")
handler = Lines()
handler.setFormatter(logging.Formatter("%(request_id)s | %(message)s"))
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False


def resize(image: str) -> list[str]:
    """Runs in a worker process: logs one line, and returns the lines it logged."""
    Lines.lines.clear()
    log.info("resized %s", image)
    return list(Lines.lines)


REQUESTS = {"req-a1": ["a.png", "b.png"], "req-b2": ["c.png"], "req-c3": ["d.png", "e.png", "f.png"]}


def handle(pool: Executor, rid: str) -> list[tuple[str, str]]:
    """One request: resizes its images on the pool; (expected id, line) for each line logged."""

    def handler() -> list[tuple[str, str]]:
        return [(rid, line) for lines in pool.map(resize, REQUESTS[rid]) for line in lines]

    return request_id.run(rid, handler)


def check(seen: list[tuple[str, str]]) -> list[str]:
    """Each line must start with its own request's id."""
    return [f"expected {rid}: {line}" for rid, line in seen if not line.startswith(f"{rid} |")]


def main() -> int:
    context = multiprocessing.get_context("spawn")  # the same on every platform and Python
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        for title, executor in (("as is", pool), ("with als.wrap_executor", als.wrap_executor(pool))):
            seen = [item for rid in REQUESTS for item in handle(executor, rid)]
            print(f"{title}:")
            for rid, line in seen:
                print(f"  {rid} sent -> {line}")
            problems = check(seen)
            print(f"  {len(seen) - len(problems)} of {len(seen)} lines carry their request's id\n")
    if problems:
        print("MISMATCH:", *problems, sep="\n  ")
        return 1
    print("OK: every line logged in a worker process carries its own request's id")
    return 0


if __name__ == "__main__":
    sys.exit(main())
