"""A small, real Django project behind ``als.web.django.RequestIdMiddleware``: tests/test_web_django.py."""
