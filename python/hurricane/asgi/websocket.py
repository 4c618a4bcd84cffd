"""One WebSocket session (RFC 6455) between a client and an ASGI app, on the connection that
upgraded.

Why the ``websockets`` library's Sans-I/O layer and not our own framing: it is the measured
fastest well-kept implementation (its C extension unmasks frames), and it already answers pings,
echoes closes, and fails a connection with the right code: 1009 past ``--ws-max-size``, 1002 for
protocol errors. This module moves bytes between it and the transport and messages between it and
the app, checks that text messages are UTF-8 (1007: the Sans-I/O layer leaves decoding to its
user), adds the idle ping (``--ws-ping-interval``, ``--ws-ping-timeout``) and the drain (1001
going away; 1012 on a reload), and counts.

One exception, measured: the message a chat, a game or an echo sends most, a whole masked text or
binary frame under 64 KiB outside a fragmented message, is unmasked here (with the library's own C
``apply_mask``) and its answer framed here, because the library's generator-based parser and its
Frame objects cost more than the rest of the echo's path together. Everything else (control
frames, fragments, bad or unmasked frames, frames of 64 KiB and over, anything after a close) goes
through the library, whole frames only, so it always resumes at a frame boundary and decides
every error and close exactly as before (the Autobahn case list in tests/autobahn.rs covers both).
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from websockets.frames import CloseCode, Frame, Opcode  # type: ignore[import-not-found]
from websockets.http11 import Response  # type: ignore[import-not-found]
from websockets.datastructures import Headers  # type: ignore[import-not-found]
from websockets.protocol import OPEN  # type: ignore[import-not-found]
from websockets.server import ServerProtocol  # type: ignore[import-not-found]

try:
    from websockets.speedups import apply_mask as _apply_mask  # type: ignore[import-not-found]
except ImportError:  # a build without its C extension
    from websockets.utils import apply_mask as _apply_mask  # type: ignore[import-not-found]

_TEXT, _BINARY = 0x81, 0x82  # FIN set, no RSV bits: a whole text or binary message in one frame
_MASKED = 0x80

# A client that does not answer our close within this long is cut.
CLOSE_TIMEOUT_S = 5.0


class Counters:
    """Per worker: websocket sessions open, messages each way, closes by code (for the heartbeat)."""

    def __init__(self) -> None:
        self.open = 0
        self.received = 0
        self.sent = 0
        self.closes: Dict[int, int] = {}

    def closed(self, code: int) -> None:
        self.closes[code] = self.closes.get(code, 0) + 1


class Session:
    """The app's side of one WebSocket: its scope, its receive and send.

    Memory matters here (a worker may hold thousands of idle sessions): slots, a plain deque and
    one waiter instead of an asyncio.Queue (four deques), and the handshake request dropped once
    answered.
    """

    __slots__ = ("conn", "scope", "counters", "log", "proto", "request", "inbox", "waiter", "state",
                 "parts", "text", "ping_interval", "ping_timeout", "last_seen", "ping_sent", "timer",
                 "started", "messages", "denial", "close_code", "pending", "fast", "max_size")

    def __init__(self, conn: Any, raw_head: bytes, scope: Dict[str, Any], settings: Dict[str, Any],
                 counters: Counters, log: Callable[[str, Dict[str, Any]], None]) -> None:
        self.conn = conn
        self.scope = scope
        self.counters = counters
        self.log = log
        self.proto = ServerProtocol(max_size=settings["max_size"])
        self.proto.receive_data(raw_head)
        events = self.proto.events_received()
        self.request = events[0] if events else None
        # A list, not a deque: an idle session holds 56 bytes here instead of a 760-byte block,
        # and what waits in it is rarely more than a message or two.
        self.inbox: List[Dict[str, Any]] = [{"type": "websocket.connect"}]
        self.waiter: Optional[asyncio.Future] = None
        self.state = "connecting"  # connecting -> open -> closing -> closed
        self.parts: List[bytes] = []
        self.text = False
        self.ping_interval = float(settings["ping_interval"])
        self.ping_timeout = float(settings["ping_timeout"])
        self.last_seen = time.monotonic()
        self.ping_sent: Optional[float] = None
        self.timer: Optional[asyncio.TimerHandle] = None
        self.started = time.monotonic()
        self.messages = [0, 0]  # received, sent
        self.denial: Optional[Tuple[int, List[Tuple[bytes, bytes]], List[bytes]]] = None
        self.close_code = 1006
        # Before accept: frames sent early; after: the start of a frame not all here yet.
        self.pending: bytes = b""
        # Whole frames are split here (the fast path); False once the library reads the stream
        # on its own: a frame of 64 KiB or more, a failure, a close.
        self.fast = False
        self.max_size = int(settings["max_size"])

    # The app's side --------------------------------------------------------------------------

    async def receive(self) -> Dict[str, Any]:
        while not self.inbox:
            self.waiter = self.conn.loop.create_future()
            await self.waiter
            self.waiter = None
        return self.inbox.pop(0)

    def _put(self, message: Dict[str, Any]) -> None:
        self.inbox.append(message)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def send(self, message: Dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept" and self.state == "connecting":
            self._accept(message)
        elif kind == "websocket.send" and self.state == "open":
            text, data = message.get("text"), message.get("bytes")
            if text is not None:
                payload, opcode = text.encode("utf-8"), _TEXT
            elif data is not None:
                payload, opcode = bytes(data), _BINARY
            else:
                raise ValueError("websocket.send needs text or bytes")
            if self.fast and self.proto.state is OPEN:
                # A server's frame is unmasked: a header and the payload (RFC 6455 5.2).
                size = len(payload)
                if size < 126:
                    self.conn.write(bytes((opcode, size)) + payload)
                elif size < 65536:
                    self.conn.write(struct.pack("!BBH", opcode, 126, size) + payload)
                else:
                    self.conn.write(struct.pack("!BBQ", opcode, 127, size) + payload)
            elif opcode == _TEXT:
                self.proto.send_text(payload)
            else:
                self.proto.send_binary(payload)
            self.messages[1] += 1
            self.counters.sent += 1
            self.flush()
            if self.conn.write_waiter is not None:  # the client's buffer is full: wait for it
                await self.conn.drain()
        elif kind == "websocket.close":
            self.close(int(message.get("code", 1000)), str(message.get("reason") or ""))
        elif kind == "websocket.http.response.start" and self.state == "connecting":
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            self.denial = (int(message["status"]), headers, [])
        elif kind == "websocket.http.response.body" and self.denial is not None:
            self.denial[2].append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self._send_denial()
        elif self.state in ("closing", "closed"):
            # Sends after the close are the app's race with the client, not an error (as uvicorn).
            return
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in websocket state {self.state}")

    def _accept(self, message: Dict[str, Any]) -> None:
        request, self.request = self.request, None
        response = self.proto.accept(request)
        # Answered: its headers need not live as long as the session. websockets' parser keeps
        # the request it parsed (a local of its generator) until the connection ends, so the
        # headers are emptied, not only our reference dropped.
        request.headers.clear()
        if response.status_code != 101:
            self.proto.send_response(response)
            self.state = "closed"
            self.flush()
            self.conn.close_transport()
            return
        subprotocol = message.get("subprotocol")
        if subprotocol:
            response.headers["Sec-WebSocket-Protocol"] = subprotocol
        for name, value in message.get("headers", []):
            response.headers[bytes(name).decode("latin-1")] = bytes(value).decode("latin-1")
        self.proto.send_response(response)
        self.state = "open"
        # No extension is offered (permessage-deflate is refused), so frames are plain.
        self.fast = not self.proto.extensions
        self.counters.open += 1
        self.flush()
        self._arm_ping()
        if self.pending:
            data, self.pending = self.pending, b""
            self.data_received(data)

    def _send_denial(self) -> None:
        status, headers, body = self.denial or (403, [], [])
        payload = b"".join(body)
        hdrs = Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers])
        if "Content-Length" not in hdrs:
            hdrs["Content-Length"] = str(len(payload))
        self.proto.send_response(Response(status, "", hdrs, payload))
        self.state = "closed"
        self.flush()
        self.conn.close_transport()

    def close(self, code: int, reason: str = "") -> None:
        """Close from our side: before accept a 403 (the spec's denial), after it a close frame."""
        if self.state == "connecting":
            self.proto.send_response(self.proto.reject(403, "Forbidden\n"))
            self.state = "closed"
            self.flush()
            self.conn.close_transport()
            self._ended(403)
            return
        if self.state != "open":
            return
        self.state = "closing"
        self.proto.send_close(code, reason)
        self.flush()
        loop = asyncio.get_running_loop()
        self._cancel_timer()
        self.timer = loop.call_later(CLOSE_TIMEOUT_S, self.conn.close_transport)

    # The client's side -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.state == "connecting":
            self.pending += data  # frames sent before our accept wait for it
            return
        self.last_seen = time.monotonic()
        proto = self.proto
        if self.fast:
            self._split(self.pending + data if self.pending else data)
        else:
            self._to_library(data)
        if self.state == "open" and proto.state is not OPEN:
            # The library failed the connection (a protocol error, a message too big) or answered
            # the client's close: the app's sends from now on go nowhere, as after our own close.
            self.state = "closing"
        self.flush()

    def _split(self, buf: bytes) -> None:
        """Whole frames from `buf`: the common message here, any other frame to the library."""
        proto = self.proto
        size = len(buf)
        at = 0
        while size - at >= 2:
            b0, b1 = buf[at], buf[at + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - at < 4:
                    break
                length = (buf[at + 2] << 8) | buf[at + 3]
                head = 4
            elif length == 127:
                length = self.max_size + 1  # 64 KiB or more: not split here
            if length > self.max_size:
                # Large: the library reads it (and enforces --ws-max-size) and the rest of the stream.
                self.fast = False
                self.pending = b""
                self._to_library(buf[at:])
                return
            masked = b1 & _MASKED
            if masked:
                head += 4
            end = at + head + length
            if end > size:
                break  # the rest of this frame is still to come (at most 64 KiB are held)
            if (b0 == _TEXT or b0 == _BINARY) and masked and not self.parts:
                data = _apply_mask(buf[at + head:end], buf[at + head - 4:at + head])
                self.messages[0] += 1
                self.counters.received += 1
                if b0 == _TEXT:
                    try:
                        text = data.decode("utf-8")
                    except UnicodeDecodeError:
                        proto.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                        self.fast = False
                        self.pending = b""
                        return  # failed: what followed in the same read is not delivered
                    self._put({"type": "websocket.receive", "text": text})
                else:
                    self._put({"type": "websocket.receive", "bytes": data})
            else:
                self._to_library(buf[at:end])
                if proto.state is not OPEN:
                    self.fast = False  # a close or a failure: the library reads (discards) the rest
                    self.pending = b""
                    if end < size:
                        proto.receive_data(buf[end:])
                    return
            at = end
        self.pending = buf[at:] if at < size else b""

    def _to_library(self, data: bytes) -> None:
        """Bytes the library parses: its frames reach the session as events."""
        proto = self.proto
        proto.receive_data(data)
        for event in proto.events_received():
            if isinstance(event, Frame):
                self._frame(event)
                if proto.state is not OPEN:
                    break  # failed (invalid UTF-8): what followed in the same read is not delivered

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self.text = opcode is Opcode.TEXT
            self.parts = [frame.data]
        elif opcode is Opcode.CONT:
            self.parts.append(frame.data)
        elif opcode is Opcode.PONG:
            self.ping_sent = None
            return
        elif opcode is Opcode.CLOSE:
            return  # the library echoed it; connection_lost ends the session
        else:
            return
        if not frame.fin:
            return
        data = b"".join(self.parts)
        self.parts = []
        self.messages[0] += 1
        self.counters.received += 1
        if self.text:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                # RFC 6455 8.1: a text message must be valid UTF-8 (the library leaves it to us).
                self.proto.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
                return
            self._put({"type": "websocket.receive", "text": text})
        else:
            self._put({"type": "websocket.receive", "bytes": data})

    def flush(self) -> None:
        for data in self.proto.data_to_send():
            if data:
                self.conn.write(data)
            else:
                # The library's end of the stream: the close handshake is done (or failed), and
                # the server closes TCP first (RFC 6455 7.1.1). What was written still goes out.
                self.conn.close_transport()

    def close_code_now(self) -> int:
        """The close code the session ended with: the client's, else ours, else 1006 (no close)."""
        if self.proto.close_rcvd is not None:
            return int(self.proto.close_rcvd.code)
        if self.proto.close_sent is not None:
            return int(self.proto.close_sent.code)
        return 1006

    def connection_lost(self) -> None:
        self._cancel_timer()
        code = self.close_code_now()
        if self.state in ("open", "closing"):
            self.counters.open -= 1
        if self.state != "closed":
            self._ended(code)
        self.state = "closed"
        reason = self.proto.close_rcvd.reason if self.proto.close_rcvd is not None else ""
        self._put({"type": "websocket.disconnect", "code": code, "reason": reason})

    def _ended(self, code: int) -> None:
        self.close_code = code
        self.counters.closed(code)
        self.log("websocket", {
            "path": self.scope.get("path", ""), "code": code,
            "received": self.messages[0], "sent": self.messages[1],
            "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
        })

    # Idle pings --------------------------------------------------------------------------------

    def _arm_ping(self) -> None:
        if self.ping_interval <= 0:
            return
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.ping_interval, self._ping)

    def _ping(self) -> None:
        if self.state != "open":
            return
        now = time.monotonic()
        if self.ping_sent is not None and now - self.ping_sent >= self.ping_timeout:
            self.proto.fail(1011, "keepalive ping timeout")
            self.flush()
            self.conn.close_transport()
            return
        if self.ping_sent is None and now - self.last_seen >= self.ping_interval:
            self.proto.send_ping(b"hurricane")
            self.ping_sent = now
            self.flush()
        loop = asyncio.get_running_loop()
        wait = self.ping_timeout if self.ping_sent is not None else self.ping_interval
        self.timer = loop.call_later(max(0.05, wait - (now - (self.ping_sent or self.last_seen))), self._ping)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
