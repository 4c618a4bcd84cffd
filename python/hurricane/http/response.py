"""Responses: framing the app's status and headers, and writing its body to the connection.

Why these caches: an app answers the same way again and again, so a response head is a pure
function of (status, headers, body length, request flags, the Date second) and is looked up, and
each distinct (name, value) header pair and status string is validated once. A small response leaves
with its head in a single send (or through the outbox); a big one without a copy.

Nothing here waits for a client: what the socket does not take is parked on the connection
(wire.py), and a response the app still produces (an iterator, a file) continues as a `Tail` when
the client reads.
"""

from __future__ import annotations

import enum
import os
import re
import socket
import time
from email.utils import formatdate
from stat import S_ISREG
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from hurricane.http.wire import (
    HOLD_MAX_BYTES,
    Conn,
    conn_send,
    send_closing,
    sendfile_some,
    wait_sent,
)

# A file (static, media or wsgi.file_wrapper) up to this size is read and sent in one call, bigger
# ones stream with sendfile(2): see Exchange.send_range.
COPY_FILE_MAX_BYTES = 1 << 20
# How long the app's write() callable (PEP 3333) waits for a client that reads nothing; the
# server sets it from --write-timeout.
WRITE_TIMEOUT_S = [30.0]

_APP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class Framing(enum.Enum):
    """How the client learns where a response body ends (RFC 9112 6.3)."""

    NONE = "none"  # HEAD, 1xx, 204, 304: no body at all
    LENGTH = "length"  # Content-Length
    CHUNKED = "chunked"  # Transfer-Encoding: chunked (HTTP/1.1, length unknown up front)
    CLOSE = "close"  # HTTP/1.0 without a length: the body ends when the connection does


NO_BODY = Framing.NONE
LENGTH = Framing.LENGTH
CHUNKED = Framing.CHUNKED
UNTIL_CLOSE = Framing.CLOSE


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
        "sent", "framing", "length", "written", "draining", "nodelay", "hold",
    )

    def __init__(
        self, conn: Conn, version11: bool, head: bool, keep_alive: bool, draining: bool,
        hold: Optional[Callable[[Conn, bytes], None]],
    ) -> None:
        self.conn = conn
        self.version11 = version11
        self.head = head  # a HEAD request: the head of a response only
        self.keep_alive = keep_alive
        self.status: Optional[str] = None
        self.code = 0
        self.headers: List[Tuple[str, str]] = []
        self.sent = False  # the response head is out (or parked): no second status line
        self.framing = NO_BODY
        self.length: Optional[int] = None  # Content-Length the app declared
        self.written = 0
        self.draining = draining  # the worker is stopping: every response says Connection: close
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
        return self.write_now

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
            head, self.framing, self.length, self.keep_alive = cached
            self.sent = True
            return head
        head = self._build_head(body_len)
        if key is not None:
            if len(_HEADS) >= _HEADS_MAX:
                _HEADS.clear()
            _HEADS[key] = (head, self.framing, self.length, self.keep_alive)
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
        if self.head or code < 200 or code == 204 or code == 304:
            framing = NO_BODY
        elif length is not None:
            framing = LENGTH
        elif body_len is not None:
            block += f"Content-Length: {body_len}\r\n"
            length = body_len
            framing = LENGTH
        elif self.version11:
            block += "Transfer-Encoding: chunked\r\n"
            framing = CHUNKED
        else:
            framing = UNTIL_CLOSE
            close = True  # HTTP/1.0 without a length: the end of the body is the close
        self.framing = framing
        self.length = length if framing is LENGTH else None
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

    def write_now(self, data: bytes) -> None:
        """The write() callable start_response returns (PEP 3333): the app expects the bytes gone
        when it returns, so this one waits (up to --write-timeout) for a client that reads."""
        self.write(data)
        conn = self.conn
        if conn.parked or conn.out:
            wait_sent(conn, WRITE_TIMEOUT_S[0])

    def write(self, data: bytes) -> None:
        """One piece of the body, framed; what the socket does not take is parked."""
        if type(data) is not bytes:
            if isinstance(data, (bytearray, memoryview)):
                data = bytes(data)
            else:
                raise TypeError(f"the app must yield bytes, got {type(data).__name__}")
        out = b"" if self.sent else self._head_bytes(None)
        framing = self.framing
        if framing is NO_BODY:
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
        if framing is CHUNKED:
            if data:
                out += b"%x\r\n%b\r\n" % (len(data), data)
        else:
            out += data
        if out:
            conn_send(self.conn, out)

    def finish(self) -> None:
        if not self.sent:
            self._send_last(self._head_bytes(0))
        elif self.framing is CHUNKED:
            self._send_end(b"0\r\n\r\n")
        elif self.length is not None and self.written < self.length:
            self.keep_alive = False  # short body: the client would wait for bytes never coming

    def send_one(self, body: bytes) -> None:
        """The common case: the whole body is one bytes object; headers and body in one send."""
        if type(body) is not bytes:
            self.write(body)
            self.finish()
            return
        size = len(body)
        head = self._head_bytes(size)
        if self.framing is NO_BODY:
            self._send_last(head)  # HEAD, 1xx, 204, 304
            return
        if size != self.length:
            # The app declared another length; let write() enforce it.
            conn_send(self.conn, head)
            self.sent = True
            self.write(body)
            self.finish()
            return
        self.written = size
        if size <= HOLD_MAX_BYTES:
            data = head + body
            hold = self.hold
            if hold is not None and self.keep_alive and len(data) <= HOLD_MAX_BYTES:
                hold(self.conn, data)  # _send_last, inline: this is every small response
            else:
                self._send_end(data)
        else:
            # No copy of a big body: the head waits (MSG_MORE) and leaves with its first bytes.
            # (One sendmsg of both measured ~10 % slower on 1 MiB responses.)
            conn_send(self.conn, head, socket.MSG_MORE)
            self._send_end(body)

    def _send_last(self, data: bytes) -> None:
        """The whole (rest of the) response in one buffer: the outbox may hold it for its pass."""
        if self.hold is not None and self.keep_alive and len(data) <= HOLD_MAX_BYTES:
            self.hold(self.conn, data)
        else:
            self._send_end(data)

    def _send_end(self, data: Any) -> None:
        """The response's last bytes, now: on a connection that closes after them they leave with
        the FIN (wire.send_closing)."""
        if self.keep_alive:
            conn_send(self.conn, data)
        else:
            send_closing(self.conn, data)

    def send_range(self, head: bytes, fd: int, offset: int, count: int) -> int:
        """The head, then `count` bytes of the file from `offset`, as far as the socket takes
        them; returns how many bytes of the range are still to send (see Tail).

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
                conn_send(conn, data)
            return 0
        # MSG_MORE: the head waits for the file's first bytes and leaves in the same segment.
        conn_send(conn, head, socket.MSG_MORE)
        self.written = 0
        if conn.parked:
            return count
        sent = sendfile_some(conn, fd, offset, count)
        if sent == 0:
            self.keep_alive = False  # the file ended early
            return 0
        if sent > 0:
            self.written = sent
        return count - self.written

    def file_fd(self, wrapper: "FileWrapper") -> Optional[Tuple[int, int, int]]:
        """(fd, offset, size) of a wsgi.file_wrapper around a real file; None if it is not one."""
        filelike = wrapper.filelike
        try:
            fd = filelike.fileno()
            stat = os.fstat(fd)
            offset = filelike.tell() if hasattr(filelike, "tell") else 0
        except (AttributeError, OSError, ValueError):
            return None
        if not S_ISREG(stat.st_mode):
            return None
        return fd, offset, max(0, stat.st_size - offset)


class Tail:
    """The rest of a response the socket could not take at once, produced as the client reads:
    the app's iterator is advanced, or the file sent on from its offset, only when the parked
    bytes before it have left. So a 1 GB streaming response costs one chunk of memory, and a
    client that stops reading holds no worker (issue 11).

    `context` is the server's: what it needs to finish the request (metrics, the log, close()).
    """

    __slots__ = ("ex", "it", "fd", "offset", "count", "context")

    def __init__(self, ex: Exchange, it: Optional[Iterator[bytes]], fd: int, offset: int,
                 count: int, context: Any) -> None:
        self.ex = ex
        self.it = it  # the app's iterator (None: a file range, or nothing left to produce)
        self.fd = fd
        self.offset = offset
        self.count = count
        self.context = context

    def advance(self) -> bool:
        """Produce until the socket is full again; True when the whole response is produced (its
        last bytes may still be parked). Raises ClientGone, and whatever the app's iterator does."""
        ex = self.ex
        conn = ex.conn
        while not conn.parked:
            if self.count > 0:
                sent = sendfile_some(conn, self.fd, self.offset, self.count)
                if sent < 0:
                    return False  # the socket is full: wait for the client
                if sent == 0:
                    ex.keep_alive = False  # the file shrank under us: the client sees a cut body
                    self.count = 0
                    return True
                self.offset += sent
                self.count -= sent
                ex.written += sent
            elif self.it is not None:
                try:
                    data = next(self.it)
                except StopIteration:
                    self.it = None
                    ex.finish()
                    return True
                if data:
                    ex.write(data)
            else:
                return True
        return False

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

# Exchange._head_bytes: (status, headers, body length, flags) -> (head, framing, length,
# keep-alive). Emptied when the Date second turns, so a cached head never carries a stale Date.
_HEADS: Dict[Any, Tuple[bytes, Framing, Optional[int], bool]] = {}
_HEADS_MAX = 256


# The Date header line, refreshed by the event loop at most once a second (not per request).
_DATE = [""]
_date_second = [0]


def refresh_date() -> None:
    now = int(time.time())
    if now != _date_second[0]:
        _date_second[0] = now
        _DATE[0] = f"Date: {formatdate(now, usegmt=True)}\r\n"
        _HEADS.clear()


def http_date() -> str:
    refresh_date()
    return _DATE[0]


