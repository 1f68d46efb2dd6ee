"""Celery tasks that log the id of the request that published them.

Start a worker (Redis on 127.0.0.1:6379), then publish from two requests and one nightly job:

    celery -A celery_app worker --loglevel=INFO
    python celery_app.py
"""

from celery import Celery
from celery.utils.log import get_task_logger

import als
import als.celery
from als.logging import install_record_factory
from als.web import is_valid_request_id

app = Celery("celery_app", broker="redis://127.0.0.1:6379/0", backend="redis://127.0.0.1:6379/0")
als.celery.install(app)  # right after making the app, in the module both publishers and workers import
app.conf.worker_task_log_format = "[%(asctime)s: %(levelname)s] %(request_id)s %(task_name)s: %(message)s"

# carry=True: the store travels with each task message; the worker makes this same storage on import.
request_id = als.AsyncLocalStorage("request_id", default="-", carry=True, validator=is_valid_request_id)
install_record_factory(request_id)
log = get_task_logger(__name__)


@app.task
def charge(order: str) -> str:
    log.info("charging %s", order)
    return f"{order} charged for {request_id.get_store()}"


if __name__ == "__main__":
    sent = [request_id.run(rid, charge.delay, order) for rid, order in [("req-a1", "o-1"), ("req-b2", "o-2")]]
    sent.append(charge.delay("nightly"))  # outside any request: the task sees the default, "-"
    for result in sent:
        print(result.get(timeout=10))
