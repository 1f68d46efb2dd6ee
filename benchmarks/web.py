"""Requests per second through a real server, ASGIRequestId off and on, measured in the same run.

Two uvicorn processes serve the same minimal ASGI app, one bare and one
behind ``als.web.ASGIRequestId``. The app does nothing but answer, so the
middleware's share of a request is as large as it can be: a real app's
ratio is closer to 1. The servers are pinned to one CPU and this process,
the client, to the other; the client keeps eight keep-alive connections busy
(asyncio streams, no HTTP library), so the server is the bottleneck. Each
timed block sends ``number`` requests to one server; blocks alternate
between the servers as any other group's variants do, so the per-request
time ratio is the inverse of the requests-per-second ratio.

    python -m benchmarks --only web

Run as ``python -m benchmarks.web --fd N [--with-id]``, it is the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ._harness import Group, Variant

CONNECTIONS = 8
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
BODY = b"ok\n"


async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """The least an ASGI app can do: answer 200 with a 3-byte body."""
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"3")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def serve(fd: int, with_id: bool) -> None:
    import uvicorn  # noqa: PLC0415 - only the server process needs it

    import als  # noqa: PLC0415
    from als.web import ASGIRequestId  # noqa: PLC0415

    served: Any = ASGIRequestId(app, als.AsyncLocalStorage(name="request_id")) if with_id else app
    config = uvicorn.Config(served, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


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


@contextlib.contextmanager
def _server(with_id: bool, cpus: set[int]) -> Iterator[int]:
    """A uvicorn process on a listening socket of ours (so no wait for it to start); yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    command = [sys.executable, "-m", "benchmarks.web", "--fd", str(sock.fileno())]
    process = subprocess.Popen(
        [*command, "--with-id"] if with_id else command,
        pass_fds=[sock.fileno()],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    port = sock.getsockname()[1]
    try:
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(process.pid, cpus)
        try:  # one request, so that a server that failed to start is an error, not a hang
            asyncio.run(asyncio.wait_for(_one_connection(port, 1), 30))
        except (OSError, asyncio.TimeoutError) as error:
            raise RuntimeError(f"the uvicorn server did not answer (exit code {process.poll()})") from error
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        sock.close()


def web_groups() -> list[Group]:
    loop = asyncio.new_event_loop()
    ports: dict[str, int] = {}
    # The client is pinned (by the harness) to one CPU; the servers get the others.
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    everyone = set(range(os.cpu_count() or 1))
    others = (everyone - mine) or everyone

    @contextlib.contextmanager
    def servers() -> Iterator[None]:
        with _server(False, others) as bare, _server(True, others) as with_id:
            ports.update(bare=bare, with_id=with_id)
            try:
                yield
            finally:
                loop.close()

    def send_to(name: str) -> Callable[[int], None]:
        def run(number: int) -> None:
            loop.run_until_complete(asyncio.wait_for(_requests(ports[name], number), 120))

        return run

    return [
        Group(
            "HTTP requests, uvicorn, minimal ASGI app",
            "request",
            4000,
            [Variant("middleware off", send_to("bare")), Variant("ASGIRequestId", send_to("with_id"))],
            servers,
            kind="request",
        )
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.web")
    parser.add_argument("--fd", type=int, required=True, help="a listening socket to serve on")
    parser.add_argument("--with-id", action="store_true", help="behind ASGIRequestId")
    args = parser.parse_args(argv)
    serve(args.fd, args.with_id)


if __name__ == "__main__":
    main()
