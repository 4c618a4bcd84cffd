"""Request bodies, read on the event loop before the app runs (as nginx and granian do).

Why: a client that trickles its body (a phone on a bad link, a slowloris) then holds no worker;
the app reads the whole body at memory speed. Small bodies stay in memory, bigger ones (past
BODY_MEMORY_BYTES) go to a temporary file, so a 100 MB upload costs no 100 MB of worker memory.
Chunked bodies are decoded as they arrive by a push decoder (no socket reads of its own), so a
malformed one is refused before the app runs, whatever its size. A body below --min-body-rate after
BODY_RATE_GRACE_S is answered 408 by the server.
"""

from __future__ import annotations

import enum
import re
import tempfile
from io import BytesIO
from typing import Any, List

from hurricane.http.rejections import HTTPError

# In memory up to this size, in a temporary file past it.
BODY_MEMORY_BYTES = 1 << 20
# A body still arriving after this grace period, at less than --min-body-rate bytes a second on
# average, is answered 408 and its connection closed (Kestrel's rule and numbers).
BODY_RATE_GRACE_S = 5.0
# A chunk-size line (with extensions) or trailer line longer than this is an attack, not a request.
MAX_CHUNK_LINE_BYTES = 4096

# chunk-ext, RFC 9112 7.1.1: `;name` or `;name=token-or-quoted-string`, with optional whitespace.
_CHUNK_EXT = re.compile(
    rb"(?:[ \t]*;[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
    rb"(?:[ \t]*=[ \t]*(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
    rb"|\"(?:[^\"\\\x00-\x08\x0a-\x1f\x7f]|\\.)*\"))?)*[ \t]*"
)


class PendingBody:
    """A request whose Content-Length body is arriving, collected on the event loop.

    The head is parsed once; the app gets the body as wsgi.input once all of it is here.
    """

    __slots__ = ("head", "parsed", "length", "received", "arrived", "since", "chunks", "spool")

    def __init__(self, head: bytes, parsed: tuple, length: int, now: float) -> None:
        self.head = head
        self.parsed = parsed
        self.length = length
        self.received = 0  # body bytes kept
        self.arrived = 0  # bytes off the wire (with a chunked body's framing): the rate's measure
        self.since = now
        self.chunks: List[bytes] = []
        self.spool: Any = None

    def add(self, data: bytes) -> bytes:
        """Take what belongs to the body; return what follows it (a pipelined next request)."""
        need = self.length - self.received
        part, rest = (data, b"") if len(data) <= need else (data[:need], data[need:])
        self.arrived += len(part)
        self._keep(part)
        return rest

    def _keep(self, part: bytes) -> None:
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

    @property
    def complete(self) -> bool:
        return self.received >= self.length

    def too_slow(self, now: float, min_rate: float) -> bool:
        elapsed = now - self.since
        return min_rate > 0 and elapsed > BODY_RATE_GRACE_S and self.arrived < min_rate * elapsed

    def input(self) -> Any:
        """wsgi.input: the body from memory or from its temporary file."""
        if self.spool is None:
            return BytesIO(b"".join(self.chunks))
        self.spool.flush()
        self.spool.seek(0)
        return self.spool


class Chunk(enum.Enum):
    """Where a chunked body's decoder is (RFC 9112 7.1)."""

    SIZE = "size"  # a chunk-size line, with extensions
    DATA = "data"  # chunk data, `ChunkedBody.remaining` bytes to go
    DATA_END = "data_end"  # the CRLF after chunk data
    TRAILER = "trailer"  # trailer lines (read and dropped) up to an empty one
    DONE = "done"


class ChunkedBody(PendingBody):
    """A chunked body decoded as its bytes arrive; HTTPError for anything RFC 9112 forbids."""

    __slots__ = ("state", "remaining", "line", "max_body")

    def __init__(self, head: bytes, parsed: tuple, max_body: int, now: float) -> None:
        super().__init__(head, parsed, 0, now)
        self.state = Chunk.SIZE
        self.remaining = 0
        self.line = b""  # an incomplete line carried to the next read
        self.max_body = max_body

    @property
    def complete(self) -> bool:
        return self.state is Chunk.DONE

    def add(self, data: bytes) -> bytes:
        self.arrived += len(data)
        buf = self.line + data if self.line else data
        self.line = b""
        pos = 0
        end_of_data = len(buf)
        while pos < end_of_data:
            state = self.state
            if state is Chunk.DATA:
                take = min(self.remaining, end_of_data - pos)
                self._keep(buf[pos : pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = Chunk.DATA_END
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if end_of_data - pos > MAX_CHUNK_LINE_BYTES:
                    raise HTTPError("chunk_line_too_long")
                self.line = buf[pos:]
                return b""
            if end - pos > MAX_CHUNK_LINE_BYTES:
                raise HTTPError("chunk_line_too_long")
            line = buf[pos:end]
            pos = end + 2
            if b"\n" in line or b"\r" in line:
                raise HTTPError("bare_lf_in_chunk")
            if state is Chunk.SIZE:
                size = _chunk_size(line)
                if size == 0:
                    self.state = Chunk.TRAILER
                elif self.received + size > self.max_body:
                    raise HTTPError("body_too_large")
                else:
                    self.remaining = size
                    self.state = Chunk.DATA
            elif state is Chunk.DATA_END:
                if line:
                    raise HTTPError("chunk_longer_than_size")
                self.state = Chunk.SIZE
            elif not line:  # the empty line after the trailers: the body is complete
                self.state = Chunk.DONE
                self.arrived -= end_of_data - pos
                return buf[pos:]
        return b""


def _chunk_size(line: bytes) -> int:
    size, _, ext = line.partition(b";")
    # RFC 9112 7.1: chunk-size is 1*HEXDIG; no sign, no spaces, no 0x prefix.
    if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
        raise HTTPError("bad_chunk_size")
    if ext and not _CHUNK_EXT.fullmatch(b";" + ext):
        raise HTTPError("bad_chunk_extension")
    return int(size, 16)


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
