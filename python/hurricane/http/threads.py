"""--threads: a request handed to a thread of the pool, and its connection taken back by the event
loop when the thread is done. Mixed into ``server.Server``.

Why apart: while the app runs on the loop (``--threads 1``, or ``auto`` until the governor sees the
app wait: http/governor.py) none of this runs; with a pool, the event loop never waits
for the app, and a thread never touches epoll: it appends the connection and its state to
``_done`` (an atomic deque append) and wakes the loop, which settles it.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict

from hurricane.http.governor import Governor
from hurricane.http.rejections import HTTPError
from hurricane.http.wire import CLOSED, IN_THREAD, READING, ClientGone, Conn
from hurricane.log import log_line as _log_line


class ThreadHandoff:
    """The --threads side of ``Server``."""

    @staticmethod
    def _new_pool(threads: int) -> ThreadPoolExecutor:
        """The pool the app runs on, for --threads N and for auto once the governor starts one."""
        return ThreadPoolExecutor(threads, "hurricane-app")

    def _start_pool(self, governor: Governor) -> None:
        """--threads auto: the governor saw the app wait; from the next request on, it runs on a
        pool. Called on the loop's thread, between two requests, so nothing is in flight."""
        self.threads = governor.threads
        self.pool = self._new_pool(governor.threads)
        self.next_sample = math.inf
        # Responses now leave from their thread at once; the outbox holds only the loop's own.
        self._hold = None
        fields = {"pid": os.getpid(), "worker": self.worker_id, "threads": governor.threads,
                  "waiting_share": round(governor.share, 2), "gain": round(governor.gain, 2)}
        _log_line("INFO", "threads_started", fields, self.log_json)

    def _in_thread(
        self, conn: Conn, app: Callable, env: Dict[str, Any], method: str,
        version11: bool, keep_alive: bool, body: Any,
    ) -> None:
        """--threads: run one request off the event loop, then hand the connection back."""
        state = CLOSED
        try:
            state = self._run_app(conn, app, env, method, version11, keep_alive, body)
        except HTTPError as exc:
            state = self._reject(conn, exc.reason)
        except ClientGone:
            pass
        except BaseException:  # noqa: BLE001 - a thread must always hand its connection back
            self._log_app_error(env)
        finally:
            self._done.append((conn, state))  # deque.append is atomic: no lock needed
            self._wake()

    def _take_back(self, app: Callable, epoll: Any, now: float) -> None:
        """Connections a thread is done with: close them, or watch them again."""
        done = self._done
        while done:
            conn, state = done.popleft()
            self._inflight -= 1
            conn.state = IN_THREAD
            self.conns[conn.fd] = conn
            if state is CLOSED:
                self._close(conn, epoll)
                continue
            conn.last = now
            if state is READING and conn.buf:
                state = self._process(conn, app, now)
            self._settle(conn, state, epoll)

    def _resume_in_thread(self, conn: Conn) -> None:
        state = CLOSED
        try:
            state = self._resume(conn)
        except BaseException:  # noqa: BLE001 - a thread must always hand its connection back
            self._log_app_error({})
        finally:
            self._done.append((conn, state))
            self._wake()
