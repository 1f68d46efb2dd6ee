"""Every code block in README.md and docs/ runs and shows what it prints; every link resolves.

How a block is read, so that nothing is shown that was never run:

- A ``python`` block is a complete program. The ``text`` block right after it is its output
  (stdout and stderr, as a terminal shows them), compared line for line, or as a set of lines
  when a ``<!-- output: any order -->`` comment stands before the output block: then lines of
  different requests (the word before a line's first ``: ``) may interleave, each request's
  lines keep their order, and what varies between runs (``VARYING``) and runs of spaces do
  not count.
  Programs run with threads not inheriting their starter's context, the default of every
  build but the free-threaded one, whatever the test environment's flag.
- A ``text`` block whose first line is ``$ python examples/<name>.py [args]`` is that example's
  output. Exact, unless ``<!-- abridged -->`` stands before it: then the shown lines are printed
  in that order, with others between where the page has ``...``, and the last lines agree. What
  varies between runs is masked: ports, random request ids, worker thread numbers (``VARYING``).
  ``<!-- abridged: any order -->`` drops the order; ``numbers vary`` masks every number as well.
- A block after ``<!-- file: <path> -->`` is that file of the repository, verbatim; the file is
  run by a test of its own (a test module must name it). A ``python`` one followed by a ``text``
  block is also run here, as a program is.
- A block after ``<!-- fragment: <why> -->`` is not run: a part of a program, a shell command.
  A ``python`` fragment must still compile.
- README's two ``sh`` blocks are the two commands; CI runs the second verbatim.

Any other block fails the test, naming its file and line.
"""

from __future__ import annotations

import ast
import collections
import importlib
import inspect
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .test_public_api import PUBLIC_MODULES

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!-- (fragment|file|output|abridged)(?::\s*(.*?))?\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int
    language: str
    text: str
    marker: str | None
    argument: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def page_blocks(page: Path) -> list[Block]:
    source = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(source):
        indent = len(match.group(1))
        text = "".join(line[indent:] for line in match.group(3).splitlines(keepends=True))
        before = source[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        marker = MARKER.match(before)
        found.append(
            Block(
                page,
                source.count("\n", 0, match.start()) + 1,
                match.group(2),
                text,
                marker.group(1) if marker else None,
                (marker.group(2) or "") if marker else "",
            )
        )
    return found


BLOCKS = [block for page in PAGES for block in page_blocks(page)]


def classify() -> tuple[list[tuple[Block, Block]], list[Block], list[Block], list[Block], list[str]]:
    """Programs with their output, example runs, file copies, fragments, and the unclassified."""
    programs, runs, files, fragments, unclassified = [], [], [], [], []
    consumed: set[int] = set()
    for index, block in enumerate(BLOCKS):
        if index in consumed:
            continue
        if block.marker == "fragment":
            fragments.append(block)
        elif block.language == "python" and block.marker in (None, "file"):
            after = BLOCKS[index + 1] if index + 1 < len(BLOCKS) else None
            if (
                after
                and after.page == block.page
                and after.language == "text"
                and after.marker in (None, "output")
            ):
                programs.append((block, after))
                consumed.add(index + 1)
            elif block.marker is None:
                unclassified.append(f"{block.where}: a program without its output block after it")
            if block.marker == "file":
                files.append(block)
        elif block.marker == "file":
            files.append(block)
        elif block.language == "text" and block.text.startswith("$ python examples/"):
            runs.append(block)
        elif block.language == "sh" and block.page.name == "README.md" and block.marker is None:
            pass  # the two commands: test_ci_runs_the_readme_test_command
        else:
            unclassified.append(f"{block.where}: a {block.language or 'plain'} block, neither run nor marked")
    return programs, runs, files, fragments, unclassified


PROGRAMS, RUNS, FILES, FRAGMENTS, UNCLASSIFIED = classify()


def test_every_block_is_run_or_marked() -> None:
    assert UNCLASSIFIED == []
    # The reader found what the pages hold.
    assert len(PROGRAMS) >= 6
    assert RUNS
    assert FILES


def run_python(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHON_THREAD_INHERIT_CONTEXT"}
    env["PYTHONUNBUFFERED"] = "1"  # prints and log lines in the order a terminal shows them
    env["PYTHONPATH"] = str(ROOT)  # examples/ imports as a package, as from a checkout
    return subprocess.run(
        [sys.executable, "-X", "thread_inherit_context=0", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


VARYING = [  # what changes from run to run, masked in abridged and any-order output
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:PORT"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "ID"),  # new_request_id()
    (re.compile(r"\b(Thread-|asyncio_|pool_)\d+"), r"\1N"),  # which worker thread
]


def masked(line: str, numbers_vary: bool = False) -> str:
    line = " ".join(line.split())
    for pattern, replacement in VARYING:
        line = pattern.sub(replacement, line)
    return re.sub(r"\d+", "N", line) if numbers_vary else line


def by_request(text: str) -> dict[str, list[str]]:
    """Lines grouped by their request's id (the word before the first ': '), each group in order."""
    groups: dict[str, list[str]] = {}
    for line in filter(None, map(masked, text.splitlines())):
        key = re.search(r"(\S+): ", line)
        groups.setdefault(key.group(1) if key else "", []).append(line)
    return groups


@pytest.mark.parametrize(("program", "shown"), PROGRAMS, ids=[program.where for program, _ in PROGRAMS])
def test_program_prints_what_the_page_shows(program: Block, shown: Block, tmp_path: Path) -> None:
    (tmp_path / "program.py").write_text(program.text, encoding="utf-8")
    result = run_python(["program.py"], tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout
    if shown.marker == "output":  # requests interleave; each request's own lines keep their order
        assert shown.argument == "any order", shown.where
        assert by_request(result.stdout) == by_request(shown.text)
    else:
        assert result.stdout == shown.text


@pytest.mark.parametrize("run", RUNS, ids=[run.where for run in RUNS])
def test_example_prints_what_the_page_shows(run: Block) -> None:
    command, shown = run.text.split("\n", 1)
    result = run_python(shlex.split(command)[2:], ROOT, timeout=120)
    assert result.returncode == 0, result.stdout
    if run.marker != "abridged":
        assert result.stdout == shown
        return
    options = {option.strip() for option in run.argument.split(",") if option.strip()}
    assert options <= {"any order", "numbers vary"}, run.where
    actual = [masked(line, "numbers vary" in options) for line in result.stdout.splitlines()]
    wanted = [masked(line, "numbers vary" in options) for line in shown.splitlines() if line.strip() != "..."]
    assert wanted[-1] == actual[-1], "the last line shown is not the last line printed"
    if "any order" in options:
        missing = collections.Counter(wanted) - collections.Counter(actual)
        assert not missing, f"shown but never printed: {list(missing)}"
    else:  # in the order shown, with lines left out where the page has "..."
        rest = iter(actual)
        missing = [line for line in wanted if not any(line == printed for printed in rest)]
        assert not missing, f"shown but not printed in this order: {missing}"


@pytest.mark.parametrize("copy", FILES, ids=[copy.where for copy in FILES])
def test_file_blocks_are_the_files_and_the_files_are_tested(copy: Block) -> None:
    path = ROOT / copy.argument
    assert path.is_file(), copy.where
    assert copy.text == path.read_text(encoding="utf-8"), f"{copy.where} differs from {copy.argument}"
    # How a test names it: a module by its dotted name (django_site.settings), another file by its name.
    recipes = ROOT / "examples" / "recipes"
    assert recipes in path.parents, f"{copy.where}: shown files are recipes, in examples/recipes"
    name = ".".join(path.relative_to(recipes).with_suffix("").parts) if path.suffix == ".py" else path.name
    tests = [test for test in (ROOT / "tests").glob("test_*.py") if name in test.read_text(encoding="utf-8")]
    assert tests, f"no test module names {copy.argument} ({name})"


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=[fragment.where for fragment in FRAGMENTS])
def test_fragments_say_why_and_python_ones_compile(fragment: Block) -> None:
    assert fragment.argument, f"{fragment.where}: say why it is a fragment"
    if fragment.language == "python":
        compile(fragment.text, fragment.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run contains the README's test command verbatim, so a missing install step fails CI."""
    commands = [
        line
        for block in BLOCKS
        if block.page.name == "README.md" and block.language == "sh"
        for line in block.text.splitlines()
        if line.strip()
    ]
    assert len(commands) == 2, commands
    demo, tests = commands
    assert demo.endswith("examples/seed_server.py --demo")
    assert tests in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the rest belongs in docs/"


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as on GitHub."""
    source = FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: collections.Counter[str] = collections.Counter()
    found = set()
    for heading in re.findall(r"^#+ (.*)$", source, re.M):
        anchor = slug(heading)
        found.add(f"{anchor}-{seen[anchor]}" if seen[anchor] else anchor)
        seen[anchor] += 1
    return found


def links(page: Path) -> list[tuple[str, str]]:
    """(text, target) of every Markdown link and image outside code."""
    source = re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text(encoding="utf-8")))
    found = re.findall(r"(!?\[[^\]]*\])\(([^)\s]+)\)", source)
    # A link this cannot read (a title, a space, a reference-style link) would go unchecked: refuse it.
    assert source.count("](") == len(found), f"{page.name}: a link of a form the test does not read"
    assert not re.search(r"^\[[^\]]+\]:", source, re.M), f"{page.name}: a reference-style link"
    return found


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_links_resolve(page: Path) -> None:
    for text, target in links(page):
        if target.startswith(("https://", "http://")):
            assert target.startswith("https://"), f"{page.name}: {target}"
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {text}({target}) points at nothing"
        assert ROOT in linked.parents or linked == ROOT, f"{page.name}: {target} leaves the repository"
        if anchor:
            assert linked.suffix == ".md", f"{page.name}: {target}"
            assert anchor in anchors(linked), f"{page.name}: no heading #{anchor}"


def test_readme_links_every_page_and_no_image() -> None:
    """The README is the package's long description: a relative image would break on an index page."""
    targets = {target.partition("#")[0] for _, target in links(ROOT / "README.md")}
    assert {f"docs/{page.name}" for page in PAGES[1:]} <= targets
    assert not [text for text, _ in links(ROOT / "README.md") if text.startswith("!")]


@pytest.mark.parametrize("page", PAGES[1:], ids=[page.name for page in PAGES[1:]])
def test_each_page_opens_with_what_it_answers(page: Path) -> None:
    title, _, rest = page.read_text(encoding="utf-8").partition("\n\n")
    assert title.startswith("# "), page.name
    assert "\n" not in title, page.name
    assert rest.startswith("This page answers"), page.name


def test_api_reference_has_every_public_name() -> None:
    headings = set(
        re.findall(r"^### `([\w.]+)", (ROOT / "docs" / "api.md").read_text(encoding="utf-8"), re.M)
    )
    seen: dict[int, str] = {}  # a name re-exported by a parent module is listed once, under the parent
    for module in PUBLIC_MODULES:  # a parent before its submodules
        for name in importlib.import_module(module).__all__:
            seen.setdefault(id(getattr(importlib.import_module(module), name)), f"{module}.{name}")
    names = set(seen.values())
    assert names - headings == set(), "public names the API reference lacks"
    assert headings - names == set(), "API reference entries that are not public names"


def plain_signature(obj: object) -> str:
    """``obj``'s signature as the reference writes it: no annotations, no ``self``, double quotes."""
    signature = inspect.signature(obj)
    # ThreadPoolExecutor's own **ctxkwargs (3.14+, for prepare_context): the page says so in words.
    parameters = [
        p.replace(annotation=p.empty)
        for p in signature.parameters.values()
        if p.name not in ("self", "ctxkwargs")
    ]
    text = str(signature.replace(parameters=parameters, return_annotation=signature.empty))
    return text.replace("'", '"')


def test_api_reference_signatures_are_the_real_ones() -> None:
    """Each entry written as a call shows exactly the parameters and defaults the code has."""
    reference = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    entries = re.findall(r"^###(#?) `([\w.]+)(\(.*\))`$", reference, re.M)
    assert len(entries) > 35
    for method, name, shown in entries:
        if method:  # #### `storage.run(...)`: a method of AsyncLocalStorage
            obj = getattr(importlib.import_module("als").AsyncLocalStorage, name.removeprefix("storage."))
        else:
            module, _, attribute = name.rpartition(".")
            obj = getattr(importlib.import_module(module), attribute)
        assert shown == plain_signature(obj), name


def test_diagram_is_up_to_date() -> None:
    """docs/images/hops.svg is what docs/images/hops.py draws."""
    result = run_python([str(ROOT / "docs" / "images" / "hops.py"), "--stdout"], ROOT, timeout=60)
    assert result.returncode == 0, result.stdout
    assert result.stdout == (ROOT / "docs" / "images" / "hops.svg").read_text(encoding="utf-8")
