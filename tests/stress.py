"""Crossover stress: many concurrent requests, each with a unique id, and zero mismatches.

Requests run at once as asyncio tasks (on one event loop) and as request
threads, through small shared pools so that worker threads are reused
constantly, mixing als's wrappers with the standard library's own hops under
``als.patch()``. At every hop a request checks that it sees its own id in two
storages; a mismatch records the request, the hop and what it saw.

This is bounded in count and time, not deterministic: the interleavings differ
from run to run. The test suite runs a small bounded version; the soak is

    python -m tests.stress --requests 20000 --switch-interval 1e-6

which prints the counts and exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import als

TIMEOUT = 30.0  # a hop waiting this long is a deadlock: fail, do not hang

request_id: als.AsyncLocalStorage[str | None] = als.AsyncLocalStorage(name="stress-request")
tenant: als.AsyncLocalStorage[str | None] = als.AsyncLocalStorage(name="stress-tenant")


@dataclass
class Outcome:
    requests: int = 0
    hops: int = 0
    mismatches: list[tuple[str, str, object]] = field(default_factory=list)
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, rid: str, hop: str) -> None:
        seen = (request_id.get_store(), tenant.get_store())
        with self.lock:
            self.hops += 1
            if seen != (rid, f"tenant-of-{rid}"):
                self.mismatches.append((rid, hop, seen))

    def report(self) -> str:
        counts = f"{self.requests} requests, {self.hops} hops checked in {self.seconds:.1f} s"
        lines = [f"{counts}, {len(self.mismatches)} mismatches"]
        lines += [f"  {rid} at {hop!r} saw {seen!r}" for rid, hop, seen in self.mismatches[:20]]
        return "\n".join(lines)


class Pools:
    """Deliberately small, so that every worker thread serves many requests."""

    def __init__(self) -> None:
        self.context = als.ContextThreadPoolExecutor(max_workers=2)
        self.plain = ThreadPoolExecutor(max_workers=2)  # propagates only under als.patch()
        self.nested = als.ContextThreadPoolExecutor(max_workers=2)
        self.wrapped = als.wrap_executor(ThreadPoolExecutor(max_workers=2))

    def shutdown(self) -> None:
        for pool in (self.context, self.plain, self.nested, self.wrapped):
            pool.shutdown()


def thread_request(n: int, pools: Pools, outcome: Outcome) -> None:
    rid = f"req-{n}"

    def check(hop: str) -> None:
        outcome.check(rid, hop)

    def nested() -> None:
        check("worker before nested pool")
        pools.nested.submit(check, "nested pool inside a worker").result(TIMEOUT)

    def body() -> None:
        check("start")
        pools.context.submit(check, "ContextThreadPoolExecutor").result(TIMEOUT)
        pools.wrapped.submit(check, "wrap_executor").result(TIMEOUT)
        list(pools.context.map(check, ["ContextThreadPoolExecutor.map"]))
        pools.context.submit(nested).result(TIMEOUT)
        if als.is_patched():
            pools.plain.submit(check, "stdlib pool (patched)").result(TIMEOUT)
            thread = threading.Thread(target=check, args=("stdlib thread (patched)",))
        else:
            thread = als.ContextThread(target=check, args=("ContextThread",))
        thread.start()
        thread.join(TIMEOUT)
        check("end")

    def in_request() -> None:
        tenant.run(f"tenant-of-{rid}", body)

    request_id.run(rid, in_request)


async def async_request(n: int, pools: Pools, outcome: Outcome) -> None:
    rid = f"req-{n}"

    def check(hop: str) -> None:
        outcome.check(rid, hop)

    async def child(k: int) -> None:
        await asyncio.sleep(0)
        check(f"task {k}")

    async def body() -> None:
        check("start")
        await asyncio.sleep(0)
        check("after an await")
        await asyncio.gather(child(0), child(1))
        await als.run_in_executor(pools.context, check, "als.run_in_executor")
        if als.is_patched():
            await asyncio.get_running_loop().run_in_executor(None, check, "loop.run_in_executor (patched)")
        await asyncio.to_thread(check, "asyncio.to_thread")
        check("end")

    def in_request() -> Coroutine[Any, Any, None]:
        # Returned, not awaited: request_id.run drives the coroutine that tenant.run returns,
        # so body runs with both stores.
        return tenant.run(f"tenant-of-{rid}", body)

    await request_id.run(rid, in_request)


def run(requests: int, concurrency: int = 16, switch_interval: float | None = None) -> Outcome:
    """Run ``requests`` requests, half as asyncio tasks and half as request threads, all at once."""
    outcome = Outcome(requests=requests)
    pools = Pools()
    previous = sys.getswitchinterval()
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    start = time.perf_counter()
    try:

        async def async_side() -> None:
            limit = asyncio.Semaphore(concurrency)

            async def one(n: int) -> None:
                async with limit:
                    await async_request(n, pools, outcome)

            await asyncio.gather(*(one(n) for n in range(0, requests, 2)))

        loop_thread = threading.Thread(target=asyncio.run, args=(async_side(),), name="stress-loop")
        loop_thread.start()
        with ThreadPoolExecutor(max_workers=concurrency // 2, thread_name_prefix="request") as requests_pool:
            list(requests_pool.map(lambda n: thread_request(n, pools, outcome), range(1, requests, 2)))
        loop_thread.join(TIMEOUT * 10)
    finally:
        sys.setswitchinterval(previous)
        pools.shutdown()
        outcome.seconds = time.perf_counter() - start
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--switch-interval", type=float, default=None, help="sys.setswitchinterval, e.g. 1e-6"
    )
    parser.add_argument("--unpatched", action="store_true", help="only als's own wrappers, no als.patch()")
    args = parser.parse_args(argv)
    if args.unpatched:
        outcome = run(args.requests, args.concurrency, args.switch_interval)
    else:
        with als.patched():
            outcome = run(args.requests, args.concurrency, args.switch_interval)
    print(outcome.report())
    return 1 if outcome.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
