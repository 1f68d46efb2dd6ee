from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator

import pytest

import als

_ORIGINALS = {
    "threading.Thread.start": (threading.Thread, "start", threading.Thread.start),
    "threading.Thread.run": (threading.Thread, "run", threading.Thread.run),
    "ThreadPoolExecutor.submit": (
        concurrent.futures.ThreadPoolExecutor,
        "submit",
        concurrent.futures.ThreadPoolExecutor.submit,
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
    for label, (owner, name, original) in _ORIGINALS.items():
        assert owner.__dict__[name] is original, f"{label} was left replaced"


@pytest.fixture
def storage() -> als.AsyncLocalStorage[object]:
    return als.AsyncLocalStorage(name="request_id")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
