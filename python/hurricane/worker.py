"""One worker process: set up the process, then hand over to its kind.

Why this module only dispatches: what every kind shares (the pipe protocol, heartbeats, stopping,
boot failures) lives below in ``supervision``, and each kind is one module with a ``load``/``serve``
pair, named in ``KINDS`` by the name the master gives it (src/kinds/*.rs). Adding a kind is a module
and one line here. With ``--preload`` the same pair runs in a zygote (``load`` once) and in each
worker forked from it (``serve``).
"""

from __future__ import annotations

import faulthandler
import importlib
import os
import signal
import sys
import time
from typing import IO, Any, Dict, List

from hurricane import CONTROL_FD, LISTEN_FD, STATUS_FD, debugger, log, zygote
from hurricane.supervision import StatusPipe, Stopper, boot_failure

# The kinds of worker: the master's name for each -> the module with its load/serve pair. Imported
# when chosen, so a worker loads only its own kind (an AMQP worker never imports the HTTP server).
KINDS: Dict[str, str] = {
    "http": "hurricane.wsgi",
    "asgi": "hurricane.asgi",
    "amqp": "hurricane.amqp.consumer",
    "celery": "hurricane.celery_hooks",
}


def main(config: Dict[str, Any], control: IO[bytes]) -> None:
    for fd in (LISTEN_FD, STATUS_FD, CONTROL_FD):
        os.set_inheritable(fd, False)  # subprocesses of the app must not hold our pipes
    status = StatusPipe(STATUS_FD)
    booted = time.monotonic()
    status.send(t="boot", pid=os.getpid())

    # Interrupts go to the master (workers run in their own process group); a stray INT or QUIT
    # here means "stop now", without a KeyboardInterrupt traceback in the log.
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    signal.signal(signal.SIGQUIT, lambda *_: os._exit(0))
    # --log-file: access and error lines go there; SIGUSR1 (forwarded by the master) reopens it.
    # Installed before the app loads, so a rotation during boot cannot kill the worker.
    signal.signal(signal.SIGUSR1, lambda *_: log.reopen_log())
    # Before a hung worker is killed (--timeout, a frozen heartbeat) the master sends SIGUSR2:
    # faulthandler prints every thread's stack from C, even while a C extension holds the GIL.
    faulthandler.register(signal.SIGUSR2, all_threads=True)

    extra_paths: List[str] = config.get("pythonpath", [])
    for path in reversed(extra_paths):
        sys.path.insert(0, os.path.abspath(path))
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())

    log_config = config.get("log") or {}
    log.open_log(log_config.get("file") or "", bool(log_config.get("json")))
    kind = importlib.import_module(KINDS[config["kind"]])
    if config.get("zygote"):
        zygote.main(config, control, status, booted, kind.load, kind.serve)
        return
    # TERM before the app finished importing is handled like any other time: drain (nothing to drain).
    stopper = Stopper()
    signal.signal(signal.SIGTERM, stopper)
    signal.signal(signal.SIGHUP, stopper)  # replaced (reload, recycle, scale-down): drain the same way
    if kind.WATCH_CONTROL_WHILE_LOADING:
        stopper.watch_control(control, status)
    try:
        debugger.attach(config)
    except Exception as exc:  # noqa: BLE001 - the port taken since the master looked, no PyCharm
        boot_failure(status, config, exc, "config")
    kind.serve(config, control, status, booted, kind.load(config, status), stopper)
