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


def programs_with_output() -> list[tuple[str, str]]:
    """Each complete program in the README (it starts with an import) and the output block after it."""
    pairs = []
    for program in blocks("python"):
        if not program.startswith(("import ", "from ")):
            continue
        rest = README.split(program, 1)[1]
        if rest.lstrip("`\n").startswith("text\n"):
            pairs.append((program, rest.split("```text\n", 1)[1].split("```", 1)[0]))
    return pairs


def normalise(text: str) -> list[str]:
    """Lines in a stable order, with worker-thread numbers (which vary between runs) masked."""
    return sorted(
        re.sub(r"asyncio_\d+ ?", "asyncio_N ", line).strip() for line in text.splitlines() if line.strip()
    )


def test_readme_programs_print_what_the_readme_shows() -> None:
    """The quick start and the logging example run and print the lines shown, in some order."""
    pairs = programs_with_output()
    assert len(pairs) == 2, [p[:40] for p, _ in pairs]
    for program, shown in pairs:
        result = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
        assert normalise(result.stdout + result.stderr) == normalise(shown), program[:60]


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run contains the README's test command verbatim, so a missing install step fails CI."""
    commands = [line for block in blocks("sh") for line in block.splitlines() if line.strip()]
    assert len(commands) == 2, commands
    demo, tests = commands
    assert "examples/seed_server.py --demo" in demo
    assert tests in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_example_runs_shown_in_the_readme_print_exactly_that() -> None:
    """Each ``$ python examples/<name>.py`` block shows what that example prints, line for line."""
    runs = re.findall(r"```text\n\$ python (examples/\w+\.py)\n(.*?)```", README, re.S)
    assert [path for path, _ in runs] == [
        "examples/web_frameworks.py",
        "examples/process_pool.py",
        "examples/celery_tasks.py",
    ]
    for path, shown in runs:
        result = subprocess.run(
            [sys.executable, str(ROOT / path)], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout == shown, path
