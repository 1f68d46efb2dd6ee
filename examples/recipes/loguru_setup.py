"""loguru with each request's id in every record, on a pool's thread too: python loguru_setup.py."""

import sys
from concurrent.futures import ThreadPoolExecutor

from loguru import logger

import als
from als.logging import loguru_patcher

storage = als.AsyncLocalStorage(name="request_id")
logger.configure(
    handlers=[{"sink": sys.stdout, "format": "{extra[request_id]} {level} {message}"}],
    patcher=loguru_patcher(storage),
)
als.patch()  # so that plain thread pools, and threads, carry the id


def handle(order: str) -> None:
    logger.info("order {} received", order)
    with ThreadPoolExecutor() as pool:
        pool.submit(logger.info, "card charged for {}", order).result()


logger.info("starting")
storage.run("req-7f3a", handle, "order-1")
storage.run("req-9b21", handle, "order-2")
