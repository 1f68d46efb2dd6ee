"""The public surface: __all__ is exactly what als exports, and the package is typed."""

from __future__ import annotations

import importlib.resources
import types

import als


def test_all_matches_the_public_names() -> None:
    """Every public attribute of als is in __all__, and every name in __all__ exists."""
    public = {
        name
        for name, value in vars(als).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(als.__all__) == public
    assert sorted(als.__all__) == als.__all__


def test_public_objects_say_they_are_from_als() -> None:
    """Each exported object is defined in a private module of als, and documented."""
    for name in als.__all__:
        obj = getattr(als, name)
        assert obj.__module__.startswith("als."), name
        assert obj.__doc__, name


def test_version() -> None:
    """__version__ is a release string."""
    assert isinstance(als.__version__, str)
    assert als.__version__.count(".") == 2


def test_py_typed_is_shipped() -> None:
    """py.typed marks the package as typed for type checkers."""
    assert importlib.resources.files("als").joinpath("py.typed").is_file()


def test_a_keyword_named_like_a_wrappers_own_parameter_reaches_fn() -> None:
    """Regression (#12): every wrapper takes its own parameters positional-only, ``self`` included,
    so keywords named self, fn, store or executor reach the wrapped function."""
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
