"""The WSGI kind (``hurricane serve``): load the app and its static mounts, then serve HTTP on the
shared socket until told to stop.

Why a module per kind: ``worker`` dispatches on the kind's name (``KINDS``) to a ``load``/``serve``
pair, and a ``--preload`` zygote calls the same pair (``load`` once, ``serve`` in each fork). This
module imports down only: the pipe protocol (``supervision``), the HTTP server, static files.
"""

from __future__ import annotations

import sys
from typing import IO, Any, Callable, Dict, List, Tuple

# Imported before the app: an error here is hurricane's bug, not the user's import error.
from hurricane import static
from hurricane.http.rejections import REJECTIONS
from hurricane.http.server import Server
from hurricane.supervision import (
    Activity, StatusPipe, Stopper, boot_failure, freeze_imports, load_object, report_ready, start_heartbeat,
)

# The worker reads its control pipe from the start (checks; EOF: the master is gone), so a master
# that disappears during a slow import ends this worker too.
WATCH_CONTROL_WHILE_LOADING = True

Loaded = Tuple[Callable, List[Any]]


def load(config: Dict[str, Any], status: StatusPipe) -> Loaded:
    """Import the WSGI app and build the static mounts; a failure ends the process (boot_failure)."""
    kind = "import"
    try:
        app = load_object(config["app"], "callable")
        kind = "config"
        mounts = static.mounts_from_config(config.get("http") or {})
    except BaseException as exc:  # noqa: BLE001 - SystemExit from an app's import is a failure too
        boot_failure(status, config, exc, kind)
    freeze_imports()
    return app, mounts


def serve(config: Dict[str, Any], control: IO[bytes], status: StatusPipe, booted: float, loaded: Loaded,
          stopper: Stopper) -> None:
    """Serve HTTP with the loaded app until told to stop (`stopper`, the TERM handler); ends the
    process with the server's exit code."""
    app, mounts = loaded
    metrics = config.get("metrics") or {}
    server = Server(config, Activity(metrics.get("duration_buckets", []), metrics.get("size_buckets", [])))
    server.mounts = mounts
    stopper.watch_control(control, status)
    stopper.attach(server.request_stop)
    heartbeat = start_heartbeat(config, status, server.activity)
    report_ready(config, status, booted, reject_reasons=sorted(REJECTIONS))
    code = server.serve(app)
    heartbeat.beat()  # the last counters, so nothing served goes uncounted
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
