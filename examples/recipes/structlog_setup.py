"""structlog with each request's id in every event, on a pool's thread too: python structlog_setup.py."""

from concurrent.futures import ThreadPoolExecutor

import structlog

import als
from als.logging import structlog_processor

storage = als.AsyncLocalStorage(name="request_id")
structlog.configure(
    processors=[
        structlog.processors.add_log_level,
        structlog_processor(storage),  # before the renderer
        structlog.processors.KeyValueRenderer(key_order=["request_id", "level", "event"]),
    ]
)
als.patch()  # so that plain thread pools, and threads, carry the id
log = structlog.get_logger()


def handle(order: str) -> None:
    log.info("order received", order=order)
    with ThreadPoolExecutor() as pool:
        pool.submit(log.info, "card charged", order=order).result()


log.info("starting")
storage.run("req-7f3a", handle, "order-1")
storage.run("req-9b21", handle, "order-2")
