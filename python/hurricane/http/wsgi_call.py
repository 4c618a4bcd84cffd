"""Calling the WSGI app for one request, and what ends a request: the response's framing chosen
from what the app returns, the counters and the access line. Mixed into ``server.Server``.

Why apart from the event loop: this is PEP 3333's side of the worker (``start_response``, the
iterable, ``close()``, ``wsgi.file_wrapper``), while ``server`` is the connection's side (accept,
read, park, sweep). The hot path is the same code as before the split: a method of the server
found on its class, with the module's globals looked up in this module instead.
"""

from __future__ import annotations

import os
import resource
import threading
import time
import traceback
from bisect import bisect_left as _bisect
from typing import Any, Callable, Dict, Optional, Tuple

from hurricane.http.governor import SAMPLE_INTERVAL_S as _SAMPLE_INTERVAL_S
from hurricane.http.rejections import HTTPError, error_response
from hurricane.http.request import METRIC_METHODS
from hurricane.http.response import NO_BODY, Exchange, FileWrapper, Tail
from hurricane.http.wire import FLUSH_AFTER_S as _FLUSH_AFTER_S
from hurricane.http.wire import CLOSED, CLOSING, READING, SENDING, ClientGone, Conn, State, send_closing
from hurricane.log import log_line as _log_line

# (method, status class) -> the same tuple, prebuilt: the counter key costs a lookup, not a new tuple.
_COUNT_KEYS = {(m, c): (m, c) for m in METRIC_METHODS for c in range(1, 6)}
_monotonic = time.monotonic
_thread_time = time.thread_time
_getrusage = resource.getrusage
_RUSAGE_THREAD = resource.RUSAGE_THREAD


class Request:
    """What finishing a request needs once its response's tail has gone out (see Server._finish)."""

    __slots__ = ("env", "method", "started", "result", "fd")

    def __init__(self, env: Dict[str, Any], method: str, started: float, result: Any, fd: int) -> None:
        self.env = env
        self.method = method
        self.started = started
        self.result = result  # the app's iterable, closed at the end (PEP 3333)
        self.fd = fd  # a static file's descriptor, ours to close; -1 if none


class WsgiCall:
    """The WSGI side of ``Server`` (its attributes: activity, pool, outbox, access_log, ...)."""

    def _run_app(
        self, conn: Conn, app: Callable, env: Dict[str, Any], method: str,
        version11: bool, keep_alive: bool, body: Any, started: float = 0.0,
    ) -> State:
        threaded = self.pool is not None
        hold = self._hold  # on the loop, the loop's outbox
        if threaded:
            # On a pool's thread, a small response waits for the pool's outbox while the worker is
            # CPU-bound and has more clients than threads (threads.py, _worth_holding).
            hold = self._thread_hold
            if hold is not None and not self._worth_holding():
                hold = None
        ex = Exchange(conn, version11, method == "HEAD", keep_alive, self.stopping, hold)
        activity = self.activity
        # The loop's clock (read once per wakeup) is precise enough for --timeout and saves a call;
        # a pool thread that read the request itself passes its own.
        if not started:
            started = self.now
        if threaded:
            ident = threading.get_ident()
            activity.inflight[ident] = (started, method, env["PATH_INFO"])
        else:
            activity.current = (started, method, env["PATH_INFO"])
        result = None
        tail: Optional[Tail] = None
        # --threads auto: a request on the loop is timed for the governor once per
        # SAMPLE_INTERVAL_S (never, without a governor or once on a pool: the next is +inf).
        sample_cpu = -1.0
        if started >= self.next_sample:
            sample_cpu = _thread_time()
            sample_switches = _getrusage(_RUSAGE_THREAD).ru_nvcsw
            sample_wall = _monotonic()
        try:
            result = app(env, ex.start_response)
            if type(result) is list and len(result) == 1 and ex.status is not None:
                ex.send_one(result[0])
            elif type(result) is FileWrapper and ex.status is not None and (
                    where := ex.file_fd(result)) is not None:
                tail = self._send_file(ex, where)
            else:
                # Hold the first chunk: if it is also the last, it goes out with a Content-Length.
                first: Optional[bytes] = None
                it = iter(result)
                for data in it:
                    if not data:
                        continue
                    if ex.sent:
                        ex.write(data)
                    elif first is None:
                        first = data
                        continue
                    else:
                        ex.write(first)
                        ex.write(data)
                        first = None
                    if conn.parked:
                        # The client reads slower than the app yields: the rest of the iterator is
                        # advanced as it reads, and the worker serves others meanwhile.
                        tail = Tail(ex, it, -1, 0, 0, None)
                        break
                else:
                    if first is not None and not ex.sent:
                        ex.send_one(first)
                    else:
                        ex.finish()
        except ClientGone:
            ex.keep_alive = False
        except HTTPError:
            raise
        except Exception:
            self._log_app_error(env)
            if ex.sent:
                ex.keep_alive = False  # never a second status line; the client sees a cut response
            else:
                try:
                    send_closing(conn, error_response("500 Internal Server Error"))
                except ClientGone:
                    pass
                ex.code = 500
                ex.keep_alive = False
        finally:
            if tail is not None:
                # Not finished: the request ends when its tail is out (Server._finish).
                if threaded:
                    activity.inflight.pop(ident, None)
                else:
                    activity.current = None
            else:
                # (a list has no close(): the common case skips the attribute search)
                if type(result) is not list and result is not None and hasattr(result, "close"):
                    try:
                        result.close()
                    except Exception:
                        self._log_app_error(env)
                ended = _monotonic()
                seconds = ended - started
                if not threaded:
                    # The next request of this pass starts now, not when the loop woke up.
                    self.now = ended
                    outbox = self.outbox
                    if outbox is not None and outbox.held and ended - outbox.since >= _FLUSH_AFTER_S:
                        outbox.flush()  # Outbox.expire, inline
                    if sample_cpu >= 0.0:
                        self.next_sample = ended + _SAMPLE_INTERVAL_S
                        if self.governor.sample(ended - sample_wall, _thread_time() - sample_cpu,
                                                _getrusage(_RUSAGE_THREAD).ru_nvcsw - sample_switches):
                            self._start_pool(self.governor)
                if threaded:
                    activity.inflight.pop(ident, None)
                    label = method if method in METRIC_METHODS else "other"  # bounded label values
                    with self._count_lock:
                        activity.record(label, ex.code, seconds, ex.written)
                else:
                    # Inline Activity.record: this runs for every request, a call would cost ~10 %.
                    activity.current = None
                    activity.requests += 1
                    key = _COUNT_KEYS.get((method, ex.code // 100))
                    if key is None:
                        key = (method if method in METRIC_METHODS else "other", ex.code // 100)
                    counts = activity.counts
                    counts[key] = counts.get(key, 0) + 1
                    activity.dur[_bisect(activity.dur_bounds, seconds)] += 1
                    activity.dur_sum += seconds
                    size = ex.written
                    # Small bodies skip the search: they fall in the first bucket.
                    activity.size[0 if size <= activity.size_first else _bisect(activity.size_bounds, size)] += 1
                    activity.size_sum += size
                if self.access_log:
                    self._log_access(env, ex.code, ex.written, seconds)
        if tail is not None:
            tail.context = Request(env, method, started, result, -1)
            conn.tail = tail
            return SENDING
        keep = ex.keep_alive
        if conn.parked:
            return SENDING if keep else CLOSING
        return READING if keep else CLOSED

    def _send_file(self, ex: Exchange, where: Tuple[int, int, int]) -> Optional[Tail]:
        """wsgi.file_wrapper around a real file (fd, offset, size): sendfile(2), the rest as the
        client reads."""
        fd, offset, size = where
        head = ex._head_bytes(size)
        if ex.framing is NO_BODY:
            ex._send_last(head)
            return None
        count = min(size, ex.length if ex.length is not None else size)
        left = ex.send_range(head, fd, offset, count)
        if left:
            return Tail(ex, None, fd, offset + count - left, left, None)
        if ex.length is not None and ex.written < ex.length:
            ex.keep_alive = False  # the app declared more than the file holds
        return None

    def _finish(self, ex: Exchange, request: Request) -> bool:
        """The end of a request whose response went out as its client read: close what the app
        returned, count and log it; True to keep the connection."""
        result = request.result
        if result is not None and hasattr(result, "close"):
            try:
                result.close()
            except Exception:
                self._log_app_error(request.env)
        if request.fd >= 0:
            os.close(request.fd)
        if ex.length is not None and ex.written < ex.length:
            ex.keep_alive = False  # the app declared more than it gave
        self._count(request.env, ex, _monotonic() - request.started)
        return ex.keep_alive

    def _count(self, env: Dict[str, Any], ex: Exchange, seconds: float) -> None:
        """Count a finished request and write its access line (off the hot path: _run_app inlines
        this for the common request)."""
        method = env["REQUEST_METHOD"]
        label = method if method in METRIC_METHODS else "other"  # bounded label values
        if self.pool is not None:
            with self._count_lock:
                self.activity.record(label, ex.code, seconds, ex.written)
        else:
            self.activity.record(label, ex.code, seconds, ex.written)
        if self.access_log:
            self._log_access(env, ex.code, ex.written, seconds)

    def _log_access(self, env: Dict[str, Any], code: int, size: int, seconds: float) -> None:
        """--access-log: one line per request, in the master's format, in one write(2)."""
        fields = {
            "remote": env["REMOTE_ADDR"],
            "method": env["REQUEST_METHOD"],
            "path": env["PATH_INFO"],
            "query": env["QUERY_STRING"],
            "status": code,
            "size": size,
            "duration_ms": round(seconds * 1000, 3),
            "worker": self.worker_id,
        }
        _log_line("INFO", "access", fields, self.log_json)

    def _log_app_error(self, env: Dict[str, Any]) -> None:
        fields = {
            "pid": os.getpid(),
            "method": env.get("REQUEST_METHOD"),
            "path": env.get("PATH_INFO"),
            "traceback": traceback.format_exc(),
        }
        _log_line("ERROR", "app_error", fields, self.log_json)
