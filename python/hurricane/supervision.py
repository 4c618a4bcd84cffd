"""The worker's side of the pipe protocol, shared by every kind of worker process.

Why a module of its own, below the kinds: the HTTP (WSGI) worker, the AMQP handler worker, the
Celery hooks and the --preload zygote all talk to the master the same way, so what they share
lives here and each of them imports it; ``worker`` only dispatches to the kinds and nothing here
imports a kind. Everything here happens once per process or once per second (boot, ready, the
heartbeat, a check, a boot failure), never per request.

The master talks to us over two inherited pipes (see DESIGN.md):
  fd 4, status, worker -> master: one JSON object per line (boot, ready, hb, check, fail, ...).
  fd 5, control, master -> worker: the bootstrap, then one JSON object per line (check).
EOF on fd 5 means the master is gone: we drain briefly and exit, so no worker outlives its master.
The master parses every line strictly (src/protocol.rs): send each field with its documented type.
"""

from __future__ import annotations

from bisect import bisect_left
import gc
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import IO, Any, Callable, Dict, List, Optional, Tuple

from hurricane import checks

# Exit codes the master understands; keep in sync with EXIT_BOOT_FAILED in src/protocol.rs.
EXIT_BOOT_FAILED = 3

# After the master disappears, in-flight work gets this long before the process ends anyway.
MASTER_GONE_GRACE_S = 1.0

# An asyncio worker's loop ticks this often (asgi.server); silent past LOOP_BLOCKED_S it is blocked.
LOOP_TICK_S = 0.1
LOOP_BLOCKED_S = 1.0


class StatusPipe:
    """Writes JSON lines to the master. Shared by the main and heartbeat threads, hence the lock."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, **message: Any) -> None:
        self.send_line((json.dumps(message, separators=(",", ":")) + "\n").encode())

    def send_line(self, data: bytes) -> None:
        """One message already encoded: a JSON object and its newline."""
        with self._lock:
            try:
                while data:
                    data = data[os.write(self._fd, data) :]
            except OSError:
                # The master is gone; the control-pipe watcher ends the process.
                pass


class Activity:
    """What the worker is doing and has done, read by the heartbeat thread without locking.

    The serving thread replaces ``current`` with a tuple per request (one attribute store) and
    records each finished request in plain counters; the heartbeat thread sends the differences
    once a second. Nothing per request ever crosses a pipe.
    """

    __slots__ = ("current", "inflight", "requests", "counts", "dur_bounds", "dur", "dur_sum",
                 "size_bounds", "size_first", "size", "size_sum", "rejects", "loop_tick", "loop_lag",
                 "ws")

    def __init__(self, dur_bounds: List[float], size_bounds: List[float]) -> None:
        self.current: Optional[tuple] = None  # (started, by time.monotonic(), method, path) while busy
        self.inflight: Dict[int, tuple] = {}  # --threads: thread id -> the same, per running request
        self.requests = 0
        self.counts: Dict[Tuple[str, int], int] = {}  # (method, status class) -> requests
        # Histograms as per-bucket counts; the last bucket is +Inf. Bounds come from the master.
        self.dur_bounds = dur_bounds
        self.dur = [0] * (len(dur_bounds) + 1)
        self.dur_sum = 0.0
        self.size_bounds = size_bounds
        # A size at or under the first bound is in bucket 0 (the server skips the search for it).
        self.size_first = size_bounds[0] if size_bounds else float("inf")
        self.size = [0] * (len(size_bounds) + 1)
        self.size_sum = 0.0
        self.rejects: Dict[str, int] = {}  # rejection name (http.rejections.REJECTIONS) -> requests refused
        # An asyncio worker's loop: when it last ticked (None: no loop), and the worst lag since
        # the last heartbeat; and its WebSocket counters (asgi.websocket.Counters), if any.
        self.loop_tick: Optional[float] = None
        self.loop_lag = 0.0
        self.ws: Any = None

    def reject(self, reason: str) -> None:
        """One refused request (the app never ran): counted apart from served requests."""
        self.rejects[reason] = self.rejects.get(reason, 0) + 1

    def record(self, method: str, code: int, seconds: float, size: int) -> None:
        """One finished request: a dict increment and two bisects (about 0.3 us)."""
        key = (method, code // 100)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        self.requests += 1
        self.dur[bisect_left(self.dur_bounds, seconds)] += 1
        self.dur_sum += seconds
        self.size[bisect_left(self.size_bounds, size)] += 1
        self.size_sum += size


def load_object(spec: str, what: str = "callable") -> Any:
    """Import ``module:attr`` (attr may be dotted) and return the object.

    ``what`` says what the kind needs: ``"callable"`` (a WSGI or ASGI app; attr defaults to
    ``application``, as in Django's ``mysite.wsgi``) or ``"class"`` (an AMQP handler, also given as
    ``package.module.Class``, as django-hurricane's ``consume`` takes it).
    """
    module_name, sep, attr = spec.partition(":")
    if not sep and what == "class":
        module_name, _, attr = spec.rpartition(".")
        if not module_name:
            raise ImportError(f"'{spec}' is not a dotted path to a handler class (package.module.Class)")
    attr = attr or "application"
    module = __import__(module_name, fromlist=["_"])
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"module '{module_name}' has no attribute '{attr}'") from None
    if what == "class" and not isinstance(obj, type):
        raise TypeError(f"'{spec}' is not a class (got {type(obj).__name__})")
    if what == "callable" and not callable(obj):
        raise TypeError(f"'{spec}' is not callable (got {type(obj).__name__})")
    return obj


def source_dirs(roots: List[str]) -> List[str]:
    """Directories of the app's own modules: under the working directory or --pythonpath,
    not installed packages (a virtualenv inside the project is still someone else's code)."""
    dirs = set()
    prefixes = tuple(root.rstrip(os.sep) + os.sep for root in roots)
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str):
            continue
        path = os.path.abspath(path)
        if "site-packages" in path or "dist-packages" in path:
            continue
        if path.startswith(prefixes):
            dirs.add(os.path.dirname(path))
    return sorted(dirs)


class Heartbeat:
    """Reports what the worker is doing and the counters since the last report.

    Called every interval by its own thread, and once more by the main thread on the way out, so
    the master's totals include the last second of a draining worker.
    """

    def __init__(self, status: StatusPipe, activity: Activity) -> None:
        self._status = status
        self._activity = activity
        self._lock = threading.Lock()
        self._sent_requests = 0
        self._sent_counts: Dict[Tuple[str, int], int] = {}
        self._sent_dur = list(activity.dur)
        self._sent_dur_sum = 0.0
        self._sent_size = list(activity.size)
        self._sent_size_sum = 0.0
        self._sent_rejects: Dict[str, int] = {}
        self._sent_ws: Tuple[int, int] = (0, 0)
        self._sent_closes: Dict[int, int] = {}

    def beat(self) -> None:
        with self._lock:
            activity = self._activity
            current = activity.current
            inflight = len(activity.inflight)
            if activity.inflight:
                # --threads: report the oldest request; it is the one a --timeout would catch.
                current = min(list(activity.inflight.values()), default=current)
            elif current is not None:
                inflight = 1
            requests = activity.requests
            message: Dict[str, Any] = {"t": "hb", "requests": requests - self._sent_requests,
                                       "inflight": inflight}
            if requests != self._sent_requests:
                counts = dict(activity.counts)
                dur, size = list(activity.dur), list(activity.size)
                dur_sum, size_sum = activity.dur_sum, activity.size_sum
                message["counts"] = {
                    f"{method} {cls}": n - self._sent_counts.get((method, cls), 0)
                    for (method, cls), n in counts.items()
                    if n != self._sent_counts.get((method, cls), 0)
                }
                message["dur"] = [a - b for a, b in zip(dur, self._sent_dur)]
                message["dur_sum"] = dur_sum - self._sent_dur_sum
                message["size"] = [a - b for a, b in zip(size, self._sent_size)]
                message["size_sum"] = size_sum - self._sent_size_sum
                self._sent_counts, self._sent_dur, self._sent_size = counts, dur, size
                self._sent_dur_sum, self._sent_size_sum = dur_sum, size_sum
            rejects = dict(activity.rejects)
            if rejects != self._sent_rejects:
                message["rejects"] = {
                    reason: n - self._sent_rejects.get(reason, 0)
                    for reason, n in rejects.items()
                    if n != self._sent_rejects.get(reason, 0)
                }
                self._sent_rejects = rejects
            tick = activity.loop_tick
            if tick is not None:
                # An event loop's lag: how late its last tick was, or, if it has not ticked for a
                # while, how long it has been blocked. A loop blocked past a second is reported as
                # busy, so the master's --timeout (and its traceback dump) applies to it.
                blocked = time.monotonic() - tick
                message["lag_s"] = round(max(activity.loop_lag, blocked - LOOP_TICK_S, 0.0), 4)
                activity.loop_lag = 0.0
                if current is None and blocked > LOOP_BLOCKED_S:
                    current = (tick, "LOOP", "(event loop blocked)")
            if activity.ws is not None:
                ws = activity.ws
                closes = dict(ws.closes)
                message["ws"] = {
                    "open": ws.open, "in": ws.received - self._sent_ws[0], "out": ws.sent - self._sent_ws[1],
                    "closes": {str(c): n - self._sent_closes.get(c, 0) for c, n in closes.items()
                               if n != self._sent_closes.get(c, 0)},
                }
                self._sent_ws = (ws.received, ws.sent)
                self._sent_closes = closes
            if current is not None:
                message["busy_s"] = round(time.monotonic() - current[0], 3)
                message["method"] = current[1]
                message["path"] = current[2]
            self._status.send(**message)
            self._sent_requests = requests

    def run(self, interval_s: float) -> None:
        while True:
            time.sleep(interval_s)
            self.beat()


def control_loop(control: IO[bytes], on_stop: Callable[[], None], status: StatusPipe) -> None:
    for line in iter(control.readline, b""):
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("t") == "check":
            status.send(t="check", **checks.run())
    # EOF: the master is gone. Ask the server to drain; end the process if that takes too long.
    on_stop()
    time.sleep(MASTER_GONE_GRACE_S)
    os._exit(1)


def _one_line(exc: BaseException, kind: str) -> str:
    text = str(exc).strip()
    if kind == "config":
        return text
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def boot_failure(status: StatusPipe, config: Dict[str, Any], exc: BaseException, kind: str) -> None:
    """Tell the master why the app did not load, then end the process with EXIT_BOOT_FAILED."""
    _boot_failure(status, config, exc, kind)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_BOOT_FAILED)


def _boot_failure(status: StatusPipe, config: Dict[str, Any], exc: BaseException, kind: str) -> None:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if kind == "import" else ""
    status.send(
        t="fail",
        kind=kind,
        app=config["app"],
        error=_one_line(exc, kind),
        cwd=os.getcwd(),
        python=sys.executable,
        sys_path=[p for p in sys.path if p],
        traceback=tb,
    )


class Stopper:
    """Who a stop request (SIGTERM, the master gone) goes to: remembered while the app imports,
    passed on once the serving loop exists, so a TERM during a slow import drains (nothing) and exits."""

    def __init__(self) -> None:
        self.asked = False
        # Why the worker stops: "shutdown" (SIGTERM, the master gone) or "restart" (SIGHUP: it is
        # being replaced by a reload, a recycle or a scale-down).
        self.reason = "shutdown"
        self._target: Optional[Callable[[], None]] = None
        self._watching = False

    def __call__(self, signum: int = 0, *_: Any) -> None:
        if signum == signal.SIGHUP and not self.asked:
            self.reason = "restart"
        self.asked = True
        if self._target is not None:
            self._target()

    def attach(self, target: Callable[[], None]) -> None:
        self._target = target
        if self.asked:
            target()

    def watch_control(self, control: IO[bytes], status: StatusPipe) -> None:
        """Read the control pipe on a thread of its own (checks; EOF: the master is gone), once."""
        if not self._watching:
            self._watching = True
            threading.Thread(target=control_loop, args=(control, self, status), name="hurricane-control",
                             daemon=True).start()


def freeze_imports() -> None:
    """Everything the app allocated at import lives as long as the worker: move it out of the
    collector's sight, so full collections stop rescanning a large app's module-level objects on
    the hot path, and its pages stay untouched: shared, with --preload, by every forked worker."""
    gc.collect()
    gc.freeze()


def start_heartbeat(config: Dict[str, Any], status: StatusPipe, activity: Activity) -> Heartbeat:
    """The heartbeat thread, every ``heartbeat_ms``; the caller beats once more on its way out."""
    heartbeat = Heartbeat(status, activity)
    threading.Thread(target=heartbeat.run, args=(config.get("heartbeat_ms", 1000) / 1000.0,),
                     name="hurricane-heartbeat", daemon=True).start()
    return heartbeat


def report_ready(config: Dict[str, Any], status: StatusPipe, booted: float, **extra: Any) -> None:
    """Tell the master the kind is ready: how long it took, the app's source directories (for
    --autoreload) and whether it is a Django project; ``extra`` is the kind's own (e.g. routing keys)."""
    extra_paths: List[str] = config.get("pythonpath", [])
    dirs = source_dirs([os.getcwd()] + [os.path.abspath(p) for p in extra_paths]) if config.get("autoreload") else []
    status.send(t="ready", boot_ms=int((time.monotonic() - booted) * 1000), dirs=dirs,
                django=checks.is_django(), **extra)
