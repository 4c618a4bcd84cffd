"""An app that dies 0.2 s after boot while the file named by CRASHY_FLAG exists: a crash loop on demand."""

import warnings
from wsgiref.validate import WSGIWarning, validator

import os
import threading
import time

FLAG = os.environ.get("CRASHY_FLAG", "")


def _die_soon() -> None:
    time.sleep(0.2)
    if FLAG and os.path.exists(FLAG):
        os._exit(1)


threading.Thread(target=_die_soon, daemon=True).start()


def _application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


warnings.simplefilter("error", WSGIWarning)
application = validator(_application)
