"""An app whose answer says which code is loaded; the reload tests rewrite VERSION (tests copy it)."""

import os

VERSION = "v0"


def application(environ, start_response):
    body = f"{VERSION} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
