"""Each example runs and passes its own check; the checks themselves catch a crossed id."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from .helpers import THREADS_INHERIT

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_server_demo() -> None:
    """The seed demo serves 20 concurrent requests and finds every line carrying its own id."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "seed_server.py"), "--demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 20 requests, 80 log lines" in result.stdout
    assert "MISMATCH" not in result.stdout
    lines = [line for line in result.stdout.splitlines() if "[client " in line]
    assert len(lines) == 80
    assert any("in a worker thread" in line and "asyncio_" in line for line in lines)


def test_seed_server_check_catches_crossed_ids() -> None:
    """The demo's check reports a line carrying another request's id, a lost id and a missing hop."""
    seed = load("seed_server")
    good = [
        f"{rid:>3}: {message:<20} [client {client}, MainThread]"
        for rid, client in ((0, "00"), (1, "01"))
        for message in seed.MESSAGES
    ]
    assert seed.check(good, {"00": "0", "01": "1"}) == []
    crossed = [line.replace("  1: finish", "  0: finish") for line in good]
    assert any("client 01" in p and "'0'" in p for p in seed.check(crossed, {"00": "0", "01": "1"}))
    lost = [line.replace("  1: in a worker", "  -: in a worker") for line in good]
    assert any("'-'" in p for p in seed.check(lost, {"00": "0", "01": "1"}))
    assert seed.check(good[:-1], {"00": "0", "01": "1"})
    assert seed.check(good, {"00": "0", "01": "0"})


def test_legacy_threads() -> None:
    """Unpatched, the legacy module loses ids; after als.patch(), every line carries its own."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "legacy_threads.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    if not THREADS_INHERIT:  # 3.14's thread_inherit_context keeps some of them
        assert "without the patch: 28 of 36 lines lost their request id" in result.stdout
    assert "with the patch: all 36 lines carry their own request's id" in result.stdout


def test_legacy_threads_check_catches_crossed_and_lost_ids() -> None:
    """The legacy example's check reports a line with another request's id, with none, and a missing one."""
    legacy = load("legacy_threads")
    good = {(order, message): rid for order, rid in legacy.ORDERS.items() for message in legacy.MESSAGES}
    assert legacy.check(good) == []
    crossed = good | {("order-1", "Timer"): "req-b2"}
    lost = good | {("order-2", "Thread subclass"): "-"}
    missing = {k: v for k, v in good.items() if k != ("order-3", "request end")}
    assert legacy.check(crossed) == ["order-1 'Timer': expected req-a1, got req-b2"]
    assert legacy.check(lost) == ["order-2 'Thread subclass': expected req-b2, got -"]
    assert legacy.check(missing) == ["order-3 'request end': expected req-c3, got no line"]
