"""Property-based: random trees of hops, each node seeing exactly the stores its position implies.

A tree is a nest of nodes. Each node is reached from its parent through one
hop (an ``await``, a task, a thread pool, a thread, a timer, ...), may apply
one effect (``run``, ``scope``, ``enter_with`` or ``exit`` on one of two
storages), and then runs its children one after the other. A model says what
every node must see, by these rules: a hop copies the context at its hand-off
(an awaited coroutine shares its caller's context instead); ``run``, ``scope``
and ``exit`` end with their block; ``enter_with`` lasts for the rest of the
context; and the standard library's hops (its pools, threads and timers, and
``loop.run_in_executor``) start from an empty context unless ``als.patch()``
is on. Each node checks what it sees on entry, after its effect, and after
each child returns, so a store that leaks to a parent or a sibling is caught
where it happens.

Trees run one node at a time (each hop is waited for), so a failure replays
exactly and shrinks to a readable tree. Concurrency is the stress test's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

import als
from als import AsyncLocalStorage

from .helpers import THREADS_INHERIT, TIMEOUT

STORAGES = [AsyncLocalStorage[object](name="first"), AsyncLocalStorage[object](name="second", default="d")]
DEFAULTS = tuple(s.default for s in STORAGES)
MAX_DEPTH = 4

# Hops a synchronous body can make, hops an async body can make (it may block
# on the synchronous ones too), and which hops start an async body.
THREAD_HOPS = [
    "ContextThreadPoolExecutor.submit",
    "ContextThreadPoolExecutor.map",
    "wrap_executor.submit",
    "ContextThread",
    "ContextTimer",
    "stdlib ThreadPoolExecutor.submit",
    "stdlib ThreadPoolExecutor.map",
    "stdlib Thread subclass",
    "stdlib Timer",
]
SYNC_HOPS = [*THREAD_HOPS, "bind", "snapshot", "asyncio.run"]
ASYNC_HOPS = [
    *THREAD_HOPS,
    "await",
    "create_task",
    "bind async",
    "snapshot async",
    "als.run_in_executor",
    "loop.run_in_executor",
]
ASYNC_BODY = {"await", "create_task", "asyncio.run", "bind async", "snapshot async"}
STDLIB_HOPS = {h for h in ASYNC_HOPS + SYNC_HOPS if h.startswith(("stdlib", "loop."))}
EFFECTS = ["run", "scope", "enter_with", "exit"]


class Node:
    """One hop, its optional effect, and its children; repr is the tree as nested lines."""

    def __init__(self, hop: str, effect: tuple[str, int, str] | None) -> None:
        self.hop = hop
        self.effect = effect
        self.children: list[Node] = []

    @property
    def is_async(self) -> bool:
        return self.hop in ASYNC_BODY or self.hop == "asyncio.run (root)"

    def lines(self, indent: int = 0) -> Iterator[str]:
        effect = (
            ""
            if self.effect is None
            else f" then {self.effect[0]}(storage {self.effect[1]}, {self.effect[2]!r})"
        )
        yield "  " * indent + f"{self.hop}{effect}"
        for child in self.children:
            yield from child.lines(indent + 1)

    def __repr__(self) -> str:
        return "\n" + "\n".join(self.lines())

    def depth(self) -> int:
        return 1 + max((c.depth() for c in self.children), default=0)


@st.composite
def nodes(draw: st.DrawFn, parent_async: bool, depth: int = 1) -> Node:
    hop = draw(st.sampled_from(ASYNC_HOPS if parent_async else SYNC_HOPS))
    effect = draw(
        st.none()
        | st.tuples(st.sampled_from(EFFECTS), st.integers(0, len(STORAGES) - 1), st.sampled_from("abcdef"))
    )
    node = Node(hop, effect)
    if depth < MAX_DEPTH:
        for _ in range(draw(st.integers(0, 3 if depth == 1 else 2))):
            node.children.append(draw(nodes(node.is_async, depth + 1)))
    return node


class Tree:
    def __init__(self, patched: bool, root: Node) -> None:
        self.patched = patched
        self.root = root

    def __repr__(self) -> str:
        return f"Tree(patched={self.patched}):{self.root!r}"


@st.composite
def trees(draw: st.DrawFn) -> Tree:
    patched = True if THREADS_INHERIT else draw(st.booleans())
    root_async = draw(st.booleans())
    effect = draw(st.none() | st.tuples(st.just("run"), st.integers(0, 1), st.sampled_from("abcdef")))
    root = Node("asyncio.run (root)" if root_async else "root", effect)
    root.children = draw(st.lists(nodes(parent_async=root_async), min_size=1, max_size=3))
    _number_the_stores(root, iter(range(1, 1000)))
    return Tree(patched, root)


def _number_the_stores(node: Node, numbers: Iterator[int]) -> None:
    """Make every store value unique ('a' -> 'a3'), so a leak between equal letters cannot hide."""
    if node.effect is not None:
        op, index, value = node.effect
        node.effect = (op, index, f"{value}{next(numbers)}")
    for child in node.children:
        _number_the_stores(child, numbers)


class Runner:
    """Runs a tree for real, checking every node against the model as it goes."""

    def __init__(self, patched: bool, pools: dict[str, list[Any]]) -> None:
        self.patched = patched
        self.pools = pools
        self.checked = 0
        self.hops: list[str] = []  # hypothesis.event() may only be called from the test's thread

    def see(self, where: str, expected: tuple[object, ...]) -> None:
        seen = tuple(s.get_store() for s in STORAGES)
        assert seen == expected, f"{where}: saw {seen}, expected {expected}"
        self.checked += 1

    # -- model -------------------------------------------------------------
    def on_entry(self, node: Node, parent_view: tuple[object, ...]) -> tuple[object, ...]:
        """What a node sees on entry, from what its parent saw at the hand-off."""
        if node.hop in STDLIB_HOPS and not self.patched:
            return DEFAULTS  # the standard library starts the work with an empty context
        return parent_view

    # -- sync bodies ---------------------------------------------------------
    def body(self, node: Node, view: tuple[object, ...], depth: int) -> tuple[object, ...]:
        """Run a synchronous node; return the view it leaves in its own context."""
        self.see(f"{node.hop} entry", view)
        if node.effect is None:
            return self.children(node, view, depth)
        op, index, value = node.effect
        storage, inner = STORAGES[index], list(view)
        inner[index] = DEFAULTS[index] if op == "exit" else value
        if op == "enter_with":
            storage.enter_with(value)
            return self.children(node, tuple(inner), depth)
        if op == "scope":
            with storage.scope(value):
                left = self.children(node, tuple(inner), depth)
            after = list(left)
            after[index] = view[index]
            self.see(f"{node.hop} after scope", tuple(after))
            return tuple(after)
        run = storage.exit if op == "exit" else lambda *a: storage.run(value, *a)
        run(self.children, node, tuple(inner), depth)
        self.see(f"{node.hop} after {op}", view)
        return view

    def children(self, node: Node, view: tuple[object, ...], depth: int) -> tuple[object, ...]:
        self.see(f"{node.hop} inside", view)
        for child in node.children:
            view = self.hop(child, view, depth + 1)
            self.see(f"{node.hop} after child {child.hop}", view)
        return view

    def hop(self, node: Node, view: tuple[object, ...], depth: int) -> tuple[object, ...]:
        """Hand ``node`` off from a synchronous parent; return the parent's view afterwards."""
        self.hops.append(node.hop)
        entry = self.on_entry(node, view)
        pools = self.pools
        if node.hop == "asyncio.run":
            asyncio.run(self.async_body(node, entry, depth))
            return view
        run = self.body
        if node.hop == "ContextThreadPoolExecutor.submit":
            pools["context"][depth].submit(run, node, entry, depth).result(TIMEOUT)
        elif node.hop == "ContextThreadPoolExecutor.map":
            # Two items: each must see only map()'s caller, never what the other set.
            list(
                pools["context"][depth].map(
                    run, [node, node], [entry, entry], [depth, depth], timeout=TIMEOUT
                )
            )
        elif node.hop == "wrap_executor.submit":
            pools["wrapped"][depth].submit(run, node, entry, depth).result(TIMEOUT)
        elif node.hop == "stdlib ThreadPoolExecutor.submit":
            with self.stdlib_pool(depth) as pool:
                pool.submit(run, node, entry, depth).result(TIMEOUT)
        elif node.hop == "stdlib ThreadPoolExecutor.map":
            with self.stdlib_pool(depth) as pool:
                # Unpatched, a second item would see what the first set in the worker's own
                # context (the standard library's leak): only patched maps get two items.
                items = 2 if self.patched else 1
                list(pool.map(run, [node] * items, [entry] * items, [depth] * items, timeout=TIMEOUT))
        elif node.hop == "bind":
            bound = als.bind(run)
            bound(node, entry, depth)
            bound(node, entry, depth)  # a second call must not see what the first set
        elif node.hop == "snapshot":
            snap = als.snapshot()
            snap(run, node, entry, depth)
            snap(run, node, entry, depth)
        else:
            self.thread(node, entry, depth)
        return view

    @contextlib.contextmanager
    def stdlib_pool(self, depth: int) -> Iterator[ThreadPoolExecutor]:
        """The shared pool when patched; a fresh one when not.

        Unpatched, the standard library runs a task in the worker's own
        context, so what one task sets leaks into the next task of that
        worker (the bug als prevents): no model can say what a reused worker
        shows, so unpatched hops get a new worker.
        """
        if self.patched:
            yield self.pools["plain"][depth]
        else:
            with ThreadPoolExecutor(max_workers=1) as pool:
                yield pool

    def thread(self, node: Node, entry: tuple[object, ...], depth: int) -> None:
        errors: list[BaseException] = []

        def target() -> None:
            try:
                self.body(node, entry, depth)
            except BaseException as exc:  # re-raised in the parent
                errors.append(exc)

        class Subclass(threading.Thread):
            def run(self) -> None:
                target()

        thread: threading.Thread = {
            "ContextThread": lambda: als.ContextThread(target=target),
            "ContextTimer": lambda: als.ContextTimer(0, target),
            "stdlib Thread subclass": Subclass,
            "stdlib Timer": lambda: threading.Timer(0, target),
        }[node.hop]()
        thread.start()
        thread.join(TIMEOUT)
        assert not thread.is_alive(), f"{node.hop} did not finish"
        if errors:
            raise errors[0]

    # -- async bodies --------------------------------------------------------
    async def async_body(self, node: Node, view: tuple[object, ...], depth: int) -> tuple[object, ...]:
        self.see(f"{node.hop} entry", view)
        await asyncio.sleep(0)
        self.see(f"{node.hop} entry, after an await", view)
        if node.effect is None:
            return await self.async_children(node, view, depth)
        op, index, value = node.effect
        storage, inner = STORAGES[index], list(view)
        inner[index] = DEFAULTS[index] if op == "exit" else value
        if op == "enter_with":
            storage.enter_with(value)
            return await self.async_children(node, tuple(inner), depth)
        if op == "scope":
            with storage.scope(value):
                left = await self.async_children(node, tuple(inner), depth)
            after = list(left)
            after[index] = view[index]
            self.see(f"{node.hop} after scope", tuple(after))
            return tuple(after)
        if op == "exit":
            await storage.exit(self.async_children, node, tuple(inner), depth)
        else:
            await storage.run(value, self.async_children, node, tuple(inner), depth)
        self.see(f"{node.hop} after {op}", view)
        return view

    async def async_children(self, node: Node, view: tuple[object, ...], depth: int) -> tuple[object, ...]:
        self.see(f"{node.hop} inside", view)
        for child in node.children:
            view = await self.async_hop(child, view, depth + 1)
            await asyncio.sleep(0)
            self.see(f"{node.hop} after child {child.hop}", view)
        return view

    async def async_hop(self, node: Node, view: tuple[object, ...], depth: int) -> tuple[object, ...]:
        """Hand ``node`` off from an async parent; return the parent's view afterwards."""
        if node.hop not in ASYNC_BODY and node.hop not in ("als.run_in_executor", "loop.run_in_executor"):
            return self.hop(node, view, depth)  # a synchronous hop, blocking the loop briefly
        self.hops.append(node.hop)
        entry = self.on_entry(node, view)
        loop = asyncio.get_running_loop()
        if node.hop == "await":
            # The caller's own context: what the child leaves, the parent sees.
            return await self.async_body(node, entry, depth)
        if node.hop == "create_task":
            await asyncio.create_task(self.async_body(node, entry, depth))
        elif node.hop == "bind async":
            bound = als.bind(self.async_body)
            await bound(node, entry, depth)
            await bound(node, entry, depth)  # a second call must not see what the first set
        elif node.hop == "snapshot async":
            snap = als.snapshot()
            await snap(self.async_body, node, entry, depth)
            await snap(self.async_body, node, entry, depth)
        elif node.hop == "als.run_in_executor":
            await als.run_in_executor(self.pools["plain"][depth], self.body, node, entry, depth)
        elif self.patched:
            await loop.run_in_executor(None, self.body, node, entry, depth)
        else:
            with self.stdlib_pool(depth) as pool:
                await loop.run_in_executor(pool, self.body, node, entry, depth)
        return view


@pytest.fixture(scope="module")
def pools() -> Iterator[dict[str, list[Any]]]:
    """One small pool per tree level and kind, reused across examples: workers are reused constantly."""
    levels = range(MAX_DEPTH + 2)
    made = {
        "context": [als.ContextThreadPoolExecutor(max_workers=1) for _ in levels],
        "plain": [ThreadPoolExecutor(max_workers=1) for _ in levels],
    }
    made["wrapped"] = [als.wrap_executor(ThreadPoolExecutor(max_workers=1)) for _ in levels]
    yield made
    for kind in made.values():
        for executor in kind:
            executor.shutdown()


def run_tree(tree: Tree, pools: dict[str, list[Any]]) -> int:
    runner = Runner(tree.patched, pools)
    event(f"depth: {tree.root.depth() - 1}")
    event(f"patched: {tree.patched}")
    with als.patched() if tree.patched else contextlib.nullcontext():
        if tree.root.is_async:
            asyncio.run(runner.async_body(tree.root, DEFAULTS, 0))
        else:
            runner.body(tree.root, DEFAULTS, 0)
    for hop in set(runner.hops):
        event(f"hop: {hop}")
    for storage in STORAGES:  # nothing leaked to the test's own context
        assert storage.get_store() is storage.default
    return runner.checked


@given(tree=trees())
def test_every_node_sees_what_its_position_implies(tree: Tree, pools: dict[str, list[Any]]) -> None:
    """Random hop trees, depth 3 and more, over two storages: no node sees a wrong store."""
    assert contextvars.copy_context().run(run_tree, tree, pools) > 0
