"""The other reference point, not a server: the WSGI app called in a loop, with no socket at all.

Its CPU a request is what a server that cost nothing, and overlapped every wait of the app, would
spend: the floor under every server's CPU a request on the same view. bench/run.py runs it beside
the real servers of the Django scenarios, so the table shows how far apart any two servers can be
at most when the app's own work is most of a request (an ORM read: 95 %), which a single number
"hurricane / granian" hides. Prints one JSON line: requests, CPU and wall time a request, in us.

Usage: app_alone.py module[:callable] path seconds
"""

from __future__ import annotations

import importlib
import io
import json
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

WARMUP_REQUESTS = 200


def environ(path: str) -> Dict[str, Any]:
    """What a server hands the app for `GET path` from wrk: the same keys hurricane sets."""
    return {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "HTTP_HOST": "127.0.0.1:8000",
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True,
            "wsgi.run_once": False}


def call(app: Callable, base: Dict[str, Any]) -> None:
    statuses: List[str] = []

    def start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> None:
        statuses.append(status)

    body = app(dict(base), start_response)
    try:
        for _ in body:
            pass
    finally:
        if hasattr(body, "close"):
            body.close()
    if not statuses or not statuses[0].startswith("200"):
        raise SystemExit(f"app_alone: the app answered {statuses[:1]} for {base['PATH_INFO']}, not 200")


def main() -> None:
    target, path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    module, _, attr = target.partition(":")
    app = getattr(importlib.import_module(module), attr or "application")
    base = environ(path)
    for _ in range(WARMUP_REQUESTS):
        call(app, base)
    n = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    deadline = wall0 + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            call(app, base)
        n += 50
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(json.dumps({"requests": n, "cpu_us": cpu * 1e6 / n, "wall_us": wall * 1e6 / n}))


if __name__ == "__main__":
    main()
