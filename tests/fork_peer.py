"""Forked pool workers and the request that forked them, in a process of its own.

Process pools fork, start threads of their own and close pipes while shutting
down; the test suite runs them in a child process so that none of that meets
the suite's other threads and sockets: ``python -m tests.fork_peer SCENARIO``
prints, as JSON, the (pid, store) each task saw. Every pool uses the fork start
method (a forked child keeps its forking thread's context) and one worker.

SCENARIO: ``pool-unpatched``, ``pool-patched`` (``maxtasksperchild=1``, so the
pool re-creates its worker for every task), ``executor-unpatched`` or
``executor-patched`` (a ``ProcessPoolExecutor`` made outside any request,
whose first submit, which forks its workers, comes from request A).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import als

storage: als.AsyncLocalStorage[str] = als.AsyncLocalStorage(name="request_id")
fork = multiprocessing.get_context("fork")


def store_in_worker(_: object = None) -> tuple[int, str | None]:
    """Runs in a pool's worker process: its pid and the store it sees."""
    return os.getpid(), storage.get_store()


def pool(patch_on: bool) -> list[tuple[int, str | None]]:
    with als.patched() if patch_on else contextlib.nullcontext():
        if not patch_on:  # made lazily inside request A
            with storage.run("A", fork.Pool, 1) as made:
                return [storage.run("B", made.apply, store_in_worker), made.apply(store_in_worker)]
        with storage.run("A", fork.Pool, 1, maxtasksperchild=1) as made:
            results = [storage.run("B", made.apply, store_in_worker), made.apply(store_in_worker)]
            # chunksize given: map's default divides by the number of live workers, which with
            # maxtasksperchild can be zero for a moment.
            results += storage.run("C", made.map, store_in_worker, range(2), 1)
            results += list(made.imap(store_in_worker, range(2)))
            results += made.starmap(store_in_worker, [(1,)], 1)
            results.append(made.apply_async(store_in_worker).get(60))
            return results


def executor(patch_on: bool) -> list[tuple[int, str | None]]:
    with (
        als.patched() if patch_on else contextlib.nullcontext(),
        ProcessPoolExecutor(max_workers=1, mp_context=fork) as made,
    ):
        return [
            storage.run("A", made.submit, store_in_worker).result(60),
            storage.run("B", made.submit, store_in_worker).result(60),
            made.submit(store_in_worker).result(60),
        ]


if __name__ == "__main__":
    kind, _, state = sys.argv[1].partition("-")
    run = {"pool": pool, "executor": executor}[kind]
    print(json.dumps(run(state == "patched")))
