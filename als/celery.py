"""Carried stores through Celery: each task sees the carried stores of the code that published it.

``undo = als.celery.install(app)``, right after making the app, in the module
that publishers and workers both import. Then:

* Publishing (``delay``, ``apply_async``, ``retry``, canvas) adds the
  carried storages' current stores (``als.capture()``) to the message as one
  header, ``als_carried`` (``HEADER``), replacing any such header the call
  was given (a retry re-sends its request's headers): outside any request
  there is none. Headers travel as JSON: a carried store JSON cannot encode
  is a ``TypeError`` at publish, naming the storage; nothing is sent.
* In the worker, before each task runs, every carried storage is set to the
  store the message carried, or to its default if it carried none: a task
  published outside any request sees the defaults, never the previous
  task's stores, also when an earlier task's clean-up never ran. After the
  task (success, failure or retry) each is put back as it was. The task's
  signal handlers (``task_failure``, ``task_retry``, ``task_success``) run
  while the stores are set.
* The task body runs in a copy of the worker thread's context: what a task
  sets (any storage, any ``ContextVar``) ends with it and never reaches the
  next task that thread runs. ``install`` gives the app a ``Task`` class of
  its own for that, so it counts for tasks the app makes afterwards: all of
  them when ``install`` comes right after the app, before it is finalized.
* Tasks published by a task (nested, retries, ``countdown``/``eta``) carry
  the stores current in that task.
* The header comes from the broker: it is untrusted. A header that is not a
  mapping is ignored, and so are names no carried storage has. A store is
  dropped (its storage is at its default in that task) unless it is plain
  JSON (``str``, ``int``, ``float``, ``bool``, ``None``, lists and objects of
  them, nested at most 8 deep, 256 values and 1024 characters per string at
  most, no control characters in any string) and its storage's
  ``validator`` takes it. Give a request-id storage a validator
  (``als.web.is_valid_request_id``).
* Eagerly applied tasks (``task_always_eager``, ``apply()``) see the caller's
  stores as they are: nothing is set or reset, and what they set stays in them.

Works with the prefork, threads and solo pools. Celery is never imported by
``import als`` nor by ``import als.celery``, only by ``install``. The storages'
module must be imported by the worker before a task runs (with the tasks'
module, say): a name not yet registered there is ignored.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable, Mapping
from contextvars import copy_context
from typing import Any

from ._carry import accepted, capture, carried_storages
from ._util import ForkSafeLock, wrong_type

__all__ = ["HEADER", "install"]

HEADER = "als_carried"  # the message header that carries the stores: a JSON object {name: store}

# The floor under every validator, for stores that come from a broker.
_MAX_DEPTH = 8
_MAX_VALUES = 256
_MAX_STRING = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]").search


def _plain_json(value: object) -> bool:
    """Whether ``value`` is plain JSON within the bounds above (kombu decodes some objects into others)."""
    budget = [_MAX_VALUES]

    def check(item: object, depth: int) -> bool:
        budget[0] -= 1
        if budget[0] < 0 or depth > _MAX_DEPTH:
            return False
        if isinstance(item, str):
            return len(item) <= _MAX_STRING and _CONTROL(item) is None
        if item is None or type(item) in (int, float, bool):
            return True
        if isinstance(item, list):
            return all(check(x, depth + 1) for x in item)
        if isinstance(item, dict):
            return all(
                isinstance(k, str) and check(k, depth + 1) and check(v, depth + 1) for k, v in item.items()
            )
        return False

    return check(value, 0)


class _Installed:
    """One ``install()`` for one app: its sender, task class and signal handlers, and their switch."""

    def __init__(self, app: Any, signals: Any) -> None:
        self.app = app
        self.signals = signals
        self.active = True
        self.lock = ForkSafeLock()
        # (task id, thread) -> the scopes set for that run of the task.
        self.running: dict[tuple[str, int], list[Any]] = {}
        self.uid = f"als.celery:{id(self)}"
        self.amqp = app.amqp
        # Celery's own sender; made at first publish unless it exists already.
        self.sent_by: Callable[..., Any] | None = vars(self.amqp).get("send_task_message")
        self.base = app.Task
        self.task_class: type = type(
            self.base.__name__, (self.base,), {"__call__": _call_in_copy(self), "__module__": __name__}
        )

    def send_task_message(self, producer: Any, name: str, message: Any, *args: Any, **kwargs: Any) -> Any:
        if self.sent_by is None:
            self.sent_by = self.amqp._create_task_sender()  # as its cached property would
        if self.active:
            # Headers travel as JSON whatever the body's serializer (Redis, SQS): json=True.
            captured = capture(json=True)
            headers = message.headers
            if captured:
                headers[HEADER] = captured
            else:
                headers.pop(HEADER, None)
            given = kwargs.get("headers")
            if given and HEADER in given:  # merged into the message after this: a retry's old header
                kwargs["headers"] = {k: v for k, v in given.items() if k != HEADER}
        return self.sent_by(producer, name, message, *args, **kwargs)

    def prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if not self.active or task is None or task_id is None or task.app is not self.app:
            return
        if task.request.is_eager:
            return
        header = getattr(task.request, HEADER, None)
        stores: dict[Any, Any] = {}
        if isinstance(header, Mapping):
            stores = dict(accepted({name: store for name, store in header.items() if _plain_json(store)}))
        scopes = [storage.scope(stores.get(storage, storage.default)) for storage in carried_storages()]
        for scope in scopes:
            scope.__enter__()
        with self.lock:
            self.running[(task_id, threading.get_ident())] = scopes

    def postrun(self, task_id: str | None = None, **_: Any) -> None:
        # Connected until the last run it set up has ended, also after undo().
        with self.lock:
            scopes = self.running.pop((task_id, threading.get_ident()), None) if task_id else None
            finished = not self.active and not self.running
        for scope in reversed(scopes or ()):
            scope.__exit__(None, None, None)
        if finished:
            self.signals.task_postrun.disconnect(dispatch_uid=self.uid)

    def connect(self) -> None:
        self.amqp.send_task_message = self.send_task_message
        self.app.Task = self.task_class
        self.signals.task_prerun.connect(self.prerun, weak=False, dispatch_uid=self.uid)
        self.signals.task_postrun.connect(self.postrun, weak=False, dispatch_uid=self.uid)

    def undo(self) -> None:
        with self.lock:
            if not self.active:
                return
            self.active = False
            idle = not self.running
        with _installed_lock:
            if _installed.get(self.app) is self:
                del _installed[self.app]
        if vars(self.amqp).get("send_task_message") == self.send_task_message:
            if self.sent_by is not None:
                self.amqp.send_task_message = self.sent_by
            else:
                del self.amqp.send_task_message  # made at first use, as before install()
        if vars(self.app).get("Task") is self.task_class:
            self.app.Task = self.base
        self.signals.task_prerun.disconnect(dispatch_uid=self.uid)
        if idle:
            self.signals.task_postrun.disconnect(dispatch_uid=self.uid)


def _call_in_copy(state: _Installed) -> Callable[..., Any]:
    """The ``__call__`` of ``state``'s task class: the body in a copy of the worker thread's context."""

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        task_class: Any = state.task_class
        call = super(task_class, self).__call__
        if not state.active:
            return call(*args, **kwargs)
        return copy_context().run(call, *args, **kwargs)

    return __call__


_installed: weakref.WeakKeyDictionary[Any, _Installed] = weakref.WeakKeyDictionary()
_installed_lock = ForkSafeLock()


def install(app: Any) -> Callable[[], None]:
    """Carry the carried storages' stores from publisher to task for ``app``; return ``undo()``.

    Publishing: ``app``'s own message sender (``app.amqp.send_task_message``)
    is wrapped, and made when it is first used (so that configuration made
    after ``install`` still counts); a store that cannot be sent fails the
    publish itself (a signal handler's error would be logged and swallowed).
    Workers: handlers on Celery's ``task_prerun`` and ``task_postrun``
    signals, acting only for ``app``'s tasks, and the app's ``Task`` class.
    ``undo()`` switches all of it off (a task running then still has its
    stores put back); calling it again does nothing.

    Raises:
        TypeError: ``app`` is not a Celery application, or ``install`` was
            called for it already (undo that one first).
    """
    from celery import Celery, signals  # noqa: PLC0415 - optional: only when installing

    if not isinstance(app, Celery):
        raise wrong_type("install", "app", "a celery.Celery application", app)
    with _installed_lock:
        if app in _installed:
            raise TypeError("install() was called for this app already; call its undo() first")
        state = _installed[app] = _Installed(app, signals)
    state.connect()
    return state.undo
