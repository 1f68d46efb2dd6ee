"""A Flask app whose responses and log lines carry each request's id.

Serve it (from this directory), then send it a request:

    flask --app flask_app run               # or: gunicorn -c gunicorn.conf.py flask_app:app
    curl -i -H 'X-Request-ID: abc-123' http://127.0.0.1:5000/order/7
"""

import logging

from flask import Flask

import als
from als.logging import install_record_factory
from als.web import WSGIRequestId

storage = als.AsyncLocalStorage(name="request_id")
install_record_factory(storage, field="request_id", default="-")
logging.basicConfig(level=logging.INFO, format="%(request_id)s %(name)s %(levelname)s %(message)s")
log = logging.getLogger(__name__)

app = Flask(__name__)
app.wsgi_app = WSGIRequestId(app.wsgi_app, storage)  # app stays a Flask app: flask run, app.run() work


@app.get("/order/<order>")
def order(order: str) -> str:
    log.info("order %s received", order)
    return f"order {order}: done\n"
