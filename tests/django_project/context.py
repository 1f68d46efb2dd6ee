"""The project's storage, named in ``settings.ALS_REQUEST_ID``, and the view's own ``ContextVar``."""

from __future__ import annotations

import contextvars

import als

request_id: als.AsyncLocalStorage[str] = als.AsyncLocalStorage(name="django_request_id")
# Set by every view: request_finished receivers read it, which proves they run in the request's context.
tag: contextvars.ContextVar[str] = contextvars.ContextVar("django_tag", default="untagged")
