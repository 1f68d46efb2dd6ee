"""als.logging: the current store in every log record, from every hop; structlog and loguru adapters."""

from __future__ import annotations

import asyncio
import io
import logging
import logging.handlers
import pickle
import queue
import threading
from collections.abc import Iterator
from typing import Any

import loguru
import pytest
import structlog

import als
from als import AsyncLocalStorage
from als.logging import ContextFilter, install_record_factory, loguru_patcher, structlog_processor

from .helpers import TIMEOUT, join_all


class ListHandler(logging.Handler):
    """Keeps every record it handles, and the formatted line."""

    def __init__(self, fmt: str = "%(request_id)s %(message)s") -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter(fmt))
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)
            self.lines.append(self.format(record))


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A private logger that does not propagate to the root logger."""
    log = logging.getLogger(f"als-test-{id(object())}")
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
    for log_filter in list(log.filters):
        log.removeFilter(log_filter)


@pytest.fixture
def factory_untouched() -> Iterator[None]:
    """Every test leaves the record factory as it found it."""
    before = logging.getLogRecordFactory()
    yield
    assert logging.getLogRecordFactory() is before


def lines_by_message(handler: ListHandler) -> dict[str, str]:
    return {record.getMessage(): line for record, line in zip(handler.records, handler.lines, strict=True)}


class TestContextFilter:
    def test_field_from_the_store_and_default_outside(
        self, storage: AsyncLocalStorage[object], logger: logging.Logger
    ) -> None:
        """%(request_id)s is the store inside a run and the default outside; the format never raises."""
        handler = ListHandler()
        handler.addFilter(ContextFilter(storage, field="request_id", default="-"))
        logger.addHandler(handler)
        logger.info("outside")
        storage.run("A", logger.info, "inside")
        storage.run("", logger.info, "empty string")
        storage.run(0, logger.info, "zero")
        assert handler.lines == ["- outside", "A inside", " empty string", "0 zero"]

    def test_every_hop(self, storage: AsyncLocalStorage[object], logger: logging.Logger) -> None:
        """Records logged from pool workers, threads, timers, tasks and run_in_executor carry their id."""
        handler = ListHandler()
        handler.addFilter(ContextFilter(storage))
        logger.addHandler(handler)

        async def task(n: int) -> None:
            await asyncio.sleep(0)
            logger.info("task %d", n)
            await als.run_in_executor(None, logger.info, "executor %d", n)

        async def tasks() -> None:
            await asyncio.gather(*(storage.run(f"T{n}", task, n) for n in range(2)))

        with als.ContextThreadPoolExecutor(max_workers=2) as pool:
            for n in range(3):
                storage.run(f"P{n}", pool.submit, logger.info, "pool %d", n).result(TIMEOUT)
        thread = als.ContextThread(target=logger.info, args=("thread",))
        timer = als.ContextTimer(0, logger.info, ["timer"])
        storage.run("TH", thread.start)
        storage.run("TM", timer.start)
        join_all([thread, timer])
        asyncio.run(tasks())
        assert lines_by_message(handler) == {
            "pool 0": "P0 pool 0",
            "pool 1": "P1 pool 1",
            "pool 2": "P2 pool 2",
            "thread": "TH thread",
            "timer": "TM timer",
            "task 0": "T0 task 0",
            "task 1": "T1 task 1",
            "executor 0": "T0 executor 0",
            "executor 1": "T1 executor 1",
        }

    def test_existing_field_is_kept(self, storage: AsyncLocalStorage[object], logger: logging.Logger) -> None:
        """A field set by extra= or by an earlier filter is not overwritten."""
        handler = ListHandler()
        handler.addFilter(ContextFilter(storage))
        logger.addHandler(handler)
        storage.run("A", logger.info, "extra", extra={"request_id": "from extra"})
        assert handler.lines == ["from extra extra"]

    def test_several_storages_several_fields(self, logger: logging.Logger) -> None:
        """Each storage feeds its own field."""
        request = AsyncLocalStorage[object](name="request")
        tenant = AsyncLocalStorage[object](name="tenant")
        handler = ListHandler("%(request_id)s/%(tenant)s %(message)s")
        handler.addFilter(ContextFilter(request))
        handler.addFilter(ContextFilter(tenant, field="tenant", default="no-tenant"))
        logger.addHandler(handler)

        def in_request_a() -> None:
            def in_tenant_acme() -> None:
                logger.info("both")

            tenant.run("acme", in_tenant_acme)

        request.run("A", in_request_a)
        request.run("B", logger.info, "one")
        assert handler.lines == ["A/acme both", "B/no-tenant one"]

    def test_storage_with_its_own_default(self, logger: logging.Logger) -> None:
        """Whenever get_store() returns the storage's own default, the filter's default is written."""
        storage = AsyncLocalStorage(default="unset")
        handler = ListHandler()
        handler.addFilter(ContextFilter(storage, default="-"))
        logger.addHandler(handler)
        logger.info("outside")
        storage.run("A", logger.info, "inside")
        assert handler.lines == ["- outside", "A inside"]

    def test_bad_arguments(self, storage: AsyncLocalStorage[object]) -> None:
        """A storage that is not one, or a field that is not an identifier, is refused at construction."""
        with pytest.raises(
            TypeError, match=r"ContextFilter\(\) argument 'storage' must be an AsyncLocalStorage"
        ):
            ContextFilter("storage")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"argument 'field' must be an identifier string, got 'a b'"):
            ContextFilter(storage, field="a b")


@pytest.mark.usefixtures("factory_untouched")
class TestRecordFactory:
    def test_field_on_every_record(self, storage: AsyncLocalStorage[object], logger: logging.Logger) -> None:
        """Records made inside a run carry the store; outside, the default."""
        handler = ListHandler()
        logger.addHandler(handler)
        undo = install_record_factory(storage)
        try:
            logger.info("outside")
            storage.run("A", logger.info, "inside")
        finally:
            undo()
        assert handler.lines == ["- outside", "A inside"]

    def test_extra_wins_without_key_error(
        self, storage: AsyncLocalStorage[object], logger: logging.Logger
    ) -> None:
        """extra={'request_id': ...} replaces the factory's value instead of raising KeyError."""
        handler = ListHandler()
        logger.addHandler(handler)
        undo = install_record_factory(storage)
        try:
            storage.run("A", logger.info, "extra", extra={"request_id": "X"})
            with pytest.raises(KeyError, match="Attempt to overwrite 'message'"):
                logger.info("still refused", extra={"message": "no"})
        finally:
            undo()
        assert handler.lines == ["X extra"]

    def test_stacking_and_undo_in_any_order(
        self, storage: AsyncLocalStorage[object], logger: logging.Logger
    ) -> None:
        """Two storages, a foreign factory on top; undoing ours in any order keeps the others."""
        tenant = AsyncLocalStorage[object](name="tenant")
        handler = ListHandler("%(message)s")
        logger.addHandler(handler)
        undo_request = install_record_factory(storage)
        undo_tenant = install_record_factory(tenant, field="tenant")
        below = logging.getLogRecordFactory()

        def foreign(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = below(*args, **kwargs)
            record.foreign = "yes"
            return record

        logging.setLogRecordFactory(foreign)
        try:

            def in_request_a() -> None:
                def in_tenant_acme() -> None:
                    logger.info("x")

                tenant.run("acme", in_tenant_acme)

            def fields() -> dict[str, object]:
                storage.run("A", in_request_a)
                record = handler.records[-1]
                return {k: getattr(record, k, None) for k in ("request_id", "tenant", "foreign")}

            assert fields() == {"request_id": "A", "tenant": "acme", "foreign": "yes"}
            undo_request()  # the bottom one, under two others
            assert fields() == {"request_id": None, "tenant": "acme", "foreign": "yes"}
            undo_request()  # twice: nothing more happens
            assert fields() == {"request_id": None, "tenant": "acme", "foreign": "yes"}
            logging.setLogRecordFactory(below)  # the foreign one leaves
            undo_tenant()
            assert fields() == {"request_id": None, "tenant": None, "foreign": None}
        finally:
            undo_tenant()
            undo_request()

    def test_undo_unlinks_from_the_top(self, storage: AsyncLocalStorage[object]) -> None:
        """Undone in either order, als's factories leave the original factory installed."""
        original = logging.getLogRecordFactory()
        tenant = AsyncLocalStorage[object]()
        first = install_record_factory(storage)
        second = install_record_factory(tenant, field="tenant")
        first()
        assert logging.getLogRecordFactory() is not original  # the second still works
        second()
        assert logging.getLogRecordFactory() is original

    def test_queue_listener_keeps_the_id_of_the_logging_thread(
        self, storage: AsyncLocalStorage[object], logger: logging.Logger
    ) -> None:
        """Through QueueHandler/QueueListener, the factory's id survives; a filter on the listener's
        handler would see the listener's thread (the documented reason to use the factory)."""
        records: queue.Queue[logging.LogRecord] = queue.Queue()
        logger.addHandler(logging.handlers.QueueHandler(records))
        downstream = ListHandler("%(request_id)s|%(seen_by_listener)s %(message)s")
        downstream.addFilter(ContextFilter(storage, field="seen_by_listener"))
        listener = logging.handlers.QueueListener(records, downstream)
        undo = install_record_factory(storage)
        listener.start()
        try:
            with als.ContextThreadPoolExecutor(max_workers=2) as pool:
                for n in range(3):
                    storage.run(f"R{n}", pool.submit, logger.info, "from %d", n).result(TIMEOUT)
        finally:
            listener.stop()
            undo()
        assert sorted(downstream.lines) == ["R0|- from 0", "R1|- from 1", "R2|- from 2"]

    def test_records_cross_pickling(self, storage: AsyncLocalStorage[object]) -> None:
        """A record's field survives the pickling SocketHandler does, and makeLogRecord keeps it."""
        undo = install_record_factory(storage)
        try:
            record = storage.run(
                "A", logging.getLogger("x").makeRecord, "x", logging.INFO, "f", 1, "m", (), None
            )
            received = logging.makeLogRecord(pickle.loads(pickle.dumps(dict(record.__dict__))))
        finally:
            undo()
        assert record.request_id == "A"  # type: ignore[attr-defined]
        assert received.request_id == "A"  # type: ignore[attr-defined]

    def test_the_field_is_visible_to_everyone_but_make_record(
        self, storage: AsyncLocalStorage[object]
    ) -> None:
        """Code that asks `field in record.__dict__` (structlog's ExtraAdder) sees the field; a record
        pickled as is arrives with a plain dict."""
        undo = install_record_factory(storage)
        try:
            record = storage.run(
                "A", logging.getLogger("x").makeRecord, "x", logging.INFO, "f", 1, "m", (), None
            )
        finally:
            undo()
        assert "request_id" in record.__dict__
        received = pickle.loads(pickle.dumps(record))
        assert type(received.__dict__) is dict
        assert received.request_id == "A"

    def test_bad_arguments(self, storage: AsyncLocalStorage[object]) -> None:
        """Bad storage or field: refused before anything is installed."""
        with pytest.raises(TypeError, match="argument 'storage' must be an AsyncLocalStorage, not NoneType"):
            install_record_factory(None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="argument 'field'"):
            install_record_factory(storage, field="")


class TestStructlog:
    def test_processor_adds_the_store(self, storage: AsyncLocalStorage[object]) -> None:
        """The processor adds request_id to each event, from any hop; a key given in the call is kept."""
        out = io.StringIO()
        structlog.configure(
            processors=[structlog_processor(storage), structlog.processors.KeyValueRenderer(sort_keys=True)],
            logger_factory=structlog.PrintLoggerFactory(file=out),
            cache_logger_on_first_use=False,
        )
        try:
            log = structlog.get_logger()
            log.info("outside")
            storage.run("A", log.info, "inside")
            with als.ContextThreadPoolExecutor(max_workers=1) as pool:
                storage.run("B", pool.submit, log.info, "worker").result(TIMEOUT)
            storage.run("C", log.info, "given", request_id="explicit")
        finally:
            structlog.reset_defaults()
        assert out.getvalue().splitlines() == [
            "event='outside' request_id='-'",
            "event='inside' request_id='A'",
            "event='worker' request_id='B'",
            "event='given' request_id='explicit'",
        ]


class TestLoguru:
    def test_patcher_adds_the_store(self, storage: AsyncLocalStorage[object]) -> None:
        """The patcher fills extra[request_id] in the logging thread; a bound value is kept."""
        lines: list[str] = []
        log = loguru.logger.patch(loguru_patcher(storage))
        sink = loguru.logger.add(
            lambda m: lines.append(str(m).rstrip("\n")), format="{extra[request_id]} {message}"
        )
        try:
            log.info("outside")
            storage.run("A", log.info, "inside")
            thread = storage.run("T", als.ContextThread, target=log.info, args=("thread",))
            storage.run("T", thread.start)
            join_all([thread])
            storage.run("B", log.bind(request_id="bound").info, "bound")
        finally:
            loguru.logger.remove(sink)
        assert lines == ["- outside", "A inside", "T thread", "bound bound"]
