"""gunicorn's settings for flask_app.py (or any app that installs als's record factory).

    gunicorn -c gunicorn.conf.py flask_app:app

gunicorn writes its access line after the request has ended, outside its context:
the line shows the id the response carried, %({x-request-id}o)s.
"""

bind = "127.0.0.1:8000"
worker_class = "gthread"
threads = 8
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s id=%({x-request-id}o)s'
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "access": {"format": "%(message)s"},
        # The app's record factory fills %(request_id)s; records made before it get "-".
        "app": {
            "()": "logging.Formatter",
            "fmt": "%(request_id)s %(name)s %(levelname)s %(message)s",
            "defaults": {"request_id": "-"},
        },
    },
    "handlers": {
        "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stdout"},
        "app": {"class": "logging.StreamHandler", "formatter": "app", "stream": "ext://sys.stderr"},
    },
    "loggers": {"gunicorn.access": {"handlers": ["access"], "propagate": False}},
    "root": {"level": "INFO", "handlers": ["app"]},
}
