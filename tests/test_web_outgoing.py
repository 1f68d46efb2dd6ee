"""als.web.outgoing: the store sent as a header by every HTTP client, process-wide (forward) or per client.

Every request goes to a real server started here, on 127.0.0.1, which records each header of each request
it receives under the request's path: so a missing id, a wrong one and a duplicate all show. Each request
has a path of its own. Sync clients send from threads, async ones from tasks; nothing relies on time.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# The clients themselves: a missing install fails the run, never skips it.
import aiohttp
import httpx
import pytest
import requests
import requests.adapters
import urllib3

import als
from als import AsyncLocalStorage
from als.web import outgoing
from als.web.outgoing import (
    aiohttp_trace_config,
    forward,
    httpx_async_event_hooks,
    httpx_event_hooks,
    requests_adapter,
)

from .helpers import TIMEOUT

HEADER = "X-Request-ID"
N = 100  # concurrent requests per client
ROOT = Path(__file__).resolve().parent.parent

# Every attribute forward() replaces, and the originals, read at import. WARNING: kept in sync by hand
# with als.web.outgoing._targets().
HOOK_POINTS: list[tuple[type, str]] = [
    (http.client.HTTPConnection, "endheaders"),
    (httpx.Client, "send"),
    (httpx.AsyncClient, "send"),
    (aiohttp.ClientRequest, "send"),
]
ORIGINALS = {point: vars(point[0])[point[1]] for point in HOOK_POINTS}

UNSAFE: list[object] = [
    "a\r\nb",  # header injection
    "trailing ",  # a space at the end
    " leading",
    "caf\u00e9",  # not ASCII
    "tab\there",
    "",
    "x" * 2000,  # over the floor's 1024
    42,  # no str
    b"bytes-id",
]


@pytest.fixture(autouse=True)
def _hooks_undone() -> Iterator[None]:
    """Every test leaves each hooked class exactly as it found it, and no forward active."""
    yield
    assert outgoing._hooks is None, "a test left a forward() active"
    for (owner, name), original in ORIGINALS.items():
        assert vars(owner)[name] is original, f"{owner.__qualname__}.{name} was left replaced"


# --- The downstream server ----------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """Records every header of every request; ``/redirect/rest`` answers 302 to ``/rest``."""

    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connections
    disable_nagle_algorithm = True  # the body, written after the headers, goes out without an ACK's delay
    server: Downstream

    def do_GET(self) -> None:
        self.server.record(self.path, [(k.lower(), v) for k, v in self.headers.items()])
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/redirect") :])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


class Downstream(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # an idle keep-alive connection must not hold up the fixture's end
    request_queue_size = 128  # a burst of 100 connects would overflow socketserver's 5

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self._lock = threading.Lock()
        self._received: dict[str, list[list[tuple[str, str]]]] = {}
        self._paths = itertools.count()

    def record(self, path: str, headers: list[tuple[str, str]]) -> None:
        with self._lock:
            self._received.setdefault(path, []).append(headers)

    def path(self) -> str:
        """A path no request has used yet."""
        return f"/p{next(self._paths)}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}{path}"

    def seen(self, path: str, header: str = HEADER) -> list[list[str]]:
        """For each request that came to ``path``, every value of ``header`` it carried."""
        with self._lock:
            return [
                [v for k, v in request if k == header.lower()] for request in self._received.get(path, [])
            ]


@pytest.fixture(scope="module")
def server() -> Iterator[Downstream]:
    downstream = Downstream()
    thread = threading.Thread(
        target=downstream.serve_forever, kwargs={"poll_interval": 0.05}, name="downstream", daemon=True
    )
    thread.start()
    try:
        yield downstream
    finally:
        downstream.shutdown()
        thread.join(TIMEOUT)
        downstream.server_close()
        assert not thread.is_alive(), "the downstream server did not stop"


@pytest.fixture
def forwarding(storage: AsyncLocalStorage[object]) -> Iterator[Callable[[], None]]:
    """forward(storage) for the test; undone at its end (a test may undo it first)."""
    undo = forward(storage)
    try:
        yield undo
    finally:
        undo()


# --- The clients --------------------------------------------------------------------------------


class SyncKind:
    """One synchronous client library: ``make`` a client (shared by threads), ``get`` one URL, ``close``."""

    name = ""
    is_async = False
    follows_redirects = True

    def make(self, storage: AsyncLocalStorage[Any]) -> Any:
        raise NotImplementedError

    def get(self, client: Any, url: str, headers: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    def close(self, client: Any) -> None:
        pass


class AsyncKind:
    """One asyncio client library, the same three steps."""

    name = ""
    is_async = True
    follows_redirects = True

    async def make(self, storage: AsyncLocalStorage[Any]) -> Any:
        raise NotImplementedError

    async def get(self, client: Any, url: str, headers: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    async def close(self, client: Any) -> None:
        pass


class Connections:
    """http.client's "client": one keep-alive HTTPConnection per thread, each made on first use."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.all: list[http.client.HTTPConnection] = []

    def connection(self, url: str) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            port = int(url.split(":")[2].split("/", 1)[0])
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            self._local.connection = connection
            with self._lock:
                self.all.append(connection)
        return connection


class HttpClient(SyncKind):
    name = "http.client"
    follows_redirects = False

    def make(self, storage: AsyncLocalStorage[Any]) -> Connections:
        return Connections()

    def get(self, client: Connections, url: str, headers: dict[str, str] | None = None) -> None:
        connection = client.connection(url)
        connection.request("GET", "/" + url.split("/", 3)[3], headers=headers or {})
        connection.getresponse().read()

    def close(self, client: Connections) -> None:
        for connection in client.all:
            connection.close()


class UrllibRequest(SyncKind):
    name = "urllib.request"

    def make(self, storage: AsyncLocalStorage[Any]) -> urllib.request.OpenerDirector:
        return urllib.request.build_opener()

    def get(
        self, client: urllib.request.OpenerDirector, url: str, headers: dict[str, str] | None = None
    ) -> None:
        with client.open(urllib.request.Request(url, headers=headers or {}), timeout=TIMEOUT) as response:
            response.read()


class Requests(SyncKind):
    name = "requests"

    def make(self, storage: AsyncLocalStorage[Any]) -> requests.Session:
        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=N))
        return session

    def get(self, client: requests.Session, url: str, headers: dict[str, str] | None = None) -> None:
        client.get(url, headers=headers, timeout=TIMEOUT).raise_for_status()

    def close(self, client: requests.Session) -> None:
        client.close()


class Urllib3(SyncKind):
    name = "urllib3"

    def make(self, storage: AsyncLocalStorage[Any]) -> urllib3.PoolManager:
        return urllib3.PoolManager(maxsize=N, timeout=TIMEOUT)

    def get(self, client: urllib3.PoolManager, url: str, headers: dict[str, str] | None = None) -> None:
        assert client.request("GET", url, headers=headers).status == 200

    def close(self, client: urllib3.PoolManager) -> None:
        client.clear()


class Httpx(SyncKind):
    name = "httpx"

    def make(self, storage: AsyncLocalStorage[Any]) -> httpx.Client:
        return httpx.Client(timeout=TIMEOUT)

    def get(self, client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> None:
        client.get(url, headers=headers, follow_redirects=True).raise_for_status()

    def close(self, client: httpx.Client) -> None:
        client.close()


class HttpxAsync(AsyncKind):
    name = "httpx async"

    async def make(self, storage: AsyncLocalStorage[Any]) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=TIMEOUT)

    async def get(self, client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None) -> None:
        (await client.get(url, headers=headers, follow_redirects=True)).raise_for_status()

    async def close(self, client: httpx.AsyncClient) -> None:
        await client.aclose()


class Aiohttp(AsyncKind):
    name = "aiohttp"

    async def make(self, storage: AsyncLocalStorage[Any]) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))

    async def get(
        self, client: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
    ) -> None:
        async with client.get(url, headers=headers) as response:
            response.raise_for_status()
            await response.read()

    async def close(self, client: aiohttp.ClientSession) -> None:
        await client.close()


# The same libraries with the per-client helper, and no forward().
class HttpxHooked(Httpx):
    name = "httpx_event_hooks"

    def make(self, storage: AsyncLocalStorage[Any]) -> httpx.Client:
        return httpx.Client(timeout=TIMEOUT, event_hooks=httpx_event_hooks(storage))


class HttpxAsyncHooked(HttpxAsync):
    name = "httpx_async_event_hooks"

    async def make(self, storage: AsyncLocalStorage[Any]) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=TIMEOUT, event_hooks=httpx_async_event_hooks(storage))


class RequestsAdapted(Requests):
    name = "requests_adapter"

    def make(self, storage: AsyncLocalStorage[Any]) -> requests.Session:
        session = requests.Session()
        session.mount("http://", requests_adapter(storage, pool_maxsize=N))
        return session


class AiohttpTraced(Aiohttp):
    name = "aiohttp_trace_config"

    async def make(self, storage: AsyncLocalStorage[Any]) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=TIMEOUT), trace_configs=[aiohttp_trace_config(storage)]
        )


Kind = SyncKind | AsyncKind
SYNC: list[SyncKind] = [HttpClient(), UrllibRequest(), Requests(), Urllib3(), Httpx()]
ASYNC: list[AsyncKind] = [HttpxAsync(), Aiohttp()]
CLIENTS: list[Kind] = [*SYNC, *ASYNC]
HELPED: list[Kind] = [HttpxHooked(), HttpxAsyncHooked(), RequestsAdapted(), AiohttpTraced()]
PLAIN: dict[str, Kind] = {  # each helper's library without it
    "httpx_event_hooks": Httpx(),
    "httpx_async_event_hooks": HttpxAsync(),
    "requests_adapter": Requests(),
    "aiohttp_trace_config": Aiohttp(),
}

by_name = pytest.mark.parametrize("kind", CLIENTS, ids=lambda kind: kind.name)
helped = pytest.mark.parametrize("kind", HELPED, ids=lambda kind: kind.name)
everywhere = pytest.mark.parametrize(
    ("kind", "forwarded"),
    [*((kind, True) for kind in CLIENTS), *((kind, False) for kind in HELPED)],
    ids=lambda value: getattr(value, "name", "forward()" if value else "helper"),
)


# --- Scenarios ----------------------------------------------------------------------------------

NO_STORE = object()  # a request sent outside any run()


@dataclass
class Get:
    """One request in a scenario: to ``path``, under ``store`` (or outside any run), with ``headers``."""

    path: str
    store: object = NO_STORE
    headers: dict[str, str] | None = None


Step = Get | Callable[[], object]


def play(kind: Kind, storage: AsyncLocalStorage[Any], server: Downstream, steps: list[Step]) -> None:
    """Make one client, take the steps in order in this thread (or in one task), close the client.

    A ``Get`` sends a request (under ``storage.run(store, ...)`` unless its store is NO_STORE); any other
    step is called, between two requests (``forward``, ``undo``).
    """
    if isinstance(kind, AsyncKind):
        asyncio.run(_play_async(kind, storage, server, steps))
        return
    client = kind.make(storage)
    try:
        for step in steps:
            if not isinstance(step, Get):
                step()
            elif step.store is NO_STORE:
                kind.get(client, server.url(step.path), step.headers)
            else:
                storage.run(step.store, kind.get, client, server.url(step.path), step.headers)
    finally:
        kind.close(client)


async def _play_async(
    kind: AsyncKind, storage: AsyncLocalStorage[Any], server: Downstream, steps: list[Step]
) -> None:
    client = await kind.make(storage)
    try:
        for step in steps:
            if not isinstance(step, Get):
                step()
            elif step.store is NO_STORE:
                await kind.get(client, server.url(step.path), step.headers)
            else:
                await storage.run(step.store, kind.get, client, server.url(step.path), step.headers)
    finally:
        await kind.close(client)


def assert_each_got_its_own(server: Downstream, paths: list[str], ids: list[str]) -> None:
    """Each path received exactly one request, with exactly one header: its own id."""
    seen = [server.seen(path) for path in paths]
    missing = [i for i, got in enumerate(seen) if got == [[]]]
    wrong = [i for i, got in enumerate(seen) if got not in ([[]], [[ids[i]]])]
    assert not missing, f"{len(missing)} of {len(paths)} requests came without the header: {missing[:5]}..."
    assert not wrong, f"{len(wrong)} of {len(paths)} requests came wrong: {[seen[i] for i in wrong[:5]]}..."


def ids_for(paths: list[str]) -> list[str]:
    return [f"req-{path.strip('/')}-{i:03d}" for i, path in enumerate(paths)]


# --- forward(): many requests at once, one id each ------------------------------------------------


class TestConcurrent:
    @pytest.mark.parametrize(
        "executor", ["ThreadPoolExecutor under als.patch()", "ContextThreadPoolExecutor"]
    )
    @pytest.mark.parametrize("kind", SYNC, ids=lambda kind: kind.name)
    def test_threads(
        self,
        kind: SyncKind,
        executor: str,
        storage: AsyncLocalStorage[object],
        server: Downstream,
        forwarding: Callable[[], None],
    ) -> None:
        """100 requests at once, each submitted to a pool under its own id: each arrives with it, once."""
        paths = [server.path() for _ in range(N)]
        ids = ids_for(paths)
        barrier = threading.Barrier(N, timeout=TIMEOUT)  # all 100 in flight together
        client = kind.make(storage)

        def one(path: str) -> None:
            barrier.wait()
            kind.get(client, server.url(path))

        def submit_all(pool: ThreadPoolExecutor) -> None:
            futures = [storage.run(id_, pool.submit, one, path) for id_, path in zip(ids, paths, strict=True)]
            for future in futures:
                future.result(TIMEOUT)

        try:
            if executor == "ContextThreadPoolExecutor":
                with als.ContextThreadPoolExecutor(max_workers=N) as pool:
                    submit_all(pool)
            else:
                with als.patched(), ThreadPoolExecutor(max_workers=N) as pool:
                    submit_all(pool)
        finally:
            kind.close(client)
        assert_each_got_its_own(server, paths, ids)

    @pytest.mark.parametrize("kind", ASYNC, ids=lambda kind: kind.name)
    def test_tasks(
        self,
        kind: AsyncKind,
        storage: AsyncLocalStorage[object],
        server: Downstream,
        forwarding: Callable[[], None],
    ) -> None:
        """100 asyncio tasks at once, each under its own id, sharing one client: each its own id, once."""
        paths = [server.path() for _ in range(N)]
        ids = ids_for(paths)

        async def main() -> None:
            client = await kind.make(storage)
            gate = asyncio.Event()
            arrived = 0

            async def one(path: str) -> None:
                nonlocal arrived
                arrived += 1
                if arrived == N:
                    gate.set()
                await asyncio.wait_for(gate.wait(), TIMEOUT)  # all 100 in flight together
                await kind.get(client, server.url(path))

            try:
                tasks = [
                    asyncio.create_task(storage.run(id_, one, path))
                    for id_, path in zip(ids, paths, strict=True)
                ]
                await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
            finally:
                await kind.close(client)

        asyncio.run(main())
        assert_each_got_its_own(server, paths, ids)

    @pytest.mark.parametrize("kind", [k for k in HELPED if not k.is_async], ids=lambda kind: kind.name)
    def test_helper_threads(
        self, kind: SyncKind, storage: AsyncLocalStorage[object], server: Downstream
    ) -> None:
        """A per-client helper, no forward(): 100 requests at once from threads, each with its own id."""
        paths = [server.path() for _ in range(N)]
        ids = ids_for(paths)
        barrier = threading.Barrier(N, timeout=TIMEOUT)
        client = kind.make(storage)

        def one(path: str) -> None:
            barrier.wait()
            kind.get(client, server.url(path))

        try:
            with als.ContextThreadPoolExecutor(max_workers=N) as pool:
                futures = [
                    storage.run(id_, pool.submit, one, path) for id_, path in zip(ids, paths, strict=True)
                ]
                for future in futures:
                    future.result(TIMEOUT)
        finally:
            kind.close(client)
        assert_each_got_its_own(server, paths, ids)

    @pytest.mark.parametrize("kind", [k for k in HELPED if k.is_async], ids=lambda kind: kind.name)
    def test_helper_tasks(
        self, kind: AsyncKind, storage: AsyncLocalStorage[object], server: Downstream
    ) -> None:
        """A per-client helper, no forward(): 100 tasks at once, each with its own id."""
        paths = [server.path() for _ in range(N)]
        ids = ids_for(paths)

        async def main() -> None:
            client = await kind.make(storage)
            gate = asyncio.Event()
            arrived = 0

            async def one(path: str) -> None:
                nonlocal arrived
                arrived += 1
                if arrived == N:
                    gate.set()
                await asyncio.wait_for(gate.wait(), TIMEOUT)
                await kind.get(client, server.url(path))

            try:
                tasks = [
                    asyncio.create_task(storage.run(id_, one, path))
                    for id_, path in zip(ids, paths, strict=True)
                ]
                await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
            finally:
                await kind.close(client)

        asyncio.run(main())
        assert_each_got_its_own(server, paths, ids)


# --- What is sent, and when ----------------------------------------------------------------------


class TestRules:
    @by_name
    def test_client_made_before_forward(
        self, kind: Kind, storage: AsyncLocalStorage[object], server: Downstream
    ) -> None:
        """A client made, and connected, before forward() sends the id after it, and none after undo()."""
        before, during, after = server.path(), server.path(), server.path()
        undo: list[Callable[[], None]] = []

        def stop() -> None:
            undo.pop()()

        try:
            play(
                kind,
                storage,
                server,
                [
                    Get(before, "id-before"),
                    lambda: undo.append(forward(storage)),
                    Get(during, "id-during"),
                    stop,
                    Get(after, "id-after"),
                ],
            )
        finally:
            for each in undo:
                each()
        assert server.seen(before) == [[]]
        assert server.seen(during) == [["id-during"]]
        assert server.seen(after) == [[]]

    @by_name
    def test_client_made_after_forward(
        self,
        kind: Kind,
        storage: AsyncLocalStorage[object],
        server: Downstream,
        forwarding: Callable[[], None],
    ) -> None:
        """A client made while forward() is active sends the id of each request, and of none outside one."""
        first, second, outside = server.path(), server.path(), server.path()
        play(kind, storage, server, [Get(first, "id-1"), Get(outside), Get(second, "id-2")])
        assert server.seen(first) == [["id-1"]]
        assert server.seen(second) == [["id-2"]]
        assert server.seen(outside) == [[]]

    @everywhere
    @pytest.mark.parametrize("spelling", ["x-request-id", "X-REQUEST-ID", HEADER])
    def test_callers_header_wins(
        self,
        kind: Kind,
        forwarded: bool,
        spelling: str,
        storage: AsyncLocalStorage[object],
        server: Downstream,
    ) -> None:
        """A request that sets the header itself, in any case, sends it once, with the caller's value."""
        path = server.path()
        undo = forward(storage) if forwarded else None
        try:
            play(kind, storage, server, [Get(path, "id-mine", {spelling: "callers-own"})])
        finally:
            if undo is not None:
                undo()
        assert server.seen(path) == [["callers-own"]]

    @everywhere
    def test_nothing_outside_a_request(self, kind: Kind, forwarded: bool, server: Downstream) -> None:
        """Outside any run, at a str default, and after disable(), no header is sent."""
        storage: AsyncLocalStorage[str] = AsyncLocalStorage(default="-")
        outside, at_default, inside, disabled = (server.path() for _ in range(4))
        undo = forward(storage) if forwarded else None
        try:
            play(
                kind,
                storage,
                server,
                [Get(outside), Get(at_default, "-"), Get(inside, "id-in"), storage.disable, Get(disabled)],
            )
        finally:
            if undo is not None:
                undo()
        assert server.seen(outside) == [[]]
        assert server.seen(at_default) == [[]]
        assert server.seen(inside) == [["id-in"]]
        assert server.seen(disabled) == [[]]

    @everywhere
    def test_unsafe_store_is_not_sent(
        self, kind: Kind, forwarded: bool, storage: AsyncLocalStorage[object], server: Downstream
    ) -> None:
        """A store that is no str, or fails the safety floor, is not sent; the request goes out unharmed."""
        paths = [server.path() for _ in UNSAFE]
        safe = server.path()
        undo = forward(storage) if forwarded else None
        try:
            play(
                kind,
                storage,
                server,
                [
                    *(Get(path, store) for path, store in zip(paths, UNSAFE, strict=True)),
                    Get(safe, "x" * 1024),
                ],
            )
        finally:
            if undo is not None:
                undo()
        assert [server.seen(path) for path in paths] == [[[]]] * len(UNSAFE)
        assert server.seen(safe) == [["x" * 1024]]

    @pytest.mark.parametrize(
        ("kind", "forwarded"),
        [
            *((kind, True) for kind in CLIENTS if kind.follows_redirects),
            *((kind, False) for kind in HELPED),
        ],
        ids=lambda value: getattr(value, "name", "forward()" if value else "helper"),
    )
    def test_redirect_carries_it_once(
        self, kind: Kind, forwarded: bool, storage: AsyncLocalStorage[object], server: Downstream
    ) -> None:
        """A redirect followed by the client sends the id again, once, to the new location."""
        target = server.path()
        undo = forward(storage) if forwarded else None
        try:
            play(kind, storage, server, [Get(f"/redirect{target}", "id-moved")])
        finally:
            if undo is not None:
                undo()
        assert server.seen(f"/redirect{target}") == [["id-moved"]]
        assert server.seen(target) == [["id-moved"]]

    @helped
    def test_helper_covers_its_client_only(
        self, kind: Kind, storage: AsyncLocalStorage[object], server: Downstream
    ) -> None:
        """A helper's client sends the id; another client of the same library, without it, sends nothing."""
        with_helper, without = server.path(), server.path()
        play(kind, storage, server, [Get(with_helper, "id-helped")])
        play(PLAIN[kind.name], storage, server, [Get(without, "id-helped")])
        assert server.seen(with_helper) == [["id-helped"]]
        assert server.seen(without) == [[]]

    @helped
    def test_helper_with_forward_sends_once(
        self,
        kind: Kind,
        storage: AsyncLocalStorage[object],
        server: Downstream,
        forwarding: Callable[[], None],
    ) -> None:
        """A helper's client under forward() too: the header is sent once."""
        path = server.path()
        play(kind, storage, server, [Get(path, "id-both")])
        assert server.seen(path) == [["id-both"]]

    @pytest.mark.parametrize("helper", [False, True], ids=["forward()", "httpx_event_hooks"])
    def test_httpx_request_sent_again(
        self, helper: bool, storage: AsyncLocalStorage[object], server: Downstream
    ) -> None:
        """An httpx Request keeps the header it was sent with; sent again, with the store current then.

        Outside a request it goes without; a value the caller sets on it since is the caller's.
        """
        path = server.path()
        undo = None if helper else forward(storage)
        try:
            hooks = httpx_event_hooks(storage) if helper else None
            with httpx.Client(timeout=TIMEOUT, event_hooks=hooks) as client:
                request = client.build_request("GET", server.url(path))
                storage.run("id-1", client.send, request).raise_for_status()
                assert request.headers[HEADER] == "id-1"  # as sent
                storage.run("id-2", client.send, request).raise_for_status()
                client.send(request).raise_for_status()
                assert HEADER not in request.headers
                request.headers[HEADER] = "callers"
                storage.run("id-3", client.send, request).raise_for_status()
        finally:
            if undo is not None:
                undo()
        assert server.seen(path) == [["id-1"], ["id-2"], [], ["callers"]]

    @pytest.mark.parametrize("helper", [False, True], ids=["forward()", "httpx_async_event_hooks"])
    def test_httpx_async_request_sent_again(
        self, helper: bool, storage: AsyncLocalStorage[object], server: Downstream
    ) -> None:
        """The same for an httpx.AsyncClient's Request, sent from a task."""
        path = server.path()

        async def main() -> None:
            hooks = httpx_async_event_hooks(storage) if helper else None
            async with httpx.AsyncClient(timeout=TIMEOUT, event_hooks=hooks) as client:
                request = client.build_request("GET", server.url(path))
                (await storage.run("id-1", client.send, request)).raise_for_status()
                assert request.headers[HEADER] == "id-1"
                (await storage.run("id-2", client.send, request)).raise_for_status()
                (await client.send(request)).raise_for_status()
                assert HEADER not in request.headers
                request.headers[HEADER] = "callers"
                (await storage.run("id-3", client.send, request)).raise_for_status()

        undo = None if helper else forward(storage)
        try:
            asyncio.run(main())
        finally:
            if undo is not None:
                undo()
        assert server.seen(path) == [["id-1"], ["id-2"], [], ["callers"]]

    @pytest.mark.parametrize("helper", [False, True], ids=["forward()", "requests_adapter"])
    def test_prepared_request_sent_again(
        self, helper: bool, storage: AsyncLocalStorage[object], server: Downstream
    ) -> None:
        """A PreparedRequest sent again gets the store current then; the caller's own value stays.

        Through requests_adapter it keeps the header it was sent with; under forward() the header is put on
        the wire by http.client, and the PreparedRequest never holds it.
        """
        path = server.path()
        undo = None if helper else forward(storage)
        try:
            with requests.Session() as session:
                if helper:
                    session.mount("http://", requests_adapter(storage))
                prepared = session.prepare_request(requests.Request("GET", server.url(path)))
                storage.run("id-1", session.send, prepared, timeout=TIMEOUT).raise_for_status()
                assert prepared.headers.get(HEADER) == ("id-1" if helper else None)
                storage.run("id-2", session.send, prepared, timeout=TIMEOUT).raise_for_status()
                session.send(prepared, timeout=TIMEOUT).raise_for_status()
                assert HEADER not in prepared.headers
                prepared.headers[HEADER.lower()] = "callers"
                storage.run("id-3", session.send, prepared, timeout=TIMEOUT).raise_for_status()
        finally:
            if undo is not None:
                undo()
        assert server.seen(path) == [["id-1"], ["id-2"], [], ["callers"]]

    def test_requests_adapter_takes_adapter_arguments(self, storage: AsyncLocalStorage[object]) -> None:
        """Keyword arguments reach HTTPAdapter, whose own errors stay its own."""
        adapter = requests_adapter(storage, "X-Trace", pool_maxsize=7, max_retries=3)
        assert isinstance(adapter, requests.adapters.HTTPAdapter)
        assert adapter._pool_maxsize == 7
        assert adapter.max_retries.total == 3
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            requests_adapter(storage, no_such_option=1)


# --- forward(): installing and undoing ---------------------------------------------------------------


class TestForward:
    def test_undo_restores_originals_exactly(self, storage: AsyncLocalStorage[object]) -> None:
        """forward() replaces each hook point; undo() puts back the very objects, and is idempotent."""
        undo = forward(storage)
        try:
            for (owner, name), original in ORIGINALS.items():
                replaced = vars(owner)[name]
                assert replaced is not original
                assert replaced.__wrapped__ is original
                assert replaced.__name__ == original.__name__
                assert replaced.__doc__ == original.__doc__
        finally:
            undo()
        for (owner, name), original in ORIGINALS.items():
            assert vars(owner)[name] is original
        undo()  # again: nothing
        for (owner, name), original in ORIGINALS.items():
            assert vars(owner)[name] is original

    @by_name
    def test_two_headers_undone_apart(self, kind: Kind, server: Downstream) -> None:
        """Two storages as two headers: both sent; undoing one leaves the other working."""
        request_id: AsyncLocalStorage[str | None] = AsyncLocalStorage()
        tenant: AsyncLocalStorage[str | None] = AsyncLocalStorage()
        both, tenant_only, neither = server.path(), server.path(), server.path()
        undo_id = forward(request_id)
        undo_tenant = forward(tenant, "X-Tenant")

        def get(path: str) -> Get:
            return Get(path, "id-7")  # under request_id; the tenant set around it below

        try:
            tenant.run(
                "acme",
                play,
                kind,
                request_id,
                server,
                [get(both), undo_id, get(tenant_only), undo_tenant, get(neither)],
            )
        finally:
            undo_id()
            undo_tenant()
        assert server.seen(both) == [["id-7"]]
        assert server.seen(both, "X-Tenant") == [["acme"]]
        assert server.seen(tenant_only) == [[]]
        assert server.seen(tenant_only, "X-Tenant") == [["acme"]]
        assert server.seen(neither) == [[]]
        assert server.seen(neither, "X-Tenant") == [[]]

    @by_name
    def test_same_storage_twice_sends_once(
        self, kind: Kind, storage: AsyncLocalStorage[object], server: Downstream
    ) -> None:
        """Forwarding the same storage as the same header twice sends it once, until both undos have run."""
        twice, once, none = server.path(), server.path(), server.path()
        first = forward(storage)
        second = forward(storage, HEADER.lower())
        try:
            play(
                kind,
                storage,
                server,
                [Get(twice, "id-2"), first, Get(once, "id-1"), second, Get(none, "id-0")],
            )
        finally:
            first()
            second()
        assert server.seen(twice) == [["id-2"]]
        assert server.seen(once) == [["id-1"]]
        assert server.seen(none) == [[]]

    @by_name
    def test_same_header_two_storages(self, kind: Kind, server: Downstream) -> None:
        """Two storages sent as one header: the earlier forward's store when it has one, never both."""
        older: AsyncLocalStorage[str | None] = AsyncLocalStorage()
        newer: AsyncLocalStorage[str | None] = AsyncLocalStorage()
        both, newer_only = server.path(), server.path()
        undos = [forward(older), forward(newer)]
        try:
            newer.run("newer", play, kind, older, server, [Get(both, "older"), Get(newer_only, "a\r\nb")])
        finally:
            for undo in undos:
                undo()
        assert server.seen(both) == [["older"]]
        assert server.seen(newer_only) == [["newer"]]

    def test_undo_from_another_thread(self, storage: AsyncLocalStorage[object], server: Downstream) -> None:
        """undo() may run in any thread."""
        undo = forward(storage)
        worker = threading.Thread(target=undo)
        worker.start()
        worker.join(TIMEOUT)
        assert not worker.is_alive()
        path = server.path()
        play(HttpClient(), storage, server, [Get(path, "id-gone")])
        assert server.seen(path) == [[]]

    @pytest.mark.parametrize(
        ("call", "error", "message"),
        [
            (
                lambda s: forward(42),
                TypeError,
                r"forward\(\) argument 'storage' must be an AsyncLocalStorage, not int",
            ),
            (
                lambda s: forward(s, b"X-Id"),
                TypeError,
                r"forward\(\) argument 'header' must be str, not bytes",
            ),
            (
                lambda s: forward(s, "X Id"),
                ValueError,
                r"forward\(\) argument 'header' must be a valid HTTP header name.*got 'X Id'",
            ),
            (
                lambda s: forward(s, ""),
                ValueError,
                r"forward\(\) argument 'header' must be a valid HTTP header name",
            ),
            (lambda s: forward(s, "X-Id:"), ValueError, "valid HTTP header name"),
            (lambda s: forward(s, "Transfer-Encoding"), ValueError, "must not be a header HTTP itself uses"),
            (
                lambda s: httpx_event_hooks(None),
                TypeError,
                r"httpx_event_hooks\(\) argument 'storage' must be an AsyncLocalStorage, not NoneType",
            ),
            (
                lambda s: httpx_async_event_hooks(s, 1),
                TypeError,
                r"httpx_async_event_hooks\(\) argument 'header' must be str, not int",
            ),
            (
                lambda s: requests_adapter(s, "X\r\nId"),
                ValueError,
                r"requests_adapter\(\) argument 'header' must be a valid HTTP header name",
            ),
            (
                lambda s: aiohttp_trace_config("s"),
                TypeError,
                r"aiohttp_trace_config\(\) argument 'storage' must be an AsyncLocalStorage, not str",
            ),
        ],
    )
    def test_bad_arguments(
        self,
        call: Callable[[Any], object],
        error: type[Exception],
        message: str,
        storage: AsyncLocalStorage[object],
    ) -> None:
        """A bad argument is an error naming the function, the argument, what it must be, and what came."""
        with pytest.raises(error, match=message):
            call(storage)
        assert outgoing._hooks is None

    def test_missing_hook_point_hooks_nothing(
        self, storage: AsyncLocalStorage[object], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An imported client without its hook point RuntimeError naming it; nothing hooked."""
        monkeypatch.delattr(aiohttp.ClientRequest, "send")
        with pytest.raises(RuntimeError, match=r"no aiohttp\.ClientRequest\.send; nothing was hooked"):
            forward(storage)
        assert outgoing._hooks is None
        for (owner, name), original in ORIGINALS.items():
            if owner is not aiohttp.ClientRequest:
                assert vars(owner)[name] is original

    def test_hook_point_of_another_kind_hooks_nothing(
        self, storage: AsyncLocalStorage[object], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A hook point that is sync where a coroutine function was expected: RuntimeError, nothing hooked."""
        monkeypatch.setattr(httpx.AsyncClient, "send", lambda self, request: None)
        with pytest.raises(RuntimeError, match=r"httpx\.AsyncClient\.send that is not a coroutine function"):
            forward(storage)
        assert outgoing._hooks is None
        assert (
            vars(http.client.HTTPConnection)["endheaders"]
            is ORIGINALS[(http.client.HTTPConnection, "endheaders")]
        )

    def test_another_wrapper_on_top(self, storage: AsyncLocalStorage[object], server: Downstream) -> None:
        """Another library's wrapper over a hook outlives our undo, which switches ours off inside it.

        Once that library unwraps, the next forward() and undo() put the original back exactly.
        """
        owner = http.client.HTTPConnection
        calls: list[str] = []
        undo = forward(storage)
        ours = vars(owner)["endheaders"]

        def theirs(self: http.client.HTTPConnection, *args: Any, **kwargs: Any) -> None:
            calls.append("theirs")
            self.putheader("X-Theirs", "1")
            ours(self, *args, **kwargs)

        owner.endheaders = theirs  # type: ignore[method-assign]
        on_top, after_undo, again = server.path(), server.path(), server.path()
        try:
            play(HttpClient(), storage, server, [Get(on_top, "id-1")])
            undo()
            assert vars(owner)["endheaders"] is theirs  # left in place
            play(HttpClient(), storage, server, [Get(after_undo, "id-2")])
            undo_again = forward(storage)  # on top of theirs
            try:
                play(HttpClient(), storage, server, [Get(again, "id-3")])
            finally:
                undo_again()
            assert vars(owner)["endheaders"] is theirs
        finally:
            owner.endheaders = ours  # type: ignore[method-assign]  # they unwrap: ours, off, is on top
            forward(storage)()  # sweeps it
        assert calls == ["theirs"] * 3
        assert [server.seen(path, "X-Theirs") for path in (on_top, after_undo, again)] == [[["1"]]] * 3
        assert server.seen(on_top) == [["id-1"]]
        assert server.seen(after_undo) == [[]]
        assert server.seen(again) == [["id-3"]]

    def test_another_wrapper_underneath(self, storage: AsyncLocalStorage[object], server: Downstream) -> None:
        """forward() over another library's wrapper (of another signature) passes every argument on to it."""
        owner = http.client.HTTPConnection
        original = vars(owner)["endheaders"]
        seen: list[tuple[Any, ...]] = []

        def theirs(self: http.client.HTTPConnection, *args: Any, **kwargs: Any) -> None:
            seen.append((args, kwargs))
            original(self, *args, **kwargs)

        owner.endheaders = theirs  # type: ignore[method-assign]
        path = server.path()
        try:
            undo = forward(storage)
            try:
                assert vars(owner)["endheaders"].__wrapped__ is theirs
                play(HttpClient(), storage, server, [Get(path, "id-under")])
            finally:
                undo()
            assert vars(owner)["endheaders"] is theirs
        finally:
            owner.endheaders = original  # type: ignore[method-assign]
        assert seen == [((None,), {"encode_chunked": False})]  # as http.client's request() called it
        assert server.seen(path) == [["id-under"]]

    def test_http_client_without_its_lines_hooks_nothing(
        self, storage: AsyncLocalStorage[object], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An http.client whose connections keep no _buffer list: RuntimeError naming it; nothing hooked."""
        made = http.client.HTTPConnection.__init__

        def without_buffer(self: http.client.HTTPConnection, *args: Any, **kwargs: Any) -> None:
            made(self, *args, **kwargs)
            del self._buffer  # type: ignore[attr-defined]

        monkeypatch.setattr(http.client.HTTPConnection, "__init__", without_buffer)
        with pytest.raises(RuntimeError, match=r"no http\.client\.HTTPConnection\._buffer list"):
            forward(storage)
        assert outgoing._hooks is None

    def test_import_order(self) -> None:
        """forward() before any client is imported: it imports httpx and aiohttp to hook them, and every
        client imported after it is covered; undo() leaves httpx's own send. In a child process."""
        child = subprocess.run(
            [sys.executable, "-c", LATE_IMPORTS],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert child.returncode == 0, child.stderr
        result = json.loads(child.stdout)
        assert result["imported before forward()"] == []
        assert result["imported by forward()"] == ["aiohttp", "httpx"]
        assert result["seen"] == {"/urllib3": ["late"], "/requests": ["late"], "/httpx": ["late"]}
        assert result["restored"]


# The child process of test_import_order: its own server, forward() before the clients are imported.
LATE_IMPORTS = """
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import als
from als.web.outgoing import forward

clients = ("aiohttp", "httpx", "requests", "urllib3")
before = sorted(m for m in clients if m in sys.modules)
storage = als.AsyncLocalStorage()
undo = forward(storage)
imported = sorted(m for m in clients if m in sys.modules)
seen = {}

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        seen[self.path] = self.headers.get_all("X-Request-ID") or []
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
thread.start()
base = f"http://127.0.0.1:{server.server_port}"

import httpx, requests, urllib3

storage.run("late", urllib3.request, "GET", base + "/urllib3")
storage.run("late", requests.get, base + "/requests", timeout=10)
storage.run("late", httpx.get, base + "/httpx")
undo()
send = vars(httpx.Client)["send"]
restored = not hasattr(send, "_als_hooks") and not hasattr(send, "__wrapped__")
server.shutdown()
thread.join(10)
server.server_close()
print(json.dumps({"imported before forward()": before, "imported by forward()": imported, "seen": seen,
                  "restored": restored}))
"""
