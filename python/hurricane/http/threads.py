"""--threads: the app's pool, whose threads also serve the keep-alive connections they finished
with. Mixed into ``server.Server``.

Why apart: while the app runs on the loop (``--threads 1``, or ``auto`` until the governor sees the
app wait: http/governor.py) none of this runs; with a pool, the event loop never waits for the app.

Why the threads watch their own connections: a keep-alive connection whose response is all out and
that has nothing more buffered only waits for its next request. Handed back to the loop, that next
request cost the loop a wakeup, a read, a parse, an epoll_ctl and a hand-over to a thread through a
queue, with the GIL passed from thread to loop to thread: under a Django ORM read, 3.9 context
switches and 2 epoll_ctl a request, against 2.1 and 1 now, and 4-8 % of the worker's CPU
(docs/PERFORMANCE.md, session 19). Instead the thread that finished it puts it in the pool's own
epoll (``Pool.watch``, EPOLLONESHOT: one thread wakes for it), and whichever thread wakes reads the
request and runs it where it is (``_serve_idle``). A connection there is ``POOL_IDLE`` and stays in
the loop's table, where its sweep closes it when idle past --keep-alive; a thread takes it
(``_claim``) or the loop closes it (``Server._close``) under ``_count_lock``, so never both.

Only a plain request, all in one read (a head, and its body if it has a Content-Length), runs on
the thread; anything else (half a head, a pipeline, a chunked or late body, an Expect, a bad head, a
close, a worker stopping) goes the long way: the connection and its state are appended to
``_done`` (an atomic deque append) and the loop, woken, settles it as it settles everything else.

Why the pool has an outbox (``PoolOutbox``) and uses it only while the worker is
CPU-bound: a send() that wakes a client sleeping on another CPU pays for that wakeup, as the loop's
outbox explains; sent from their threads at once, a pool's responses paid it one by one (perf on a
Django view at --threads 4: 9 % of the worker's CPU, in the waker's sock_def_readable). A thread
done with a small keep-alive response hands the connection to the outbox, which sends the burst
when no other request is running, when no more clients than threads are left unheld, when the
oldest is FLUSH_AFTER_S old, or at its limits, and then gives each connection to the pool again.
Holding costs latency and saves CPU, which only pays when the CPU is what requests wait for and
other clients keep it busy meanwhile: below BUSY_SHARE of a CPU (or of the cgroup's quota, if
less) over the last LOAD_WINDOW_S (an app that sleeps or waits on a slow database), with no other
request running (a lone client), or with HOLD_CLIENTS_PER_THREAD connections a thread or fewer,
nothing is held (``_worth_holding``, ``_burst_due``).
"""

from __future__ import annotations

import math
import os
import select
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Tuple

from hurricane.cgroup import cpu_quota
from hurricane.http.governor import Governor
from hurricane.http.rejections import HTTPError
from hurricane.http.request import HEAD_CACHE
from hurricane.http.wire import (
    CLOSED,
    FLUSH_AFTER_S,
    HELD_MAX_TOTAL_BYTES,
    IN_THREAD,
    MAX_HELD,
    POOL_IDLE,
    READING,
    RECV_SIZE,
    ClientGone,
    Conn,
    Outbox,
    State,
    park,
    register,
    unhold,
)
from hurricane.log import log_line as _log_line

_ONESHOT_IN = select.EPOLLIN | select.EPOLLONESHOT
_monotonic = time.monotonic
_process_time = time.process_time

# The pool's outbox holds responses only while the worker used at least this share of the CPU it
# may use (one, or its cgroup's quota if less) over the last window (see the module's doc).
BUSY_SHARE = 0.9
LOAD_WINDOW_S = 0.01
# ... and has more than this many open connections a thread (see ThreadHandoff._worth_holding).
HOLD_CLIENTS_PER_THREAD = 4


def _keep_back(conn: Conn, data: bytes) -> None:
    """Exchange's hold on a pool's thread: the response waits on the connection until the thread
    is done with it (``ThreadHandoff._let_go``), and only then joins the pool's outbox, so the
    outbox never sends for a connection a thread still has."""
    conn.out += data


class Pool:
    """The app's threads. Each waits on the pool's epoll for a call the loop queued (a byte on a
    pipe, then the call from a deque) or for one of the pool's idle connections to become readable.

    Why not a queue the threads block on: a thread blocks in one place, and it must also wait for
    its connections; a pipe in the same epoll costs a write and a read a call, as a queue's futex
    wake and wait did. Why not concurrent.futures: a ThreadPoolExecutor makes a Future and a work
    item and takes two Python-level semaphores per call, and nothing here waits for a result.
    Threads start with the first call, all of them: the connections they watch are served by
    whichever is free, so a pool started one thread at a time could stay at one. They are daemons,
    so a worker past its drain deadline exits without waiting for a request that hangs.
    """

    def __init__(self, size: int, name: str, on_readable: Callable[[int], None]) -> None:
        self.size = size
        self.name = name
        self.started = 0
        self.epoll = select.epoll()
        self._on_readable = on_readable
        self._calls: Deque[Tuple[Callable[..., None], Tuple[Any, ...]]] = deque()
        self._calls_r, self._calls_w = os.pipe()
        os.set_blocking(self._calls_r, False)  # a thread woken for a call another one took reads nothing
        self.epoll.register(self._calls_r, select.EPOLLIN)

    def submit(self, call: Callable[..., None], *args: Any) -> None:
        """Queue ``call(*args)`` for the next free thread."""
        if not self.started:
            for number in range(1, self.size + 1):
                threading.Thread(target=self._run, name=f"{self.name}-{number}", daemon=True).start()
            self.started = self.size
        self._calls.append((call, args))  # before the byte: a thread that reads it finds the call
        os.write(self._calls_w, b"x")

    def watch(self, fd: int) -> None:
        """Wake one thread when ``fd`` is readable, once; the next watch() arms it again."""
        try:
            self.epoll.modify(fd, _ONESHOT_IN)
        except FileNotFoundError:
            self.epoll.register(fd, _ONESHOT_IN)

    def _run(self) -> None:
        poll = self.epoll.poll
        calls = self._calls
        on_readable = self._on_readable
        while True:
            try:
                # Queued calls first: each is a request the loop already read, older than the
                # connections that became readable since. Waiting behind them for the pipe's one
                # entry in epoll's list, they would get a thread once per round of the busy
                # connections: a pool of 8 under 50 clients kept new connections waiting 0.6 s.
                if calls and self._take_call():
                    continue
                for fd, _ in poll(-1, 1):
                    if fd != self._calls_r:
                        on_readable(fd)
                    else:
                        self._take_call()
            except BaseException:  # noqa: BLE001, S110 - each call reports its own errors; the thread lives on
                pass

    def _take_call(self) -> bool:
        """Run the next queued call if this thread gets one's byte; False when every waiting call's
        byte was taken (their threads run them). A call is appended before its byte is written and
        a thread pops one only for a byte it read, so the deque always has the call it pops."""
        try:
            os.read(self._calls_r, 1)
        except BlockingIOError:
            return False
        call, args = self._calls.popleft()
        call(*args)
        return True


class PoolOutbox(Outbox):
    """The pool's outbox: connections whose threads are done with them wait here for their burst.

    Why apart from the loop's: a connection held here belongs to the outbox alone (no thread has
    it, and the loop's table does not list it), so the outbox's own lock guards it, not every
    connection's ``_OUT_LOCK``. A burst is sent under that lock: a thread done with its request
    meanwhile waits for the burst to go, where without the lock it would take the GIL from the
    sender at every send() and give it back (Django at --threads 4: 4 % of its rate). Once its
    bytes are out (or parked: the loop sends the rest as the client reads; or its socket failed)
    each connection goes to ``settle``. Of Outbox it uses the bounds and the flusher thread;
    ``hold`` and ``stalled`` are the loop's.
    """

    def __init__(self, wake: Callable[[], None], settle: Callable[[Conn, State], None]) -> None:
        super().__init__(wake)
        self._lock = threading.Lock()
        self._settle = settle

    def add(self, conn: Conn) -> bool:
        """Hold ``conn``, whose thread is done with it, until its response (``conn.out``) goes out
        with the others; True when the burst is full and should go now."""
        with self._lock:
            held = self.held
            if not held:
                self.since = _monotonic()
            held.append(conn)
            self.held_bytes += len(conn.out)
            if len(held) >= MAX_HELD or self.held_bytes >= HELD_MAX_TOTAL_BYTES:
                return True
            if self._parked:
                self._parked = False
                self._unpark.set()
        return False

    def flush(self) -> None:
        if not self.held:
            return
        settle = self._settle
        with self._lock:
            burst, self.held = self.held, []
            self.held_bytes = 0
            for conn in burst:
                data, conn.out = conn.out, b""
                try:
                    sent = conn.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    settle(conn, CLOSED)
                    continue
                if sent != len(data):
                    park(conn, memoryview(data)[sent:])  # the client is not reading: the loop waits for it
                settle(conn, READING)


class ThreadHandoff:
    """The --threads side of ``Server``."""

    def _new_pool(self, threads: int) -> Pool:
        """The pool the app runs on, for --threads N and for auto once the governor starts one."""
        self.pool_outbox = PoolOutbox(self._wake, self._after_burst)
        threading.Thread(target=self.pool_outbox.run_flusher, name="hurricane-pool-flusher", daemon=True).start()
        # What Exchange holds with on a thread: _keep_back while the worker is CPU-bound, else None.
        self._thread_hold: Any = None
        self._load_mark = (_monotonic(), _process_time())
        self._load_until = 0.0
        # One CPU at most: the app's Python holds the GIL; less under a quota (a pod's limits.cpu).
        self._busy_cpu = BUSY_SHARE * min(1.0, cpu_quota())
        return Pool(threads, "hurricane-app", self._serve_idle)

    def _running(self) -> int:
        """Requests on the pool's threads or queued for them (not those in its outbox)."""
        return self._submitted - self._returned - len(self.pool_outbox.held)

    def _worth_holding(self) -> bool:
        """Whether a CPU-bound worker's next response should wait for a burst: only while another
        request runs (alone, it would wait for nothing and leave after the app's close(), not
        before) and the worker has more than HOLD_CLIENTS_PER_THREAD clients a thread, enough to
        keep the CPU busy while some wait for their burst (a Django view at --threads 4: 8
        clients lost 5 % to held responses, 50 gained 27 %; one lost 20 % without this rule)."""
        running = self._running()
        return running >= 2 and len(self.conns) + running > HOLD_CLIENTS_PER_THREAD * self.threads

    def _burst_due(self, now: float) -> bool:
        """Whether the pool's outbox should send now: when nothing else runs (no request will end
        soon to join it), when the clients it does not hold are no more than the threads (the
        rest must not wait for each other: with 8 clients and 4 threads, bursts of all 8 lost 9 %
        of a Django view's rate to the pause while they sent their next requests), or when its
        oldest waited FLUSH_AFTER_S."""
        running = self._running()
        return (running <= 0 or len(self.conns) + running <= self.threads
                or now - self.pool_outbox.since >= FLUSH_AFTER_S)

    def _measure_load(self, now: float) -> None:
        """Once per LOAD_WINDOW_S: was the worker CPU-bound over the last window? (One clock read
        a window; two threads that both got here measure a window of nothing: skipped.)"""
        self._load_until = now + LOAD_WINDOW_S
        since, cpu_since = self._load_mark
        if now - since < LOAD_WINDOW_S / 2:
            return
        cpu = _process_time()
        self._load_mark = (now, cpu)
        self._thread_hold = _keep_back if cpu - cpu_since >= self._busy_cpu * (now - since) else None

    def _start_pool(self, governor: Governor) -> None:
        """--threads auto: the governor saw the app wait; from the next request on, it runs on a
        pool. Called on the loop's thread, between two requests, so nothing is in flight."""
        self.threads = governor.threads
        self.pool = self._new_pool(governor.threads)
        self.next_sample = math.inf
        # Responses now leave from their threads, through the pool's outbox; what the loop still
        # sends itself (a static file) goes at once.
        self._hold = None
        fields = {"pid": os.getpid(), "worker": self.worker_id, "threads": governor.threads,
                  "waiting_share": round(governor.share, 2), "gain": round(governor.gain, 2)}
        _log_line("INFO", "threads_started", fields, self.log_json)

    def _hand_off(self, conn: Conn, call: Callable[..., None], *args: Any) -> None:
        """Run ``call(*args)`` for ``conn`` on the pool. The loop lets go of the connection first
        (epoll and its table): the thread may hand it back before this returns."""
        register(self._epoll, conn, 0)
        self.conns.pop(conn.fd, None)
        conn.state = IN_THREAD
        with self._count_lock:
            self._submitted += 1
        self.pool.submit(call, *args)

    def _in_thread(
        self, conn: Conn, app: Callable, env: Dict[str, Any], method: str,
        version11: bool, keep_alive: bool, body: Any,
    ) -> None:
        """--threads: run one request off the event loop, then keep or hand back the connection."""
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
            self._let_go(conn, state)

    def _serve_idle(self, fd: int) -> None:
        """A pool thread: one of the pool's idle connections is readable. Its request runs here if
        it is a plain one all in this read; the loop gets anything else."""
        conn = self.conns.get(fd)
        if conn is None or not self._claim(conn):
            return  # closed by the loop meanwhile, or another connection now has its number
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            self._rearm(conn)
            return
        except OSError:
            data = b""
        if not data:
            self._let_go(conn, CLOSED)
            return
        conn.buf = data
        end = data.find(b"\r\n\r\n")
        parsed = None
        if end > 0 and data[0] not in b"\r\n":
            head = data[:end]
            parsed = HEAD_CACHE.get(head)
            if parsed is None:
                try:
                    parsed = self.parser.parse(head)
                except HTTPError:
                    parsed = None  # the loop parses it again and refuses it, logged and counted there
            if parsed is not None and (parsed[4] or parsed[6] or len(data) != end + 4 + parsed[5]):
                parsed = None  # chunked, Expect: 100-continue, a body not all here, or a pipeline
        if parsed is None:
            self._let_go(conn, READING)
            return
        state = CLOSED
        try:
            state = self._handle(conn, head, end + 4, self._app, parsed, None, _monotonic())
        except HTTPError as exc:
            state = self._reject(conn, exc.reason)
        except ClientGone:
            pass
        except BaseException:  # noqa: BLE001 - a thread must always hand its connection back
            self._log_app_error({})
        finally:
            self._let_go(conn, state)

    def _claim(self, conn: Conn) -> bool:
        """A thread takes one of the pool's idle connections, unless the loop closed it first."""
        with self._count_lock:
            if conn.state is not POOL_IDLE:
                return False
            conn.state = IN_THREAD
            self._submitted += 1
            self.conns.pop(conn.fd, None)
        return True

    def _let_go(self, conn: Conn, state: State) -> None:
        """A thread is done with ``conn``: it waits for its next request in the pool (after its
        response, if the thread kept that back for the pool's outbox), or the loop settles it (a
        close, a parked response, buffered bytes, a worker stopping)."""
        now = _monotonic()
        if now >= self._load_until:
            self._measure_load(now)
        if state is READING and not conn.buf and not conn.parked and not self.stopping:
            outbox = self.pool_outbox
            if not conn.out:
                self._rearm(conn)
                if outbox.held and self._burst_due(now):
                    outbox.flush()  # held ones that no request still running will send
                return
            if outbox.add(conn) or self._burst_due(now):  # the outbox's now; full, or due
                outbox.flush()
            return
        if conn.out:
            unhold(conn)  # kept back, but the loop takes the connection: it sends it first
        self._done.append((conn, state))  # deque.append is atomic: no lock needed
        self._wake()

    def _after_burst(self, conn: Conn, state: State) -> None:
        """The pool's outbox sent ``conn``'s response."""
        if state is READING and not conn.buf and not conn.parked and not self.stopping:
            self._rearm(conn)
        else:
            self._done.append((conn, state))
            self._wake()

    def _rearm(self, conn: Conn) -> None:
        """A thread's keep-alive connection, all answered and nothing more buffered: idle in the
        pool, in the loop's table for its sweep; the loop is not woken (unless it paused accepting
        until a thread is free). The table first: once the pool watches the socket, a thread may
        take it at once. The loop closes a connection it holds only past a drain deadline or idle
        past --keep-alive (this one was just used); if it did, ``watch`` fails on the closed socket
        or arms another connection's number, which ``_claim`` then leaves alone."""
        conn.last = _monotonic()
        with self._count_lock:
            conn.state = POOL_IDLE
            self.conns[conn.fd] = conn
            self._returned += 1
        try:
            self.pool.watch(conn.fd)
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
