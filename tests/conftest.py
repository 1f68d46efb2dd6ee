from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

import als

from .helpers import assert_originals

# Property tests: a few hundred examples in the normal run, thousands in `tox -e soak`.
# No deadline: a deadline is a timed assertion, and this machine is shared.
settings.register_profile(
    "default", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "soak", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

_PEER_TARGETS = {
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
    assert not als.is_patched(), "a test left als.patch() on"
    assert_originals()
    for label, (owner, name, original) in _PEER_TARGETS.items():
        assert vars(owner)[name] is original, f"{label} was left replaced"


@pytest.fixture
def storage() -> als.AsyncLocalStorage[object]:
    return als.AsyncLocalStorage(name="request_id")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
