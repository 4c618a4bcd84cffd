"""An app that ignores SIGTERM: the master must SIGKILL it after --graceful-timeout."""

import warnings
from wsgiref.validate import WSGIWarning, validator

import signal
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _application(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(30)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ignoring TERM"]


warnings.simplefilter("error", WSGIWarning)
application = validator(_application)
