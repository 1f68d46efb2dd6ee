"""Carried storages and the functions that worker processes run, for the carry tests and peers.

Imported by worker processes too (spawn and interpreter pools import it to
unpickle the functions), so it imports nothing but als: each process that
imports it registers the carried storages ``request_id`` and ``tenant``
once.
"""

from __future__ import annotations

import os

import als
from als.web import is_valid_request_id

request_id: als.AsyncLocalStorage[str | None] = als.AsyncLocalStorage(
    "request_id", carry=True, validator=is_valid_request_id
)
tenant: als.AsyncLocalStorage[dict[str, str] | None] = als.AsyncLocalStorage("tenant", carry=True)
local: als.AsyncLocalStorage[str | None] = als.AsyncLocalStorage("local")  # never carried

Seen = tuple[object, object, object]


def seen(_: object = None) -> Seen:
    """The three stores as a worker sees them: (request_id, tenant, local)."""
    return request_id.get_store(), tenant.get_store(), local.get_store()


def seen_with_pid(_: object = None) -> tuple[int, Seen]:
    return os.getpid(), seen()


def seen_pair(a: object, b: object) -> Seen:
    """For starmap: two arguments."""
    return seen()


def set_and_see(_: object = None) -> Seen:
    """Sets every storage in the worker, then reports: what a task sets must not reach the next."""
    before = seen()
    request_id.enter_with("set-by-task")
    local.enter_with("set-by-task")
    return before


def in_request(rid: str, fn: object, *args: object, tenant_name: str | None = None) -> object:
    """Call ``fn(*args)`` in request ``rid`` (with tenant and a local store), as a handler would."""

    def handler() -> object:
        local.enter_with(f"local-{rid}")
        return fn(*args)  # type: ignore[operator]

    def with_request() -> object:
        return tenant.run({"name": tenant_name or f"t-{rid}"}, handler)

    return request_id.run(rid, with_request)
