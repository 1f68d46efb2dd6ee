"""tox's in-tree plugin (a dev tool, not part of the package): a missing Python is never silent.

tox.ini's ``skip_missing_interpreters = true`` lets a newcomer's bare ``tox``
run the environments whose Python this machine has. This plugin keeps that
from passing for more than it is:

* Environments named with ``-e`` or ``TOXENV`` fail when their Python is
  missing: asking for ``py312`` and getting a skip is no answer. An explicit
  ``--skip-missing-interpreters``/``TOX_SKIP_MISSING_INTERPRETERS`` still wins
  (``.ci/run`` sets it false, so CI fails on any missing one).
* Whenever an environment was skipped or failed for lack of its Python, tox's
  last lines say which and how to make the interpreters visible. The exit
  status is tox's own: 0 for a default run whose other environments passed.
"""

from __future__ import annotations

import atexit
import re
from typing import TYPE_CHECKING

from tox.plugin import impl
from tox.tox_env.errors import Skip
from tox.tox_env.python.api import NoInterpreter, Python
from tox.tox_env.runner import RunToxEnv

if TYPE_CHECKING:
    from tox.config.sets import ConfigSet
    from tox.session.state import State
    from tox.tox_env.api import ToxEnv

_ran: list[str] = []
_missing: dict[str, list[str]] = {"skipped": [], "failed": []}  # environment names
_versions: set[str] = set()  # "3.12"
_colours = ["", ""]  # start, reset: set when tox colours its output


@impl
def tox_add_core_config(core_conf: ConfigSet, state: State) -> None:
    """Environments named with -e or TOXENV (not ALL) fail without their Python, unless told otherwise."""
    options = state.conf.options
    named = options.env  # a CliEnv: -e's, or TOXENV's, names
    if not named.is_default_list and not named.is_all and options.skip_missing_interpreters == "config":
        options.skip_missing_interpreters = "false"  # read later, when an environment asks for it
    if options.is_colored:
        _colours[:] = "\x1b[33m", "\x1b[39m"  # yellow, as tox's SKIP lines


@impl
def tox_env_teardown(tox_env: ToxEnv) -> None:
    """Record each environment that ran, and which of them had no Python."""
    if not isinstance(tox_env, RunToxEnv):
        return
    _ran.append(tox_env.name)
    if not isinstance(tox_env, Python):
        return
    try:
        tox_env.base_python  # noqa: B018 (looked up at setup and cached: raises as it did there)
    except (Skip, NoInterpreter) as missing:
        _missing["skipped" if isinstance(missing, Skip) else "failed"].append(tox_env.name)
        for spec in tox_env.conf["base_python"]:
            if found := re.fullmatch(r"(?:py|python)?3\.?(\d+)", spec):
                _versions.add(f"3.{found[1]}")


@atexit.register
def _report() -> None:
    """After tox's own summary: which environments had no Python, and how to put one on PATH."""
    if not any(_missing.values()):
        return
    versions = sorted(_versions, key=lambda v: int(v.split(".")[1]))
    debian = [v for v in versions if v in ("3.14", "3.15")]  # what .ci/debian-pythons is for
    pyenv = [v for v in versions if v not in debian]
    lines = [""]
    for outcome, names in _missing.items():
        if names:
            counted = f"{len(names)} of {len(_ran)} tox environments {outcome.upper()}"
            lines.append(f"  {counted} for lack of their Python: {', '.join(sorted(names))}")
    lines.append("  tox finds pythonX.Y on PATH (pyenv's shims do not work there). To make them visible:")
    if pyenv:
        prefixes = ":".join(f"$(pyenv prefix {v})/bin" for v in pyenv)
        lines.append(f'    {", ".join(pyenv)}, from pyenv:  export PATH="$PATH:{prefixes}"')
    if debian:
        fetch = f"bash .ci/debian-pythons ~/.cache/als-debian-pythons {' '.join(debian)}"
        path = 'export PATH="$PATH:$HOME/.cache/als-debian-pythons/bin"'
        lines.append(f"    {', '.join(debian)}, Debian's builds:  {fetch} && {path}")
    if _missing["skipped"]:
        lines.append("  Nothing ran on them. To fail instead: TOX_SKIP_MISSING_INTERPRETERS=false tox")
    colour, reset = _colours
    print(colour + "\n".join(lines) + reset)
