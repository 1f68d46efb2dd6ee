"""The README's code runs and prints what the README shows; CI runs the README's test command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_quick_start_prints_what_the_readme_shows() -> None:
    """The quick start runs; its lines, thread column aside, are the README's in some order."""
    program = next(b for b in blocks("python") if "asyncio.run(main())" in b)
    shown = README.split(program, 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr

    def messages(text: str) -> list[str]:
        return sorted(line.split(None, 1)[1] for line in text.splitlines() if line.strip())

    assert messages(result.stderr) == messages(shown)
    assert "asyncio_" in result.stderr  # the worker-thread lines really come from worker threads


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run contains the README's test command verbatim, so a missing install step fails CI."""
    commands = [line for block in blocks("sh") for line in block.splitlines() if line.strip()]
    assert len(commands) == 2, commands
    demo, tests = commands
    assert "examples/seed_server.py --demo" in demo
    assert tests in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
