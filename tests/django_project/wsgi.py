"""gunicorn's entry: ``tests.django_project.wsgi:application``, with als.patch() on for the worker."""

from __future__ import annotations

import os

import als

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django_project.settings")
als.patch()

from django.core.wsgi import get_wsgi_application  # noqa: E402 - after the settings module is named

application = get_wsgi_application()
