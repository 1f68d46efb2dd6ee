"""Each example runs and passes its own check; the checks themselves catch a crossed id."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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
