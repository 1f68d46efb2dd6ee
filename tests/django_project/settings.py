"""Settings of the test project. ``$ALS_DJANGO_LOG``, when set, is the file the app's lines go to."""

from __future__ import annotations

import os
from typing import Any

SECRET_KEY = "tests-only, never deployed"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "testserver"]
ROOT_URLCONF = "tests.django_project.urls"
INSTALLED_APPS: list[str] = []
USE_TZ = True
MIDDLEWARE = [
    "als.web.django.RequestIdMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ALS_REQUEST_ID = {"storage": "tests.django_project.context.request_id"}

LOGGING: dict[str, Any] = {"version": 1, "disable_existing_loggers": False}
if "ALS_DJANGO_LOG" in os.environ:
    LOGGING.update(
        filters={
            "request_id": {
                "()": "als.logging.ContextFilter",
                "storage": "ext://tests.django_project.context.request_id",
            }
        },
        formatters={"line": {"()": "tests.django_project.logs.OneLine"}},
        handlers={
            "file": {
                "class": "logging.FileHandler",
                "filename": os.environ["ALS_DJANGO_LOG"],
                "formatter": "line",
                "filters": ["request_id"],
            }
        },
        loggers={
            name: {"handlers": ["file"], "level": "INFO", "propagate": False}
            for name in ("tests.django", "django.request")
        },
    )
