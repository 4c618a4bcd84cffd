"""--threads: a request handed to a thread of the pool, and its connection taken back by the event
loop when the thread is done. Mixed into ``server.Server``.

Why apart: while the app runs on the loop (``--threads 1``, or ``auto`` until the governor sees the
app wait: http/governor.py) none of this runs; with a pool, the event loop never waits for the app.

Why a thread gives the common connection back itself: a keep-alive connection whose response is all
out and that has nothing more buffered only needs watching for its next request. The thread puts it
back in the loop's table and re-adds it to epoll (``_rearm``), without waking the loop: a wakeup,
two syscalls and a hand-over of the GIL saved on every request; the loop sees the connection again
when its next request arrives. Anything else (a pipelined request, a parked response, a close, a
worker stopping) goes the long way: the connection and its state are appended to ``_done`` (an
atomic deque append) and the loop, woken, settles it.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from typing import Any, Callable, Dict, Tuple

from hurricane.http.governor import Governor
from hurricane.http.rejections import HTTPError
from hurricane.http.wire import CLOSED, EPOLLIN, IN_THREAD, READING, ClientGone, Conn, register
from hurricane.log import log_line as _log_line


class Pool:
    """The app's threads, each taking the next call from one queue.

    Why not concurrent.futures: a ThreadPoolExecutor makes a Future and a work item and takes two
    Python-level semaphores per call (4.2 us a call here, against 0.2 through a SimpleQueue), and
    nothing here waits for a result. Threads start as calls need them, up to ``size``; they are
    daemons, so a worker past its drain deadline exits without waiting for a request that hangs.
    """

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self.started = 0
        self._calls: "queue.SimpleQueue[Tuple[Callable[..., None], Tuple[Any, ...]]]" = queue.SimpleQueue()

    def submit(self, busy: int, call: Callable[..., None], *args: Any) -> None:
        """Queue ``call(*args)``. ``busy``: the calls queued or running, this one included; a
        thread starts while there are more of them than threads."""
        if busy > self.started and self.started < self.size:
            self.started += 1
            threading.Thread(target=self._run, name=f"{self.name}-{self.started}", daemon=True).start()
        self._calls.put((call, args))

    def _run(self) -> None:
        get = self._calls.get
        while True:
            call, args = get()
            try:
                call(*args)
            except BaseException:  # noqa: BLE001, S110 - each call reports its own errors; the thread lives on
                pass


class ThreadHandoff:
    """The --threads side of ``Server``."""

    @staticmethod
    def _new_pool(threads: int) -> Pool:
        """The pool the app runs on, for --threads N and for auto once the governor starts one."""
        return Pool(threads, "hurricane-app")

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

    def _hand_off(self, conn: Conn, call: Callable[..., None], *args: Any) -> None:
        """Run ``call(*args)`` for ``conn`` on the pool. The loop lets go of the connection first
        (epoll and its table): the thread may hand it back (``_rearm``) before this returns."""
        register(self._epoll, conn, 0)
        self.conns.pop(conn.fd, None)
        conn.state = IN_THREAD
        self._submitted += 1
        self.pool.submit(self._submitted - self._returned, call, *args)

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
            if state is READING and not conn.buf and not conn.parked and not self.stopping:
                self._rearm(conn)
            else:
                self._done.append((conn, state))  # deque.append is atomic: no lock needed
                self._wake()

    def _rearm(self, conn: Conn) -> None:
        """A thread's keep-alive connection, all answered and nothing more buffered: back in the
        loop's table, then watched for its next request; the loop is not woken (unless it paused
        accepting until a thread is free). The table first: once epoll watches the socket, the
        loop may serve its next request at once. The loop closes a connection it holds only past
        a drain deadline or idle past --keep-alive (this one was just used), and a closed one
        makes ``register`` fail here, which is then all there is to do."""
        conn.last = time.monotonic()
        conn.state = READING
        conn.events = EPOLLIN
        self.conns[conn.fd] = conn
        with self._count_lock:
            self._returned += 1
        try:
            self._epoll.register(conn.fd, EPOLLIN)
        except (OSError, ValueError):
            pass
        if self._paused:
            self._wake()

    def _take_back(self, app: Callable, epoll: Any, now: float) -> None:
        """Connections a thread is done with: close them, or watch them again."""
        done = self._done
        while done:
            conn, state = done.popleft()
            with self._count_lock:
                self._returned += 1
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
