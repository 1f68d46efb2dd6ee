"""Carried stores through Celery: each task sees the carried stores of the code that published it.

``undo = als.celery.install(app)``, in the publishing processes and in the
workers (the module that makes the app is imported by both). Then:

* Publishing (``delay``, ``apply_async``, ``retry``, canvas) adds the
  carried storages' current stores (``als.capture()``) to the message as one
  header, ``als_carried``. Outside any request that header is left out.
* In the worker, before each task runs, every carried storage is set to the
  store the message carried, or to its default if it carried none: a task
  published outside any request sees the defaults, never the previous
  task's stores, also when an earlier task's clean-up never ran. After the
  task (success, failure or retry) each is put back as it was. The task's
  own signal handlers (``task_failure``, ``task_retry``, ``task_success``)
  run while the stores are set.
* Tasks published by a task (nested, retries, ``countdown``/``eta``) carry
  the stores current in that task.
* The header comes from the broker: it is untrusted. A header that is not a
  mapping is ignored; names no carried storage has are ignored; a store
  that its storage's ``validator`` refuses is dropped (the storage is at its
  default in that task). Give a request-id storage a validator
  (``als.web.is_valid_request_id``).
* Eagerly applied tasks (``task_always_eager``, ``apply()``) run in the
  caller's context as they are: nothing is set or reset.

Works with the prefork, threads and solo pools. With Celery's default JSON
serializer, a carried store that JSON cannot encode is a ``TypeError`` at
publish, naming the storage. Celery is never imported by ``import als``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from ._carry import accepted, capture, carried_storages
from ._util import wrong_type

__all__ = ["HEADER", "install"]

HEADER = "als_carried"
"""The message header that carries the stores: a JSON object {storage name: store}."""


def install(app: Any) -> Callable[[], None]:
    """Carry the carried storages' stores from publisher to task for ``app``; return ``undo()``.

    Connects handlers to Celery's ``before_task_publish``, ``task_prerun``
    and ``task_postrun`` signals (process-wide, as Celery's signals are);
    the worker side acts only for ``app``'s tasks. ``undo()`` disconnects
    them; calling it again does nothing. Installing twice for one app
    connects once.

    Raises:
        TypeError: ``app`` is not a Celery application.
    """
    from celery import Celery, signals  # noqa: PLC0415 - optional: only when installing

    if not isinstance(app, Celery):
        raise wrong_type("install", "app", "a celery.Celery application", app)
    as_json = app.conf.task_serializer == "json"
    uid = f"als.celery:{id(app)}"
    # task id -> the scopes set for it, in this process (a thread pool runs several at once).
    active: dict[str, list[Any]] = {}
    active_lock = threading.Lock()

    def publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
        if headers is not None:
            captured = capture(json=as_json)
            if captured:
                headers[HEADER] = captured
            else:
                headers.pop(HEADER, None)  # a retry re-sends the request's headers: outside any request now

    def prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if task is None or task_id is None or task.app is not app or task.request.is_eager:
            return
        header = getattr(task.request, HEADER, None)
        stores = dict(accepted(header)) if isinstance(header, Mapping) else {}
        scopes = [storage.scope(stores.get(storage, storage.default)) for storage in carried_storages()]
        for scope in scopes:
            scope.__enter__()
        with active_lock:
            active[task_id] = scopes

    def postrun(task_id: str | None = None, **_: Any) -> None:
        with active_lock:
            scopes = active.pop(task_id, None) if task_id is not None else None
        for scope in reversed(scopes or ()):
            scope.__exit__(None, None, None)

    handlers = (
        (signals.before_task_publish, publish),
        (signals.task_prerun, prerun),
        (signals.task_postrun, postrun),
    )
    for signal, handler in handlers:
        signal.connect(handler, weak=False, dispatch_uid=uid)

    def undo() -> None:
        for signal, _handler in handlers:
            signal.disconnect(dispatch_uid=uid)

    return undo
