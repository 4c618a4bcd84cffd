"""An app whose import takes 2 s, like a large Django project: probes must say 503 meanwhile."""

import warnings
from wsgiref.validate import WSGIWarning, validator

import time

time.sleep(2)


def _application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"booted slowly"]


warnings.simplefilter("error", WSGIWarning)
application = validator(_application)
