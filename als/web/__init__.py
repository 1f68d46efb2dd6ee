"""Request ids at the edge: WSGI and ASGI middleware that run each request under its id.

``WSGIRequestId(app, storage)`` and ``ASGIRequestId(app, storage)`` take the
caller's ``X-Request-ID`` when it is safe, make one otherwise, run the whole
request with it as ``storage``'s store, and send it back in the response.

Invariants:

* An incoming value is untrusted. It becomes the id only if it passes the
  safety floor (``is_safe_header_value``) and then the validator; a missing
  header is never invalid. A value that fails is dropped: it is never
  echoed, logged, stored, or passed on to the application.
* The application sees the id, and only the id, under the configured header
  name (WSGI environ, ASGI scope), so ``request.headers`` agrees with
  ``storage.get_store()``; the response carries exactly one such header, ours.
* Each request runs in its own copy of the context current when the server
  called the middleware; nothing the request sets reaches the server's
  thread or task.
* Bad configuration fails at construction; a bad id from a custom generator
  fails the request with an error naming the generator, never its value.

``forward(storage)`` does the other half: every outgoing HTTP request the
process sends under a request carries the id on to the next service.

The package: ``als.web.wsgi`` (``WSGIRequestId``), ``als.web.asgi``
(``ASGIRequestId``), ``als.web.outgoing`` (``forward`` and one-client
helpers for httpx, requests and aiohttp), ``als.web.django`` (a Django
``MIDDLEWARE`` entry) and ``als.web.aiohttp`` (an aiohttp middleware), the
last two imported only when asked for. Importing ``als.web`` imports no
framework and no HTTP client.
"""

from ._common import is_safe_header_value, is_valid_request_id, new_request_id
from .asgi import ASGIRequestId
from .outgoing import forward
from .wsgi import WSGIRequestId

__all__ = [
    "ASGIRequestId",
    "WSGIRequestId",
    "forward",
    "is_safe_header_value",
    "is_valid_request_id",
    "new_request_id",
]

# help(), reprs and pickles show the public path, not the module each is defined in.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
