"""An app whose answer says which code is loaded; the reload tests rewrite VERSION (tests copy it)."""

import warnings
from wsgiref.validate import WSGIWarning, validator

import os

VERSION = "v0"


def _application(environ, start_response):
    body = f"{VERSION} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


warnings.simplefilter("error", WSGIWarning)
application = validator(_application)
