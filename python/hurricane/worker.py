"""One prefork worker: boot the user's app, report to the master, serve HTTP until told to stop.

Why this module exists apart from the HTTP server: everything here happens once per process or once
per second (boot, the status pipe, heartbeats, signals, the master-gone watchdog), while ``http``
runs per request. Keeping them apart keeps the hot path free of supervision code.

The master talks to us over two inherited pipes (see DESIGN.md):
  fd 4, status, worker -> master: one JSON object per line (boot, ready, hb, fail).
  fd 5, control, master -> worker: the bootstrap, then one JSON object per line (check).
EOF on fd 5 means the master is gone: we drain briefly and exit, so no worker outlives its master.
"""

from __future__ import annotations

from bisect import bisect_left
import faulthandler
import gc
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import IO, Any, Callable, Dict, List, Optional, Tuple

from hurricane import CONTROL_FD, LISTEN_FD, STATUS_FD

# Exit codes the master understands; keep in sync with EXIT_BOOT_FAILED in src/worker.rs.
EXIT_BOOT_FAILED = 3

# After the master disappears, in-flight work gets this long before the process ends anyway.
MASTER_GONE_GRACE_S = 1.0


class StatusPipe:
    """Writes JSON lines to the master. Shared by the main and heartbeat threads, hence the lock."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, **message: Any) -> None:
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
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
                 "size_bounds", "size_first", "size", "size_sum", "rejects")

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


def load_app(spec: str) -> Callable:
    """Import ``module[:attr]`` and return the WSGI callable (attr defaults to ``application``)."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "application"
    module = __import__(module_name, fromlist=["_"])
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(
                f"module '{module_name}' has no attribute '{attr}'"
            ) from None
    if not callable(obj):
        raise TypeError(f"'{spec}' is not callable (got {type(obj).__name__})")
    return obj


def _reopen_log() -> None:
    from hurricane import log

    log.reopen_log()


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


def control_loop(control: IO[bytes], on_stop: Callable[[], None], status: "StatusPipe") -> None:
    for line in iter(control.readline, b""):
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("t") == "check":
            from hurricane import checks

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
        self._target: Optional[Callable[[], None]] = None
        self._watching = False

    def __call__(self, *_: Any) -> None:
        self.asked = True
        if self._target is not None:
            self._target()

    def attach(self, target: Callable[[], None]) -> None:
        self._target = target
        if self.asked:
            target()

    def watch_control(self, control: IO[bytes], status: "StatusPipe") -> None:
        """Read the control pipe on a thread of its own (checks; EOF: the master is gone), once."""
        if not self._watching:
            self._watching = True
            threading.Thread(target=control_loop, args=(control, self, status), name="hurricane-control",
                             daemon=True).start()


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
    signal.signal(signal.SIGUSR1, lambda *_: _reopen_log())
    # Before a hung worker is killed (--timeout, a frozen heartbeat) the master sends SIGUSR2:
    # faulthandler prints every thread's stack from C, even while a C extension holds the GIL.
    faulthandler.register(signal.SIGUSR2, all_threads=True)

    extra_paths: List[str] = config.get("pythonpath", [])
    for path in reversed(extra_paths):
        sys.path.insert(0, os.path.abspath(path))
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())

    from hurricane import log

    http_config = config.get("http") or {}
    log.open_log(http_config.get("log_file") or "", http_config.get("log_format") == "json")
    if config.get("mode") == "celery":
        # Celery installs its own handlers (TERM warm, QUIT cold shutdown); start from the defaults.
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        from hurricane import celery_hooks

        celery_hooks.main(config, control, status, booted)
        return
    if config.get("mode") == "amqp":
        from hurricane.amqp import consumer

        load, serve = consumer.load, consumer.serve
    else:
        load, serve = load_http, serve_http
    if config.get("zygote"):
        from hurricane import zygote

        zygote.main(config, control, status, booted, load, serve)
        return
    # TERM before the app finished importing is handled like any other time: drain (nothing to drain).
    stopper = Stopper()
    signal.signal(signal.SIGTERM, stopper)
    if serve is serve_http:
        stopper.watch_control(control, status)  # a master gone during a slow import ends us too
    serve(config, control, status, booted, load(config, status), stopper)


def freeze_imports() -> None:
    """Everything the app allocated at import lives as long as the worker: move it out of the
    collector's sight, so full collections stop rescanning a large app's module-level objects on
    the hot path, and its pages stay untouched: shared, with --preload, by every forked worker."""
    gc.collect()
    gc.freeze()


def load_http(config: Dict[str, Any], status: StatusPipe) -> Tuple[Callable, List[Any]]:
    """Import the WSGI app and build the static mounts; a failure ends the process (boot_failure)."""
    # Import the server before the app: our own import errors are bugs, not the user's.
    import hurricane.http.server  # noqa: F401

    kind = "import"
    try:
        app = load_app(config["app"])
        kind = "config"
        from hurricane import static

        mounts = static.mounts_from_config(config.get("http") or {})
    except BaseException as exc:  # noqa: BLE001 - SystemExit from an app's import is a failure too
        boot_failure(status, config, exc, kind)
    freeze_imports()
    return app, mounts


def serve_http(config: Dict[str, Any], control: IO[bytes], status: StatusPipe, booted: float,
               loaded: Tuple[Callable, List[Any]], stopper: Stopper) -> None:
    """Serve HTTP with the loaded app until told to stop (`stopper`, the TERM handler); ends the
    process with the server's exit code."""
    from hurricane.http.rejections import REJECTIONS
    from hurricane.http.server import Server

    app, mounts = loaded
    metrics = config.get("metrics") or {}
    server = Server(config, Activity(metrics.get("duration_buckets", []), metrics.get("size_buckets", [])))
    server.mounts = mounts
    stopper.watch_control(control, status)
    stopper.attach(server.request_stop)
    heartbeat = Heartbeat(status, server.activity)
    threading.Thread(
        target=heartbeat.run,
        args=(config.get("heartbeat_ms", 1000) / 1000.0,),
        name="hurricane-heartbeat",
        daemon=True,
    ).start()
    extra_paths: List[str] = config.get("pythonpath", [])
    dirs = source_dirs([os.getcwd()] + [os.path.abspath(p) for p in extra_paths]) if config.get("autoreload") else []
    from hurricane import checks

    status.send(
        t="ready",
        boot_ms=int((time.monotonic() - booted) * 1000),
        dirs=dirs,
        django=checks.is_django(),
        reject_reasons=sorted(REJECTIONS),
    )
    code = server.serve(app)
    heartbeat.beat()  # the last counters, so nothing served goes uncounted
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
