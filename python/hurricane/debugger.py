"""``--debugger`` and ``--pycharm-host``: attach a debugger to this worker before the app loads.

Why before the app: a breakpoint in code that runs at import (settings, ``AppConfig.ready``) must
hit too, and with ``--debugger-wait`` the worker reports ready only once someone is attached.
debugpy runs its adapter inside this process (``in_process_debug_adapter``), so the port is this
worker's and is released with it: a reload's new worker (started once the old one is gone, see
src/debugger.rs) listens on the same port. The libraries are the user's (pip extras of their own);
the master has checked that they import before starting anything.
"""

from __future__ import annotations

import os
from typing import Any, Dict

from hurricane.log import log_line


def attach(config: Dict[str, Any]) -> None:
    """Start the debugger the master asked for (``config["debugger"]``), if any."""
    settings = config.get("debugger")
    if not settings:
        return
    as_json = bool((config.get("log") or {}).get("json"))
    host, port = str(settings["host"]), int(settings["port"])
    if settings["kind"] == "debugpy":
        import debugpy  # type: ignore[import-not-found]  # the user's, checked by the master

        try:
            debugpy.listen((host, port), in_process_debug_adapter=True)
        except Exception as exc:  # noqa: BLE001 - e.g. the port taken since the master looked
            raise RuntimeError(f"--debugger: cannot listen on {host}:{port} ({exc}); "
                               "pick another --debugger-port") from None
        log_line("WARN", "debugger_listening", {
            "addr": f"{host}:{port}", "pid": os.getpid(),
            "hint": "attach VS Code (Python: Remote Attach); whoever reaches this port can run code here",
        }, as_json)
        if settings.get("wait"):
            log_line("INFO", "debugger_waiting", {"addr": f"{host}:{port}", "pid": os.getpid()}, as_json)
            debugpy.wait_for_client()
            log_line("INFO", "debugger_attached", {"addr": f"{host}:{port}", "pid": os.getpid()}, as_json)
        return
    import pydevd_pycharm  # type: ignore[import-not-found]  # the user's, checked by the master

    try:
        pydevd_pycharm.settrace(host, port=port, suspend=False)
    except BaseException as exc:  # noqa: BLE001 - pydevd exits or raises when nobody listens
        raise ConnectionError(f"--pycharm-host: cannot connect to PyCharm's debug server at {host}:{port} "
                              f"({type(exc).__name__}: {exc}); start it in PyCharm first (a Python Debug Server "
                              "run configuration on that port)") from None
    log_line("WARN", "debugger_connected", {"server": f"{host}:{port}", "pid": os.getpid()}, as_json)
