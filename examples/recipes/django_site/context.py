"""The request id's storage: settings.py names it, and code that reads the id imports it."""

import als

request_id = als.AsyncLocalStorage(name="request_id")
