"""The example als started from: Node's AsyncLocalStorage HTTP server, ported to Python.

Every request runs under ``storage.run(next_id, ...)``. It logs ``start``; on the
next turn of the event loop (Node's ``setImmediate``) it logs ``processing...``;
it hops once to a worker thread through ``als.run_in_executor`` and logs there;
after a short delay (Node's ``setTimeout``) it logs ``finish`` and responds with
its id in an ``X-Request-ID`` header. Logging goes through the standard
library: ``als.logging.install_record_factory`` puts ``storage.get_store()`` (or
``-`` outside a request) into every record as ``%(request_id)s``, so the log
calls themselves know nothing of ids, as in Node's example.

    python examples/seed_server.py            # serve on 127.0.0.1:8080 until Ctrl-C
    curl -i http://127.0.0.1:8080/            # in another terminal
    python examples/seed_server.py --demo     # serve on a free port, fire 20 concurrent
                                              # requests, check every line, exit 1 on a mismatch

The demo can tell a right id from a wrong one because each client sends a tag
(``/?client=7``) that the server passes along as plain data, hop by hop, next to
what ``get_store()`` says: every line of one tag must carry one id, and that id
must be the one the client got back.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import random
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from urllib.parse import parse_qs, urlsplit

import als
from als.logging import install_record_factory

storage: als.AsyncLocalStorage[int | None] = als.AsyncLocalStorage(name="request_id")
next_id = itertools.count()  # Node's idSeq++

MESSAGES = ("start", "processing...", "in a worker thread", "finish")
LINE = re.compile(r" *(?P<id>-|\d+): (?P<message>.+?) +\[client (?P<client>\S+), (?P<thread>\S+)\]")


class KeepLines(logging.Handler):
    """Keeps each formatted line, for the demo's check."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


log = logging.getLogger("seed")
kept = KeepLines()


def setup_logging() -> None:
    install_record_factory(storage, field="request_id", default="-")
    formatter = logging.Formatter("%(request_id)3s: %(message)-20s [client %(client)s, %(threadName)s]")
    for handler in (logging.StreamHandler(sys.stdout), kept):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def work_in_thread(client: str) -> str:
    """The blocking part of a request: runs on a worker thread, logs with the request's id."""
    log.info("in a worker thread", extra={"client": client})
    return f"hello, client {client}\n"


async def handle(client: str, writer: asyncio.StreamWriter) -> None:
    """One request, from start to response; runs inside ``storage.run``."""
    log.info("start", extra={"client": client})
    await asyncio.sleep(0)  # Node's setImmediate: the next turn of the event loop
    log.info("processing...", extra={"client": client})
    body = await als.run_in_executor(None, work_in_thread, client)
    await asyncio.sleep(random.uniform(0, 0.05))  # Node's setTimeout, shortened
    log.info("finish", extra={"client": client})
    respond(writer, 200, body, request_id=storage.get_store())
    await writer.drain()


def respond(writer: asyncio.StreamWriter, status: int, body: str, request_id: int | None = None) -> None:
    reason = {200: "OK", 400: "Bad Request"}[status]
    payload = body.encode()
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: text/plain; charset=utf-8"]
    if request_id is not None:
        head.append(f"X-Request-ID: {request_id}")
    head += [f"Content-Length: {len(payload)}", "Connection: close", "", ""]
    writer.write("\r\n".join(head).encode() + payload)


async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            _method, target, _version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, UnicodeDecodeError, ValueError):
            respond(writer, 400, "bad request\n")
            return
        tags = parse_qs(urlsplit(target).query).get("client", ["?"])
        client = tags[0] if re.fullmatch(r"[0-9A-Za-z_-]{1,16}", tags[0]) else "?"
        await storage.run(next(next_id), handle, client, writer)
    finally:
        writer.close()


def fire_requests(port: int, count: int) -> dict[str, str]:
    """Send ``count`` requests at once from as many threads; return each client's X-Request-ID."""
    barrier = threading.Barrier(count, timeout=30)

    def one(n: int) -> tuple[str, str]:
        client = f"{n:02d}"
        connection = HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            barrier.wait()  # all requests are in flight together
            connection.request("GET", f"/?client={client}")
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"client {client}: HTTP {response.status}")
            return client, response.headers.get("X-Request-ID", "")
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return dict(pool.map(one, range(count)))


def check(lines: list[str], returned: dict[str, str]) -> list[str]:
    """Every problem found: a client whose lines carry no id, several ids, or another client's id."""
    problems: list[str] = []
    by_client: dict[str, list[tuple[str, str]]] = {}
    for line in lines:
        match = LINE.fullmatch(line)
        if match is None:
            problems.append(f"unparsable log line: {line!r}")
            continue
        by_client.setdefault(match["client"], []).append((match["id"], match["message"]))
    owners: dict[str, str] = {}
    for client, header_id in sorted(returned.items()):
        seen = by_client.get(client, [])
        messages = [message for _, message in seen]
        ids = {request_id for request_id, _ in seen}
        if messages != list(MESSAGES):
            problems.append(f"client {client}: logged {messages}, expected {list(MESSAGES)}")
        if ids != {header_id}:
            problems.append(f"client {client}: got id {header_id!r} back but its lines carry {sorted(ids)}")
        if header_id in owners:
            problems.append(f"clients {owners[header_id]} and {client} share id {header_id}")
        owners[header_id] = client
    return problems


async def start(host: str, port: int) -> asyncio.Server:
    # From here on the event loop's own executor propagates the context as
    # well: plain loop.run_in_executor(None, ...) and asyncio.to_thread in a
    # handler would see the request's id. (als.run_in_executor, used above,
    # propagates on any executor.)
    als.install_default_executor()
    return await asyncio.start_server(on_connection, host, port)


async def serve(host: str, port: int) -> None:
    server = await start(host, port)
    print(f"serving on http://{host}:{server.sockets[0].getsockname()[1]}/ (Ctrl-C to stop)", flush=True)
    async with server:
        await server.serve_forever()


async def demo(count: int) -> int:
    server = await start("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(
        f"{count} concurrent requests to 127.0.0.1:{port}; each line is 'request id: message'\n", flush=True
    )
    async with server:
        # The blocking client runs on a thread; its requests overlap on the server.
        returned = await asyncio.wait_for(asyncio.to_thread(fire_requests, port, count), 60)
    problems = check(kept.lines, returned)
    print()
    for problem in problems:
        print(f"MISMATCH: {problem}")
    if problems:
        return 1
    print(
        f"OK: {count} requests, {len(kept.lines)} log lines from the event loop and worker threads;"
        " every line carries its own request's id."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", action="store_true", help="fire concurrent requests, check the log, exit")
    parser.add_argument(
        "--requests", type=int, default=20, help="how many requests --demo sends (default 20)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080)")
    args = parser.parse_args(argv)
    setup_logging()
    if args.demo:
        if args.requests < 1:
            parser.error("--requests must be at least 1")
        return asyncio.run(demo(args.requests))
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
