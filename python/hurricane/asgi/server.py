"""The ASGI worker's server: one asyncio loop on the shared socket, an asyncio Protocol per
connection, the app called per request (``http``) or per WebSocket session.

Why a Protocol and not streams: the connection is a small state machine driven by the loop's
callbacks (bytes in, room to write, gone), with no task of its own while idle; a task exists only
while the app runs. Request heads go through the WSGI worker's parser (``http.request``: the same
strictness and the same named rejections); bodies are streamed to the app as they arrive
(``more_body``), with reading paused while the app has not taken what is buffered; responses
wait in ``send`` while the socket's buffer is full, and a client that reads nothing for
``--write-timeout`` is cut, so a stalled reader holds no one.

Drain (TERM): the listener closes at once; requests in flight finish; every WebSocket gets a
1001 close; streaming responses whose app waits on ``receive`` get ``http.disconnect``; idle
keep-alive connections close; after ``--graceful-timeout`` the worker exits whatever the app does.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import struct
import sys
import time
import traceback
from collections import deque
from typing import IO, Any, Callable, Deque, Dict, List, Optional, Tuple

from hurricane import LISTEN_FD, __version__
from hurricane.asgi.lifespan import Lifespan
from hurricane.asgi.websocket import Counters, Session
from hurricane import static
from hurricane.http.body import ChunkedBody
from hurricane.http.proxies import Proxies
from hurricane.http.rejections import REJECTIONS, HTTPError, RejectLog, error_response
from hurricane.http.request import HEAD_CACHE, HeadParser
from hurricane.http.response import http_date
from hurricane.log import log_line
from hurricane.supervision import (
    LOOP_TICK_S, Activity, StatusPipe, Stopper, boot_failure, freeze_imports, load_object, report_ready,
    start_heartbeat,
)

# The worker reads its control pipe from the start (checks; EOF: the master is gone).
WATCH_CONTROL_WHILE_LOADING = True

SERVER_HEADER = b"server: hurricane/" + __version__.encode() + b"\r\n"
# Request body bytes buffered for an app that has not asked for them; past this, reading pauses.
BODY_BUFFER_BYTES = 1 << 16
# The socket's write buffer past which ``send`` waits for the client (asyncio's high-water mark).
WRITE_HIGH_WATER_BYTES = 1 << 16
_REASONS = {100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content",
            206: "Partial Content", 301: "Moved Permanently", 302: "Found", 303: "See Other",
            304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 413: "Content Too Large", 422: "Unprocessable Content",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}
_BAD_HEADER = (b"\r", b"\n", b"\x00")
# (name, value) of a response header -> (its line, its kind). Bounded; only pairs that passed the checks.
_HEADER_LINES: Dict[Tuple[bytes, bytes], Tuple[bytes, int]] = {}
_HEADER_LINES_MAX = 1024
# Status code -> "HTTP/1.1 200 OK\r\n" (at most the 900 valid codes).
_STATUS_LINES: Dict[int, bytes] = {}
_PLAIN, _CONTENT_LENGTH, _FRAMING = 0, 1, 2  # _FRAMING: the server's own (dropped)
# id(environ template) -> (the template, its ASGI header list); the template is kept alive with
# its entry, so an id is never reused while cached. Bounded like the parser's own cache.
_SCOPE_HEADERS: Dict[int, Tuple[Dict[str, Any], List[Tuple[bytes, bytes]]]] = {}
_SCOPE_HEADERS_MAX = 512


_DATE_BYTES = ["", b""]


# Python 3.12+ runs a task's first step at once (eager_start): a request whose app answers
# without waiting, as most do, then costs no trip through the loop's ready queue.
_EAGER_START = sys.version_info >= (3, 12)


def _date_line() -> bytes:
    """The Date header line as bytes, encoded once per second (http_date refreshes the text)."""
    text = http_date()
    if text is not _DATE_BYTES[0]:
        _DATE_BYTES[0], _DATE_BYTES[1] = text, text.encode("latin-1")
    return _DATE_BYTES[1]


def _header_line(name: bytes, value: bytes) -> Tuple[bytes, int]:
    """A response header's line and kind, once it is known to be safe; AppError for one that is not."""
    if any(c in name or c in value for c in _BAD_HEADER) or b":" in name or not name:
        raise AppError(f"bad response header {name!r}")
    lower = name.lower()
    kind = _CONTENT_LENGTH if lower == b"content-length" else (
        _FRAMING if lower in (b"connection", b"transfer-encoding") else _PLAIN)
    return name + b": " + value + b"\r\n", kind


def listen_backlog(listener: socket.socket, configured: int) -> int:
    """The listening socket's accept-queue limit as it stands (TCP_INFO's tcpi_sacked on a
    listener), so that listening again changes nothing, also for a socket systemd passed with its
    own Backlog=; --backlog where the kernel does not say."""
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
        current = struct.unpack_from("I", info, 28)[0]
    except (AttributeError, OSError, struct.error):
        return configured
    return current or configured


class AppError(Exception):
    """The app broke the ASGI contract (a message out of order, a bad header)."""


def load(config: Dict[str, Any], status: StatusPipe) -> Tuple[Callable, List[Any]]:
    """Import the ASGI 3 app and build the static mounts; a failure, or an object that is not an
    ASGI 3 app, ends the process."""
    kind = "import"
    try:
        app = load_object(config["app"], "callable")
        kind = "config"
        mounts = static.mounts_from_config(config.get("http") or {})
        call = app if inspect.isfunction(app) or inspect.ismethod(app) else getattr(app, "__call__", None)
        if not inspect.iscoroutinefunction(call) and not inspect.iscoroutinefunction(app):
            raise TypeError(
                f"'{config['app']}' is not an ASGI 3 application (an async callable taking scope, "
                f"receive, send; got {type(app).__name__}); serve a WSGI app with -w instead of --asgi")
    except BaseException as exc:  # noqa: BLE001 - SystemExit from an app's import is a failure too
        boot_failure(status, config, exc, kind)
    freeze_imports()
    return app, mounts


def serve(config: Dict[str, Any], control: IO[bytes], status: StatusPipe, booted: float,
          loaded: Tuple[Callable, List[Any]], stopper: Stopper) -> None:
    """Run the loop until told to stop; ends the process."""
    asgi = config.get("asgi") or {}
    if asgi.get("loop") == "uvloop":
        import uvloop  # type: ignore[import-not-found]  # the user's; the master checked it imports

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    metrics = config.get("metrics") or {}
    activity = Activity(metrics.get("duration_buckets", []), metrics.get("size_buckets", []))
    app, mounts = loaded
    server = Server(config, app, activity)
    server.mounts = mounts
    stopper.watch_control(control, status)
    code = asyncio.run(server.run(status, booted, stopper))
    server.heartbeat_last()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Server:
    def __init__(self, config: Dict[str, Any], app: Callable, activity: Activity) -> None:
        self.config = config
        self.app = app
        self.activity = activity
        http = config.get("http") or {}
        asgi = config.get("asgi") or {}
        self.log_json = bool((config.get("log") or {}).get("json"))
        self.reject_log = RejectLog(self.log_json)
        self.keep_alive_s = float(config.get("keep_alive", 5))
        self.graceful_timeout_s = float(config.get("graceful_timeout", 30))
        self.write_timeout_s = float(http.get("write_timeout", 30))
        self.backlog = int(http.get("backlog", 2048))
        self.access_log = bool(http.get("access_log"))
        self.proxies = Proxies(http.get("forwarded_allow_ips", ["127.0.0.1", "::1"]))
        self.mounts: List[Any] = []
        self.worker_id = config.get("worker", 0)
        self.max_body = int(http.get("max_body_size", 100 * 1024 * 1024))
        self.parser = HeadParser(int(http.get("limit_request_line", 8190)),
                                 int(http.get("limit_request_fields", 100)),
                                 int(http.get("limit_request_field_size", 8190)), self.max_body)
        self.max_head = self.parser.limit_line + 2 + self.parser.limit_fields * (self.parser.limit_field_size + 2)
        self.ws = {"max_size": int(asgi.get("ws_max_size", 1 << 20)),
                   "ping_interval": float(asgi.get("ws_ping_interval", 20)),
                   "ping_timeout": float(asgi.get("ws_ping_timeout", 20))}
        self.ws_counters = Counters()
        self.state: Dict[str, Any] = {}
        self.conns: "set[Connection]" = set()
        self.stopping = False
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.stop_event: Optional[asyncio.Event] = None
        self.heartbeat: Any = None
        self.stopper: Optional[Stopper] = None

    def request_stop(self) -> None:
        """TERM (from the signal handler) or the master gone (from the control thread)."""
        loop = self.loop
        if loop is not None and self.stop_event is not None:
            loop.call_soon_threadsafe(self.stop_event.set)

    def heartbeat_last(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat()

    def log(self, event: str, fields: Dict[str, Any], level: str = "INFO") -> None:
        log_line(level, event, fields, self.log_json)

    async def run(self, status: StatusPipe, booted: float, stopper: Stopper) -> int:
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        self.stopper = stopper
        stopper.attach(self.request_stop)
        lifespan = Lifespan(self.app, self.state)
        failed = await lifespan.startup()
        if failed is not None:
            boot_failure(status, self.config, RuntimeError(f"the app's lifespan startup failed: {failed}"),
                         "config")
        if not lifespan.supported:
            self.log("lifespan_unsupported", {"app": self.config.get("app", ""),
                                              "hint": "the app raised on the lifespan scope (as Django's does): none"})
        listener = socket.socket(fileno=LISTEN_FD)
        listener.setblocking(False)
        # asyncio (and uvloop) call listen() again on a socket they are given, with 100 unless
        # told: the master's --backlog (2048) would shrink to 100 and a burst be reset.
        server = await self.loop.create_server(lambda: Connection(self), sock=listener,
                                               backlog=listen_backlog(listener, self.backlog))
        self.activity.ws = self.ws_counters
        self.activity.loop_tick = time.monotonic()
        ticker = self.loop.create_task(self._tick())
        self.heartbeat = start_heartbeat(self.config, status, self.activity)
        report_ready(self.config, status, booted, reject_reasons=sorted(REJECTIONS))
        await self.stop_event.wait()
        # Drain: no new connections; everyone still here is told, then given the graceful time.
        self.stopping = True
        server.close()
        deadline = self.loop.time() + self.graceful_timeout_s
        # Replaced (reload, recycle): 1012, "service restart", so clients reconnect at once (to the
        # new generation); shutting down: 1001, "going away".
        code = 1012 if stopper.reason == "restart" else 1001
        for conn in list(self.conns):
            conn.drain_start(code)
        while self.conns and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.conns):
            conn.close_transport()
        ticker.cancel()
        await lifespan.shutdown()
        return 0

    async def _tick(self) -> None:
        """The loop's pulse: its lag (how late each tick is) for the heartbeat, and a tick the
        heartbeat thread can see stop when code blocks the loop (a sync ORM call in an async view)."""
        activity = self.activity
        while True:
            before = time.monotonic()
            await asyncio.sleep(LOOP_TICK_S)
            now = time.monotonic()
            late = now - before - LOOP_TICK_S
            if late > activity.loop_lag:
                activity.loop_lag = late
            activity.loop_tick = now


class Request:
    """One HTTP request/response cycle: the app's receive and send for it."""

    __slots__ = ("conn", "scope", "method", "keep_alive", "version11", "remaining", "chunked", "expect", "body",
                 "buffered", "body_done", "body_waiter", "disconnected", "body_given", "disconnect_waiter",
                 "started", "finished", "chunked_response", "status", "sent_bytes", "t0", "head", "no_body")

    def __init__(self, conn: "Connection", scope: Dict[str, Any], method: str, keep_alive: bool,
                 version11: bool, length: int, chunked: Optional[ChunkedBody], expect: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.method = method
        self.keep_alive = keep_alive
        self.version11 = version11
        self.remaining = length  # Content-Length bytes still to arrive
        self.chunked = chunked
        self.expect = expect
        self.body: Deque[bytes] = deque()
        self.buffered = 0
        self.body_done = length == 0 and chunked is None
        self.body_waiter: Optional[asyncio.Future] = None
        self.disconnected = False
        self.body_given = False  # an http.request message went to the app
        self.disconnect_waiter: Optional[asyncio.Future] = None
        self.started = False  # the response's head is sent
        self.finished = False  # the response's last byte is sent
        self.chunked_response = False
        self.status = 0
        self.sent_bytes = 0
        self.t0 = time.monotonic()
        self.head = b""  # the response's status line and headers until its first body part takes them
        self.no_body = False  # HEAD, 1xx, 204, 304: the app's body is not sent

    # The body, as the connection reads it ---------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Take the body's bytes from `data`; returns what follows the body (a pipelined request)."""
        rest = b""
        if self.chunked is not None:
            before = len(self.chunked.chunks)
            rest = self.chunked.add(data)
            parts = self.chunked.chunks[before:]
            self.chunked.chunks = []
            for part in parts:
                self._keep(part)
            if self.chunked.complete:
                self.body_done = True
        else:
            take = data[: self.remaining]
            rest = data[self.remaining:]
            self.remaining -= len(take)
            if take:
                self._keep(take)
            if self.remaining == 0:
                self.body_done = True
        self._wake_body()
        if self.buffered > BODY_BUFFER_BYTES:
            self.conn.pause_reading()
        return rest

    def _keep(self, part: bytes) -> None:
        self.body.append(part)
        self.buffered += len(part)

    def _wake_body(self) -> None:
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def lost(self) -> None:
        self.disconnected = True
        self._wake_body()
        waiter = self.disconnect_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # The app's side ---------------------------------------------------------------------------

    async def receive(self) -> Dict[str, Any]:
        if self.disconnected:
            return {"type": "http.disconnect"}
        # The first receive is always an http.request, an empty one for a request without a body
        # (the spec; Django's handler reads until it has one).
        if self.body or not self.body_done or not self.body_given:
            self.body_given = True
            if self.expect:
                self.expect = False
                self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            while not self.body and not self.body_done and not self.disconnected:
                self.body_waiter = self.conn.loop.create_future()
                self.conn.resume_reading()
                await self.body_waiter
                self.body_waiter = None
            if self.disconnected:
                return {"type": "http.disconnect"}
            data = b"".join(self.body)
            self.body.clear()
            self.buffered = 0
            self.conn.resume_reading()
            return {"type": "http.request", "body": data, "more_body": not self.body_done}
        # Everything was read: what is left to say is that the client went away.
        if not self.disconnected:
            self.disconnect_waiter = self.conn.loop.create_future()
            await self.disconnect_waiter
        return {"type": "http.disconnect"}

    async def send(self, message: Dict[str, Any]) -> None:
        kind = message["type"]
        if self.disconnected:
            if kind in ("http.response.start", "http.response.body"):
                return  # the client is gone: what the app sends goes nowhere (not an error)
        if kind == "http.response.start" and not self.started:
            self._start(message)
        elif kind == "http.response.body" and self.started and not self.finished:
            await self._body(bytes(message.get("body", b"")), bool(message.get("more_body", False)))
        elif kind == "http.response.pathsend" and self.started and not self.finished:
            with open(message["path"], "rb") as f:
                await self._body(f.read(), False)
        else:
            raise AppError(f"unexpected ASGI message {kind!r} (response started={self.started}, "
                           f"finished={self.finished})")

    def _start(self, message: Dict[str, Any]) -> None:
        status = int(message["status"])
        if not 100 <= status <= 999:
            raise AppError(f"bad status {status}")
        self.status = status
        status_line = _STATUS_LINES.get(status)
        if status_line is None:
            status_line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (
                status, _REASONS.get(status, "Unknown").encode())
        lines = [status_line]
        has_length = False
        cache = _HEADER_LINES
        for name, value in message.get("headers", []):
            # An app sends the same header pairs again and again: each is checked and formatted once.
            try:
                known = cache.get((name, value))
            except TypeError:  # a pair of bytearrays or memoryviews: not hashable, not cached
                known = None
            if known is None:
                known = _header_line(bytes(name), bytes(value))
                # Cookies vary per response and carry credentials: never kept.
                if isinstance(name, bytes) and isinstance(value, bytes) and name.lower() != b"set-cookie":
                    if len(cache) >= _HEADER_LINES_MAX:
                        cache.clear()
                    cache[(name, value)] = known
            line, kind = known
            if kind == _PLAIN:
                lines.append(line)
            elif kind == _CONTENT_LENGTH:
                has_length = True
                lines.append(line)
        no_body = self.method == "HEAD" or status in (204, 304) or status < 200
        if not has_length and not no_body:
            if self.version11:
                self.chunked_response = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False
        if self.conn.server.stopping:
            self.keep_alive = False
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(_date_line())
        lines.append(SERVER_HEADER)
        lines.append(b"\r\n")
        self.head = b"".join(lines)
        self.started = True
        self.no_body = no_body

    async def _body(self, body: bytes, more: bool) -> None:
        # One write per body part, the head going out with the first (most responses are one part).
        data = self.head
        if data:
            self.head = b""
        if body and not self.no_body:
            self.sent_bytes += len(body)
            if self.chunked_response:
                data = b"".join((data, b"%x\r\n" % len(body), body, b"\r\n"))
            else:
                data = data + body if data else body
        if not more:
            if self.chunked_response and not self.no_body:
                data += b"0\r\n\r\n"
            self.finished = True
        if data:
            self.conn.write(data)
        if more and self.conn.write_waiter is not None:  # the client's buffer is full: wait for it
            await self.conn.drain()

    async def run(self, app: Callable) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:  # noqa: BLE001 - the app's error is logged, answered, contained
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self.conn.server.log("app_error", {
                "method": self.method, "path": self.scope.get("path", ""),
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            }, "ERROR")
            if not self.started and not self.disconnected:
                self.keep_alive = False
                self.conn.write(error_response("500 Internal Server Error"))
                self.status = 500
                self.finished = True
        if not self.finished and not self.disconnected:
            if not self.started:
                self.conn.write(error_response("500 Internal Server Error"))
                self.status = 500
            self.keep_alive = False  # a response the app left unfinished cannot be followed
        self._count()
        self.conn.request_done(self)

    def _count(self) -> None:
        seconds = time.monotonic() - self.t0
        server = self.conn.server
        server.activity.record(self.method, self.status or 499, seconds, self.sent_bytes)
        if server.access_log:
            client = self.scope.get("client")
            server.log("access", {
                "remote": client[0] if client else "", "method": self.method, "path": self.scope["path"],
                "query": self.scope["query_string"].decode("latin-1"), "status": self.status or 499,
                "size": self.sent_bytes, "duration_ms": round(seconds * 1000, 3), "worker": server.worker_id,
            })


class Connection(asyncio.Protocol):
    """One client connection: HTTP/1.1 requests one after the other, or a WebSocket after an upgrade."""

    __slots__ = ("server", "loop", "transport", "buf", "request", "ws", "idle", "idle_since", "paused_reading",
                 "write_waiter", "write_paused_at", "closed", "client", "local", "last_scope")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = asyncio.get_event_loop()
        self.transport: Any = None
        self.buf = b""
        self.request: Optional[Request] = None
        self.ws: Optional[Session] = None
        self.idle: Optional[asyncio.TimerHandle] = None
        # The loop time the connection became idle; None while a request or a WebSocket runs.
        self.idle_since: Optional[float] = None
        self.paused_reading = False
        self.write_waiter: Optional[asyncio.Future] = None
        self.write_paused_at = 0.0
        self.closed = False
        self.client: Optional[Tuple[str, int]] = None
        self.local: Optional[Tuple[str, int]] = None
        # (environ template, the scope worked out from it on this connection) of the last request
        # whose head the parser's cache keeps: a keep-alive client repeats its head.
        self.last_scope: Optional[Tuple[Dict[str, Any], Dict[str, Any]]] = None

    # asyncio's callbacks ----------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.local = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        self.server.conns.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.data_received(data)
            return
        request = self.request
        if request is not None and not request.body_done:
            rest = request.feed(data)
            if rest:
                self.buf += rest
            return
        self.buf += data
        if request is None:
            self._next()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.closed = True
        self.idle_since = None
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        self.server.conns.discard(self)
        if self.request is not None:
            self.request.lost()
        if self.ws is not None:
            self.ws.connection_lost()
        waiter = self.write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self.write_waiter = self.loop.create_future()
        self.write_paused_at = time.monotonic()
        if self.server.write_timeout_s > 0:
            self.loop.call_later(self.server.write_timeout_s, self._write_timeout, self.write_waiter)

    def resume_writing(self) -> None:
        waiter, self.write_waiter = self.write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # What requests and sessions ask of the connection ----------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def close_transport(self) -> None:
        if not self.closed:
            self.transport.close()

    async def drain(self) -> None:
        """Waits while the client has not taken what was sent (``send``'s backpressure)."""
        waiter = self.write_waiter
        if waiter is not None:
            await waiter

    def _write_timeout(self, waiter: asyncio.Future) -> None:
        if self.write_waiter is waiter and not waiter.done():
            self.server.reject_log.write_timeout(self.client[0] if self.client else "", 0)
            self.transport.abort()

    def pause_reading(self) -> None:
        if not self.paused_reading and not self.closed:
            self.paused_reading = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused_reading and not self.closed:
            self.paused_reading = False
            self.transport.resume_reading()

    def drain_start(self, code: int) -> None:
        """The worker is stopping: finish what is running, tell what is long-lived, close the idle."""
        if self.ws is not None:
            self.ws.close(code, "server restarting" if code == 1012 else "server shutting down")
        elif self.request is None:
            self.close_transport()
        elif self.request.body_done and self.request.started:
            # A streaming response (SSE, say) whose app waits on receive() gets its disconnect.
            self.request.lost()

    def request_done(self, request: Request) -> None:
        if request is not self.request:
            return
        self.request = None
        if self.closed:
            return
        if not request.keep_alive or not request.body_done or self.server.stopping:
            self.close_transport()
            return
        self._arm_idle()
        if self.buf:
            # A pipelined request starts from the loop, not from here: with an eager task this
            # call may be inside _next already, and a long pipeline would nest a call per request.
            self.loop.call_soon(self._pipelined)

    def _pipelined(self) -> None:
        if self.request is None and self.ws is None and not self.closed and self.buf:
            self._next()

    # Requests --------------------------------------------------------------------------------

    def _next(self) -> None:
        """Starts the next request whose head is complete in the buffer."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if b"\n\n" in self.buf or b"\n\r\n" in self.buf:
                self._reject(HTTPError("bare_lf"))  # a head ended by bare LFs (RFC 9112 2.2)
            elif len(self.buf) > self.server.max_head:
                self._reject(HTTPError("header_too_large"))
            return
        head, rest = self.buf[:end], self.buf[end + 4:]
        self.buf = b""
        self._cancel_idle()
        # As the WSGI worker does: a head seen before is looked up, not parsed again (the
        # template is only read here, never changed).
        parsed = HEAD_CACHE.get(head)
        template = parsed is not None
        if parsed is None:
            try:
                parsed = self.server.parser.parse(head)
            except HTTPError as exc:
                self._reject(exc)
                return
            # A template the head cache keeps (parse() may just have put it there) comes back
            # for this head again; any other environ is this request's alone.
            template = HEAD_CACHE.get(head) is parsed
        env, method, version11, keep_alive, chunked, length, expect, target = parsed
        scope = self._scope(env, method, target, template)
        if ("HTTP_UPGRADE" in env and env["HTTP_UPGRADE"].lower() == "websocket"
                and "upgrade" in env.get("HTTP_CONNECTION", "").lower()):
            self._upgrade(head + b"\r\n\r\n", scope, rest)
            return
        for mount in self.server.mounts:
            if mount.matches(env["PATH_INFO"]):
                self._static(mount, env, target, method, keep_alive and length == 0 and not chunked, scope)
                return
        body = ChunkedBody(head, (), self.server.max_body, time.monotonic()) if chunked else None
        request = Request(self, scope, method, keep_alive and not self.server.stopping, version11, length,
                          body, expect)
        self.request = request
        if rest:
            try:
                leftover = request.feed(rest) if not request.body_done else rest
            except HTTPError as exc:
                self.request = None
                self._reject(exc)
                return
            self.buf = leftover
        run = request.run(self.server.app)
        if _EAGER_START:
            asyncio.Task(run, loop=self.loop, eager_start=True)  # type: ignore[call-arg]
        else:
            self.loop.create_task(run)

    def _scope(self, env: Dict[str, Any], method: str, target: bytes, template: bool) -> Dict[str, Any]:
        """The request's scope: a copy of what its head and this connection give, with its own
        header list, state and asgi dicts (an app or middleware may change any of them)."""
        last = self.last_scope
        if template and last is not None and last[0] is env:
            base = last[1]
        else:
            base = self._base_scope(env, method, target, template)
            self.last_scope = (env, base) if template else None
        scope = base.copy()
        scope["asgi"] = {"version": "3.0", "spec_version": "2.4"}
        scope["headers"] = base["headers"][:]
        scope["state"] = self.server.state.copy()
        return scope

    def _base_scope(self, env: Dict[str, Any], method: str, target: bytes, template: bool) -> Dict[str, Any]:
        # The parser hands back the same environ template for a head it has seen (HEAD_CACHE):
        # its ASGI headers are built once per template, not per request. Only templates are kept
        # here: an uncached head (credentials, a WebSocket key) would hold its headers for nothing.
        cached = _SCOPE_HEADERS.get(id(env)) if template else None
        if cached is not None and cached[0] is env:
            headers = cached[1]
        else:
            headers = []
            for key, value in env.items():
                if key.startswith("HTTP_"):
                    headers.append((key[5:].lower().replace("_", "-").encode("latin-1"), value.encode("latin-1")))
                elif key == "CONTENT_TYPE":
                    headers.append((b"content-type", value.encode("latin-1")))
                elif key == "CONTENT_LENGTH":
                    headers.append((b"content-length", value.encode("latin-1")))
            if template:
                if len(_SCOPE_HEADERS) >= _SCOPE_HEADERS_MAX:
                    _SCOPE_HEADERS.clear()
                _SCOPE_HEADERS[id(env)] = (env, headers)
        raw_path, _, query = target.partition(b"?")
        client, scheme = self.client, "http"
        if client is not None and self.server.proxies.trusted(client[0]):
            forwarded_for = env.get("HTTP_X_FORWARDED_FOR")
            if forwarded_for:
                client = (self.server.proxies.client(forwarded_for), 0)
            scheme = Proxies.scheme(env.get("HTTP_X_FORWARDED_PROTO", "")) or "http"
        return {
            "type": "http",
            "http_version": env.get("SERVER_PROTOCOL", "HTTP/1.1")[5:],
            "method": method,
            "scheme": scheme,
            "path": env.get("PATH_INFO", "/"),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": client,
            "server": self.local,
        }

    def _static(self, mount: Any, env: Dict[str, Any], target: bytes, method: str, keep_alive: bool,
                scope: Dict[str, Any]) -> None:
        """--static/--media, as the WSGI worker serves them (a body sent along is never read: the
        connection closes after the answer)."""
        self.request = Request(self, scope, method, keep_alive, True, 0, None, False)
        self.loop.create_task(self._send_static(self.request, mount.reply(env, target), method))

    async def _send_static(self, request: Request, reply: Any, method: str) -> None:
        try:
            code = int(reply.status[:3])
            request.status = code
            lines = [f"HTTP/1.1 {reply.status}\r\n".encode("latin-1")]
            lines += [f"{k}: {v}\r\n".encode("latin-1") for k, v in reply.headers]
            if not request.keep_alive:
                lines.append(b"connection: close\r\n")
            lines += [http_date().encode("latin-1"), SERVER_HEADER, b"\r\n"]
            self.write(b"".join(lines))
            if reply.fd >= 0 and method != "HEAD" and reply.count:
                with os.fdopen(reply.fd, "rb", closefd=False) as f:
                    await self.loop.sendfile(self.transport, f, reply.offset, reply.count)
                request.sent_bytes = reply.count
        except (ConnectionError, RuntimeError):
            request.keep_alive = False
        finally:
            if reply.fd >= 0:
                os.close(reply.fd)
        request.finished = True
        request.body_done = True
        request._count()
        self.request_done(request)

    def _reject(self, exc: HTTPError) -> None:
        self.server.activity.reject(exc.reason)
        self.server.reject_log.note(exc.status, exc.reason, self.client[0] if self.client else "")
        self.write(error_response(exc.status, exc.reason))
        self.close_transport()

    def _upgrade(self, raw_head: bytes, scope: Dict[str, Any], rest: bytes) -> None:
        scope = dict(scope, type="websocket", scheme="wss" if scope["scheme"] == "https" else "ws")
        protocols = [p.strip() for h, v in scope["headers"] if h == b"sec-websocket-protocol"
                     for p in v.decode("latin-1").split(",") if p.strip()]
        scope["subprotocols"] = protocols
        scope["extensions"] = {"websocket.http.response": {}}
        for key in ("method", "http_version"):
            scope.pop(key, None)
        session = Session(self, raw_head, scope, self.server.ws, self.server.ws_counters, self.server.log)
        self.ws = session
        if rest:
            session.data_received(rest)
        self.loop.create_task(self._run_ws(session))

    async def _run_ws(self, session: Session) -> None:
        try:
            await self.server.app(session.scope, session.receive, session.send)
        except BaseException as exc:  # noqa: BLE001 - the app's error is logged and the socket closed
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self.server.log("app_error", {
                "path": session.scope.get("path", ""), "error": f"{type(exc).__name__}: {exc}",
                "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            }, "ERROR")
            session.close(1011, "internal error") if session.state == "open" else session.close(1011)
            return
        # The app returned: a session it left open is closed normally (as uvicorn does).
        if session.state == "connecting":
            session.close(1000)
        elif session.state == "open":
            session.close(1000)

    # Keep-alive ------------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        """Idle from now. One timer per connection and keep-alive period, not one per request: a
        busy keep-alive connection only moves `idle_since`, and the timer, when it fires, closes the
        connection or waits for what is left of the period."""
        self.idle_since = self.loop.time()
        if self.idle is None:
            self.idle = self.loop.call_at(self.idle_since + self.server.keep_alive_s, self._idle_timeout)

    def _cancel_idle(self) -> None:
        self.idle_since = None  # busy: the timer, if it fires meanwhile, leaves the connection alone

    def _idle_timeout(self) -> None:
        self.idle = None
        since = self.idle_since
        if since is None or self.closed or self.request is not None or self.ws is not None:
            return  # busy: _arm_idle arms a new timer when it is idle again
        due = since + self.server.keep_alive_s
        if self.loop.time() >= due:
            self.close_transport()
        else:
            self.idle = self.loop.call_at(due, self._idle_timeout)

