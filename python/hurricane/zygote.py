"""--preload: one process per generation that imports the app once and forks every worker from it.

Why: an exec'd worker imports the app itself, so N workers hold N private copies of every module,
and each takes the import's time (~350 ms for Django) to start. Forked from a process that has
imported the app, workers share those pages copy-on-write (``gc.freeze`` keeps the collector from
dirtying them) and are ready in milliseconds. Why a zygote and not the master: the master never
runs Python, and a reload needs the *new* code imported somewhere: the master starts a new zygote
per generation, so HUP keeps loading new code, which gunicorn's ``--preload`` gives up.

The protocol: on fd 5 (a unix socket here, not a pipe; see src/spawn.rs), master -> zygote,
``{"t":"fork","worker":N,"generation":G}\\n`` with the new worker's status pipe (write end) and
control pipe (read end) attached as SCM_RIGHTS; the answer goes up the zygote's own status pipe,
``{"t":"forked","worker":N,"pid":P}``, or with ``"error"`` when the fork failed, so the master
never waits for it.
The worker is forked twice (the middle process exits at once), so it is re-parented to the master,
which is PID 1 or a subreaper: the master reaps and signals it like any other worker. EOF on the
socket means the master is gone: the zygote exits.

What must not cross a fork: threads (a forked child has only the forking thread; a lock another
thread held stays locked forever), so a zygote whose app started threads at import refuses to
preload (exit 2, saying which); and open database connections, which Django's are closed here.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, IO, List

from hurricane import CONTROL_FD, STATUS_FD, checks
from hurricane.supervision import StatusPipe, Stopper

# Exit code of a zygote that refuses to preload; keep in sync with EXIT_PRELOAD_REFUSED in src/protocol.rs.
EXIT_PRELOAD_REFUSED = 2

# Each fork request carries two fds: the worker's status pipe and its control pipe.
FDS_PER_REQUEST = 2

# load(config, status) -> what serve needs; serve(config, control, status, started, loaded, stopper)
# ends the process.
Load = Callable[[Dict[str, Any], Any], Any]
Serve = Callable[[Dict[str, Any], IO[bytes], Any, float, Any, Any], None]


def other_threads() -> List[str]:
    """Threads besides this one: Python's by name, and any a C extension started (counted)."""
    names = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:
        tasks = 1
    unnamed = tasks - 1 - len(names)
    if unnamed > 0:
        names.append(f"{unnamed} thread(s) started outside Python's threading module")
    return names


def close_connections() -> None:
    """Django's database connections opened at import must not be shared by every worker."""
    if "django.db" not in sys.modules:
        return
    try:
        from django.db import connections  # type: ignore[import-not-found]

        connections.close_all()
    except Exception:  # noqa: BLE001 - settings not configured: nothing was opened
        pass


def name_process(name: str) -> None:
    """What ps -e and top show (the kernel's comm, 15 bytes): a forked worker's command line is
    still its zygote's, so this is how to tell them apart."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:
        pass


def main(config: Dict[str, Any], control: IO[bytes], status: Any, booted: float, load: Load,
         serve: Serve) -> None:
    name_process("hurricane-zygot")
    # Nothing to drain: the master's TERM (or its disappearance) ends the zygote at once.
    def exit_now(*_: Any) -> None:
        os._exit(0)

    signal.signal(signal.SIGTERM, exit_now)
    loaded = load(config, status)
    # An app that set its own TERM handler at import keeps it in its workers, as an exec'd worker
    # does (its import runs after the worker installed its own).
    app_term = signal.getsignal(signal.SIGTERM)
    if app_term is not exit_now:
        config = dict(config, app_term=True)
    close_connections()
    threads = other_threads()
    if threads:
        error = (f"--preload: the app started threads while it was imported ({', '.join(threads)}); "
                 "a forked worker would not have them. Start them lazily (on first use) or run "
                 "without --preload")
        status.send(t="fail", kind="preload", app=config["app"], error=error, cwd=os.getcwd(),
                    python="", sys_path=[], traceback="")
        os._exit(EXIT_PRELOAD_REFUSED)
    status.send(t="ready", boot_ms=int((time.monotonic() - booted) * 1000), dirs=[],
                django=checks.is_django())
    requests = socket.socket(fileno=os.dup(CONTROL_FD))
    _serve_forks(requests, status, config, control, loaded, serve)


def _serve_forks(requests: socket.socket, status: Any, config: Dict[str, Any], control: IO[bytes],
                 loaded: Any, serve: Serve) -> None:
    """Answer fork requests, one line and two fds each, until the master is gone (EOF)."""
    buf = b""
    fds: Deque[int] = deque()
    room = socket.CMSG_SPACE(64 * array.array("i").itemsize)
    while True:
        try:
            data, ancdata, _flags, _addr = requests.recvmsg(4096, room)
        except InterruptedError:
            continue
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
                fds.extend(received)
        if not data:
            os._exit(0)  # the master is gone
        buf += data
        while b"\n" in buf and len(fds) >= FDS_PER_REQUEST:
            line, buf = buf.split(b"\n", 1)
            status_fd, control_fd = fds.popleft(), fds.popleft()
            request = json.loads(line)
            answer = _fork(request, status_fd, control_fd, requests, config, control, loaded, serve)
            status.send(t="forked", worker=request["worker"], **answer)


def _fork(request: Dict[str, Any], status_fd: int, control_fd: int, requests: socket.socket,
          config: Dict[str, Any], control: IO[bytes], loaded: Any, serve: Serve) -> Dict[str, Any]:
    """Fork the worker (twice, so the master adopts it); its pid, or why not."""
    try:
        read_pid, write_pid = os.pipe()
        middle = os.fork()
    except OSError as exc:
        os.close(status_fd)
        os.close(control_fd)
        return {"error": f"fork failed: {exc}"}
    if middle == 0:
        os.close(read_pid)
        try:
            pid = os.fork()
        except OSError:
            os._exit(1)
        if pid == 0:
            os.close(write_pid)
            _become_worker(request, status_fd, control_fd, requests, config, control, loaded, serve)
        os.write(write_pid, str(pid).encode())
        os._exit(0)
    os.close(write_pid)
    os.close(status_fd)
    os.close(control_fd)
    answer = os.read(read_pid, 32)
    os.close(read_pid)
    os.waitpid(middle, 0)
    if not answer:
        return {"error": "the second fork failed"}
    return {"pid": int(answer)}


def _become_worker(request: Dict[str, Any], status_fd: int, control_fd: int, requests: socket.socket,
                   config: Dict[str, Any], control: IO[bytes], loaded: Any, serve: Serve) -> None:
    started = time.monotonic()
    name_process(f"hurricane-w{request['worker']}")
    # Its own process group, as an exec'd worker has (src/spawn.rs): a terminal's Ctrl-C is the master's.
    os.setpgid(0, 0)
    requests.close()
    # The worker's own pipes take the zygote's places at fds 4 and 5; `control` (the buffered
    # reader the bootstrap came through, empty now) then reads the worker's control pipe.
    os.dup2(status_fd, STATUS_FD, inheritable=False)
    os.dup2(control_fd, CONTROL_FD, inheritable=False)
    os.close(status_fd)
    os.close(control_fd)
    stopper = Stopper()
    if not config.get("app_term"):
        signal.signal(signal.SIGTERM, stopper)
    if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGHUP, stopper)  # replaced (reload, recycle, scale-down)
    config = dict(config, worker=request["worker"], generation=request["generation"], zygote=False)
    status = StatusPipe(STATUS_FD)
    status.send(t="boot", pid=os.getpid())
    serve(config, control, status, started, loaded, stopper)
    # serve ends the process (SystemExit unwinds through the zygote's frames, which catch nothing);
    # never fall back into the zygote's loop.
    raise SystemExit(0)
