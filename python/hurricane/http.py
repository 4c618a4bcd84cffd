"""HTTP/1.1 for WSGI apps: the worker's hot path.

Why hand-written: the worker runs in the user's interpreter with the stdlib only, and its speed is
the product's speed. One epoll loop per process multiplexes keep-alive connections; the app runs
inline, one request at a time (a prefork worker, like gunicorn's sync worker, but with keep-alive
and pipelining). Every per-request step is a dict lookup or a C-level bytes operation where it can
be: the environ is a copy of a prebuilt dict, header names map to environ keys through a cache,
and a small response leaves in a single send().

Strictness follows RFC 9112 the way h11 reads it; every rejection maps to one status code
and the connection is closed, so nothing ambiguous ever reaches the app.
"""

from __future__ import annotations

import ipaddress
import os
import re
import select
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from email.utils import formatdate
from bisect import bisect_left as _bisect
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from stat import S_ISREG
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Tuple
from urllib.parse import unquote_to_bytes

from hurricane import LISTEN_FD, __version__
from hurricane.log import log_line as _log_line

RECV_SIZE = 65536
# A client that stalls mid-body or mid-response for this long is dropped.
CLIENT_IO_TIMEOUT_S = 30.0
# While draining, a keep-alive connection idle this long is closed; until then its next request is
# still served (with Connection: close), so a client in the middle of a request loop sees no error.
DRAIN_IDLE_GRACE_S = 1.0
# A Content-Length body that has not all arrived is read on the event loop before the app runs (a
# client trickling it holds no worker): in memory up to this size, in a temporary file past it.
BODY_MEMORY_BYTES = 1 << 20
# A body still arriving after this grace period, at less than --min-body-rate bytes a second on
# average, is answered 408 and its connection closed (Kestrel's rule and numbers).
BODY_RATE_GRACE_S = 5.0
# A chunk-size line (with extensions) or trailer line longer than this is an attack, not a request.
MAX_CHUNK_LINE_BYTES = 4096
# A chunked body up to this size is decoded before the app runs, so an oversized or malformed one
# is refused without the app ever seeing the request; larger ones stream to the app.
CHUNKED_PREFETCH_BYTES = 1 << 20
# Unread request body we are willing to discard to keep a connection alive.
MAX_DISCARD_BYTES = 65536
SERVER_SOFTWARE = "hurricane/" + __version__
# The outbox (see Outbox) holds at most this many responses of at most HOLD_MAX_BYTES each (a big
# one costs more to send than a wakeup), none longer than FLUSH_AFTER_S ...
MAX_HELD = 64
HOLD_MAX_BYTES = 65536
# ... and no more than this in all (one pipelining connection can queue many responses).
HELD_MAX_TOTAL_BYTES = 256 * 1024
FLUSH_AFTER_S = 0.002
# --threads, more than one worker: a busy worker stops accepting for at most this long.
ACCEPT_PAUSE_MAX_S = 0.1
# A file (static, media or wsgi.file_wrapper) up to this size is read and sent in one call, bigger
# ones stream with sendfile(2): see Exchange.send_range.
COPY_FILE_MAX_BYTES = 1 << 20
# ... and its flusher thread looks this often while responses are held, parking after an idle while.
FLUSH_TICK_S = 0.005
FLUSHER_PARK_TICKS = 100

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_APP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# field-value per RFC 9110 5.5: visible chars and obs-text, inner spaces/tabs; no CTLs, no NUL.
_FIELD_VALUE = re.compile(rb"[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
# Methods that get their own label in hurricane_requests_total; anything else counts as "other".
_METRIC_METHODS = frozenset(_METHODS.values())
# (method, status class) -> the same tuple, prebuilt: the counter key costs a lookup, not a new tuple.
_COUNT_KEYS = {(m, c): (m, c) for m in _METRIC_METHODS for c in range(1, 6)}
_monotonic = time.monotonic

EPOLLIN = select.EPOLLIN
EPOLLEXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 0)


# _handle/_process: a thread owns the connection now (--threads); truthy, but not True.
HANDED_OFF: Any = 2


# Every way a request is refused, by a stable name: the status it is answered with. The name is
# logged (`event=reject reason=NAME`, rate-limited), counted (hurricane_requests_rejected_total)
# and sent as the body, so an operator can tell a smuggling attempt from a broken client. The
# master learns the names from the ready message and exports each at 0 from the start.
REJECTIONS: Dict[str, str] = {
    # Request line (RFC 9112 3)
    "bad_request_line": "400 Bad Request",
    "bad_method": "400 Bad Request",
    "bad_target": "400 Bad Request",
    "fragment_in_target": "400 Bad Request",
    "request_line_too_long": "414 URI Too Long",
    "unsupported_version": "505 HTTP Version Not Supported",
    # Header fields (RFC 9112 5, RFC 9110 5)
    "bare_lf": "400 Bad Request",
    "obs_fold": "400 Bad Request",
    "space_before_colon": "400 Bad Request",
    "bad_header_name": "400 Bad Request",
    "header_without_colon": "400 Bad Request",
    "bad_header_value": "400 Bad Request",
    "missing_host": "400 Bad Request",
    "too_many_headers": "431 Request Header Fields Too Large",
    "header_too_large": "431 Request Header Fields Too Large",
    "unsupported_expectation": "417 Expectation Failed",
    # Body framing (RFC 9112 6, 7)
    "cl_conflict": "400 Bad Request",
    "bad_content_length": "400 Bad Request",
    "cl_te_conflict": "400 Bad Request",
    "te_in_http10": "400 Bad Request",
    "unsupported_transfer_coding": "501 Not Implemented",
    "body_too_large": "413 Content Too Large",
    "bad_chunk_size": "400 Bad Request",
    "bad_chunk_extension": "400 Bad Request",
    "chunk_line_too_long": "400 Bad Request",
    "bare_lf_in_chunk": "400 Bad Request",
    "chunk_longer_than_size": "400 Bad Request",
    # Time (the client stalled mid-request past --keep-alive, or sent its body below --min-body-rate)
    "head_timeout": "408 Request Timeout",
    "body_too_slow": "408 Request Timeout",
}


class HTTPError(Exception):
    """A request we refuse: the status is sent with ``Connection: close`` and the app never runs.

    ``reason`` is a key of REJECTIONS, which decides the status.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = REJECTIONS[reason]


class ClientGone(Exception):
    """The client closed, reset or stalled; the connection is dropped without a response."""


class Conn:
    __slots__ = ("sock", "fd", "buf", "out", "addr", "port", "last", "trusted", "body")

    def __init__(self, sock: socket.socket, addr: Any, now: float) -> None:
        self.trusted = False  # may this peer set X-Forwarded-For/-Proto (--forwarded-allow-ips)
        self.body: Optional["PendingBody"] = None  # a request head whose body is still arriving
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = b""
        self.out = b""  # response bytes the outbox holds; only changed under _OUT_LOCK
        if isinstance(addr, tuple):
            self.addr, self.port = str(addr[0]), str(addr[1])
        else:
            self.addr, self.port = "", ""
        self.last = now


def _wait(sock: socket.socket, events: int, deadline: float) -> None:
    poller = select.poll()
    poller.register(sock.fileno(), events)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClientGone("timed out")
        if poller.poll(remaining * 1000):
            return


def send_all(sock: socket.socket, data: Any, flags: int = 0) -> None:
    """Send everything on a non-blocking socket, waiting (bounded) when the kernel buffer is full."""
    try:
        sent = sock.send(data, flags)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        raise ClientGone(str(exc)) from None
    if sent == len(data):  # the common case: one syscall
        return
    view = memoryview(data)[sent:]
    deadline = time.monotonic() + CLIENT_IO_TIMEOUT_S
    while view:
        _wait(sock, select.POLLOUT, deadline)
        try:
            view = view[sock.send(view, flags) :]
        except BlockingIOError:
            continue
        except OSError as exc:
            raise ClientGone(str(exc)) from None


# Guards every Conn.out and the outbox: the flusher thread sends held responses too.
_OUT_LOCK = threading.Lock()


def _send_held(conn: Conn) -> None:
    """Send what the outbox holds for `conn`; the caller holds _OUT_LOCK."""
    data = conn.out
    if data:
        try:
            send_all(conn.sock, data)
        except ClientGone:
            try:
                # The event loop owns the connection: make it see EOF and close it there.
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        conn.out = b""  # cleared only after the send: a reader seeing b"" knows no send is under way


def flush_conn(conn: Conn) -> None:
    """Send the responses held for `conn` now: anything else sent on it must come after them."""
    if conn.out:
        with _OUT_LOCK:
            _send_held(conn)


def conn_send(conn: Conn, data: Any, flags: int = 0) -> None:
    """send_all on a connection, in order after whatever the outbox holds for it."""
    if conn.out:
        flush_conn(conn)
    send_all(conn.sock, data, flags)


class Outbox:
    """Small keep-alive responses held for the rest of the event loop's pass, then sent back to back.

    Why: a send() that wakes a client sleeping on another CPU pays for that wakeup (an IPI; a VM exit
    in a VM). perf on a Django worker under wrk put 17 % of its CPU there, one wakeup per response.
    Sent in a burst at the end of a pass, later sends find the client already awake: a Django view
    went from 9.4k to 11.8k req/s (p50 5.4 -> 3.4 ms), hello world from 86k to 125k. A pass with one
    ready request flushes right after it, so a lone client waits for nothing.

    Bounded: responses for at most MAX_HELD connections and HELD_MAX_TOTAL_BYTES, flushed by the
    loop once the oldest is FLUSH_AFTER_S old,
    and a flusher thread sends them when a slow request keeps the loop away, so a fast response
    never waits for a slow one (a few ms at most: the tick plus the interpreter's switch interval).
    """

    def __init__(self) -> None:
        self.held: List[Conn] = []
        self.held_bytes = 0
        self.since = 0.0
        self._parked = True
        self._unpark = threading.Event()

    def hold(self, conn: Conn, data: bytes) -> None:
        """Hold `data` for `conn`; the loop calls expire() after each request with its clock."""
        _OUT_LOCK.acquire()  # not `with`: this runs for every small response, and `with` costs 2x
        try:
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

    def expire(self, now: float) -> None:
        """Flush if the oldest held response is FLUSH_AFTER_S old."""
        if self.held and now - self.since >= FLUSH_AFTER_S:
            self.flush()

    def flush(self) -> None:
        if self.held:
            with _OUT_LOCK:
                self._flush_locked()

    def _flush_locked(self) -> None:
        for conn in self.held:
            data = conn.out
            try:
                sent = conn.sock.send(data)
            except OSError:
                sent = 0  # _send_held waits, retries, or gives the connection up
            if sent == len(data):  # the common case, without a call: ~3 % of hello world
                conn.out = b""
                continue
            conn.out = data[sent:]
            _send_held(conn)
        self.held.clear()
        self.held_bytes = 0

    def run_flusher(self) -> None:
        """The bound for a response held while the loop runs a slow request (its own thread)."""
        idle = 0
        while True:
            self._unpark.wait()
            time.sleep(FLUSH_TICK_S)
            with _OUT_LOCK:
                if self.held:
                    idle = 0
                    if _monotonic() - self.since >= FLUSH_AFTER_S:
                        self._flush_locked()
                else:
                    idle += 1
                    if idle >= FLUSHER_PARK_TICKS:  # no load: stop ticking until the next hold
                        idle = 0
                        self._parked = True
                        self._unpark.clear()


def sendfile_all(sock: socket.socket, fd: int, offset: int, count: int) -> int:
    """os.sendfile on a non-blocking socket until `count` bytes went out; returns bytes sent."""
    sent_total = 0
    deadline = time.monotonic() + CLIENT_IO_TIMEOUT_S
    while count > 0:
        try:
            sent = os.sendfile(sock.fileno(), fd, offset, count)
        except BlockingIOError:
            _wait(sock, select.POLLOUT, deadline)
            continue
        except OSError as exc:
            raise ClientGone(str(exc)) from None
        if sent == 0:
            break  # the file shrank under us
        offset += sent
        count -= sent
        sent_total += sent
        deadline = time.monotonic() + CLIENT_IO_TIMEOUT_S
    return sent_total


def recv_some(conn: Conn) -> bytes:
    """Block (bounded) until the client sends more; b"" never returns, EOF raises ClientGone."""
    deadline = time.monotonic() + CLIENT_IO_TIMEOUT_S
    while True:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            _wait(conn.sock, select.POLLIN, deadline)
            continue
        except OSError as exc:
            raise ClientGone(str(exc)) from None
        if not data:
            raise ClientGone("client closed the connection mid-body")
        return data


def _has_input(sock: socket.socket) -> bool:
    """Bytes (or an EOF) wait to be read on `sock`; never blocks."""
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False


class PendingBody:
    """A request whose Content-Length body is still arriving, read on the event loop.

    The head is parsed once; the body goes to memory, or past BODY_MEMORY_BYTES to a temporary
    file, so a 100 MB upload costs no 100 MB of worker memory. The app gets it as wsgi.input once
    all of it is here.
    """

    __slots__ = ("head", "parsed", "length", "received", "since", "chunks", "spool")

    def __init__(self, head: bytes, parsed: tuple, length: int, first: bytes, now: float) -> None:
        self.head = head
        self.parsed = parsed
        self.length = length
        self.received = 0
        self.since = now
        self.chunks: List[bytes] = []
        self.spool: Any = None
        self.add(first)

    def add(self, data: bytes) -> bytes:
        """Take what belongs to the body; return what follows it (a pipelined next request)."""
        need = self.length - self.received
        part, rest = (data, b"") if len(data) <= need else (data[:need], data[need:])
        self.received += len(part)
        if self.spool is not None:
            self.spool.write(part)
        elif self.received > BODY_MEMORY_BYTES:
            self.spool = tempfile.TemporaryFile()
            for chunk in self.chunks:
                self.spool.write(chunk)
            self.chunks = []
            self.spool.write(part)
        else:
            self.chunks.append(part)
        return rest

    @property
    def complete(self) -> bool:
        return self.received >= self.length

    def too_slow(self, now: float, min_rate: float) -> bool:
        elapsed = now - self.since
        return min_rate > 0 and elapsed > BODY_RATE_GRACE_S and self.received < min_rate * elapsed

    def input(self) -> Any:
        """wsgi.input: the body from memory or from its temporary file."""
        if self.spool is None:
            return BytesIO(b"".join(self.chunks))
        self.spool.flush()
        self.spool.seek(0)
        return self.spool


class EmptyInput:
    """wsgi.input for requests without a body; stateless, so one instance serves every request."""

    def read(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int = -1) -> bytes:
        return b""

    def readlines(self, hint: int = -1) -> List[bytes]:
        return []

    def __iter__(self) -> "EmptyInput":
        return self

    def __next__(self) -> bytes:
        raise StopIteration


EMPTY_INPUT = EmptyInput()


class BodyReader:
    """wsgi.input streaming a body that has not fully arrived: Content-Length or chunked.

    Data comes from the connection's buffer first, then from the socket. ``Expect: 100-continue``
    is answered on the first read, so a client waiting for it is never sent a 100 by a server
    whose app rejects the request without reading it (RFC 9110 10.1.1).
    """

    def __init__(
        self, conn: Conn, length: Optional[int], expect_continue: bool, max_body: int
    ) -> None:
        self._conn = conn
        self._remaining = length if length is not None else 0  # bytes left in body / chunk
        self._chunked = length is None
        self._done = length == 0
        self._pending = b""  # decoded body bytes not yet handed to the app
        self._continue = expect_continue
        self._max_body = max_body
        self._total = 0

    @property
    def finished(self) -> bool:
        return self._done and not self._pending

    def _recv(self) -> bytes:
        """More bytes from the socket, never from conn.buf: callers append what this returns
        to it (issue 11: returning the buffer here doubled it on a chunk line split across reads)."""
        return recv_some(self._conn)

    def _raw_line(self) -> bytes:
        conn = self._conn
        while True:
            end = conn.buf.find(b"\r\n")
            if end > MAX_CHUNK_LINE_BYTES:
                raise HTTPError("chunk_line_too_long")
            if end >= 0:
                line, conn.buf = conn.buf[:end], conn.buf[end + 2 :]
                if b"\n" in line or b"\r" in line:
                    raise HTTPError("bare_lf_in_chunk")
                return line
            if len(conn.buf) > MAX_CHUNK_LINE_BYTES:
                raise HTTPError("chunk_line_too_long")
            conn.buf += self._recv()

    def _next_chunk_size(self) -> int:
        line = self._raw_line()
        size, _, ext = line.partition(b";")
        # RFC 9112 7.1: chunk-size is 1*HEXDIG; no sign, no spaces, no 0x prefix.
        if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
            raise HTTPError("bad_chunk_size")
        if ext and not re.fullmatch(rb"(?:[ \t]*;[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
                                    rb"(?:[ \t]*=[ \t]*(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
                                    rb"|\"(?:[^\"\\\x00-\x08\x0a-\x1f\x7f]|\\.)*\"))?)*[ \t]*",
                                    b";" + ext):
            raise HTTPError("bad_chunk_extension")
        return int(size, 16)

    def _fill(self) -> bool:
        """Move more decoded body into _pending; False at the end of the body."""
        if self._done:
            return False
        conn = self._conn
        if self._continue:  # the app wants the body: now the client may send it
            self._continue = False
            conn_send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        if self._chunked and self._remaining == 0:
            size = self._next_chunk_size()
            if size == 0:
                while self._raw_line():  # trailer fields are read and ignored
                    pass
                self._done = True
                return False
            self._remaining = size
        if not conn.buf:
            conn.buf = self._recv()
        data = conn.buf[: self._remaining]
        conn.buf = conn.buf[len(data) :]
        self._remaining -= len(data)
        self._total += len(data)
        if self._total > self._max_body:
            raise HTTPError("body_too_large")
        if self._remaining == 0:
            if self._chunked:
                if self._raw_line() != b"":
                    raise HTTPError("chunk_longer_than_size")
            else:
                self._done = True
        self._pending += data
        return True

    def prefetch(self, limit: int) -> None:
        """Decode ahead until the body ends or `limit` bytes are pending (raises HTTPError early)."""
        while len(self._pending) < limit and self._fill():
            pass

    def read(self, size: Optional[int] = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            data, self._pending = self._pending, b""
            return data
        while len(self._pending) < size and self._fill():
            pass
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def readline(self, size: Optional[int] = -1) -> bytes:
        while True:
            end = self._pending.find(b"\n")
            if end >= 0 or (size is not None and 0 <= size <= len(self._pending)):
                cut = end + 1 if end >= 0 else size
                if size is not None and 0 <= size < cut:
                    cut = size
                data, self._pending = self._pending[:cut], self._pending[cut:]
                return data
            if not self._fill():
                data, self._pending = self._pending, b""
                return data

    def readlines(self, hint: int = -1) -> List[bytes]:
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> "BodyReader":
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def discard(self, limit: int) -> bool:
        """Read and drop what the app left unread; False if more than ``limit`` remained."""
        if self._continue:
            return False  # the client still waits for 100; closing is cheaper than reading
        dropped = len(self._pending)
        self._pending = b""
        while dropped <= limit and self._fill():
            dropped += len(self._pending)
            self._pending = b""
        return self._done and dropped <= limit


class FileWrapper:
    """wsgi.file_wrapper: the server sends a real file with os.sendfile, else iterates blocks."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterable[bytes]:
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data


class Exchange:
    """One request/response: holds start_response's state and frames the response bytes."""

    __slots__ = (
        "conn", "version11", "head", "keep_alive", "status", "code", "headers",
        "sent", "chunked", "length", "written", "draining", "bodyless", "nodelay", "hold",
    )

    def __init__(
        self, conn: Conn, version11: bool, head: bool, keep_alive: bool, draining: bool,
        hold: Optional[Callable[[Conn, bytes], None]],
    ) -> None:
        self.conn = conn
        self.version11 = version11
        self.head = head
        self.keep_alive = keep_alive
        self.status: Optional[str] = None
        self.code = 0
        self.headers: List[Tuple[str, str]] = []
        self.sent = False
        self.chunked = False
        self.length: Optional[int] = None  # Content-Length the app declared
        self.written = 0
        self.draining = draining  # the worker is stopping: every response says Connection: close
        self.bodyless = head
        self.nodelay = False
        self.hold = hold  # the outbox's, when it may hold a response

    def start_response(
        self, status: str, headers: List[Tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # PEP 3333: avoid a reference cycle through the traceback
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        checked = _STATUSES.get(status) if type(status) is str else None
        if checked is None:
            checked = _check_status(status)
        if type(headers) is not list:
            raise TypeError("response headers must be a list of (name, value) tuples")
        self.status = status
        self.code = checked[0]
        self.headers = headers
        return self.write

    def _head_bytes(self, body_len: Optional[int]) -> bytes:
        """The response head; body_len is known for one-shot bodies.

        A head is a pure function of the app's status and headers, the body length, this
        exchange's flags and the Date second: an app answering the same way again costs a lookup.
        """
        if self.status is None:
            raise AssertionError("the app returned without calling start_response")
        try:
            key: Any = (self.status, tuple(self.headers), body_len, self.head, self.version11,
                        self.keep_alive, self.draining)
            cached = _HEADS.get(key)
        except TypeError:  # an unhashable header: _build_head says what is wrong with it
            key = cached = None
        if cached is not None:
            head, self.bodyless, self.length, self.chunked, self.keep_alive = cached
            self.sent = True
            return head
        head = self._build_head(body_len)
        if key is not None:
            if len(_HEADS) >= _HEADS_MAX:
                _HEADS.clear()
            _HEADS[key] = (head, self.bodyless, self.length, self.chunked, self.keep_alive)
        return head

    def _build_head(self, body_len: Optional[int]) -> bytes:
        """Validate the app's headers and frame the response."""
        code = self.code
        length = None
        close = False
        lines = []
        has_date = has_server = False
        cache = _HEADER_CACHE
        for header in self.headers:
            # An app sends the same (name, value) pairs again and again: validated once, then a lookup.
            cached = cache.get(header)
            if cached is None:
                cached = _validate_app_header(header)
            line, kind = cached
            if kind:
                if kind == 1:
                    length = int(header[1])
                elif kind == 2:
                    if header[1].strip().lower() == "close":
                        close = True
                elif kind == 3:
                    has_date = True
                else:
                    has_server = True
            lines.append(line)
        block = "".join(lines)
        bodyless = self.head or code < 200 or code == 204 or code == 304
        self.bodyless = bodyless
        if length is None and not bodyless:
            if body_len is not None:
                block += f"Content-Length: {body_len}\r\n"
                length = body_len
            elif self.version11:
                block += "Transfer-Encoding: chunked\r\n"
                self.chunked = True
            else:
                close = True  # HTTP/1.0 without a length: the end of the body is the close
        self.length = None if bodyless else length
        if close or self.draining:
            self.keep_alive = False
        if not self.keep_alive:
            block += "Connection: close\r\n"
        elif not self.version11:
            block += "Connection: keep-alive\r\n"
        if not has_date:
            block += _DATE[0]
        if not has_server:
            block += "Server: hurricane\r\n"
        self.sent = True
        checked = _STATUSES.get(self.status) or _check_status(self.status)
        return (checked[1] + block + "\r\n").encode("latin-1")

    def write(self, data: bytes) -> None:
        if type(data) is not bytes:
            if isinstance(data, (bytearray, memoryview)):
                data = bytes(data)
            else:
                raise TypeError(f"the app must yield bytes, got {type(data).__name__}")
        out = b"" if self.sent else self._head_bytes(None)
        if self.bodyless:
            if out:
                conn_send(self.conn, out)
            return
        if self.length is not None:
            room = self.length - self.written
            if len(data) > room:
                data = data[:room]
                self.keep_alive = False  # the app lied about its length; end the connection
        self.written += len(data)
        if not self.nodelay:
            # A response in several writes: without TCP_NODELAY, Nagle would hold the next small
            # write until the client's (delayed) ACK. One-write responses never need it.
            self.nodelay = True
            try:
                self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # not TCP
        if self.chunked:
            if data:
                out += b"%x\r\n%b\r\n" % (len(data), data)
        else:
            out += data
        if out:
            conn_send(self.conn, out)

    def finish(self) -> None:
        if not self.sent:
            self._send_last(self._head_bytes(0))
        elif self.chunked:
            conn_send(self.conn, b"0\r\n\r\n")
        elif self.length is not None and self.written < self.length:
            self.keep_alive = False  # short body: the client would wait for bytes never coming

    def send_one(self, body: bytes) -> None:
        """The common case: the whole body is one bytes object; headers and body in one send."""
        if type(body) is not bytes:
            self.write(body)
            self.finish()
            return
        head = self._head_bytes(len(body))
        if self.bodyless:
            self._send_last(head)  # HEAD, 1xx, 204, 304
            return
        if len(body) != self.length:
            # The app declared another length; let write() enforce it.
            conn_send(self.conn, head)
            self.sent = True
            self.write(body)
            self.finish()
            return
        self.written = len(body)
        data = head + body
        if self.hold is not None and self.keep_alive and len(data) <= HOLD_MAX_BYTES:
            self.hold(self.conn, data)  # _send_last, inline: this is every small response
        else:
            conn_send(self.conn, data)

    def _send_last(self, data: bytes) -> None:
        """The whole (rest of the) response in one buffer: the outbox may hold it for its pass."""
        if self.hold is not None and self.keep_alive and len(data) <= HOLD_MAX_BYTES:
            self.hold(self.conn, data)
        else:
            conn_send(self.conn, data)

    def send_range(self, head: bytes, fd: int, offset: int, count: int) -> None:
        """The head, then `count` bytes of the file from `offset`; keep_alive drops if it falls short.

        Up to COPY_FILE_MAX_BYTES the file is read and sent with one send(): the kernel then pushes
        the whole response in one burst, where sendfile pushes every 64 KiB it splices and wakes
        the client each time (1 MiB on loopback: 4.0k req/s read+send, 1.9k sendfile). A small
        file also leaves with its head in a single send, through the outbox. Bigger files stream
        with sendfile: no copy and flat memory, and there the per-push cost is small beside the
        transfer.
        """
        conn = self.conn
        if count <= COPY_FILE_MAX_BYTES:
            try:
                data = os.pread(fd, count, offset)
            except OSError:
                data = b""
            if len(data) < count:
                self.keep_alive = False  # the file shrank under us: the client sees a cut body
            self.written = len(data)
            if len(data) <= HOLD_MAX_BYTES:
                self._send_last(head + data)
            else:
                conn_send(conn, head, socket.MSG_MORE)  # leaves with the body's first bytes
                send_all(conn.sock, data)
            return
        # MSG_MORE: the head waits for the file's first bytes and leaves in the same segment.
        conn_send(conn, head, socket.MSG_MORE)
        self.written = sendfile_all(conn.sock, fd, offset, count)
        if self.written < count:
            self.keep_alive = False

    def send_file(self, wrapper: FileWrapper) -> bool:
        """sendfile(2) for a wsgi.file_wrapper around a real file; False if it is not one."""
        filelike = wrapper.filelike
        try:
            fd = filelike.fileno()
            stat = os.fstat(fd)
            offset = filelike.tell() if hasattr(filelike, "tell") else 0
        except (AttributeError, OSError, ValueError):
            return False
        if not S_ISREG(stat.st_mode):
            return False
        size = max(0, stat.st_size - offset)
        head = self._head_bytes(size)
        if self.bodyless:
            self._send_last(head)
            return True
        self.send_range(head, fd, offset, min(size, self.length))
        if self.written < self.length:
            self.keep_alive = False  # the app declared more than the file holds
        return True


# App header name -> 0 ordinary, 1 Content-Length, 2 Connection, 3 Date, 4 Server, 5 hop-by-hop.
# Validated once per distinct name; apps use a handful of names, so this stays small.
_NAME_KIND: Dict[str, int] = {}
_SPECIAL = {
    "content-length": 1, "connection": 2, "date": 3, "server": 4,
    "transfer-encoding": 5, "keep-alive": 5, "upgrade": 5, "trailer": 5, "te": 5,
    "proxy-authenticate": 5, "proxy-authorization": 5,
}


def _classify_app_header(name: Any) -> int:
    if type(name) is not str or not _APP_TOKEN.fullmatch(name):
        raise ValueError(f"invalid response header name {name!r}")
    kind = _SPECIAL.get(name.lower(), 0)
    if len(_NAME_KIND) < 1024:
        _NAME_KIND[name] = kind
    return kind


# (name, value) from the app -> (the header line, its kind). Bounded; valid headers only.
_HEADER_CACHE: Dict[Any, Tuple[str, int]] = {}
_HEADER_CACHE_MAX = 1024


def _validate_app_header(header: Any) -> Tuple[str, int]:
    if type(header) is not tuple or len(header) != 2:
        raise TypeError(f"response headers must be (name, value) tuples, got {header!r}")
    name, value = header
    kind = _NAME_KIND.get(name)
    if kind is None:
        kind = _classify_app_header(name)
    if type(value) is not str:
        raise TypeError(f"header {name!r} value must be str, got {type(value).__name__}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"header {name!r} contains CR, LF or NUL (header injection)")
    if kind == 5:
        raise ValueError(f"hop-by-hop header {name!r} is the server's to set (PEP 3333)")
    if kind == 1 and not value.isdigit():
        raise ValueError(f"invalid Content-Length {value!r}")
    value.encode("latin-1")  # raises for text that cannot go on the wire
    cached = (f"{name}: {value}\r\n", kind)
    if len(_HEADER_CACHE) >= _HEADER_CACHE_MAX:
        _HEADER_CACHE.clear()
    _HEADER_CACHE[header] = cached
    return cached


# Status strings an app used -> (code, status line), checked once (apps use a handful).
_STATUSES: Dict[str, Tuple[int, str]] = {}


def _check_status(status: Any) -> Tuple[int, str]:
    if type(status) is not str or len(status) < 4 or status[3] != " " or not status[:3].isdigit():
        raise ValueError(f"invalid status {status!r}: want e.g. '200 OK'")
    if "\r" in status or "\n" in status or "\0" in status:
        raise ValueError("status contains CR, LF or NUL")
    checked = (int(status[:3]), f"HTTP/1.1 {status}\r\n")
    if len(_STATUSES) < 256:
        _STATUSES[status] = checked
    return checked

# Exchange._head_bytes: (status, headers, body length, flags) -> (head, bodyless, length, chunked,
# keep-alive). Emptied when the Date second turns, so a cached head never carries a stale Date.
_HEADS: Dict[Any, Tuple[bytes, bool, Optional[int], bool, bool]] = {}
_HEADS_MAX = 256


# The Date header line, refreshed by the event loop at most once a second (not per request).
_DATE = [""]
_date_second = [0]


def _refresh_date() -> None:
    now = int(time.time())
    if now != _date_second[0]:
        _date_second[0] = now
        _DATE[0] = f"Date: {formatdate(now, usegmt=True)}\r\n"
        _HEADS.clear()


def _http_date() -> str:
    _refresh_date()
    return _DATE[0]


# Request header name (raw bytes) -> environ key; None for names we drop (see _environ_key).
_ENV_KEYS: Dict[bytes, Optional[str]] = {}


def _environ_key(name: bytes) -> Optional[str]:
    key = _ENV_KEYS.get(name)
    if key is None and name not in _ENV_KEYS:
        if not _TOKEN.fullmatch(name):
            raise HTTPError("bad_header_name")
        upper = name.decode("latin-1").upper()
        if "_" in upper:
            # HTTP_X_USER would be spoofable through "X_User"; gunicorn and nginx drop these too.
            key = None
        elif upper == "CONTENT_TYPE" or upper == "CONTENT-TYPE":
            key = "CONTENT_TYPE"
        elif upper == "CONTENT-LENGTH":
            key = "CONTENT_LENGTH"
        else:
            key = "HTTP_" + upper.replace("-", "_")
        if len(_ENV_KEYS) < 4096:
            _ENV_KEYS[name] = key
    return key


# Request head (bytes) -> its parse (see Server._parse_head). Bounded; heads with credentials excluded.
_HEAD_CACHE: Dict[bytes, Any] = {}
_HEAD_CACHE_MAX = 512
_HEAD_CACHE_MAX_BYTES = 4096

_FRAMING_KEYS = frozenset(
    ("CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING", "HTTP_CONNECTION", "HTTP_EXPECT", "HTTP_HOST")
)
# Raw header line -> (environ key or None, decoded value, raw value). Bounded; valid lines only.
_LINE_CACHE: Dict[bytes, Tuple[Optional[str], str, bytes]] = {}
_LINE_CACHE_MAX = 1024


def _parse_field(line: bytes) -> Tuple[Optional[str], str, bytes]:
    if line[:1] in (b" ", b"\t"):
        raise HTTPError("obs_fold")  # RFC 9112 5.2: a server rejects line folding in requests
    name, sep, value = line.partition(b":")
    if not sep:
        raise HTTPError("header_without_colon")
    if name[-1:] in (b" ", b"\t"):
        raise HTTPError("space_before_colon")  # RFC 9112 5.1: a smuggling vector
    value = value.strip(b" \t")
    if value and not _FIELD_VALUE.fullmatch(value):
        raise HTTPError("bad_header_value")
    key = _environ_key(name)  # raises for obs-fold, whitespace before the colon, non-tokens
    parsed = (key, value.decode("latin-1"), value)
    if len(_LINE_CACHE) >= _LINE_CACHE_MAX:
        _LINE_CACHE.clear()  # cookies and the like vary; start over rather than grow
    _LINE_CACHE[line] = parsed
    return parsed


# An attack sends thousands of bad requests a second; the log gets at most this many lines a second
# per worker, then one line with the count of those it left out.
REJECT_LOG_PER_S = 10


class RejectLog:
    """`event=reject` lines, rate-limited per wall-clock second (any thread may call `note`)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.second = 0
        self.logged = 0
        self.suppressed = 0

    def note(self, status: str, reason: str, remote: str) -> None:
        self.tick()
        if self.logged < REJECT_LOG_PER_S:
            self.logged += 1
            fields = {"status": status[:3], "reason": reason, "remote": remote or "-"}
            _log_line("WARN", "reject", fields, self.as_json)
        else:
            self.suppressed += 1

    def tick(self) -> None:
        """A new second: say how many lines the last one left out, and start counting again."""
        second = int(time.monotonic())
        if second == self.second:
            return
        self.second = second
        if self.suppressed:
            _log_line("WARN", "reject_suppressed", {"count": self.suppressed}, self.as_json)
        self.logged = self.suppressed = 0


def _error_response(status: str, reason: str = "") -> bytes:
    body = (f"{status}: {reason}\n" if reason else f"{status}\n").encode("latin-1")
    return (
        b"HTTP/1.1 %b\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n"
        b"%bServer: hurricane\r\n\r\n%b"
        % (status.encode("latin-1"), len(body), _http_date().encode("latin-1"), body)
    )


class Server:
    """The worker's event loop: accept on the shared socket, parse, call the app, respond."""

    def __init__(self, config: Dict[str, Any], activity: Any) -> None:
        self.activity = activity
        self.reject_log = RejectLog((config.get("http") or {}).get("log_format") == "json")
        self.keep_alive_s = float(config.get("keep_alive", 5))
        self.graceful_timeout_s = float(config.get("graceful_timeout", 30))
        http = config.get("http") or {}
        self.max_body = int(http.get("max_body_size", 100 * 1024 * 1024))
        self.min_body_rate = float(http.get("min_body_rate", 240))
        self.limit_line = int(http.get("limit_request_line", 8190))
        self.limit_fields = int(http.get("limit_request_fields", 100))
        self.limit_field_size = int(http.get("limit_request_field_size", 8190))
        # The most a legal head can take: every limit at its maximum (bounds a connection's buffer).
        self.max_head = self.limit_line + 2 + self.limit_fields * (self.limit_field_size + 2)
        allow = http.get("forwarded_allow_ips", ["127.0.0.1", "::1"])
        self.trust_all = "*" in allow
        self.trusted_ips = {a for a in allow if "/" not in a}
        self.trusted_nets = [ipaddress.ip_network(a, strict=False) for a in allow if "/" in a]
        self.mounts: List[Any] = []  # static/media, set by the worker once the app (and Django) loaded
        self.access_log = bool(http.get("access_log"))
        self.log_json = http.get("log_format") == "json"
        self.worker_id = config.get("worker", 0)
        self.threads = max(1, int(http.get("threads", 1)))
        self.rotate_accept = int(config.get("workers", 1)) > 1
        # --threads: requests run on a pool; the event loop stays on the main thread.
        self.pool = ThreadPoolExecutor(self.threads, "hurricane-app") if self.threads > 1 else None
        # Without threads, small keep-alive responses leave in bursts (see Outbox); with them, a
        # response leaves from its own thread at once.
        self.outbox = Outbox() if self.pool is None else None
        self._hold = self.outbox.hold if self.outbox is not None else None
        self._done: Deque[Tuple[Conn, bool]] = deque()
        self._inflight = 0
        self._count_lock = threading.Lock()
        self.stopping = False
        self.now = time.monotonic()  # the loop's clock, read once per wakeup
        self._wake_w: Optional[socket.socket] = None
        self.conns: Dict[int, Conn] = {}

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

    def serve(self, app: Callable) -> int:
        listener = socket.socket(fileno=LISTEN_FD)
        listener.setblocking(False)
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
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake_w = wake_w
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)

        epoll = select.epoll()
        lfd = listener.fileno()
        # EPOLLEXCLUSIVE: a new connection wakes one idle worker, not the whole pool.
        epoll.register(lfd, EPOLLIN | EPOLLEXCLUSIVE)
        epoll.register(wake_r.fileno(), EPOLLIN)
        conns = self.conns
        outbox = self.outbox
        if outbox is not None:
            threading.Thread(target=outbox.run_flusher, name="hurricane-flusher", daemon=True).start()
        listening = True
        paused = False
        paused_at = 0.0
        deadline = 0.0
        now = self.now = time.monotonic()
        next_sweep = now + 1.0
        next_date = now
        _refresh_date()

        while True:
            if self.stopping and listening:
                listening = False
                if not paused:
                    epoll.unregister(lfd)
                listener.close()
                deadline = now + self.graceful_timeout_s
            if not listening and ((not conns and not self._inflight) or now > deadline):
                for conn in list(conns.values()):
                    self._close(conn, epoll)
                return 0
            if self.pool is not None and listening:
                # All threads busy: stop accepting, so an idle sibling worker takes the connection.
                # Only if there is a sibling, and never for long: when every worker is busy, the
                # keep-alive connections it serves would otherwise leave a new one in the backlog
                # for as long as they keep sending.
                busy = self.rotate_accept and self._inflight >= self.threads
                if busy and not paused:
                    epoll.unregister(lfd)
                    paused = True
                    paused_at = now
                elif paused and (not busy or now - paused_at >= ACCEPT_PAUSE_MAX_S):
                    epoll.register(lfd, EPOLLIN | EPOLLEXCLUSIVE)
                    paused = False
            if paused:
                timeout = ACCEPT_PAUSE_MAX_S
            elif conns or not listening or self._inflight or self.reject_log.suppressed:
                # (a count of left-out reject lines is due at the next second's sweep)
                timeout = 1.0 if listening else 0.1
            else:
                timeout = -1
            events = epoll.poll(timeout)
            now = self.now = time.monotonic()
            if now >= next_date:
                _refresh_date()
                next_date = now + 0.25
            while True:
                for fd, _ in events:
                    conn = conns.get(fd)
                    if conn is not None:
                        self._on_readable(conn, app, epoll, now)
                    elif fd == lfd:
                        if listening:
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
            if outbox is not None and outbox.held:
                outbox.flush()
            if not listening:
                self._sweep(epoll, now, min(self.keep_alive_s, DRAIN_IDLE_GRACE_S))
            elif now >= next_sweep:
                next_sweep = now + 1.0
                self._sweep(epoll, now, self.keep_alive_s)

    def _accept(self, listener: socket.socket, app: Callable, epoll: Any, now: float) -> None:
        """Take one connection and serve it at once.

        One per wakeup, never a batch: the app runs inline, so a worker that took three queued
        connections would serve them one after another while its idle siblings wait. The master
        sets TCP_DEFER_ACCEPT, so the request is usually already here when accept returns.
        """
        try:
            sock, addr = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # EMFILE/ENFILE/ECONNABORTED: the connection stays queued or is gone; not our crash.
            _log_line("ERROR", "accept_error", {"pid": os.getpid(), "error": str(exc)}, self.log_json)
            return
        sock.setblocking(False)
        if self.rotate_accept:
            # EPOLLEXCLUSIVE wakes waiters in wait-queue order, and an epoll entry never moves:
            # the same worker would win every connection. Re-adding the listener puts this worker
            # at the back of the queue, round-robin like a blocking accept().
            epoll.unregister(listener.fileno())
            epoll.register(listener.fileno(), EPOLLIN | EPOLLEXCLUSIVE)
            # And let a sibling that was woken on this CPU run before we look at the queue again.
            os.sched_yield()
        conn = Conn(sock, addr, now)
        conn.trusted = self._trusted(conn.addr)
        # Serve what already arrived before registering with epoll: a Connection: close request
        # then costs no epoll_ctl at all.
        try:
            data = sock.recv(RECV_SIZE)
        except BlockingIOError:
            data = None
        except OSError:
            data = b""
        if data == b"":
            sock.close()
            return
        self.conns[conn.fd] = conn
        if data is not None:
            conn.buf = data
            result = self._process(conn, app, now)
            if result is HANDED_OFF:
                del self.conns[conn.fd]
                return
            if not result:
                self.conns.pop(conn.fd, None)
                flush_conn(conn)
                sock.close()
                return
        epoll.register(conn.fd, EPOLLIN)

    def _trusted(self, addr: str) -> bool:
        if self.trust_all or addr in self.trusted_ips:
            return True
        if not self.trusted_nets or not addr:
            return False
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted_nets)

    def _forwarded_client(self, header: str) -> str:
        """The client behind trusted proxies: the rightmost X-Forwarded-For hop we do not trust."""
        hops = [h.strip() for h in header.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                return hop
        return hops[0] if hops else ""

    def _close(self, conn: Conn, epoll: Any) -> None:
        if self.conns.pop(conn.fd, None) is not None:
            try:
                epoll.unregister(conn.fd)
            except OSError:
                pass
            flush_conn(conn)
            conn.sock.close()

    def _sweep(self, epoll: Any, now: float, idle_s: float) -> None:
        """Close connections idle past ``idle_s``; one stuck mid-request gets a 408 first."""
        limit = now - idle_s
        for conn in [c for c in self.conns.values() if c.body is not None]:
            if conn.body.too_slow(now, self.min_body_rate):
                self._reject(conn, "body_too_slow")
                self._close(conn, epoll)
        for conn in [c for c in self.conns.values() if c.last < limit]:
            if not conn.buf and _has_input(conn.sock):
                # The next request arrived after this pass read its sockets: serve it, do not
                # close under it (the client would see its request go unanswered).
                continue
            if conn.body is not None:
                self._reject(conn, "body_too_slow")  # silent mid-body for --keep-alive
            elif conn.buf:
                self._reject(conn, "head_timeout")
            self._close(conn, epoll)
        self.reject_log.tick()

    def _on_readable(self, conn: Conn, app: Callable, epoll: Any, now: float) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn, epoll)
            return
        pending = conn.body
        if pending is not None:
            # A body arriving on the loop: the connection is alive while bytes come.
            conn.last = now
            rest = pending.add(data)
            if not pending.complete:
                return
            data = rest
        if conn.buf:
            conn.buf += data
        else:
            conn.buf = data
        result = self._process(conn, app, now)
        if not result:
            self._close(conn, epoll)
        elif result is HANDED_OFF:
            # A thread owns the connection until it hands it back; epoll must not report it meanwhile.
            del self.conns[conn.fd]
            epoll.unregister(conn.fd)

    def _process(self, conn: Conn, app: Callable, now: float) -> bool:
        """Serve every complete request in the buffer, in order; False to close the connection."""
        pending = conn.body
        if pending is not None:
            # Its body is all here: the request runs now, then whatever was pipelined after it.
            conn.body = None
            try:
                keep = self._handle(conn, pending.head, 0, app, pending.parsed, pending.input())
            except HTTPError as exc:
                self._reject(conn, exc.reason)
                return False
            except ClientGone:
                return False
            if keep is HANDED_OFF or not keep:
                return keep
            if not conn.buf:
                return True
        while True:
            buf = conn.buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_head:
                    self._reject(conn, "header_too_large")
                    return False
                limit = self.limit_line + 2
                if len(buf) > limit and buf.find(b"\n", 0, limit) < 0:
                    self._reject(conn, "request_line_too_long")
                    return False
                if buf.count(b"\n") != buf.count(b"\r\n"):
                    # A bare LF head would never end in CRLFCRLF: refuse it now, not at the timeout.
                    self._reject(conn, "bare_lf")
                    return False
                if buf[:2] == b"\r\n" and len(buf) >= 2:
                    conn.buf = buf.lstrip(b"\r\n")  # RFC 9112 2.2: ignore CRLF before a request
                return True
            if end > self.max_head:
                self._reject(conn, "header_too_large")
                return False
            if end == 0 or buf[0] in b"\r\n":
                stripped = buf.lstrip(b"\r\n")
                if stripped is not buf and len(buf) - len(stripped) <= 8:
                    conn.buf = stripped
                    continue
            conn.last = now
            head = buf[:end]
            try:
                # A keep-alive client often sends the same head again (a poller, a health check, a
                # page's assets): its parse is a pure function of the bytes, so it is looked up.
                parsed = _HEAD_CACHE.get(head)
                if parsed is None:
                    parsed = self._parse_head(head)
                length = parsed[5]
                if length and not parsed[6] and len(buf) - end - 4 < length:
                    # The body is not all here: read it on the loop, run the app when it is.
                    conn.body = PendingBody(head, parsed, length, buf[end + 4 :], now)
                    conn.buf = b""
                    return True
                keep = self._handle(conn, head, end + 4, app, parsed, None)
            except HTTPError as exc:
                self._reject(conn, exc.reason)
                return False
            except ClientGone:
                return False
            if keep is HANDED_OFF:
                return HANDED_OFF
            if not keep:
                return False
            if self.stopping:
                conn.last = time.monotonic()  # the drain grace counts from the end of the response
            if not conn.buf:
                return True

    def _reject(self, conn: Conn, reason: str) -> None:
        """Answer a refused request with its status and its reason's name; logged and counted."""
        status = REJECTIONS[reason]
        self.activity.reject(reason)
        self.reject_log.note(status, reason, conn.addr)
        try:
            flush_conn(conn)
            conn.sock.send(_error_response(status, reason))
        except OSError:
            pass

    def _parse_head(self, head: bytes) -> Tuple[Dict[str, Any], str, bool, bool, bool, int, bool, bytes]:
        """Validate a request head and build its environ (without the connection's own keys).

        Returns (environ template, method, HTTP/1.1?, keep-alive?, chunked?, Content-Length,
        Expect: 100-continue?, request target). Raises HTTPError for anything RFC 9112 forbids.
        """
        lines = head.split(b"\r\n")
        # Every LF and CR in the head must belong to a CRLF we split on (no bare LF/CR, RFC 9112 2.2).
        if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1:
            raise HTTPError("bare_lf")
        request_line = lines[0]
        if len(request_line) > self.limit_line:
            raise HTTPError("request_line_too_long")
        if len(lines) - 1 > self.limit_fields:
            raise HTTPError("too_many_headers")
        # Only a head longer than the field limit can hold a field over it: one length check saves a loop.
        if len(head) > self.limit_field_size and max(map(len, lines[1:]), default=0) > self.limit_field_size:
            raise HTTPError("header_too_large")
        parts = request_line.split(b" ")
        if len(parts) != 3:
            raise HTTPError("bad_request_line")
        method_b, target, version = parts
        if version == b"HTTP/1.1":
            version11 = True
        elif version == b"HTTP/1.0":
            version11 = False
        elif _VERSION.fullmatch(version):
            raise HTTPError("unsupported_version")
        else:
            raise HTTPError("bad_request_line")
        method = _METHODS.get(method_b)
        if method is None:
            if not _TOKEN.fullmatch(method_b):
                raise HTTPError("bad_method")
            method = method_b.decode("ascii")

        env = self.base_environ.copy()
        content_length: Optional[bytes] = None
        transfer_encoding: Optional[bytes] = None
        connection = b""
        expect = b""
        hosts = 0
        line_cache = _LINE_CACHE
        for line in lines[1:]:
            # A keep-alive client repeats its header lines byte for byte: a line parsed and
            # validated once is a single dict lookup after that (the cache holds only valid lines).
            parsed = line_cache.get(line)
            if parsed is None:
                parsed = _parse_field(line)
            key, decoded, value = parsed
            if key is None:
                continue
            if key in _FRAMING_KEYS:
                if key == "CONTENT_LENGTH":
                    if content_length is not None and content_length != value:
                        raise HTTPError("cl_conflict")
                    content_length = value
                elif key == "HTTP_TRANSFER_ENCODING":
                    transfer_encoding = value if transfer_encoding is None else transfer_encoding + b"," + value
                elif key == "HTTP_CONNECTION":
                    connection = value.lower()
                elif key == "HTTP_EXPECT":
                    expect = value.lower()
                else:
                    hosts += 1
            if key in env:
                env[key] += "," + decoded
            else:
                env[key] = decoded
        if version11 and hosts != 1:
            raise HTTPError("missing_host")

        if version11:
            keep_alive = connection != b"close" and b"close" not in connection.split(b",")
        else:
            keep_alive = connection == b"keep-alive"

        # Body framing, RFC 9112 6: Transfer-Encoding wins, and with Content-Length it is an attack.
        chunked = False
        length = 0
        if transfer_encoding is not None:
            if content_length is not None:
                raise HTTPError("cl_te_conflict")
            if not version11:
                raise HTTPError("te_in_http10")
            codings = [c.strip().lower() for c in transfer_encoding.split(b",")]
            if codings[-1] != b"chunked":
                raise HTTPError("unsupported_transfer_coding")
            if len(codings) > 1:
                raise HTTPError("unsupported_transfer_coding")
            env.pop("CONTENT_LENGTH", None)
            chunked = True
        elif content_length is not None:
            if not content_length.isdigit() or len(content_length) > 18:
                raise HTTPError("bad_content_length")
            length = int(content_length)
            if length > self.max_body:
                raise HTTPError("body_too_large")
        if expect and expect != b"100-continue":
            raise HTTPError("unsupported_expectation")
        expect_continue = version11 and expect == b"100-continue"

        # Request target, RFC 9112 3.2: origin-form, absolute-form (proxies), asterisk for OPTIONS.
        if target[:1] != b"/":
            if target == b"*" and method == "OPTIONS":
                pass
            elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
                slash = target.find(b"/", target.find(b"//") + 2)
                target = target[slash:] if slash >= 0 else b"/"
            else:
                raise HTTPError("bad_target")
        path, _, query = target.partition(b"?")
        if b"%" in path:
            path = unquote_to_bytes(path)
        if b"#" in target:
            raise HTTPError("fragment_in_target")
        env["REQUEST_METHOD"] = method
        env["PATH_INFO"] = path.decode("latin-1")
        env["QUERY_STRING"] = query.decode("latin-1")
        env["SERVER_PROTOCOL"] = "HTTP/1.1" if version11 else "HTTP/1.0"
        parsed = (env, method, version11, keep_alive, chunked, length, expect_continue, target)
        # Heads with credentials are not kept past their request; the rest are, boundedly.
        if len(head) <= _HEAD_CACHE_MAX_BYTES and b"ookie:" not in head and b"uthorization:" not in head:
            if len(_HEAD_CACHE) >= _HEAD_CACHE_MAX:
                _HEAD_CACHE.clear()
            _HEAD_CACHE[head] = parsed
        return parsed

    def _handle(self, conn: Conn, head: bytes, body_start: int, app: Callable, parsed: tuple,
                ready_body: Any) -> bool:
        """Run one parsed request; `ready_body` is its body read on the loop, if it was."""
        template, method, version11, keep_alive, chunked, length, expect_continue, target = parsed
        env = template.copy()
        conn.buf = conn.buf[body_start:]
        body: Any = EMPTY_INPUT
        if ready_body is not None:
            body = ready_body
        elif chunked:
            body = BodyReader(conn, None, expect_continue, self.max_body)
            if not expect_continue:
                body.prefetch(CHUNKED_PREFETCH_BYTES)
        elif length:
            if len(conn.buf) >= length:
                body = BytesIO(conn.buf[:length])
                conn.buf = conn.buf[length:]
            else:
                body = BodyReader(conn, length, expect_continue, self.max_body)
        env["REMOTE_ADDR"] = conn.addr
        env["REMOTE_PORT"] = conn.port
        env["wsgi.input"] = body
        if conn.trusted:
            forwarded_for = env.get("HTTP_X_FORWARDED_FOR")
            if forwarded_for:
                env["REMOTE_ADDR"] = self._forwarded_client(forwarded_for)
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
                    return self._serve_static(conn, mount, env, target, version11, keep_alive, body)
        if self.pool is not None:
            env["wsgi.multithread"] = True
            self._inflight += 1
            self.pool.submit(self._in_thread, conn, app, env, method, version11, keep_alive, body)
            return HANDED_OFF
        return self._run_app(conn, app, env, method, version11, keep_alive, body)

    def _in_thread(
        self, conn: Conn, app: Callable, env: Dict[str, Any], method: str,
        version11: bool, keep_alive: bool, body: Any,
    ) -> None:
        """--threads: run one request off the event loop, then hand the connection back."""
        keep: bool = False
        try:
            keep = self._run_app(conn, app, env, method, version11, keep_alive, body)
        except HTTPError as exc:
            self._reject(conn, exc.reason)
        except ClientGone:
            pass
        except BaseException:  # noqa: BLE001 - a thread must always hand its connection back
            self._log_app_error(env)
        finally:
            self._done.append((conn, keep))  # deque.append is atomic: no lock needed
            self._wake()

    def _take_back(self, app: Callable, epoll: Any, now: float) -> None:
        """Connections whose request a thread finished: close them or watch them again."""
        done = self._done
        while done:
            conn, keep = done.popleft()
            self._inflight -= 1
            if not keep:
                conn.sock.close()
                continue
            conn.last = now
            self.conns[conn.fd] = conn
            result = self._process(conn, app, now) if conn.buf else True
            if result is HANDED_OFF:
                del self.conns[conn.fd]
            elif not result:
                del self.conns[conn.fd]
                conn.sock.close()
            else:
                epoll.register(conn.fd, EPOLLIN)

    def _serve_static(
        self, conn: Conn, mount: Any, env: Dict[str, Any], target: bytes,
        version11: bool, keep_alive: bool, body: Any,
    ) -> bool:
        # A body sent to a static file is never read: the connection ends after the response
        # rather than parse that body as the next request.
        ex = Exchange(conn, version11, env["REQUEST_METHOD"] == "HEAD", keep_alive and body is EMPTY_INPUT,
                      self.stopping, self._hold)
        reply = mount.reply(env, target)
        try:
            ex.start_response(reply.status, reply.headers)
            head = ex._head_bytes(None)
            if reply.fd < 0 or ex.bodyless:
                ex._send_last(head)
            else:
                ex.send_range(head, reply.fd, reply.offset, reply.count)
        except ClientGone:
            ex.keep_alive = False
        finally:
            if reply.fd >= 0:
                os.close(reply.fd)
        seconds = time.monotonic() - self.now
        method = env["REQUEST_METHOD"]
        label = method if method in _METRIC_METHODS else "other"
        if self.pool is not None:
            with self._count_lock:
                self.activity.record(label, ex.code, seconds, ex.written)
        else:
            self.activity.record(label, ex.code, seconds, ex.written)
        if self.access_log:
            self._log_access(env, ex.code, ex.written, seconds)
        return ex.keep_alive

    def _run_app(
        self, conn: Conn, app: Callable, env: Dict[str, Any], method: str,
        version11: bool, keep_alive: bool, body: Any,
    ) -> bool:
        ex = Exchange(conn, version11, method == "HEAD", keep_alive, self.stopping, self._hold)
        activity = self.activity
        # The loop's clock (read once per wakeup) is precise enough for --timeout and saves a call.
        threaded = self.pool is not None
        started = self.now
        if threaded:
            ident = threading.get_ident()
            activity.inflight[ident] = (self.now, method, env["PATH_INFO"])
        else:
            activity.current = (self.now, method, env["PATH_INFO"])
        result = None
        try:
            result = app(env, ex.start_response)
            if type(result) is list and len(result) == 1 and ex.status is not None:
                ex.send_one(result[0])
            elif type(result) is FileWrapper and ex.status is not None and ex.send_file(result):
                pass
            else:
                # Hold the first chunk: if it is also the last, it goes out with a Content-Length.
                first: Optional[bytes] = None
                for data in result:
                    if not data:
                        continue
                    if ex.sent:
                        ex.write(data)
                    elif first is None:
                        first = data
                    else:
                        ex.write(first)
                        ex.write(data)
                        first = None
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
                    conn_send(conn, _error_response("500 Internal Server Error"))
                except ClientGone:
                    pass
                ex.code = 500
                ex.keep_alive = False
        finally:
            if result is not None and hasattr(result, "close"):
                try:
                    result.close()
                except Exception:
                    self._log_app_error(env)
            ended = _monotonic()
            seconds = ended - started
            if not threaded:
                # The next request of this pass starts now, not when the loop woke up.
                self.now = ended
                if self.outbox is not None:
                    self.outbox.expire(ended)
            if threaded:
                activity.inflight.pop(ident, None)
                label = method if method in _METRIC_METHODS else "other"  # bounded label values
                with self._count_lock:
                    activity.record(label, ex.code, seconds, ex.written)
            else:
                # Inline Activity.record: this runs for every request, a call would cost ~10 %.
                activity.current = None
                activity.requests += 1
                key = _COUNT_KEYS.get((method, ex.code // 100))
                if key is None:
                    key = (method if method in _METRIC_METHODS else "other", ex.code // 100)
                counts = activity.counts
                counts[key] = counts.get(key, 0) + 1
                activity.dur[_bisect(activity.dur_bounds, seconds)] += 1
                activity.dur_sum += seconds
                size = ex.written
                # Every size bucket starts above 99 bytes: small bodies skip the search.
                activity.size[0 if size <= 100 else _bisect(activity.size_bounds, size)] += 1
                activity.size_sum += size
            if self.access_log:
                self._log_access(env, ex.code, ex.written, seconds)
        if ex.keep_alive and body is not EMPTY_INPUT and type(body) is BodyReader:
            try:
                if not body.finished and not body.discard(MAX_DISCARD_BYTES):
                    return False
            except (ClientGone, HTTPError):
                return False
        return ex.keep_alive

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
