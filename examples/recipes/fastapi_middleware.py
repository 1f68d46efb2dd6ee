"""A FastAPI app with ASGIRequestId added through add_middleware, inside FastAPI's error handling.

Responses carry the id, except the exception handler's 500 (it goes out past the
middleware); the handler's log lines, and uvicorn's traceback, still carry it.
Serve it with uvicorn_logging.json's "storage" set to "ext://fastapi_middleware.storage":

    uvicorn fastapi_middleware:app --log-config uvicorn_logging.json
"""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

import als
from als.web import ASGIRequestId

storage = als.AsyncLocalStorage(name="request_id")
log = logging.getLogger(__name__)


async def server_error(request: Request, exc: Exception) -> PlainTextResponse:
    log.error("failed: %r", exc)
    return PlainTextResponse("something went wrong\n", status_code=500)


app = FastAPI(exception_handlers={Exception: server_error})
app.add_middleware(ASGIRequestId, storage=storage)


@app.get("/order/{order}")
async def order(order: str) -> dict[str, str]:
    log.info("order %s received", order)
    return {"order": order}


@app.get("/report/{name}")
def report(name: str) -> dict[str, str]:  # a sync endpoint: FastAPI runs it on its thread pool
    log.info("report %s built", name)
    return {"report": name}


@app.get("/boom")
async def boom() -> None:
    log.info("about to fail")
    raise RuntimeError("boom")
