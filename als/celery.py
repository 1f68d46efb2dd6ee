"""Carried stores through Celery: each task sees the carried stores of the code that published it.

``undo = als.celery.install(app)``, in the publishing processes and in the
workers (the module that makes the app is imported by both). Then:

* Publishing (``delay``, ``apply_async``, ``retry``, canvas) adds the
  carried storages' current stores (``als.capture()``) to the message as one
  header, ``als_carried`` (``HEADER``). Outside any request it is left out.
  Headers travel as JSON: a carried store JSON cannot encode is a
  ``TypeError`` at publish, naming the storage; nothing is sent.
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

Works with the prefork, threads and solo pools. Celery is never imported by
``import als`` nor by ``import als.celery``, only by ``install``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from ._carry import accepted, capture, carried_storages
from ._util import wrong_type

__all__ = ["HEADER", "install"]

HEADER = "als_carried"  # the message header that carries the stores: a JSON object {name: store}


def install(app: Any) -> Callable[[], None]:
    """Carry the carried storages' stores from publisher to task for ``app``; return ``undo()``.

    Publishing: ``app``'s own message sender (``app.amqp.send_task_message``)
    is wrapped, so a store that cannot be sent fails the publish itself with
    a ``TypeError`` naming the storage (a signal handler's error would be
    logged and swallowed). Workers: handlers on Celery's ``task_prerun``
    and ``task_postrun`` signals, acting only for ``app``'s tasks.
    ``undo()`` removes all three; calling it again does nothing.

    Raises:
        TypeError: ``app`` is not a Celery application, or ``install`` was
            called for it already (undo that one first).
    """
    from celery import Celery, signals  # noqa: PLC0415 - optional: only when installing

    if not isinstance(app, Celery):
        raise wrong_type("install", "app", "a celery.Celery application", app)
    amqp = app.amqp
    send = amqp.send_task_message
    if getattr(send, "_als_installed", False):
        raise TypeError("install() was called for this app already; call its undo() first")
    uid = f"als.celery:{id(app)}"
    # task id -> the scopes set for it, in this process (a thread pool runs several at once).
    active: dict[str, list[Any]] = {}
    active_lock = threading.Lock()

    def send_task_message(producer: Any, name: str, message: Any, *args: Any, **kwargs: Any) -> Any:
        # Message headers travel as JSON whatever the body's serializer (Redis, SQS), so: json=True.
        captured = capture(json=True)
        headers = message.headers
        if captured:
            headers[HEADER] = captured
        else:
            headers.pop(HEADER, None)  # a retry re-sends the request's headers: outside any request now
        return send(producer, name, message, *args, **kwargs)

    send_task_message._als_installed = True  # type: ignore[attr-defined]

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

    amqp.send_task_message = send_task_message
    signals.task_prerun.connect(prerun, weak=False, dispatch_uid=uid)
    signals.task_postrun.connect(postrun, weak=False, dispatch_uid=uid)
    undone = False

    def undo() -> None:
        nonlocal undone
        if undone:
            return
        undone = True
        if vars(amqp).get("send_task_message") is send_task_message:
            amqp.send_task_message = send
        signals.task_prerun.disconnect(dispatch_uid=uid)
        signals.task_postrun.disconnect(dispatch_uid=uid)

    return undo
