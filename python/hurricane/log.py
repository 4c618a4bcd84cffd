"""The worker's log lines, in the master's formats: `ts LEVEL event=.. key=..` or one JSON object.

Why a module of its own: the HTTP server (access and error lines, rejections) and the AMQP handler
worker both write them, to stderr or to --log-file (reopened on SIGUSR1 after a rotation), and the
master reads them as its own. Stdlib only; one os.write per line, so lines from threads never mix.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict

_log_second = [0, ""]
# Where access and error lines go: stderr, or --log-file (reopened on SIGUSR1); and in which format.
_LOG_FD = [2]
_LOG_PATH = [""]
_LOG_JSON = [False]


def open_log(path: str, as_json: bool = False) -> None:
    """Point the worker's log lines at `path`, appending; again on SIGUSR1 after a rotation."""
    _LOG_JSON[0] = as_json
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    old, _LOG_FD[0], _LOG_PATH[0] = _LOG_FD[0], fd, path
    if old != 2:
        os.close(old)


def reopen_log() -> None:
    if _LOG_PATH[0]:
        try:
            open_log(_LOG_PATH[0], _LOG_JSON[0])
        except OSError as exc:  # the old file stays in use
            log_line("ERROR", "reopen_log_failed", {"pid": os.getpid(), "error": str(exc)}, _LOG_JSON[0])


def _log_value(key: str, value: Any) -> str:
    """Quote what could be misread (paths, spaces, quotes, empty), as the master's {:?} does."""
    if isinstance(value, str) and (key == "path" or not value or " " in value or '"' in value):
        return json.dumps(value)
    return str(value)


def log_line(level: str, event: str, fields: Dict[str, Any], as_json: bool) -> None:
    """A log line like the master's: `ts LEVEL event=.. key=..` or a JSON object; a traceback field
    is printed after the line in text mode, where people read it."""
    now = time.time()
    second = int(now)
    if second != _log_second[0]:
        _log_second[0] = second
        _log_second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    ts = f"{_log_second[1]}.{int((now - second) * 1000):03d}Z"
    if as_json:
        # Compact, like the master's lines: one format for every line of the log.
        line = json.dumps({"ts": ts, "level": level, "event": event, **fields}, separators=(",", ":")) + "\n"
    else:
        tb = fields.pop("traceback", "")
        parts = " ".join(f"{k}={_log_value(k, v)}" for k, v in fields.items())
        line = f"{ts} {level:<5} event={event} {parts}\n{tb}"
    data = line.encode("utf-8", "replace")
    while data:
        try:
            data = data[os.write(_LOG_FD[0], data):]
        except InterruptedError:
            continue
        except OSError:
            return


