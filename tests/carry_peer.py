"""Process pools and carried stores, in a process of its own: ``python -m tests.carry_peer SCENARIO METHOD``.

Prints, as JSON, ``[label, [request_id, tenant, local]]`` for every task, where
``label`` says what the task should have seen: ``"A"`` means request A's
carried stores (request_id ``A``, tenant ``t-A``) and no local store;
``"-"`` means the defaults. METHOD is the start method, ``fork`` or ``spawn``.
Forking pools run here, away from the test suite's own threads and sockets.

SCENARIO:

* ``wrap``: ``wrap_executor(ProcessPoolExecutor)`` made at import, first used
  (so forking) inside request A: submit, map, ``run_in_executor``, and work
  submitted outside any request.
* ``patch-executor``: under ``als.patch()``, a plain ``ProcessPoolExecutor``
  made lazily inside request A: submit and map from A, B and outside.
* ``patch-pool``: under ``als.patch()``, a ``multiprocessing.Pool`` made at
  import and one made lazily inside a request with ``maxtasksperchild=1``
  (re-created workers): apply, apply_async, map, map_async, starmap, imap,
  imap_unordered, from several requests and from outside.
* ``concurrent``: 40 requests at once, from 8 threads, each sending two tasks
  to one shared two-worker pool, wrapped and (under ``als.patch()``) plain;
  the pool is warmed outside any request first, so no fork meets the threads.
* ``unpatched``: a plain ``ProcessPoolExecutor`` without the patch or a
  wrapper: no carried store arrives (fork: the forking request's context
  leaks instead, the danger shown).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import als

from .carry_tasks import in_request, seen, seen_pair, set_and_see

Observed = list[tuple[str, Any]]


def wrap(method: str) -> Observed:
    context = multiprocessing.get_context(method)
    executor = als.wrap_executor(ProcessPoolExecutor(max_workers=1, mp_context=context))
    out: Observed = []
    with executor:
        out.append(("A", in_request("A", lambda: executor.submit(seen).result(60))))
        out.extend(
            ("B", s) for s in in_request("B", lambda: list(executor.map(set_and_see, range(3), chunksize=2)))
        )
        out.append(("-", executor.submit(seen).result(60)))
        out.append(("C", in_request("C", lambda: executor.submit(set_and_see).result(60))))
        out.append(("-", executor.submit(seen).result(60)))  # nothing the previous task set

        async def request() -> Any:
            return await als.run_in_executor(executor.executor, seen)

        out.append(("D", in_request("D", lambda: asyncio.run(request()))))
    return out


def patch_executor(method: str) -> Observed:
    context = multiprocessing.get_context(method)
    out: Observed = []
    with als.patched():
        executor = in_request("A", lambda: ProcessPoolExecutor(max_workers=1, mp_context=context))
        with executor:
            out.append(("A", in_request("A", lambda: executor.submit(seen).result(60))))
            out.append(("B", in_request("B", lambda: executor.submit(seen).result(60))))
            out.extend(
                ("C", s) for s in in_request("C", lambda: list(executor.map(seen, range(3), chunksize=2)))
            )
            out.append(("-", executor.submit(seen).result(60)))

            async def request() -> Any:
                return await asyncio.get_running_loop().run_in_executor(executor, seen)

            out.append(("D", in_request("D", lambda: asyncio.run(request()))))
    return out


def patch_pool(method: str, made_at_import: Any) -> Observed:
    context = multiprocessing.get_context(method)
    out: Observed = []
    with als.patched():
        lazy = in_request("L", lambda: context.Pool(1, maxtasksperchild=1))
        for pool in (made_at_import, lazy):
            with pool:
                out.append(("A", in_request("A", pool.apply, seen)))
                out.append(("B", in_request("B", lambda: pool.apply_async(seen).get(60))))
                # Explicit chunksizes: with maxtasksperchild, CPython's Pool can have no worker for a
                # moment, and the default chunksize divides by their number.
                out.extend(("C", s) for s in in_request("C", pool.map, set_and_see, range(2), 1))
                out.extend(
                    ("D", s) for s in in_request("D", lambda: pool.map_async(seen, range(2), 1).get(60))
                )
                out.extend(("E", s) for s in in_request("E", pool.starmap, seen_pair, [(1, 2), (3, 4)], 1))
                out.extend(("F", s) for s in in_request("F", lambda: list(pool.imap(seen, range(2)))))
                out.extend(
                    ("G", s) for s in in_request("G", lambda: list(pool.imap_unordered(seen, range(2))))
                )
                out.append(("-", pool.apply(seen)))
    return out


def concurrent(method: str) -> Observed:
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool, als.patched():
        wrapped = als.wrap_executor(pool)
        list(pool.map(seen, range(4)))  # every worker started, outside any request

        def request(n: int) -> Observed:
            rid = f"R{n}"
            return [
                (rid, s)
                for s in in_request(
                    rid, lambda: [wrapped.submit(seen).result(60), pool.submit(seen).result(60)]
                )
            ]

        with ThreadPoolExecutor(max_workers=8) as requests:
            return [item for items in requests.map(request, range(40)) for item in items]


def unpatched(method: str) -> Observed:
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        first = in_request("A", lambda: executor.submit(seen).result(60))
        later = in_request("B", lambda: executor.submit(seen).result(60))
    return [("first", first), ("later", later)]


def main(scenario: str, method: str) -> Observed:
    if scenario == "wrap":
        return wrap(method)
    if scenario == "patch-executor":
        return patch_executor(method)
    if scenario == "patch-pool":
        return patch_pool(method, multiprocessing.get_context(method).Pool(1))
    if scenario == "concurrent":
        return concurrent(method)
    if scenario == "unpatched":
        return unpatched(method)
    raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
