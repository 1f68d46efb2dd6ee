"""What ``als.web.outgoing.forward()`` adds to each outgoing request: off and on, in the same run.

Four groups, each timing one client sending GET requests, one after another
on one keep-alive connection, inside a request whose id is set (as a
service's outgoing calls are):

* http.client on a socketpair: an ``HTTPConnection`` whose socket is one end
  of a local socketpair, the other end answering each request before it is
  sent; no server and no network, so what is left is the client's own work,
  the hooks' included.
* httpx.Client with ``httpx.MockTransport``: the whole client, no network.
* http.client and httpx.Client against a local keep-alive server: a minimal
  asyncio server in a process of its own, on another CPU.

Variants: ``no forward()`` (the baseline), the id put in the request's
headers by hand with no ``forward()`` (what one more header costs the client
anyway, the floor of any way to send it), ``forward(), in a request`` (the
header is sent on each request) and ``forward(), outside a request`` (the
hooks run and find no store). The hooks are put in and taken out around each
timed block.

``python -m benchmarks --only outgoing`` shows the ratios with the rest;
``python -m benchmarks.outgoing [--quick] [--cpu]`` shows the extra
microseconds per request too: the median over repetitions, and the best
(the fastest block of the variant minus the fastest of the baseline: on a
shared machine, noise only ever adds). ``--cpu`` times in the sending
thread's CPU time, leaving out the wait for the server. The round trips are
there to show the share of a real request; only the client-only groups can
resolve a microsecond.

Run as ``python -m benchmarks.outgoing --serve FD``, it is the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import http.client
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import als
from als.web.outgoing import forward

from ._harness import Group, Result, Variant, measure, pin_to_one_cpu

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"
HEADERS = {"Accept": "*/*", "User-Agent": "bench/1.0"}  # what a client sends besides the id
BATCH = 100  # requests between two drains of the socketpair
EXTRA_TARGET_US = 3.0  # "a few microseconds at most" per request

BY_HAND = "the id by hand, no forward()"
IN_REQUEST = "forward(), in a request"
REQUEST_ID = "0af7651916cd43dd8448eb211c80319c"

storage: als.AsyncLocalStorage[str | None] = als.AsyncLocalStorage(name="request_id")
_in_request = contextvars.copy_context()
_in_request.run(storage.enter_with, REQUEST_ID)
_outside = contextvars.Context()


# --- The server ---------------------------------------------------------------------------------


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")  # GETs: no body
            writer.write(RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def serve(fd: int) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_answer, sock=socket.socket(fileno=fd))
        await server.serve_forever()

    asyncio.run(main())


@contextlib.contextmanager
def _server(cpus: set[int]) -> Iterator[int]:
    """The server process, on a listening socket of ours (so no wait for it to start); yields its port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.outgoing", "--serve", str(sock.fileno())],
        pass_fds=[sock.fileno()],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(process.pid, cpus)
        yield sock.getsockname()[1]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        sock.close()


# --- The clients --------------------------------------------------------------------------------

Run = Callable[[int], None]


class _Socketpair:
    """An HTTPConnection on one end of a socketpair; the other end answers each request before it is sent.

    One response at a time: http.client reads ahead, and would drop a second one already there.
    """

    def __init__(self) -> None:
        self._client, self._peer = socket.socketpair()
        self._peer.setblocking(False)
        self.connection = http.client.HTTPConnection("bench.local")
        self.connection.sock = self._client  # connected already: http.client never calls connect()

    def requests(self, headers: dict[str, str]) -> Run:
        def run(number: int) -> None:
            request, getresponse, answer = (
                self.connection.request,
                self.connection.getresponse,
                self._peer.send,
            )
            for done in range(number):
                if done % BATCH == 0:
                    self._drop_requests()
                answer(RESPONSE)
                request("GET", "/", headers=headers)
                getresponse().read()

        return run

    def _drop_requests(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._peer.recv(1 << 16):
                pass

    @contextlib.contextmanager
    def open(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.connection.close()
            self._peer.close()


def _http_client_requests(
    connection: Callable[[], http.client.HTTPConnection],
) -> Callable[[dict[str, str]], Run]:
    def requests(headers: dict[str, str]) -> Run:
        def run(number: int) -> None:
            request, getresponse = connection().request, connection().getresponse
            for _ in range(number):
                request("GET", "/", headers=headers)
                getresponse().read()

        return run

    return requests


def _httpx_requests(client: Callable[[], Any], url: str) -> Callable[[dict[str, str]], Run]:
    def requests(headers: dict[str, str]) -> Run:
        def run(number: int) -> None:
            get = client().get
            for _ in range(number):
                get(url, headers=headers).read()

        return run

    return requests


@contextlib.contextmanager
def _forwarding() -> Iterator[None]:
    undo = forward(storage)
    try:
        yield
    finally:
        undo()


def _variants(requests: Callable[[dict[str, str]], Run]) -> list[Variant]:
    """The baseline, the id put in the headers by hand (the floor of any way to send it), and forward()."""

    def inside(run: Run) -> Run:
        return lambda number: _in_request.run(run, number)

    plain = requests(HEADERS)
    return [
        Variant("no forward()", inside(plain)),
        Variant(BY_HAND, inside(requests({**HEADERS, "X-Request-ID": REQUEST_ID}))),
        Variant(IN_REQUEST, inside(plain), _forwarding),
        Variant("forward(), outside a request", lambda number: _outside.run(plain, number), _forwarding),
    ]


def outgoing_groups() -> list[Group]:
    import httpx  # noqa: PLC0415 - imported before forward(), as an application should; not by the harness

    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    everyone = set(range(os.cpu_count() or 1))
    others = (everyone - mine) or everyone
    held: dict[str, Any] = {}

    socketpair = _Socketpair()
    mocked = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok\n")))

    @contextlib.contextmanager
    def mock_open() -> Iterator[None]:
        try:
            yield
        finally:
            mocked.close()

    @contextlib.contextmanager
    def served() -> Iterator[None]:
        with _server(others) as port:
            held["http.client"] = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            held["httpx"] = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            try:
                yield
            finally:
                held.pop("http.client").close()
                held.pop("httpx").close()

    return [
        Group(
            "http.client GET, socketpair (client only)",
            "request",
            20000,
            _variants(socketpair.requests),
            socketpair.open,
            kind="operation",
        ),
        Group(
            "httpx.Client GET, MockTransport (client only)",
            "request",
            5000,
            _variants(_httpx_requests(lambda: mocked, "http://bench.local/")),
            mock_open,
            kind="operation",
        ),
        Group(
            "http.client GET, local keep-alive server",
            "request",
            4000,
            _variants(_http_client_requests(lambda: held["http.client"])),
            served,
            kind="request",
        ),
        Group(
            "httpx.Client GET, local keep-alive server",
            "request",
            2000,
            _variants(_httpx_requests(lambda: held["httpx"], "/")),
            served,
            kind="request",
        ),
    ]


def measure_cpu(group: Group, repetitions: int, number: int) -> Iterator[Result]:
    """The harness's ``measure``, timed in this thread's CPU time rather than on the wall clock.

    Forwarding costs the client's CPU: CPU time leaves out the time this
    process waits for the server or for another process on its CPU, which on
    a shared machine is most of the noise.
    """

    def timed(variant: Variant, count: int) -> float:
        with variant.active():
            start = time.thread_time_ns()
            variant.run(count)
            return (time.thread_time_ns() - start) / count

    names = [v.name for v in group.variants]
    per_op: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    with group.setup():
        for variant in group.variants:  # warm-up
            timed(variant, max(1, number // 10))
        for repetition in range(repetitions):
            shift = repetition % len(group.variants)
            times = {v.name: timed(v, number) for v in group.variants[shift:] + group.variants[:shift]}
            for name in names:
                per_op[name].append(times[name])
                ratios[name].append(times[name] / times[group.baseline.name])
    for name in names[1:]:
        yield Result(group.name, name, names[0], per_op[name], ratios[name], None, group.kind)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.outgoing", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions")
    parser.add_argument("--cpu", action="store_true", help="time in the sending thread's CPU time")
    parser.add_argument("--serve", type=int, metavar="FD", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    cpu = pin_to_one_cpu()
    # Many short blocks: the best of them is what a request costs when nothing else runs.
    repetitions, divisor = (31, 20) if args.quick else (61, 4)
    print(
        f"Python {platform.python_version()} on {platform.machine()}, pinned to CPU {cpu}; "
        f"{repetitions} interleaved repetitions per group{' (quick)' if args.quick else ''};"
        f" {'CPU time of the sending thread' if args.cpu else 'wall-clock time'} per request\n"
    )
    timer = measure_cpu if args.cpu else measure
    print(
        f"{'operation':<46} {'variant':<30} {'per op':>9} {'ratio':>7} {'extra':>9} {'best':>9} {'target':>8}"
    )
    judged = missed = 0
    for group in outgoing_groups():
        results = {r.variant: r for r in timer(group, repetitions, max(1, group.number // divisor))}
        baseline = min(t / q for t, q in zip(*_any(results), strict=True))
        for result in results.values():
            # extra: per repetition, this variant's time minus the baseline's (per_op / ratio), the median;
            # best: the fastest block of this variant minus the fastest of the baseline.
            extra = statistics.median(t - t / q for t, q in zip(result.per_op_ns, result.ratios, strict=True))
            best = min(result.per_op_ns) - baseline
            verdict = target = ""
            if result.variant != BY_HAND:
                met = best / 1000 <= EXTRA_TARGET_US
                judged += 1
                missed += not met
                target, verdict = f"<={EXTRA_TARGET_US:.1f}us", "  ok" if met else "  MISSED"
            print(
                f"{group.name:<46} {result.variant:<30} {result.per_op_median / 1000:>7.2f}us"
                f" {result.ratio:>6.3f}x {extra / 1000:>+7.2f}us {best / 1000:>+7.2f}us {target:>8}{verdict}"
            )
        hooks = min(results[IN_REQUEST].per_op_ns) - min(results[BY_HAND].per_op_ns)
        print(
            f"{'':<46} {'forward() over the id by hand':<30} {'':>9} {'':>7} {'':>9} {hooks / 1000:>+7.2f}us"
        )
    print(
        f"\nSUMMARY: {judged - missed} of {judged} targets met (forward()'s best extra time per request"
        f" <= {EXTRA_TARGET_US} us; Python {platform.python_version()}{', quick' if args.quick else ''})"
    )
    return 0


def _any(results: dict[str, Result]) -> tuple[list[float], list[float]]:
    """One variant's per-op times and ratios, from which the baseline's own per-op times follow."""
    result = next(iter(results.values()))
    return result.per_op_ns, result.ratios


if __name__ == "__main__":
    sys.exit(main())
