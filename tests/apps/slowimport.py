"""An app whose import takes 2 s, like a large Django project: probes must say 503 meanwhile."""

import time

time.sleep(2)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"booted slowly"]
