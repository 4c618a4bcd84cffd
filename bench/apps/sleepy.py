"""An I/O-bound view: 10 ms of waiting (a database, an API) per request."""

import time


def application(environ, start_response):
    time.sleep(0.01)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"slept"]
