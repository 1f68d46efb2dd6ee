"""Carried storages: capture()/run_captured(), and process pools under wrap_executor and the patch."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import pickle
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import pytest

import als
from als._carry import CarriedCall

from . import carry_tasks
from .carry_tasks import in_request, local, request_id, seen, tenant
from .helpers import TIMEOUT, run_child


def expected(label: str) -> list[object]:
    """What a task labelled ``label`` by tests/carry_peer.py must have seen."""
    if label == "-":
        return [None, None, None]
    return [label, {"name": f"t-{label}"}, None]


class TestStorageArguments:
    def test_carry_needs_a_name(self) -> None:
        with pytest.raises(ValueError, match=r"carry=True needs a name"):
            als.AsyncLocalStorage(carry=True)

    def test_carried_names_are_unique_while_the_storage_lives(self) -> None:
        """A second carried storage under a live one's name is refused; once the first is gone, the
        name is free; non-carried storages may share any name."""
        first: als.AsyncLocalStorage[str] = als.AsyncLocalStorage("unique-test", carry=True)
        with pytest.raises(ValueError, match=r"carried storage named 'unique-test' exists already"):
            als.AsyncLocalStorage("unique-test", carry=True)
        als.AsyncLocalStorage("unique-test")  # not carried: no constraint
        assert first.carry
        del first
        gc.collect()
        again: als.AsyncLocalStorage[str] = als.AsyncLocalStorage("unique-test", carry=True)
        assert again.carry

    def test_bad_arguments(self) -> None:
        with pytest.raises(TypeError, match=r"argument 'carry' must be bool, not int$"):
            als.AsyncLocalStorage("x", carry=1)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match=r"argument 'validator' must be callable or None, not str$"):
            als.AsyncLocalStorage("x", validator="yes")  # type: ignore[call-overload]

    def test_properties(self) -> None:
        assert request_id.carry
        assert request_id.validator is not None
        assert not local.carry
        assert local.validator is None
        assert request_id.accepts("abc-123")
        assert not request_id.accepts("bad id\r\n")


class TestCapture:
    def test_outside_any_request_it_is_empty(self) -> None:
        assert als.capture() == {}

    def test_only_carried_storages_with_a_store(self) -> None:
        """Carried storages with a store, by name; not the local one, nor a carried one at its default."""
        assert in_request("A", als.capture) == {"request_id": "A", "tenant": {"name": "t-A"}}
        assert request_id.run("B", als.capture) == {"request_id": "B"}
        assert local.run("x", als.capture) == {}

    def test_an_unpicklable_store_fails_at_the_capture_naming_the_storage(self) -> None:
        secret = threading.Lock()
        with pytest.raises(TypeError, match=r"carried storage 'tenant' cannot be pickled") as info:
            tenant.run(secret, als.capture)  # type: ignore[arg-type]
        assert repr(secret) not in str(info.value)

    def test_json_on_demand(self) -> None:
        """json=True: a store pickle takes but JSON does not is refused, naming the storage."""
        store: Any = {"when": {1, 2}}
        assert tenant.run(store, als.capture)["tenant"] is store  # picklable: fine
        with pytest.raises(TypeError, match=r"carried storage 'tenant' is not JSON-serialisable"):
            tenant.run(store, als.capture, json=True)


class TestRunCaptured:
    def test_exactly_the_captured_stores_in_a_new_context(self) -> None:
        """Only the captured stores are current: every other storage and ContextVar is at its default,
        whatever the caller had; nothing the call sets leaks out."""
        var: contextvars.ContextVar[str] = contextvars.ContextVar("other", default="default")
        captured = in_request("A", als.capture)

        def call() -> tuple[object, ...]:
            result = (*seen(), var.get())
            request_id.enter_with("changed")
            var.set("changed")
            return result

        def caller() -> tuple[object, ...]:
            var.set("caller's")
            result = in_request("B", als.run_captured, captured, call)
            assert (*in_request("B", seen), var.get()) == ("B", {"name": "t-B"}, "local-B", "caller's")
            return result  # type: ignore[no-any-return]

        assert contextvars.copy_context().run(caller) == ("A", {"name": "t-A"}, None, "default")
        assert seen() == (None, None, None)

    def test_untrusted_input(self) -> None:
        """Unknown names and non-str keys are ignored; a store the validator refuses, or that makes it
        raise, is dropped (its storage keeps its default) and never echoed."""
        hostile = "bad\r\nSet-Cookie: x"
        captured: dict[Any, Any] = {"request_id": hostile, "tenant": {"name": "t"}, "nope": 1, 7: "x"}
        assert als.run_captured(captured, seen) == (None, {"name": "t"}, None)

        def refuse(value: object) -> bool:
            raise ValueError(f"refused {value!r}")

        picky: als.AsyncLocalStorage[str] = als.AsyncLocalStorage("picky", carry=True, validator=refuse)
        assert als.run_captured({"picky": "x"}, picky.get_store) is None

    def test_bad_arguments(self) -> None:
        with pytest.raises(
            TypeError, match=r"argument 'captured' must be a dict made by als.capture\(\), not list"
        ):
            als.run_captured([], seen)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"argument 'fn' must be callable, not int$"):
            als.run_captured({}, 42)  # type: ignore[arg-type]

    def test_a_coroutine_runs_in_the_captured_stores(self) -> None:
        async def handler() -> object:
            await asyncio.sleep(0)
            return request_id.get_store()

        async def main() -> tuple[object, object]:
            result = await als.run_captured({"request_id": "A"}, handler)
            return result, request_id.get_store()

        assert asyncio.run(main()) == ("A", None)

    def test_carried_call_pickles_by_value(self) -> None:
        carried = in_request("A", lambda: CarriedCall(als.capture(), seen))
        again = pickle.loads(pickle.dumps(carried))
        assert again() == ("A", {"name": "t-A"}, None)
        assert "request_id" in repr(again)


class TestProcessPools:
    """Each scenario runs in a child process (tests/carry_peer.py): forking pools stay away from this
    suite's threads and sockets. Every task's three stores are checked."""

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    @pytest.mark.parametrize("scenario", ["wrap", "patch-executor", "patch-pool", "concurrent"])
    def test_every_task_sees_its_submitters_carried_stores_only(self, scenario: str, method: str) -> None:
        """wrap_executor(ProcessPoolExecutor) and, under the patch, ProcessPoolExecutor and
        multiprocessing.Pool (made at import, lazily in a request, with re-created workers), and 40
        concurrent requests on one shared pool: each task sees the carried stores of the request that
        submitted it, the defaults outside any request, never a local store, and nothing an earlier
        task set."""
        results = run_child("carry_peer", scenario, method)
        assert len(results) >= 7
        assert [observed for _, observed in results] == [expected(label) for label, _ in results]

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_without_wrapper_or_patch_nothing_is_carried(self, method: str) -> None:
        """The problem shown: a plain process pool carries nothing; a forked one leaks the forking
        request's whole context (local store included) into every later task."""
        results = dict(run_child("carry_peer", "unpatched", method))
        if method == "fork":
            assert results == {
                "first": ["A", {"name": "t-A"}, "local-A"],
                "later": ["A", {"name": "t-A"}, "local-A"],
            }
        else:
            assert results == {"first": [None, None, None], "later": [None, None, None]}

    def test_an_unpicklable_store_fails_at_submit(self) -> None:
        """The hand-off raises, naming the storage; nothing is submitted."""
        with ProcessPoolExecutor(max_workers=1) as pool:
            wrapped = als.wrap_executor(pool)
            with pytest.raises(TypeError, match=r"carried storage 'tenant' cannot be pickled"):
                tenant.run(threading.Lock(), wrapped.submit, seen)  # type: ignore[arg-type]

    def test_wrap_executor_accepts_a_process_pool(self) -> None:
        pool = ProcessPoolExecutor(max_workers=1)
        wrapped = als.wrap_executor(pool)
        assert wrapped is not pool
        assert als.wrap_executor(wrapped) is wrapped
        wrapped.shutdown()


class TestThreadPoolOfMultiprocessing:
    def test_a_thread_pool_task_runs_in_a_copy_of_the_whole_context(self) -> None:
        """multiprocessing.pool.ThreadPool under the patch: every storage, carried or not, as any thread
        hop; what a task sets stays in it."""
        with als.patched(), ThreadPool(1) as pool:
            assert in_request("A", pool.apply, seen) == ("A", {"name": "t-A"}, "local-A")
            assert in_request("B", pool.map, carry_tasks.set_and_see, [1]) == [
                ("B", {"name": "t-B"}, "local-B")
            ]
            assert pool.apply(seen) == (None, None, None)


@pytest.mark.skipif(sys.version_info < (3, 14), reason="InterpreterPoolExecutor is new in 3.14")
class TestInterpreterPools:
    def test_carried_stores_reach_another_interpreter(self) -> None:
        """wrap_executor(InterpreterPoolExecutor), and a plain one under the patch: each task sees its
        submitter's carried stores, and no local store."""
        from concurrent.futures import InterpreterPoolExecutor  # type: ignore[attr-defined]

        # A new interpreter starts with the process's initial sys.path: like a spawned worker, it must
        # be able to import the storages' module (tests.carry_tasks) to unpickle the task.
        root = str(Path(carry_tasks.__file__).resolve().parent.parent)
        path_setup = f"import sys; sys.path.insert(0, {root!r})"
        with InterpreterPoolExecutor(max_workers=1, initializer=exec, initargs=(path_setup,)) as pool:
            wrapped = als.wrap_executor(pool)
            assert in_request("A", lambda: wrapped.submit(seen).result(TIMEOUT)) == (
                "A",
                {"name": "t-A"},
                None,
            )
            assert in_request("B", lambda: list(wrapped.map(seen, [1]))) == [("B", {"name": "t-B"}, None)]
            with als.patched():
                assert in_request("C", lambda: pool.submit(seen).result(TIMEOUT)) == (
                    "C",
                    {"name": "t-C"},
                    None,
                )
                assert pool.submit(seen).result(TIMEOUT) == (None, None, None)
