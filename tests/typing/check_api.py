"""Static checks of the public types: run by ``mypy --strict``, never executed.

``assert_type`` pins what a call returns; ``# type: ignore[code]`` marks a
call that must be rejected, and strict mypy fails if it is not (unused ignore).
"""

from __future__ import annotations

import asyncio
import contextvars
from concurrent.futures import Executor, Future, ThreadPoolExecutor

from typing_extensions import assert_type  # typing.assert_type is 3.11+

import als
from als import AsyncLocalStorage


def storages() -> None:
    plain = AsyncLocalStorage[str | None]()
    assert_type(plain.get_store(), str | None)
    assert_type(plain.name, str)

    with_default = AsyncLocalStorage(name="request_id", default="-")
    assert_type(with_default, AsyncLocalStorage[str])
    assert_type(with_default.get_store(), str)
    assert_type(with_default.default, str)

    # No default means get_store() may return None: the type must admit it.
    strict: AsyncLocalStorage[str] = AsyncLocalStorage()  # type: ignore[assignment]
    del strict

    with_default.run("id", print)
    with_default.run(1, print)  # type: ignore[arg-type]
    with_default.enter_with(1)  # type: ignore[arg-type]
    AsyncLocalStorage(name=1)  # type: ignore[call-overload]


def run_types(s: AsyncLocalStorage[str]) -> None:
    def handler(a: int, *, b: str) -> float:
        return 1.0

    assert_type(s.run("id", handler, 1, b="x"), float)
    assert_type(s.exit(handler, 1, b="x"), float)
    s.run("id", handler, "1", b="x")  # type: ignore[arg-type]
    s.run("id", handler, 1)  # type: ignore[call-arg]

    with s.scope("id") as entered:
        assert_type(entered, str)


async def async_types(s: AsyncLocalStorage[str]) -> None:
    async def handler(a: int) -> bytes:
        return b""

    assert_type(await s.run("id", handler, 1), bytes)
    assert_type(await s.exit(handler, 1), bytes)
    task = asyncio.create_task(s.run("id", handler, 1))
    assert_type(task, asyncio.Task[bytes])


def hop_types(pool: ThreadPoolExecutor) -> None:
    def work(a: int, *, fn: str) -> str:
        return fn

    bound = als.bind(work)
    assert_type(bound(1, fn="x"), str)
    bound("1", fn="x")  # type: ignore[arg-type]
    snap = als.snapshot()
    assert_type(snap(work, 1, fn="x"), str)
    assert_type(AsyncLocalStorage.bind(work)(1, fn="x"), str)

    with als.ContextThreadPoolExecutor(max_workers=2) as executor:
        assert_type(executor.submit(work, 1, fn="x"), Future[str])
        executor.submit(work, "1", fn="x")  # type: ignore[arg-type]
        assert_type(list(executor.map(str, [1, 2])), list[str])

    wrapped = als.wrap_executor(pool)
    assert_type(wrapped, Executor)
    assert_type(wrapped.submit(work, 1, fn="x"), Future[str])

    thread = als.ContextThread(target=work, args=(1,), context=contextvars.copy_context())
    thread.start()
    timer = als.ContextTimer(0.5, work, args=[1])
    timer.start()


async def asyncio_types() -> None:
    def work(a: int, *, b: str) -> str:
        return b

    assert_type(await als.run_in_executor(None, work, 1, b="x"), str)
    als.run_in_executor(None, work, 1, b=2)  # type: ignore[arg-type]
    executor = als.install_default_executor(max_workers=4)
    assert_type(executor, als.ContextThreadPoolExecutor)
