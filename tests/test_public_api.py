"""The public surface: each public module's __all__ is exactly what it exports, and the package is typed."""

from __future__ import annotations

import importlib
import importlib.resources
import pickle
import pkgutil
import types
import typing

import pytest

import als

# Every public module of the package, each checked the same way: adding a module is one line here.
PUBLIC_MODULES = [
    *["als", "als.celery", "als.logging"],
    *["als.web", "als.web.aiohttp", "als.web.asgi", "als.web.django", "als.web.outgoing", "als.web.wsgi"],
]

# What a module builds for its own annotations (``T = TypeVar("T")``): typing machinery, not API,
# like the typing names it imports.
TYPE_PARAMETERS = tuple(
    getattr(typing, name) for name in ("TypeVar", "ParamSpec", "TypeVarTuple") if hasattr(typing, name)
)


def public_home(module_name: str) -> str:
    """The public module that code defined in ``module_name`` belongs to: ``als._storage`` -> ``als``."""
    parts = []
    for part in module_name.split("."):
        if part.startswith("_"):
            break
        parts.append(part)
    return ".".join(parts)


def own_public_names(module: types.ModuleType) -> set[str]:
    """The public names ``module`` defines itself, which its __all__ must list.

    A name counts unless it starts with "_", is bound to a module or to
    typing machinery, or is merely imported: bound to an object whose
    ``__module__`` belongs to another public home (the standard library,
    ``typing``'s ``Any``, another als module; a package's own private modules
    are its home). A plain value with no ``__module__`` (a constant) counts.
    """
    names = set()
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, (types.ModuleType, *TYPE_PARAMETERS)):
            continue
        defined_in = getattr(value, "__module__", None)
        if defined_in is None or public_home(defined_in) == module.__name__:
            names.add(name)
    return names


def test_every_public_module_is_checked() -> None:
    """PUBLIC_MODULES names the package and each of its modules, at any depth, with no part starting "_"."""
    found = {
        info.name
        for info in pkgutil.walk_packages(als.__path__, "als.")
        if not any(part.startswith("_") for part in info.name.split("."))
    }
    assert set(PUBLIC_MODULES) == {"als"} | found


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_without_repeats(name: str) -> None:
    """__all__ is a sorted list, each name once."""
    exported = importlib.import_module(name).__all__
    assert sorted(exported) == exported
    assert len(set(exported)) == len(exported)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_matches_the_public_names(name: str) -> None:
    """Every public name the module defines is in __all__, and every name in __all__ exists."""
    module = importlib.import_module(name)
    listed = set(module.__all__)
    assert listed == own_public_names(module) | {n for n in listed if hasattr(module, n)}


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_exported_objects_are_from_als_and_documented(name: str) -> None:
    """Each exported object is defined in a module of als (for als itself, in a private one), and
    documented."""
    module = importlib.import_module(name)
    for exported in module.__all__:
        obj = getattr(module, exported)
        if isinstance(obj, (str, int, float)):  # a constant has no __module__ or __doc__ of its own:
            assert f"``{exported}``" in module.__doc__, exported  # the module's docstring documents it
            continue
        assert obj.__module__ == "als" or obj.__module__.startswith("als."), exported
        assert obj.__doc__, exported


def exported_classes_and_functions(name: str) -> list[tuple[str, type | types.FunctionType]]:
    """(name, object) for each class and function in the module's __all__; nothing else but a
    constant may be exported."""
    module = importlib.import_module(name)
    found = []
    for exported in module.__all__:
        obj = getattr(module, exported)
        if isinstance(obj, (str, int, float)):
            continue
        assert isinstance(obj, (type, types.FunctionType)), exported
        found.append((exported, obj))
    return found


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_exported_objects_report_a_public_module(name: str) -> None:
    """Each exported class and function reports a public module, as trio's do: the one that exports
    it or a package above it (``als``, not ``als._threads``; ``als.web``, not ``als.web._common``),
    which has it under its own name, so help(), reprs and pickles name a path users can import."""
    for exported, obj in exported_classes_and_functions(name):
        home = obj.__module__
        assert not any(part.startswith("_") for part in home.split(".")), (exported, home)
        assert name == home or name.startswith(f"{home}."), (exported, home)
        assert obj.__qualname__ == exported
        assert getattr(importlib.import_module(home), exported) is obj


def test_reprs_and_help_show_the_public_path() -> None:
    """repr() of a class, of a parametrized generic and help()'s heading name ``als.``, no private
    module."""
    import pydoc

    assert repr(als.ContextThread) == "<class 'als.ContextThread'>"
    assert repr(als.ContextThreadPoolExecutor) == "<class 'als.ContextThreadPoolExecutor'>"
    assert repr(als.AsyncLocalStorage[str]) == "als.AsyncLocalStorage[str]"
    assert repr(als.Scope[int]) == "als.Scope[int]"
    for obj in (als.ContextThread, als.Snapshot, als.bind, als.patched):
        heading = pydoc.render_doc(obj, renderer=pydoc.plaintext).splitlines()[0]
        assert heading.endswith(" in module als"), heading
    assert "als._" not in pydoc.render_doc(als.bind, renderer=pydoc.plaintext)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_exported_objects_pickle_by_their_public_path(name: str) -> None:
    """Classes and functions pickle by reference (``als.run_captured`` sent to a process pool, a
    class inside a pickled partial): each round-trips to the same object, through its public
    module's name."""
    for exported, obj in exported_classes_and_functions(name):
        data = pickle.dumps(obj)
        assert pickle.loads(data) is obj, exported
        assert obj.__module__.encode() in data
        assert b"._" not in data, exported


def test_the_package_binds_nothing_public_but_its_exports() -> None:
    """Stricter for the package itself, which only gathers its private modules' exports: every
    public attribute but a module is in __all__, with no exception for typing names."""
    public = {
        name
        for name, value in vars(als).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(als.__all__) == public


def test_version() -> None:
    """__version__ is a release string."""
    assert isinstance(als.__version__, str)
    assert als.__version__.count(".") == 2


def test_py_typed_is_shipped() -> None:
    """py.typed marks the package as typed for type checkers."""
    assert importlib.resources.files("als").joinpath("py.typed").is_file()


def test_a_keyword_named_like_a_wrappers_own_parameter_reaches_fn() -> None:
    """Every wrapper takes its own parameters positional-only, ``self`` included, so keywords named
    self, fn, store or executor reach the wrapped function."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    def echo(**kwargs: object) -> dict[str, object]:
        return kwargs

    names = {"self": 1, "fn": 2, "store": 3, "executor": 4}
    storage: als.AsyncLocalStorage[object] = als.AsyncLocalStorage()
    assert als.bind(echo)(**names) == names
    assert als.snapshot()(echo, **names) == names
    assert storage.run("A", echo, **names) == names
    assert storage.exit(echo, **names) == names
    with als.ContextThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(echo, **names).result(10) == names
    with ThreadPoolExecutor(max_workers=1) as plain:
        assert als.wrap_executor(plain).submit(echo, **names).result(10) == names

    async def main() -> object:
        return await als.run_in_executor(None, echo, **names)

    assert asyncio.run(main()) == names
