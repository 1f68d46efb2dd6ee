"""Per-request cost of request-id middleware: ASGIRequestId, its peer and a minimal one, against the bare app.

Two groups, each with the same four variants: the bare app, the app behind
``als.web.ASGIRequestId``, behind ``asgi_correlation_id.CorrelationIdMiddleware``
(the peer, with its defaults; imported only in its own process) and behind
``minimal`` below (a ContextVar set and reset around the app, the header added
on the way out: the least a request-id middleware does). The app does nothing
but answer, so a middleware's share of a request is as large as it can be.

* Through uvicorn: four server processes, pinned to one CPU, this process
  (the client) to the other; the client keeps eight keep-alive connections
  busy (asyncio streams, no HTTP library, no request-id header: each
  middleware makes an id), so the server is the bottleneck. A real app's
  ratio is closer to 1.
* Called directly: four worker processes, each awaiting
  ``app(scope, receive, send)`` in a loop, with a fresh uvicorn-like scope per
  call and a ``send`` that drops the messages: the middleware's own cost,
  without the server's, which a shared machine's noise can hide.

Each timed block sends ``number`` requests to one process; blocks alternate
between the variants as any other group's do, so the per-request time ratio
is the inverse of the requests-per-second ratio. A middleware's extra cost per
request is its time per request minus the bare app's in the same repetition,
on the elapsed clock and on the serving process's CPU clock (read on Linux,
where it leaves out the client's share and most of what other processes add).
The target, ours at most half of the peer's extra cost, is judged on the CPU
figure where there is one.

    python -m benchmarks --only web

Run as ``python -m benchmarks.web --fd N [--middleware NAME] [--direct]``, it
is one of the server processes (a listening socket), or with ``--direct`` one
of the workers (a socket that sends it block sizes and gets back CPU times).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from ._harness import Group, Result, Variant

CONNECTIONS = 8
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
BODY = b"ok\n"
SERVED = "HTTP requests, uvicorn, minimal ASGI app"
DIRECT = "ASGI middleware called directly, minimal app"
# --middleware choice -> the variant's name in each group, the bare app first.
MIDDLEWARES = {
    "none": "middleware off",
    "als": "ASGIRequestId",
    "asgi-correlation-id": "asgi-correlation-id",
    "minimal": "minimal middleware",
}
OURS, PEER = MIDDLEWARES["als"], MIDDLEWARES["asgi-correlation-id"]
# group -> variant -> the serving process's CPU time per request, per timed block after the warm-up.
CPU_NS: dict[str, dict[str, list[float]]] = {}

_Scope = dict[str, Any]
_Call = Callable[..., Any]


async def app(scope: _Scope, receive: _Call, send: _Call) -> None:
    """The least an ASGI app can do: answer 200 with a 3-byte body."""
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"3")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


_minimal_id: contextvars.ContextVar[str] = contextvars.ContextVar("minimal_request_id")


def minimal(app: _Call) -> _Call:
    """The floor for a request-id middleware: no validation, no isolation of the app's context."""

    async def middleware(scope: _Scope, receive: _Call, send: _Call) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        found = [value for name, value in scope["headers"] if name == b"x-request-id"]
        request_id = found[0].decode("latin-1") if found else uuid.uuid4().hex

        async def send_with_id(message: _Scope) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode("latin-1")))
            await send(message)

        token = _minimal_id.set(request_id)
        try:
            await app(scope, receive, send_with_id)
        finally:
            _minimal_id.reset(token)

    return middleware


def _wrapped(middleware: str) -> _Call:
    """The app behind ``middleware`` (a key of MIDDLEWARES)."""
    if middleware == "als":
        import als  # noqa: PLC0415
        from als.web import ASGIRequestId  # noqa: PLC0415

        return ASGIRequestId(app, als.AsyncLocalStorage(name="request_id"))
    if middleware == "asgi-correlation-id":
        from asgi_correlation_id import CorrelationIdMiddleware  # noqa: PLC0415 - the peer, only here

        return CorrelationIdMiddleware(app)
    if middleware == "minimal":
        return minimal(app)
    return app


def serve(fd: int, middleware: str) -> None:
    """Serve the app behind ``middleware`` with uvicorn on the listening socket ``fd``."""
    import uvicorn  # noqa: PLC0415 - only the server process needs it

    config = uvicorn.Config(_wrapped(middleware), log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


def call_directly(fd: int, middleware: str) -> None:
    """For each block size read from the socket ``fd``, await that many requests; answer the CPU time."""
    served = _wrapped(middleware)
    loop = asyncio.new_event_loop()
    with socket.socket(fileno=fd) as sock:
        while len(size := sock.recv(8, socket.MSG_WAITALL)) == 8:  # until the socket closes
            start = time.thread_time_ns()
            loop.run_until_complete(_calls(served, int.from_bytes(size, "little")))
            sock.sendall((time.thread_time_ns() - start).to_bytes(8, "little"))
    loop.close()


async def _calls(served: _Call, number: int) -> None:
    for _ in range(number):
        scope = {  # what uvicorn's h11 protocol passes for the client's request
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": "GET",
            "root_path": "",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1")],
            "state": {},
        }
        await served(scope, _receive, _drop)


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _drop(message: dict[str, Any]) -> None:
    pass


async def _one_connection(port: int, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected response: {head[:40]!r}")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
    finally:
        writer.close()
        await writer.wait_closed()


async def _requests(port: int, number: int) -> None:
    share, extra = divmod(number, CONNECTIONS)
    await asyncio.gather(*(_one_connection(port, share + (i < extra)) for i in range(CONNECTIONS)))


def _cpu_clock(pid: int) -> int | None:
    """The clock id of process ``pid``'s CPU time (Linux's clock_getcpuclockid), or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    clock = ((~pid) << 3) | 2  # CPUCLOCK_SCHED of the whole process
    try:
        time.clock_gettime_ns(clock)
    except OSError:
        return None
    return clock


@contextlib.contextmanager
def _process(arguments: list[str], sock: socket.socket, cpus: set[int]) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m benchmarks.web --fd N ...arguments`` on ``sock``, pinned to ``cpus``; ended on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.web", "--fd", str(sock.fileno()), *arguments],
        pass_fds=[sock.fileno()],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(process.pid, cpus)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def _server(middleware: str, cpus: set[int]) -> Iterator[tuple[int, int | None]]:
    """A uvicorn process on a listening socket of ours (so no wait for it to start).

    Yields its port and the clock id of its CPU time (None where it cannot be read).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)
        port = sock.getsockname()[1]
        with _process(["--middleware", middleware], sock, cpus) as process:
            try:  # one request, so that a server that failed to start is an error, not a hang
                asyncio.run(asyncio.wait_for(_one_connection(port, 1), 30))
            except (OSError, asyncio.TimeoutError) as error:
                raise RuntimeError(
                    f"the uvicorn server ({middleware}) did not answer (exit code {process.poll()})"
                ) from error
            yield port, _cpu_clock(process.pid)


@contextlib.contextmanager
def _worker(middleware: str, cpus: set[int]) -> Iterator[socket.socket]:
    """A ``--direct`` worker process; yields our end of its socket."""
    ours, theirs = socket.socketpair()
    with ours, _process(["--middleware", middleware, "--direct"], theirs, cpus):
        theirs.close()
        ours.settimeout(120)
        yield ours


def _cpu_ns_per_request(sock: socket.socket, number: int) -> float:
    """Have a worker await ``number`` requests; its CPU time per request."""
    sock.sendall(number.to_bytes(8, "little"))
    reply = sock.recv(8, socket.MSG_WAITALL)
    if len(reply) != 8:
        raise RuntimeError("a --direct worker of benchmarks.web exited")
    return int.from_bytes(reply, "little") / number


def web_groups() -> list[Group]:
    loop = asyncio.new_event_loop()
    servers_at: dict[str, tuple[int, int | None]] = {}
    workers: dict[str, socket.socket] = {}
    # The client is pinned (by the harness) to one CPU; the servers and workers get the others.
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    everyone = set(range(os.cpu_count() or 1))
    others = (everyone - mine) or everyone

    @contextlib.contextmanager
    def servers() -> Iterator[None]:
        CPU_NS[SERVED] = {name: [] for name in MIDDLEWARES.values()}
        with contextlib.ExitStack() as stack:
            for middleware in MIDDLEWARES:
                servers_at[middleware] = stack.enter_context(_server(middleware, others))
            try:
                yield
            finally:
                loop.close()

    @contextlib.contextmanager
    def callers() -> Iterator[None]:
        CPU_NS[DIRECT] = {name: [] for name in MIDDLEWARES.values()}
        with contextlib.ExitStack() as stack:
            for middleware in MIDDLEWARES:
                workers[middleware] = stack.enter_context(_worker(middleware, others))
            yield

    def request_to(middleware: str) -> Callable[[int], None]:
        times = warm_up_first(SERVED, MIDDLEWARES[middleware])

        def run(number: int) -> None:
            port, clock = servers_at[middleware]
            before = 0 if clock is None else time.clock_gettime_ns(clock)
            loop.run_until_complete(asyncio.wait_for(_requests(port, number), 120))
            if clock is not None:
                times((time.clock_gettime_ns(clock) - before) / number)

        return run

    def call(middleware: str) -> Callable[[int], None]:
        times = warm_up_first(DIRECT, MIDDLEWARES[middleware])

        def run(number: int) -> None:
            times(_cpu_ns_per_request(workers[middleware], number))

        return run

    return [
        Group(
            SERVED,
            "request",
            4000,
            [Variant(name, request_to(middleware)) for middleware, name in MIDDLEWARES.items()],
            servers,
            kind="request",
        ),
        Group(
            DIRECT,
            "request",
            50000,
            [Variant(name, call(middleware)) for middleware, name in MIDDLEWARES.items()],
            callers,
            kind="request",
        ),
    ]


def warm_up_first(group: str, variant: str) -> Callable[[float], None]:
    """A recorder of a variant's CPU times into CPU_NS that drops the first, the harness's warm-up block."""
    warm = False

    def record(value: float) -> None:
        nonlocal warm
        if warm:
            CPU_NS[group][variant].append(value)
        warm = True

    return record


def cpu_per_op_ns() -> dict[str, dict[str, list[float]]]:
    """Each group's serving-process CPU time per request, per variant and repetition, where read."""
    return {group: {name: t for name, t in times.items() if t} for group, times in CPU_NS.items()}


def extra_us(result: Result) -> list[float]:
    """Per repetition, the variant's elapsed time per request minus the bare app's, in microseconds."""
    pairs = zip(result.per_op_ns, result.ratios, strict=True)
    return [per_op * (1 - 1 / ratio) / 1000 for per_op, ratio in pairs]


def extra_cpu_us(group: str, variant: str) -> list[float] | None:
    """Per repetition, the serving process's CPU time per request minus the bare app's, if read."""
    times = CPU_NS.get(group, {})
    mine, bare = times.get(variant), times.get(MIDDLEWARES["none"])
    if not mine or not bare or len(mine) != len(bare):
        return None
    return [(t - b) / 1000 for t, b in zip(mine, bare, strict=True)]


def against_peer(results: list[Result]) -> list[tuple[str, bool]]:
    """Each middleware's extra cost per request, per group; the target: ours at most half of the peer's."""
    verdicts: list[tuple[str, bool]] = []
    for group in (SERVED, DIRECT):
        by_variant = {r.variant: r for r in results if r.group == group}
        if not by_variant:
            continue
        print(f"\n{group}: extra cost per request over the bare app")
        print(f"{'':<44} {'elapsed':>9} {'IQR':>15}   {'CPU':>9} {'IQR':>15}")
        extras: dict[str, float] = {}
        judged_on = "CPU"
        for name, result in by_variant.items():
            elapsed, cpu = extra_us(result), extra_cpu_us(group, name)
            print(f"{name:<44} {_spread(elapsed)}" + ("" if cpu is None else f"   {_spread(cpu)}"))
            if cpu is None:
                judged_on = "elapsed"
            extras[name] = statistics.median(elapsed if cpu is None else cpu)
        if OURS in extras and PEER in extras:
            met = extras[OURS] <= extras[PEER] / 2
            print(
                f"{OURS} against {PEER} ({judged_on}): {extras[OURS]:.2f}us vs {extras[PEER]:.2f}us,"
                f" {extras[OURS] / extras[PEER]:.0%} of the peer's extra cost (target <= 50%)"
                f"{'  ok' if met else '  MISSED'}"
            )
            verdicts.append((f"{group} ({OURS}, half of {PEER}'s extra cost)", met))
    return verdicts


def _spread(values: list[float]) -> str:
    low, _, high = statistics.quantiles(values, n=4)
    return f"{statistics.median(values):>7.2f}us {low:>6.2f}-{high:<6.2f}us"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.web")
    parser.add_argument("--fd", type=int, required=True, help="a listening socket to serve on")
    parser.add_argument(
        "--middleware", choices=MIDDLEWARES, default="none", help="what wraps the app (default: nothing)"
    )
    parser.add_argument("--with-id", action="store_true", help="the same as --middleware als")
    parser.add_argument(
        "--direct", action="store_true", help="a worker calling the app directly: --fd is its control socket"
    )
    args = parser.parse_args(argv)
    middleware = "als" if args.with_id else args.middleware
    if args.direct:
        call_directly(args.fd, middleware)
    else:
        serve(args.fd, middleware)


if __name__ == "__main__":
    main()
