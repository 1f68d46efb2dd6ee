"""Crossover stress, bounded: thousands of concurrent requests, zero mismatches (see tests/stress.py).

Bounded in count and time, not deterministic: each run interleaves
differently. A failure prints the request and hop that crossed.
"""

from __future__ import annotations

import contextvars

import pytest

import als
import als._executors

from . import stress


@pytest.mark.parametrize(
    ("patch_on", "requests", "switch_interval"),
    [(True, 3000, None), (True, 1500, 1e-6), (False, 2000, None)],
    ids=["patched", "patched, switch interval 1e-6", "als wrappers only"],
)
def test_no_request_ever_sees_another_requests_id(
    patch_on: bool, requests: int, switch_interval: float | None
) -> None:
    """Asyncio tasks and request threads at once, through tiny shared pools: every hop sees its own id."""
    if patch_on:
        with als.patched():
            outcome = stress.run(requests, switch_interval=switch_interval)
    else:
        outcome = stress.run(requests, switch_interval=switch_interval)
    assert outcome.mismatches == [], outcome.report()
    assert outcome.hops >= requests * 7


def test_a_broken_hop_is_reported_with_request_and_hop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The detector works: with ContextThreadPoolExecutor's copy removed, it names what crossed."""
    # Where ContextThreadPoolExecutor takes its copy: its resolver (3.14+) or its work queue.
    monkeypatch.setattr(als._executors, "copy_context", contextvars.Context)
    outcome = stress.run(40)
    assert outcome.mismatches
    assert "ContextThreadPoolExecutor" in outcome.report()
    assert "req-" in outcome.report()
