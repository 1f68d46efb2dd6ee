from __future__ import annotations

import concurrent.futures
import contextvars
import os
import sys
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

import als

# Property tests: a few hundred examples in the normal run, thousands in `tox -e soak`.
# No deadline: a deadline is a timed assertion, and this machine is shared.
settings.register_profile(
    "default", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "soak", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

_THREAD_HOOK: tuple[object, str] = (
    (threading.Thread, "start")
    if sys.version_info >= (3, 14)
    else (threading, "_start_joinable_thread" if sys.version_info >= (3, 13) else "_start_new_thread")
)
_ORIGINALS = {
    "thread start hook": (*_THREAD_HOOK, vars(_THREAD_HOOK[0])[_THREAD_HOOK[1]]),
    "threading.Thread.start": (threading.Thread, "start", threading.Thread.start),
    "threading.Thread.run": (threading.Thread, "run", threading.Thread.run),
    "ThreadPoolExecutor.submit": (
        concurrent.futures.ThreadPoolExecutor,
        "submit",
        concurrent.futures.ThreadPoolExecutor.submit,
    ),
    "ProcessPoolExecutor.submit": (
        concurrent.futures.ProcessPoolExecutor,
        "submit",
        concurrent.futures.ProcessPoolExecutor.submit,
    ),
    "Future.add_done_callback": (
        concurrent.futures.Future,
        "add_done_callback",
        concurrent.futures.Future.add_done_callback,
    ),
}


@pytest.fixture(autouse=True)
def _stdlib_untouched() -> Iterator[None]:
    """Every test leaves the standard library's classes exactly as it found them."""
    yield
    assert not als.is_patched(), "a test left als.patch() on"
    for label, (owner, name, original) in _ORIGINALS.items():
        assert vars(owner)[name] is original, f"{label} was left replaced"
    assert "map" not in concurrent.futures.ThreadPoolExecutor.__dict__, "ThreadPoolExecutor.map was left"


@pytest.fixture
def storage() -> als.AsyncLocalStorage[object]:
    return als.AsyncLocalStorage(name="request_id")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def threads_inherit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every new thread start in a copy of its starter's context, and tell als so.

    This is what CPython 3.14's ``sys.flags.thread_inherit_context`` does: the
    setting in which a pool's lazily started workers could be pinned to the
    request that happened to start them.
    """
    import als._threads

    monkeypatch.setattr(als._threads, "_INTERPRETER_COPIES", True)
    original_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        context = contextvars.copy_context()
        run = self.run

        def inherited_run() -> None:
            context.run(run)

        self.__dict__["run"] = inherited_run
        original_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
