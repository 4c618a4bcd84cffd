"""An app that starts a thread while it is imported: --preload must refuse it (a fork would lose it)."""

import threading
import time

threading.Thread(target=lambda: time.sleep(3600), name="metrics-pusher", daemon=True).start()


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
