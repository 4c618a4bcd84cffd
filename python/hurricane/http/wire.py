"""Bytes on and off a client's socket: the connection, its state, and output that never blocks.

Why sends park instead of wait: a worker serves many connections from one thread, so a client that
stops reading (a phone that lost signal, a slow proxy, an attacker) must not hold it. What the
kernel does not take at once is parked on its connection (`Conn.parked`, memoryviews: the app's
bytes are not copied) and the event loop sends it as the client reads; a connection with parked
bytes is not read, so one client can queue at most one response. The worker's parked bytes in all
are counted (`UNSENT`): past UNSENT_BUDGET_BYTES the server stops accepting new connections
until they drain.

Small keep-alive responses may first wait a moment in the outbox (see Outbox) to leave in a burst.
Every `Conn.out`/`Conn.parked` change happens under _OUT_LOCK when the outbox's flusher thread
exists (without --threads); with --threads a connection belongs to one thread at a time.
"""

from __future__ import annotations

import enum
import os
import select
import socket
import threading
import time
from _socket import socket as CSocket  # what the server accepts (socket.socket's base)
from collections import deque
from typing import Any, Callable, Deque, List

RECV_SIZE = 65536
# The app's write() callable waits this long for a client that reads nothing, if
# --write-timeout is 0 (never cut a parked response).
CLIENT_IO_TIMEOUT_S = 30.0
# Unsent response bytes a worker holds in all before it stops accepting connections (issue 11).
UNSENT_BUDGET_BYTES = 64 << 20
# The outbox (see Outbox) holds at most this many responses of at most HOLD_MAX_BYTES each (a big
# one costs more to send than a wakeup), none longer than FLUSH_AFTER_S ...
MAX_HELD = 64
HOLD_MAX_BYTES = 65536
# ... and no more than this in all (one pipelining connection can queue many responses).
HELD_MAX_TOTAL_BYTES = 256 * 1024
FLUSH_AFTER_S = 0.002
# ... and its flusher thread looks this often while responses are held, parking after an idle while.
FLUSH_TICK_S = 0.005
FLUSHER_PARK_TICKS = 100
# A response that overflows the socket buffer is sent on inline while its client takes it, for at
# most this long; a client that takes nothing for STALL_MS is a slow reader (see _send_on).
INLINE_SEND_S = 0.01
STALL_MS = 1
# sendmsg takes at most this many buffers at a time (well under IOV_MAX).
MAX_IOV = 64

_monotonic = time.monotonic


class State(enum.Enum):
    """Where a connection is; the event loop watches its socket accordingly."""

    READING = "reading"  # waiting for a request (or the rest of one, or its body): epoll IN
    SENDING = "sending"  # a response waits for the client to read: epoll OUT, then READING
    CLOSING = "closing"  # the last response waits for the client to read: epoll OUT, then CLOSED
    IN_THREAD = "in_thread"  # --threads: a thread owns it; not in epoll, not in the loop's table
    POOL_IDLE = "pool_idle"  # --threads: waiting for a request in the pool's epoll; the loop only sweeps it
    CLOSED = "closed"


READING = State.READING
SENDING = State.SENDING
CLOSING = State.CLOSING
IN_THREAD = State.IN_THREAD
POOL_IDLE = State.POOL_IDLE
CLOSED = State.CLOSED


class ClientGone(Exception):
    """The client closed, reset or stalled; the connection is dropped without a response."""


class Conn:
    __slots__ = ("sock", "fd", "buf", "out", "parked", "tail", "state", "events", "addr", "port",
                 "last", "trusted", "body")

    def __init__(self, sock: CSocket, addr: Any, now: float) -> None:
        self.trusted = False  # may this peer set X-Forwarded-For/-Proto (--forwarded-allow-ips)
        self.body: Any = None  # a PendingBody: a request head whose body is still arriving
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = b""
        self.out = b""  # response bytes the outbox holds, not yet tried
        self.parked: Deque[Any] = deque()  # bytes the socket did not take, in order
        self.tail: Any = None  # the rest of a response still to produce (server.Tail)
        self.state = READING
        self.events = 0  # what epoll watches for it (0: not registered)
        if isinstance(addr, tuple):
            self.addr, self.port = str(addr[0]), str(addr[1])
        else:
            self.addr, self.port = "", ""
        self.last = now  # the last progress: a request read, or bytes the client took


# Guards every Conn.out and Conn.parked and the outbox: the flusher thread sends held responses too.
_OUT_LOCK = threading.Lock()
UNSENT = [0]  # bytes parked over all connections (changed under _OUT_LOCK)
_unsent = UNSENT
_MSG_MORE = socket.MSG_MORE
_SHUT_WR = socket.SHUT_WR


def _unhold_locked(conn: Conn) -> None:
    """What the outbox holds for `conn` goes first in line: before anything parked after it."""
    if conn.out:
        out, conn.out = conn.out, b""
        conn.parked.append(out)
        _unsent[0] += len(out)


def _park_locked(conn: Conn, data: Any) -> None:
    _unhold_locked(conn)
    if len(data):
        conn.parked.append(data)
        _unsent[0] += len(data)


def push_locked(conn: Conn) -> bool:
    """Send parked bytes until the socket is full; True when none are left. Raises ClientGone."""
    parked = conn.parked
    sock = conn.sock
    while parked:
        try:
            if len(parked) == 1:
                sent = sock.send(parked[0])
            else:
                sent = sock.sendmsg([parked[i] for i in range(min(len(parked), MAX_IOV))])
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            drop_parked_locked(conn)
            raise ClientGone(str(exc)) from None
        _unsent[0] -= sent
        while sent:
            first = parked[0]
            if sent >= len(first):
                sent -= len(first)
                parked.popleft()
            else:
                parked[0] = memoryview(first)[sent:]
                return False  # a short send: the socket is full
    return True


def drop_parked_locked(conn: Conn) -> None:
    for data in conn.parked:
        _unsent[0] -= len(data)
    conn.parked.clear()


def unhold(conn: Conn) -> None:
    """What a pool's thread kept back for a burst goes first in line instead (the loop sends it)."""
    with _OUT_LOCK:
        _unhold_locked(conn)


def park(conn: Conn, data: Any) -> None:
    """Bytes the socket did not take wait on `conn`, after what already waits there."""
    with _OUT_LOCK:
        _park_locked(conn, data)


def push(conn: Conn) -> bool:
    with _OUT_LOCK:
        return push_locked(conn)


def _send_on(conn: Conn, view: memoryview) -> memoryview:
    """Go on sending `view` while the client takes it; return what is left (to park).

    Why not park at once: for a client that reads as fast as we send (most of them), sending a
    response to its end before the next one finishes equal responses soonest (first come, first
    served); parking every response that overflows the socket buffer shares the worker among them
    instead, and every one of them ends late (1 MiB static files to 50 clients: p99 39 -> 55 ms).
    A client that takes nothing for STALL_MS, or a response still going after INLINE_SEND_S, is
    left to the event loop: a slow reader costs the worker at most a few milliseconds.
    """
    poller = select.poll()
    poller.register(conn.fd, select.POLLOUT)
    sock = conn.sock
    deadline = _monotonic() + INLINE_SEND_S
    while view and poller.poll(STALL_MS):
        try:
            view = view[sock.send(view):]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            raise ClientGone(str(exc)) from None
        if _monotonic() > deadline:
            break
    return view


def conn_send(conn: Conn, data: Any, flags: int = 0) -> None:
    """Send `data` in order after what already waits; what a slow reader does not take is parked."""
    if conn.out or conn.parked:
        with _OUT_LOCK:
            _park_locked(conn, data)
            push_locked(conn)
        return
    try:
        sent = conn.sock.send(data, flags)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError as exc:
        raise ClientGone(str(exc)) from None
    if sent != len(data):
        rest = _send_on(conn, memoryview(data)[sent:])
        if rest:
            with _OUT_LOCK:
                _park_locked(conn, rest)


def send_closing(conn: Conn, data: Any) -> None:
    """The last bytes on a connection that closes after them: they leave with the FIN.

    Why: sent alone, then closed, they cost four packets (data, its ACK, FIN, its ACK); held by
    MSG_MORE until the shutdown, they leave in one segment that the client acks once. With
    `Connection: close` that took a hello-world request from 38 to 30 us of the worker's CPU.
    The shutdown comes at once, not with the close: the client has its whole response before the
    app's close() runs, and an early FIN is what a closing response means anyway. If the socket did
    not take it all, the rest is parked as usual and the close comes once it is out.
    """
    conn_send(conn, data, _MSG_MORE)
    if not conn.parked and not conn.out:
        try:
            conn.sock.shutdown(_SHUT_WR)
        except OSError:
            pass  # the client is gone; the close will tell


def _wait(sock: CSocket, events: int, deadline: float) -> None:
    poller = select.poll()
    poller.register(sock.fileno(), events)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClientGone("timed out")
        if poller.poll(remaining * 1000):
            return


def wait_sent(conn: Conn, timeout_s: float) -> None:
    """Block until nothing is parked on `conn`: for sends made inside the app, which cannot park
    (the write() callable of PEP 3333 and a 100 Continue). A client that reads nothing for
    `timeout_s` is gone."""
    deadline = time.monotonic() + (timeout_s if timeout_s > 0 else CLIENT_IO_TIMEOUT_S)
    while conn.out or conn.parked:
        with _OUT_LOCK:
            _unhold_locked(conn)
            if push_locked(conn):
                return
        _wait(conn.sock, select.POLLOUT, deadline)
        deadline = time.monotonic() + (timeout_s if timeout_s > 0 else CLIENT_IO_TIMEOUT_S)


def sendfile_some(conn: Conn, fd: int, offset: int, count: int) -> int:
    """os.sendfile while the client takes it (see _send_on): bytes sent, 0 when the file ended
    early, -1 when the socket took nothing (wait for it to drain). Raises ClientGone."""
    total = 0
    poller: Any = None
    deadline = 0.0
    while count > 0:
        try:
            sent = os.sendfile(conn.fd, fd, offset, count)
        except (BlockingIOError, InterruptedError):
            if poller is None:
                poller = select.poll()
                poller.register(conn.fd, select.POLLOUT)
                deadline = _monotonic() + INLINE_SEND_S
            if _monotonic() > deadline or not poller.poll(STALL_MS):
                return total if total else -1
            continue
        except OSError as exc:
            raise ClientGone(str(exc)) from None
        if sent == 0:
            break  # the file shrank under us
        offset += sent
        count -= sent
        total += sent
    return total


def has_input(sock: CSocket) -> bool:
    """Bytes (or an EOF) wait to be read on `sock`; never blocks."""
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False


def close_soon(conn: Conn) -> None:
    """Last bytes out if the socket takes them now (an error response after parked ones), then
    forget the rest: the connection is being closed."""
    with _OUT_LOCK:
        _unhold_locked(conn)
        try:
            push_locked(conn)
        except ClientGone:
            pass
        drop_parked_locked(conn)


class Outbox:
    """Small keep-alive responses held for the rest of the event loop's pass, then sent back to back.

    Why: a send() that wakes a client sleeping on another CPU pays for that wakeup (an IPI; a VM exit
    in a VM). perf on a Django worker under wrk put 17 % of its CPU there, one wakeup per response.
    Sent in a burst at the end of a pass, later sends find the client already awake: a Django view
    went from 9.4k to 11.8k req/s (p50 5.4 -> 3.4 ms), hello world from 86k to 125k. A pass with one
    ready request flushes right after it, so a lone client waits for nothing.

    Bounded: responses for at most MAX_HELD connections and HELD_MAX_TOTAL_BYTES, flushed by the
    loop once the oldest is FLUSH_AFTER_S old, and a flusher thread sends them when a slow request
    keeps the loop away, so a fast response never waits for a slow one (a few ms at most: the tick
    plus the interpreter's switch interval). What a socket does not take is parked on its
    connection and listed in `stalled` for the loop, which then waits for the client to read.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self.held: List[Conn] = []
        self.held_bytes = 0
        self.since = 0.0
        self.stalled: List[Conn] = []
        self._wake = wake
        self._lock = _OUT_LOCK  # what guards `held` and the flusher's parking
        self._parked = True
        self._unpark = threading.Event()

    def hold(self, conn: Conn, data: bytes) -> None:
        """Hold `data` for `conn`. After each request the loop flushes once the oldest held response
        is FLUSH_AFTER_S old (that check is inline in wsgi_call.WsgiCall._run_app: it runs for every
        request); the flusher thread bounds the wait when a slow request keeps the loop away."""
        _OUT_LOCK.acquire()  # not `with`: this runs for every small response, and `with` costs 2x
        try:
            if conn.parked:  # the socket is already full: wait in line
                _park_locked(conn, data)
                return
            held = self.held
            if not conn.out:
                if not held:
                    self.since = _monotonic()
                held.append(conn)
            conn.out += data
            self.held_bytes += len(data)
            if len(held) >= MAX_HELD or self.held_bytes >= HELD_MAX_TOTAL_BYTES:
                self._flush_locked()
            elif self._parked:
                self._parked = False
                self._unpark.set()
        finally:
            _OUT_LOCK.release()

    def flush(self) -> None:
        if self.held:
            with _OUT_LOCK:
                self._flush_locked()

    def take_stalled(self) -> List[Conn]:
        with _OUT_LOCK:
            stalled, self.stalled = self.stalled, []
        return stalled

    def _flush_locked(self) -> None:
        for conn in self.held:
            data = conn.out
            if not data:
                continue  # parked meanwhile (conn_send moved it in line)
            try:
                sent = conn.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                # The event loop owns the connection: make it see EOF and close it there.
                conn.out = b""
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                continue
            conn.out = b""
            if sent != len(data):  # the client is not reading: the loop waits for it
                _park_locked(conn, memoryview(data)[sent:])
                self.stalled.append(conn)
        if self.stalled:
            self._wake()
        self.held.clear()
        self.held_bytes = 0

    def run_flusher(self) -> None:
        """The bound for a response held while the loop runs a slow request (its own thread)."""
        idle = 0
        while True:
            self._unpark.wait()
            time.sleep(FLUSH_TICK_S)
            due = False
            with self._lock:
                if self.held:
                    idle = 0
                    due = _monotonic() - self.since >= FLUSH_AFTER_S
                else:
                    idle += 1
                    if idle >= FLUSHER_PARK_TICKS:  # no load: stop ticking until the next hold
                        idle = 0
                        self._parked = True
                        self._unpark.clear()
            if due:
                self.flush()  # (which looks again: the loop may have flushed meanwhile)


def register(epoll: Any, conn: Conn, events: int) -> None:
    """Make epoll watch `conn` for `events` (0: not at all), with the fewest epoll_ctl calls."""
    current = conn.events
    if current == events:
        return
    if not events:
        try:
            epoll.unregister(conn.fd)
        except OSError:
            pass
    elif not current:
        epoll.register(conn.fd, events)
    else:
        epoll.modify(conn.fd, events)
    conn.events = events


EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT

