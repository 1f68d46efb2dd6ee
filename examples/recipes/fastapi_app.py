"""A FastAPI app behind ASGIRequestId, outermost: every response carries its request's id, a 500 too.

Serve it (from this directory), then send it a request:

    uvicorn fastapi_app:app --log-config uvicorn_logging.json
    curl -i -H 'X-Request-ID: abc-123' http://127.0.0.1:8000/order/7
"""

import logging

from fastapi import FastAPI

import als
from als.web import ASGIRequestId

storage = als.AsyncLocalStorage(name="request_id")
log = logging.getLogger(__name__)
api = FastAPI()


@api.get("/order/{order}")
async def order(order: str) -> dict[str, str]:
    log.info("order %s received", order)
    return {"order": order}


@api.get("/report/{name}")
def report(name: str) -> dict[str, str]:  # a sync endpoint: FastAPI runs it on its thread pool
    log.info("report %s built", name)
    return {"report": name}


@api.get("/boom")
async def boom() -> None:
    log.info("about to fail")
    raise RuntimeError("boom")


app = ASGIRequestId(api, storage)
