"""Request bodies: read on the event loop before the app runs, or streamed to it as wsgi.input.

Why two ways: a Content-Length body that has not all arrived is collected by the loop (PendingBody:
in memory, spooled to a temporary file past BODY_MEMORY_BYTES), so a client trickling it holds no
worker; the app then reads it at memory speed. A chunked body is decoded for the app as it reads
(BodyReader), after up to CHUNKED_PREFETCH_BYTES were decoded ahead so a malformed small body is
refused before the app runs.
"""

from __future__ import annotations

import re
import tempfile
from io import BytesIO
from typing import Any, List, Optional

from hurricane.http.rejections import HTTPError
from hurricane.http.wire import CLIENT_IO_TIMEOUT_S, Conn, conn_send, recv_some, wait_sent

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
            if conn.parked:  # the client has not read earlier responses yet: it will, or is gone
                wait_sent(conn, CLIENT_IO_TIMEOUT_S)
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
