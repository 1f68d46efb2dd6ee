"""The current store in every log line: a logging filter, a record factory, structlog and loguru.

Each reads ``storage.get_store()`` when the record is made, in the thread
that logs, and writes it to one field (``request_id`` by default):

* ``%(request_id)s`` works in any ``logging.Formatter``; outside a request
  (whenever ``get_store()`` returns the storage's own default) the field is
  the given ``default`` (``"-"``), so a format string never raises. Any other
  store is written as it is, falsy ones (``""``, ``0``) included.
* A field the record already carries (from an earlier factory or filter, or
  ``extra=``) is never overwritten.
* ``install_record_factory`` stacks on whatever factory is installed (several
  storages, OpenTelemetry's logging instrumentation), and each ``undo()``
  removes only its own, in any order.
* ``QueueHandler``/``QueueListener``: a record keeps the value it was made
  with. A filter on the listener's handlers would run in the listener's
  thread and see no request: use the record factory, or put the filter on
  the ``QueueHandler``.

Uses only als's public API, its shared helpers (``als._util``) and the
standard library; structlog and loguru are never imported.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar

from . import AsyncLocalStorage
from ._util import ForkSafeLock, wrong_type

T = TypeVar("T")

__all__ = ["ContextFilter", "install_record_factory", "loguru_patcher", "structlog_processor"]


def _check(function: str, storage: object, field: object) -> None:
    if not isinstance(storage, AsyncLocalStorage):
        raise wrong_type(function, "storage", "an AsyncLocalStorage", storage)
    if not isinstance(field, str) or not field.isidentifier():
        raise ValueError(f"{function}() argument 'field' must be an identifier string, got {field!r}")


def _reader(storage: AsyncLocalStorage[Any], default: object) -> Callable[[], object]:
    """A function returning the current store, or ``default`` where the storage has none."""
    get_store = storage.get_store

    def read() -> object:
        store = get_store()
        return default if store is storage.default else store

    return read


class ContextFilter(logging.Filter):
    """A ``logging.Filter`` that sets ``record.<field>`` to the current store.

    Add it to a handler (``handler.addFilter(...)``): every record that
    handler emits gets the field. On a logger it sees only records logged
    through that very logger, not those of its children (``logging`` runs
    logger filters before propagation), so prefer handlers, or the record
    factory. It runs in the thread that calls the handler: on a
    ``QueueListener``'s handlers it would see the listener's thread, not the
    request (use ``install_record_factory`` there, or put the filter on the
    ``QueueHandler``). It never drops a record and never overwrites a field
    the record already carries.

    Raises:
        TypeError: ``storage`` is not an ``AsyncLocalStorage``.
        ValueError: ``field`` is not an identifier.
    """

    def __init__(
        self, storage: AsyncLocalStorage[Any], field: str = "request_id", default: object = "-"
    ) -> None:
        _check("ContextFilter", storage, field)
        super().__init__()
        self.storage = storage
        self.field = field
        self.default = default
        self._read = _reader(storage, default)

    def filter(self, record: logging.LogRecord) -> bool:
        if not dict.__contains__(record.__dict__, self.field):
            record.__dict__[self.field] = self._read()
        return True


_MAKE_RECORD = logging.Logger.makeRecord.__code__


class _RecordDict(dict[str, Any]):
    """A ``LogRecord.__dict__`` in which fields written by a record factory give way to ``extra=``.

    ``Logger.makeRecord`` refuses ``extra`` keys already present
    (``KeyError: Attempt to overwrite``). Asked by ``makeRecord`` itself,
    ``in`` answers False for a field that still holds the value a factory
    gave it; asked by anyone else, it answers as a plain dict does. Pickled,
    it is a plain dict, so a receiving process needs no als.
    """

    __slots__ = ("_from_factory",)

    def __init__(self, items: dict[str, Any]) -> None:
        super().__init__(items)
        self._from_factory: dict[str, object] = {}

    def __contains__(self, key: object) -> bool:
        if not dict.__contains__(self, key):
            return False
        # Hidden only while it holds the factory's value, and only from makeRecord's extra= check.
        return not (
            key in self._from_factory
            and dict.__getitem__(self, key) is self._from_factory[key]
            and sys._getframe(1).f_code is _MAKE_RECORD
        )

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return dict, (dict(self),)


class _RecordFactory:
    """One link of the record-factory chain; ``undo()`` unlinks it or, if covered, makes it inert."""

    def __init__(
        self, field: str, read: Callable[[], object], previous: Callable[..., logging.LogRecord]
    ) -> None:
        self.field = field
        self.read = read
        self.previous = previous
        self.active = True

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        if self.active:
            fields = record.__dict__
            if not dict.__contains__(fields, self.field):
                if type(fields) is not _RecordDict:
                    fields = _RecordDict(fields)
                    record.__dict__ = fields
                value = self.read()
                dict.__setitem__(fields, self.field, value)
                fields._from_factory[self.field] = value
        return record


_factory_lock = ForkSafeLock()


def install_record_factory(
    storage: AsyncLocalStorage[Any], field: str = "request_id", default: object = "-"
) -> Callable[[], None]:
    """Give every ``LogRecord`` made from now on a ``<field>`` with the store current where it is made.

    Process-wide (``logging.setLogRecordFactory``), on top of the factory
    installed now. The value is read when the record is made, in the thread
    that logs, so it survives a ``QueueHandler``/``QueueListener`` hop.
    ``extra={field: ...}`` still wins (and raises no ``KeyError``).

    Returns:
        ``undo()``: removes this factory and nothing else, whatever was
        installed after it; calling it again does nothing.

    Raises:
        TypeError: ``storage`` is not an ``AsyncLocalStorage``.
        ValueError: ``field`` is not an identifier.
    """
    _check("install_record_factory", storage, field)
    with _factory_lock:
        factory = _RecordFactory(field, _reader(storage, default), logging.getLogRecordFactory())
        logging.setLogRecordFactory(factory)

    def undo() -> None:
        with _factory_lock:
            factory.active = False
            # Unlink from the top every inert als factory; one covered by a
            # foreign factory stays in the chain as a pass-through.
            current = logging.getLogRecordFactory()
            while isinstance(current, _RecordFactory) and not current.active:
                current = current.previous
            logging.setLogRecordFactory(current)

    return undo


def structlog_processor(
    storage: AsyncLocalStorage[Any], field: str = "request_id", default: object = "-"
) -> Callable[[Any, str, MutableMapping[str, Any]], MutableMapping[str, Any]]:
    """A structlog processor adding ``<field>`` (the current store) to each event dict.

    Put it in ``structlog.configure(processors=[...])`` before the renderer.
    A key the event already has (``log.info("x", request_id=...)``,
    ``bind_contextvars``) is kept.

    Raises:
        TypeError: ``storage`` is not an ``AsyncLocalStorage``.
        ValueError: ``field`` is not an identifier.
    """
    _check("structlog_processor", storage, field)
    read = _reader(storage, default)

    def add_store(
        logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if field not in event_dict:
            event_dict[field] = read()
        return event_dict

    return add_store


def loguru_patcher(
    storage: AsyncLocalStorage[Any], field: str = "request_id", default: object = "-"
) -> Callable[[Any], None]:
    """A loguru patcher adding ``<field>`` (the current store) to ``record["extra"]``.

    Use ``logger.configure(patcher=...)`` or ``logger.patch(...)``; format
    with ``{extra[request_id]}``. A key already in ``extra``
    (``logger.bind``, ``contextualize``) is kept.

    Raises:
        TypeError: ``storage`` is not an ``AsyncLocalStorage``.
        ValueError: ``field`` is not an identifier.
    """
    _check("loguru_patcher", storage, field)
    read = _reader(storage, default)

    def patch_record(record: Any) -> None:
        extra = record["extra"]
        if field not in extra:
            extra[field] = read()

    return patch_record
