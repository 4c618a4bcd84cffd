"""The worker's event loop: accept on the shared socket, read requests, run the app, respond.

Why one loop per process: one epoll loop multiplexes keep-alive connections; the app runs inline,
one request at a time (a prefork worker, like gunicorn's sync worker, but with keep-alive and
pipelining), or on a pool of --threads with the loop still owning every socket. Each connection
is in one `State` (wire.py) and the loop watches its socket for what that state waits on: a
request (IN) or a client that reads a parked response (OUT). Nothing here waits for one client:
bodies arrive on the loop (body.py), responses park (wire.py) and continue as a `Tail`
(response.py).

Every per-request step is a dict lookup or a C-level bytes operation where it can be: the environ
is a copy of a prebuilt dict (request.py's caches), and a small response leaves in a single
send(). Where bookkeeping is inlined below rather than called, it was measured to pay; it says so.
"""

from __future__ import annotations

import math
import os
import select
import signal
import socket
import sys
import threading
import time
from _socket import socket as _CSocket
from collections import deque
from io import BytesIO
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from hurricane import LISTEN_FD, __version__
from hurricane.http.body import EMPTY_INPUT, ChunkedBody, PendingBody
from hurricane.http.governor import Governor
from hurricane.http.rejections import REJECTIONS, HTTPError, RejectLog, error_response
from hurricane.http.proxies import Proxies
from hurricane.http.request import HEAD_CACHE, HeadParser
from hurricane.http.response import (
    NO_BODY,
    WRITE_TIMEOUT_S,
    Exchange,
    FileWrapper,
    Tail,
    refresh_date,
)
from hurricane.http.wire import (
    CLOSED,
    CLOSING,
    EPOLLIN,
    EPOLLOUT,
    IN_THREAD,
    POOL_IDLE,
    READING,
    RECV_SIZE,
    SENDING,
    UNSENT,
    UNSENT_BUDGET_BYTES,
    ClientGone,
    Conn,
    Outbox,
    State,
    close_soon,
    conn_send,
    has_input,
    push,
    register,
    send_closing,
)
from hurricane.http.threads import ThreadHandoff
from hurricane.log import log_line as _log_line
from hurricane.http.wsgi_call import Request, WsgiCall

# While draining, a keep-alive connection idle this long is closed; until then its next request is
# still served (with Connection: close), so a client in the middle of a request loop sees no error.
DRAIN_IDLE_GRACE_S = 1.0
SERVER_SOFTWARE = "hurricane/" + __version__
# A lone worker takes up to this many queued connections per wakeup (see Server._accept).
ACCEPT_BATCH = 16
# --threads, more than one worker: a busy worker stops accepting for at most this long.
ACCEPT_PAUSE_MAX_S = 0.1

EPOLLEXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 0)


class Server(WsgiCall, ThreadHandoff):
    """The worker's event loop: accept on the shared socket, parse, call the app, respond.

    Calling the app for a request is ``WsgiCall``'s (http/wsgi_call.py), handing a request to a
    --threads thread and taking its connection back is ``ThreadHandoff``'s (http/threads.py)."""

    def __init__(self, config: Dict[str, Any], activity: Any) -> None:
        self.activity = activity
        http = config.get("http") or {}
        log_json = bool((config.get("log") or {}).get("json"))
        self.reject_log = RejectLog(log_json)
        self.keep_alive_s = float(config.get("keep_alive", 5))
        self.graceful_timeout_s = float(config.get("graceful_timeout", 30))
        self.write_timeout_s = float(http.get("write_timeout", 30))
        WRITE_TIMEOUT_S[0] = self.write_timeout_s
        self.min_body_rate = float(http.get("min_body_rate", 240))
        self.max_body = int(http.get("max_body_size", 100 * 1024 * 1024))
        limit_line = int(http.get("limit_request_line", 8190))
        limit_fields = int(http.get("limit_request_fields", 100))
        limit_field_size = int(http.get("limit_request_field_size", 8190))
        self.parser = HeadParser(limit_line, limit_fields, limit_field_size, self.max_body)
        self.limit_line = limit_line
        # The most a legal head can take: every limit at its maximum (bounds a connection's buffer).
        self.max_head = limit_line + 2 + limit_fields * (limit_field_size + 2)
        allow = http.get("forwarded_allow_ips", ["127.0.0.1", "::1"])
        self.proxies = Proxies(allow)
        self.trust_all = self.proxies.trust_all
        self.trusted_ips = self.proxies.trusted_ips
        self.trusted_nets = self.proxies.trusted_nets
        self.mounts: List[Any] = []  # static/media, set by the worker once the app (and Django) loaded
        self.access_log = bool(http.get("access_log"))
        self.log_json = log_json
        self.worker_id = config.get("worker", 0)
        threads = http.get("threads", "auto")
        # --threads auto: the app runs on the loop until sampled requests show it waiting
        # (http/governor.py), then on a pool (ThreadHandoff._start_pool).
        self.governor = Governor() if threads == "auto" else None
        # When the loop times its next request for the governor (wsgi_call.py): never without one.
        self.next_sample = 0.0 if self.governor is not None else math.inf
        self.threads = 1 if threads == "auto" else max(1, int(threads))
        self.rotate_accept = int(config.get("workers", 1)) > 1
        self.accept_batch = 1 if self.rotate_accept else ACCEPT_BATCH
        # --threads: requests run on a pool; the event loop stays on the main thread.
        self.pool = self._new_pool(self.threads) if self.threads > 1 else None
        # Without threads, small keep-alive responses leave in bursts (see Outbox); with them, the
        # pool has an outbox of its own (ThreadHandoff._new_pool), for its threads' responses.
        self.outbox = Outbox(self._wake) if self.pool is None else None
        self._hold = self.outbox.hold if self.outbox is not None else None
        self._done: Deque[Tuple[Conn, State]] = deque()
        # --threads: requests handed to the pool, and handed back (by a thread or the loop, under
        # _count_lock); the difference is what the pool holds.
        self._submitted = 0
        self._returned = 0
        self._app: Optional[Callable] = None  # set by serve(): what a pool thread runs for a request it read
        self._paused = False  # --threads: every thread busy, the siblings take new connections
        self._epoll: Any = None
        self._count_lock = threading.Lock()
        self.stopping = False
        self.now = time.monotonic()  # the loop's clock, read once per wakeup
        self._wake_w: Optional[socket.socket] = None
        self.conns: Dict[int, Conn] = {}
        self.base_environ: Dict[str, Any] = {}
        self.listen_family = (0, 0, 0)  # the listener's (family, type, proto), for accepted sockets

    def request_stop(self) -> None:
        """Begin draining. Safe from a signal handler and from another thread."""
        self.stopping = True
        self._wake()

    def _wake(self) -> None:
        """Interrupt the event loop's epoll wait, from any thread."""
        wake = self._wake_w
        if wake is not None:
            try:
                wake.send(b"x")
            except OSError:
                pass

    def _listener(self) -> socket.socket:
        """The shared listening socket (fd 3), and the environ every request starts from."""
        listener = socket.socket(fileno=LISTEN_FD)
        listener.setblocking(False)
        self.listen_family = (int(listener.family), int(listener.type), listener.proto)
        sockname = listener.getsockname()
        if isinstance(sockname, tuple):
            server_name, server_port = str(sockname[0]), str(sockname[1])
        else:
            server_name, server_port = str(sockname), ""
        self.base_environ = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
            "SCRIPT_NAME": "",
            "SERVER_NAME": server_name,
            "SERVER_PORT": server_port,
            "SERVER_SOFTWARE": SERVER_SOFTWARE,
        }
        self.parser.base_environ = self.base_environ
        return listener

    def _wakeup(self) -> socket.socket:
        """The loop's wakeup: signals (TERM) and --threads' finished requests write to its pair."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake_w = wake_w
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        return wake_r

    def serve(self, app: Callable) -> int:
        self._app = app
        listener = self._listener()
        wake_r = self._wakeup()

        epoll = self._epoll = select.epoll()
        lfd = listener.fileno()
        # EPOLLEXCLUSIVE: a new connection wakes one idle worker, not the whole pool.
        epoll.register(lfd, EPOLLIN | EPOLLEXCLUSIVE)
        epoll.register(wake_r.fileno(), EPOLLIN)
        conns = self.conns
        outbox = self.outbox
        if outbox is not None:
            threading.Thread(target=outbox.run_flusher, name="hurricane-flusher", daemon=True).start()
        listening = True
        accepting = True  # the listener is in epoll
        paused = False  # a local for the hot path; threads read its copy, self._paused
        paused_at = 0.0
        deadline = 0.0
        now = self.now = time.monotonic()
        next_sweep = now + 1.0
        next_date = now
        refresh_date()

        while True:
            if self.stopping and listening:
                listening = False
                if accepting:
                    epoll.unregister(lfd)
                    accepting = False
                listener.close()
                deadline = now + self.graceful_timeout_s
            if not listening and ((not conns and self._submitted == self._returned) or now > deadline):
                for conn in list(conns.values()):
                    self._close(conn, epoll)
                return 0
            if listening:
                if self.pool is not None:
                    # All threads busy: stop accepting, so an idle sibling worker takes the
                    # connection. Only if there is a sibling, and never for long: when every worker
                    # is busy, the keep-alive connections it serves would otherwise leave a new one
                    # in the backlog for as long as they keep sending.
                    busy = self.rotate_accept and self._running() >= self.threads
                    if busy and not paused:
                        paused = self._paused = True
                        paused_at = now
                    elif paused and (not busy or now - paused_at >= ACCEPT_PAUSE_MAX_S):
                        paused = self._paused = False
                # Past the unsent budget, new connections wait in the backlog (or go to a sibling)
                # until slow readers read or --write-timeout cuts them; the connections this worker
                # has are served on (a connection with parked bytes is not read anyway), so memory
                # is bounded by the budget plus one response per connection.
                want = not paused and UNSENT[0] <= UNSENT_BUDGET_BYTES
                if want != accepting:
                    if want:
                        epoll.register(lfd, EPOLLIN | EPOLLEXCLUSIVE)
                    else:
                        epoll.unregister(lfd)
                    accepting = want
            if paused:
                timeout = ACCEPT_PAUSE_MAX_S
            elif conns or not listening or self._submitted != self._returned or self.reject_log.suppressed:
                # (a count of left-out reject lines is due at the next second's sweep)
                timeout = 1.0 if listening else 0.1
            else:
                timeout = -1
            events = epoll.poll(timeout)
            now = self.now = time.monotonic()
            if now >= next_date:
                refresh_date()
                next_date = now + 0.25
            while True:
                # Every ready socket is read first, then the requests run: the kernel's receive
                # path runs back to back while its code is in the caches, not once after each
                # app call has evicted it.
                received = []
                others = []
                for fd, _ in events:
                    conn = conns.get(fd)
                    if conn is not None and conn.events == EPOLLIN:
                        try:
                            received.append((conn, conn.sock.recv(RECV_SIZE)))
                        except BlockingIOError:
                            pass
                        except OSError:
                            received.append((conn, b""))
                    else:
                        others.append(fd)
                for conn, data in received:
                    self._on_data(conn, data, app, epoll, now)
                for fd in others:
                    conn = conns.get(fd)
                    if conn is not None:
                        if conn.events:
                            self._on_writable(conn, app, epoll, now)
                    elif fd == lfd:
                        if accepting:
                            self._accept(listener, app, epoll, now)
                    else:
                        try:
                            wake_r.recv(4096)
                        except OSError:
                            pass
                        if self._done:
                            self._take_back(app, epoll, now)
                if outbox is None or not outbox.held:
                    break
                # Requests that arrived during this pass join its burst: their clients are woken
                # once, not twice. The outbox's own bounds (64 connections, 256 KiB, 2 ms) end the pass.
                events = epoll.poll(0)
                if not events:
                    break
                now = self.now = time.monotonic()
            if outbox is not None:
                if outbox.held:
                    outbox.flush()
                if outbox.stalled:
                    self._on_stalled(epoll)
            if not listening:
                self._sweep(epoll, now, min(self.keep_alive_s, DRAIN_IDLE_GRACE_S))
            elif now >= next_sweep:
                next_sweep = now + 1.0
                self._sweep(epoll, now, self.keep_alive_s)

    def _accept(self, listener: socket.socket, app: Callable, epoll: Any, now: float) -> None:
        """Take new connections and serve each at once.

        With siblings, one per wakeup, never a batch: the app runs inline, so a worker that took
        three queued connections would serve them one after another while its idle siblings wait.
        A lone worker has no sibling to wait for: it takes up to ACCEPT_BATCH per wakeup, which
        saves an epoll_wait per connection when clients open one per request (Connection: close).
        The master sets TCP_DEFER_ACCEPT, so the request is usually already here when accept returns.
        """
        # socket.accept() wraps the fd in socket.py's class, converting family and type to enums
        # on the way (py-spy: 8 % of a Connection: close request); the C type does all we need.
        raw_accept = listener._accept  # type: ignore[attr-defined]
        family, kind, proto = self.listen_family
        for _ in range(self.accept_batch):
            try:
                fd, addr = raw_accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE/ENFILE/ECONNABORTED: the connection stays queued or is gone; not our crash.
                _log_line("ERROR", "accept_error", {"pid": os.getpid(), "error": str(exc)}, self.log_json)
                return
            sock = _CSocket(family, kind, proto, fd)
            sock.setblocking(False)
            if self.rotate_accept:
                # EPOLLEXCLUSIVE wakes waiters in wait-queue order, and an epoll entry never moves:
                # the same worker would win every connection. Re-adding the listener puts this
                # worker at the back of the queue, round-robin like a blocking accept().
                epoll.unregister(listener.fileno())
                epoll.register(listener.fileno(), EPOLLIN | EPOLLEXCLUSIVE)
                # And let a sibling that was woken on this CPU run before we look at the queue again.
                os.sched_yield()
            conn = Conn(sock, addr, now)
            peer = conn.addr
            conn.trusted = self.trust_all or peer in self.trusted_ips or (
                bool(self.trusted_nets) and self.proxies.trusted(peer))
            # Serve what already arrived before registering with epoll: a Connection: close
            # request then costs no epoll_ctl at all.
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                sock.close()
                continue
            self.conns[conn.fd] = conn
            state = READING
            if data is not None:
                conn.buf = data
                state = self._process(conn, app, now)
            self._settle(conn, state, epoll)
            if self.stopping:
                return

    def _settle(self, conn: Conn, state: State, epoll: Any) -> None:
        """Put `conn` in `state` and make epoll watch its socket for what that state waits on."""
        if state is READING:
            if conn.parked:  # its last response did not all fit: wait for the client to read
                state = SENDING
                register(epoll, conn, EPOLLOUT)
            else:
                register(epoll, conn, EPOLLIN)
        elif state is SENDING or state is CLOSING:
            register(epoll, conn, EPOLLOUT)
        elif state is IN_THREAD:
            return  # unwatched by _hand_off, and maybe handed back already: the thread's now
        else:
            self._close(conn, epoll)
            return
        conn.state = state

    def _close(self, conn: Conn, epoll: Any) -> None:
        state = conn.state
        if state is CLOSED:
            return
        if state is POOL_IDLE:
            with self._count_lock:  # a pool thread may be taking it (threads.py, _claim)
                if conn.state is not POOL_IDLE:
                    return  # it did: its request runs, the thread settles it
                conn.state = CLOSED
        else:
            conn.state = CLOSED
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
        if conn.events:
            register(epoll, conn, 0)
        if conn.out or conn.parked:
            close_soon(conn)
        tail = conn.tail
        if tail is not None:  # cut mid-response: the app's iterable is closed, the request counted
            conn.tail = None
            tail.ex.keep_alive = False
            self._finish(tail.ex, tail.context)
        conn.sock.close()

    def _on_stalled(self, epoll: Any) -> None:
        """Connections whose held responses the socket did not take: wait for them to read."""
        for conn in self.outbox.take_stalled():  # type: ignore[union-attr]
            if conn.state is READING and conn.parked and self.conns.get(conn.fd) is conn:
                self._settle(conn, SENDING, epoll)

    def _sweep(self, epoll: Any, now: float, idle_s: float) -> None:
        """Close connections idle past ``idle_s``, or that read nothing for --write-timeout; one
        stuck mid-request gets a 408 first."""
        limit = now - idle_s
        write_limit = now - self.write_timeout_s if self.write_timeout_s > 0 else -1.0
        for conn in list(self.conns.values()):
            state = conn.state
            if state is POOL_IDLE or state is IN_THREAD:
                # The pool's: only closed when idle (under the claim lock, in _close); a thread
                # may have taken it since the table was copied.
                if state is POOL_IDLE and conn.last < limit and not has_input(conn.sock):
                    self._close(conn, epoll)
                continue
            if state is SENDING or state is CLOSING:
                if conn.last < write_limit:
                    self.reject_log.write_timeout(conn.addr, sum(len(d) for d in conn.parked))
                    self._close(conn, epoll)
                continue
            if conn.body is not None and conn.body.too_slow(now, self.min_body_rate):
                self._reject(conn, "body_too_slow")
                self._close(conn, epoll)
                continue
            if conn.last >= limit:
                continue
            if not conn.buf and has_input(conn.sock):
                # The next request arrived after this pass read its sockets: serve it, do not
                # close under it (the client would see its request go unanswered).
                continue
            if conn.body is not None:
                self._reject(conn, "body_too_slow")  # silent mid-body for --keep-alive
            elif conn.buf:
                self._reject(conn, "head_timeout")
            self._close(conn, epoll)
        self.reject_log.tick()

    def _on_data(self, conn: Conn, data: bytes, app: Callable, epoll: Any, now: float) -> None:
        """What one recv() on a readable connection returned (b"": the client closed or reset)."""
        if not data:
            self._close(conn, epoll)
            return
        pending = conn.body
        if pending is not None:
            # A body arriving on the loop: the connection is alive while bytes come.
            conn.last = now
            try:
                rest = pending.add(data)
            except HTTPError as exc:
                self._settle(conn, self._reject(conn, exc.reason), epoll)
                return
            if not pending.complete:
                return
            data = rest
        if conn.buf:
            conn.buf += data
        else:
            conn.buf = data
        state = self._process(conn, app, now)
        if state is not READING or conn.parked:
            self._settle(conn, state, epoll)

    def _on_writable(self, conn: Conn, app: Callable, epoll: Any, now: float) -> None:
        """The client read some of what waits for it: send on, produce more, or move on."""
        try:
            drained = push(conn)
        except ClientGone:
            self._close(conn, epoll)
            return
        conn.last = now
        if not drained:
            return
        tail = conn.tail
        if tail is not None:
            if self.pool is not None and tail.it is not None:
                # The app's iterator runs on a thread, as the request did: a slow one holds no loop.
                self._hand_off(conn, self._resume_in_thread, conn)
                return
            state = self._resume(conn)
        elif conn.state is CLOSING:
            self._close(conn, epoll)
            return
        else:
            state = READING
        if state is READING and conn.buf:
            state = self._process(conn, app, now)
        self._settle(conn, state, epoll)

    def _resume(self, conn: Conn) -> State:
        """Produce more of a parked response's tail; finish its request when it is all out."""
        tail = conn.tail
        ex = tail.ex
        request = tail.context
        threaded = self.pool is not None
        activity = self.activity
        # The app's iterator runs again: --timeout watches it as it watched the app.
        busy = (self.now, request.method, request.env["PATH_INFO"])
        if threaded:
            ident = threading.get_ident()
            activity.inflight[ident] = busy
        else:
            activity.current = busy
        gone = False
        try:
            done = tail.advance()
        except ClientGone:
            ex.keep_alive = False
            done = gone = True
        except Exception:
            self._log_app_error(request.env)
            ex.keep_alive = False  # the client sees a cut response
            done = True
        finally:
            if threaded:
                activity.inflight.pop(ident, None)
            else:
                activity.current = None
        if not done:
            return SENDING
        conn.tail = None
        keep = self._finish(ex, request)
        if gone:
            return CLOSED
        if conn.parked:
            return SENDING if keep else CLOSING
        return READING if keep else CLOSED

    def _process(self, conn: Conn, app: Callable, now: float) -> State:
        """Serve every complete request in the buffer, in order; returns the connection's state."""
        pending = conn.body
        if pending is not None:
            # Its body is all here: the request runs now, then whatever was pipelined after it.
            conn.body = None
            try:
                state = self._handle(conn, pending.head, 0, app, pending.parsed, pending.input())
            except HTTPError as exc:
                return self._reject(conn, exc.reason)
            except ClientGone:
                return CLOSED
            if state is not READING or not conn.buf:
                return state
        while True:
            buf = conn.buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_head:
                    return self._reject(conn, "header_too_large")
                limit = self.limit_line + 2
                if len(buf) > limit and buf.find(b"\n", 0, limit) < 0:
                    return self._reject(conn, "request_line_too_long")
                if buf.count(b"\n") != buf.count(b"\r\n"):
                    # A bare LF head would never end in CRLFCRLF: refuse it now, not at the timeout.
                    return self._reject(conn, "bare_lf")
                if buf[:2] == b"\r\n" and len(buf) >= 2:
                    conn.buf = buf.lstrip(b"\r\n")  # RFC 9112 2.2: ignore CRLF before a request
                return READING
            if end > self.max_head:
                return self._reject(conn, "header_too_large")
            if buf[0] < 14:  # a CR or LF first (end == 0 is one); other control bytes fail the parse
                stripped = buf.lstrip(b"\r\n")
                if stripped is not buf and len(buf) - len(stripped) <= 8:
                    conn.buf = stripped
                    continue
            conn.last = now
            head = buf[:end]
            try:
                # A keep-alive client often sends the same head again (a poller, a health check, a
                # page's assets): its parse is a pure function of the bytes, so it is looked up.
                parsed = HEAD_CACHE.get(head)
                if parsed is None:
                    parsed = self.parser.parse(head)
                length = parsed[5]
                if parsed[4] or (length and len(buf) - end - 4 < length):
                    # A chunked body, or one not all here: read it on the loop (a client trickling
                    # it holds no worker), run the app when it is complete.
                    if parsed[4]:
                        pending: PendingBody = ChunkedBody(head, parsed, self.max_body, now)
                    else:
                        pending = PendingBody(head, parsed, length, now)
                    conn.buf = pending.add(buf[end + 4 :])
                    if not pending.complete:
                        if parsed[6]:
                            # Expect: 100-continue: the server wants the body now (RFC 9110 10.1.1).
                            conn_send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
                        conn.body = pending
                        return READING
                    state = self._handle(conn, head, 0, app, parsed, pending.input())
                else:
                    state = self._handle(conn, head, end + 4, app, parsed, None)
            except HTTPError as exc:
                return self._reject(conn, exc.reason)
            except ClientGone:
                return CLOSED
            if state is not READING:
                return state
            if self.stopping:
                conn.last = time.monotonic()  # the drain grace counts from the end of the response
            if not conn.buf:
                return READING

    def _reject(self, conn: Conn, reason: str) -> State:
        """Answer a refused request with its status and its reason's name; logged and counted."""
        status = REJECTIONS[reason]
        self.activity.reject(reason)
        self.reject_log.note(status, reason, conn.addr)
        try:
            send_closing(conn, error_response(status, reason))
        except ClientGone:
            return CLOSED
        return CLOSING if conn.parked else CLOSED

    def _handle(self, conn: Conn, head: bytes, body_start: int, app: Callable, parsed: tuple,
                ready_body: Any, started: float = 0.0) -> State:
        """Run one parsed request; `ready_body` is its body read on the loop, if it was. `started`:
        when a pool thread read it (threads.py, _serve_idle), which runs it where it is; 0 on the
        loop, whose clock is the request's start."""
        template, method, version11, keep_alive, _chunked, length, _expect, target = parsed
        env = template.copy()
        conn.buf = conn.buf[body_start:]
        body: Any = EMPTY_INPUT
        if ready_body is not None:
            body = ready_body
        elif length:  # all here (see _process): the common small POST, no copy of the buffer's rest
            body = BytesIO(conn.buf[:length])
            conn.buf = conn.buf[length:]
        env["REMOTE_ADDR"] = conn.addr
        env["REMOTE_PORT"] = conn.port
        env["wsgi.input"] = body
        if conn.trusted:
            forwarded_for = env.get("HTTP_X_FORWARDED_FOR")
            if forwarded_for:
                env["REMOTE_ADDR"] = self.proxies.client(forwarded_for)
            proto = env.get("HTTP_X_FORWARDED_PROTO")
            if proto:
                scheme = proto.split(",")[0].strip().lower()
                if scheme == "http" or scheme == "https":
                    env["wsgi.url_scheme"] = scheme
        if self.stopping:
            keep_alive = False
        if self.mounts:
            path_info = env["PATH_INFO"]
            for mount in self.mounts:
                if mount.matches(path_info):
                    return self._serve_static(conn, mount, env, target, version11, keep_alive, body, started)
        if self.pool is not None:
            env["wsgi.multithread"] = True
            if not started:
                self._hand_off(conn, self._in_thread, conn, app, env, method, version11, keep_alive, body)
                return IN_THREAD
        return self._run_app(conn, app, env, method, version11, keep_alive, body, started)

    def _serve_static(
        self, conn: Conn, mount: Any, env: Dict[str, Any], target: bytes,
        version11: bool, keep_alive: bool, body: Any, started: float,
    ) -> State:
        # A body sent to a static file is never read: the connection ends after the response
        # rather than parse that body as the next request.
        ex = Exchange(conn, version11, env["REQUEST_METHOD"] == "HEAD", keep_alive and body is EMPTY_INPUT,
                      self.stopping, self._hold)
        reply = mount.reply(env, target)
        method = env["REQUEST_METHOD"]
        tail = None
        try:
            ex.start_response(reply.status, reply.headers)
            head = ex._head_bytes(None)
            if reply.fd < 0 or ex.framing is NO_BODY:
                ex._send_last(head)
            else:
                left = ex.send_range(head, reply.fd, reply.offset, reply.count)
                if left:
                    start = reply.offset + reply.count - left
                    request = Request(env, method, started or self.now, None, reply.fd)
                    tail = Tail(ex, None, reply.fd, start, left, request)
        except ClientGone:
            ex.keep_alive = False
        finally:
            if reply.fd >= 0 and tail is None:
                os.close(reply.fd)
        if tail is not None:
            conn.tail = tail  # the rest of the file goes out as the client reads (sendfile)
            return SENDING
        self._count(env, ex, time.monotonic() - (started or self.now))
        if conn.parked:
            return SENDING if ex.keep_alive else CLOSING
        return READING if ex.keep_alive else CLOSED
