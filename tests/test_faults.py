"""Faults: every exception goes where the standard library sends it, unchanged, and every thread and
task afterwards sees the store it had before."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

import als
from als import AsyncLocalStorage

from .helpers import TIMEOUT, Recorder, Worker, join_all, wait

BASE_EXCEPTIONS = [KeyboardInterrupt, SystemExit, GeneratorExit, ValueError]


def raiser(error: BaseException) -> Callable[..., None]:
    def fail(*_: object) -> None:
        raise error

    return fail


@pytest.mark.parametrize("kind", BASE_EXCEPTIONS, ids=lambda k: k.__name__)
class TestExceptionsReachTheStandardPlace:
    def test_run(self, storage: AsyncLocalStorage[object], kind: type[BaseException]) -> None:
        """run(): the caller gets the same object, traceback into the callee; its store is back."""
        error = kind("in run")
        storage.enter_with("before")
        with pytest.raises(kind) as info:
            storage.run("A", raiser(error))
        assert info.value is error
        assert any(f.name == "fail" for f in traceback.extract_tb(error.__traceback__))
        assert storage.get_store() == "before"

    @pytest.mark.parametrize(
        "patch_on", [False, True], ids=["ContextThreadPoolExecutor", "patched stdlib pool"]
    )
    def test_pool_task(
        self, storage: AsyncLocalStorage[object], kind: type[BaseException], patch_on: bool
    ) -> None:
        """A task's BaseException reaches its future, as the stdlib sends it; the pool keeps working."""
        error = kind("in task")
        with als.patched() if patch_on else contextlib.nullcontext():
            pool = ThreadPoolExecutor(1) if patch_on else als.ContextThreadPoolExecutor(1)
            with pool:
                future = storage.run("A", pool.submit, raiser(error))
                assert future.exception(TIMEOUT) is error
                assert storage.run("B", pool.submit, storage.get_store).result(TIMEOUT) == "B"

    @pytest.mark.parametrize("patch_on", [False, True], ids=["ContextThread", "patched stdlib Thread"])
    def test_thread_and_timer(
        self,
        storage: AsyncLocalStorage[object],
        kind: type[BaseException],
        patch_on: bool,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """In a thread or timer, the exception reaches threading.excepthook as the same object (SystemExit
        too: the default hook is what ignores it); the starter's store is untouched."""
        calls: list[threading.ExceptHookArgs] = []
        monkeypatch.setattr(threading, "excepthook", calls.append)
        error, timer_error = kind("in thread"), kind("in timer")
        with als.patched() if patch_on else contextlib.nullcontext():
            make_thread = threading.Thread if patch_on else als.ContextThread
            make_timer = threading.Timer if patch_on else als.ContextTimer
            threads = [make_thread(target=raiser(error)), make_timer(0, raiser(timer_error))]
            storage.enter_with("starter")
            storage.run("A", lambda: [t.start() for t in threads])
            join_all(threads)
        assert sorted((c.exc_value for c in calls), key=id) == sorted([error, timer_error], key=id)
        assert storage.get_store() == "starter"

    def test_done_callback(
        self, storage: AsyncLocalStorage[object], kind: type[BaseException], caplog: pytest.LogCaptureFixture
    ) -> None:
        """An Exception in a done callback is logged by concurrent.futures, as without als; a BaseException
        propagates from whoever completes the future, as without als."""
        error = kind("in callback")
        with als.ContextThreadPoolExecutor(1) as pool:
            future = pool.submit(lambda: None)
            future.result(TIMEOUT)
            if issubclass(kind, Exception):
                storage.run("B", future.add_done_callback, raiser(error))  # logged, not raised
                assert [r.exc_info[1] for r in caplog.records if r.exc_info] == [error]
            else:
                with pytest.raises(kind) as info:
                    storage.run("B", future.add_done_callback, raiser(error))
                assert info.value is error
        assert storage.get_store() is None


@pytest.mark.anyio
async def test_scope_closed_from_another_task(storage: AsyncLocalStorage[object]) -> None:
    """A streaming generator's scope, closed by another task: no error, and neither task's binding moves."""
    import anyio

    opened = anyio.Event()
    closed = anyio.Event()
    recorder = Recorder()
    scope = storage.scope("stream")

    async def server() -> None:
        scope.__enter__()
        opened.set()
        await closed.wait()
        recorder("server", storage.get_store())

    async def closer() -> None:
        await opened.wait()
        storage.enter_with("closer")
        scope.__exit__(None, None, None)
        recorder("closer", storage.get_store())
        closed.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(server)
        tg.start_soon(closer)
    assert recorder.as_dict() == {"closer": "closer", "server": "stream"}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_inside_a_request(storage: AsyncLocalStorage[object]) -> None:
    """A child forked in a request while another thread holds als's locks keeps the store, and can
    start pools, patch and unpatch: the fork waits for the locks' holder, so the child gets them free."""
    import signal

    import als._executors
    import als._patch

    held, forking = threading.Event(), threading.Event()
    # Registered after als's locks, so it runs before their fork hooks: the
    # holder is still inside its critical section when the fork begins.
    os.register_at_fork(before=forking.set)

    def hold_locks() -> None:
        with als._patch._lock, als._executors._future_classes_lock:
            held.set()
            wait(forking)

    def request() -> int:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            signal.alarm(10)  # a lock inherited held would hang the child: fail it instead
            code = 1
            try:
                assert storage.get_store() == "A"
                with als.ContextThreadPoolExecutor(1) as pool:
                    assert pool.submit(storage.get_store).result(TIMEOUT) == "A"
                als.patch()
                with ThreadPoolExecutor(1) as plain:
                    assert plain.submit(storage.get_store).result(TIMEOUT) == "A"
                als.unpatch()
                assert not als.is_patched()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    holder = Worker(hold_locks)
    holder.start()
    wait(held)
    try:
        assert storage.run("A", request) == 0
    finally:
        forking.set()
        join_all([holder])
    assert not als._patch._lock.locked()
    assert not als._executors._future_classes_lock.locked()


def test_patch_and_unpatch_racing_with_running_threads(storage: AsyncLocalStorage[object]) -> None:
    """Threads start while another thread toggles the patch: none fails, and none sees another's store."""
    stop = threading.Event()
    seen: list[tuple[str, object]] = []
    lock = threading.Lock()
    previous = sys.getswitchinterval()

    def toggle() -> None:
        while not stop.is_set():
            als.patch()
            als.unpatch()

    def requests(n: int) -> None:
        for k in range(60):
            rid = f"{n}-{k}"

            def record(rid: str = rid) -> None:
                with lock:
                    seen.append((rid, storage.get_store()))

            def start() -> None:
                thread = threading.Thread(target=record)
                thread.start()
                thread.join(TIMEOUT)
                with ThreadPoolExecutor(1) as pool:
                    pool.submit(record).result(TIMEOUT)

            storage.run(rid, start)

    sys.setswitchinterval(1e-5)
    toggler = Worker(toggle)
    workers = [Worker(requests, n) for n in range(4)]
    try:
        toggler.start()
        for w in workers:
            w.start()
        join_all(workers)
    finally:
        stop.set()
        join_all([toggler])
        sys.setswitchinterval(previous)
        als.unpatch()
    assert len(seen) == 4 * 60 * 2
    assert all(store in (rid, None) for rid, store in seen), [s for s in seen if s[1] not in (s[0], None)]


def test_interpreter_shutdown_with_patched_threads_alive() -> None:
    """A process exits cleanly with a patched daemon thread still running and a patched thread to join."""
    program = textwrap.dedent(
        """
        import sys, threading, als
        storage = als.AsyncLocalStorage()
        als.patch()
        release, daemon_running = threading.Event(), threading.Event()
        def daemon():
            daemon_running.set()
            threading.Event().wait()  # still running when the interpreter shuts down
        def joined():
            release.wait(5)
            sys.stdout.write("joined " + str(storage.get_store()) + "\\n")  # one write
        def request():
            threading.Thread(target=daemon, daemon=True).start()
            threading.Thread(target=joined).start()
        storage.run("A", request)
        daemon_running.wait(5)
        threading.Timer(0, release.set).start()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["joined A"]
    assert "Traceback" not in result.stderr


def test_cancelled_pending_tasks_on_shutdown(storage: AsyncLocalStorage[object]) -> None:
    """shutdown(cancel_futures=True) with queued tasks: they are cancelled, none runs, no hang."""
    release = threading.Event()
    started = threading.Event()
    ran: list[object] = []
    pool = als.ContextThreadPoolExecutor(1)
    running = storage.run("A", pool.submit, lambda: (started.set(), wait(release)))
    wait(started)
    queued = [storage.run("B", pool.submit, lambda: ran.append(storage.get_store())) for _ in range(5)]
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    running.result(TIMEOUT)
    pool.shutdown(wait=True)
    assert all(f.cancelled() for f in queued)
    assert ran == []


@pytest.mark.parametrize("patch_on", [False, True], ids=["wrap_executor", "patched stdlib pool"])
def test_failing_callback_fired_by_the_worker(
    storage: AsyncLocalStorage[object], patch_on: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises when the worker completes the future is logged, as without als, and the
    pool keeps serving with the right stores."""
    error = LookupError("in callback")
    release = threading.Event()
    with als.patched() if patch_on else contextlib.nullcontext(), ThreadPoolExecutor(1) as plain:
        pool = plain if patch_on else als.wrap_executor(plain)
        future = storage.run("A", pool.submit, wait, release)
        storage.run("B", future.add_done_callback, raiser(error))
        release.set()
        future.result(TIMEOUT)
        assert storage.run("C", pool.submit, storage.get_store).result(TIMEOUT) == "C"
    assert [r.exc_info[1] for r in caplog.records if r.exc_info] == [error]
