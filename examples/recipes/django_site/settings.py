"""Django settings: RequestIdMiddleware first, and log lines that carry each request's id.

Serve the site from examples/recipes:

    gunicorn -c gunicorn.conf.py django_site.wsgi
"""

SECRET_KEY = "change-me"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "django_site.urls"

# First, so that it is outermost: every other middleware, the view and Django's error pages run under the id.
MIDDLEWARE = [
    "als.web.django.RequestIdMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ALS_REQUEST_ID = {"storage": "django_site.context.request_id"}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,  # True would silence the server's own loggers (gunicorn's access line)
    "filters": {
        "request_id": {"()": "als.logging.ContextFilter", "storage": "ext://django_site.context.request_id"}
    },
    "formatters": {"app": {"format": "%(request_id)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {"app": {"class": "logging.StreamHandler", "filters": ["request_id"], "formatter": "app"}},
    "root": {"level": "INFO", "handlers": ["app"]},
}
