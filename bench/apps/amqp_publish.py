"""The consume latency runs' publisher: a minimal AMQP 0-9-1 client on a plain socket (stdlib only).

    python amqp_publish.py QUEUE EXCHANGE N RATE

Publishes N messages of 100 bytes to EXCHANGE with routing key QUEUE at RATE a second (0: as fast
as it can), each body starting with its publish time, to 127.0.0.1:5672 as guest (the exchange and
queue are declared beforehand). Why not pika: the publisher shares the 2 cores with the broker and
the consumer it measures, and pika's BlockingConnection spends 43-81 us of CPU a message (one
frame at a time through its I/O loop); this sends a message's three frames in one write, 16-36 us
with the pacing, so the latency measured is the consumer's and the broker's, not the publisher's.
"""
import socket
import struct
import sys
import time


from typing import Tuple


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def method(channel: int, cls: int, mth: int, args: bytes) -> bytes:
    return frame(1, channel, struct.pack(">HH", cls, mth) + args)


def shortstr(s: bytes) -> bytes:
    return bytes([len(s)]) + s


class Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def method(self) -> Tuple[int, int, bytes]:
        """The next method frame's (class, method, args); other frames are skipped."""
        while True:
            while len(self.buf) < 7 or len(self.buf) < 8 + struct.unpack(">I", self.buf[3:7])[0]:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the broker closed the connection")
                self.buf += chunk
            kind, _, size = struct.unpack(">BHI", self.buf[:7])
            payload, self.buf = self.buf[7:7 + size], self.buf[8 + size:]
            if kind == 1:
                cls, mth = struct.unpack(">HH", payload[:4])
                if (cls, mth) == (10, 50):
                    raise ConnectionError(f"the broker closed the connection: {payload[4:]!r}")
                return cls, mth, payload[4:]


def expect(reader: Reader, want: Tuple[int, int], name: str) -> bytes:
    cls, mth, args = reader.method()
    if (cls, mth) != want:
        raise ConnectionError(f"expected {name}, the broker sent method {cls}.{mth}")
    return args


def connect() -> Tuple[socket.socket, Reader]:
    sock = socket.create_connection(("127.0.0.1", 5672), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"AMQP\x00\x00\x09\x01")
    reader = Reader(sock)
    expect(reader, (10, 10), "connection.start")
    sock.sendall(method(0, 10, 11, struct.pack(">I", 0) + shortstr(b"PLAIN")
                        + struct.pack(">I", 12) + b"\x00guest\x00guest" + shortstr(b"en_US")))
    args = expect(reader, (10, 30), "connection.tune")
    channel_max, frame_max, _ = struct.unpack(">HIH", args[:8])
    sock.sendall(method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0)))
    sock.sendall(method(0, 10, 40, shortstr(b"/") + shortstr(b"") + b"\x00"))
    expect(reader, (10, 41), "connection.open-ok")
    sock.sendall(method(1, 20, 10, shortstr(b"")))
    expect(reader, (20, 11), "channel.open-ok")
    return sock, reader


def main() -> None:
    queue, exchange, n, rate = sys.argv[1].encode(), sys.argv[2].encode(), int(sys.argv[3]), float(sys.argv[4])
    sock, reader = connect()
    size = 100
    head = (method(1, 60, 40, struct.pack(">H", 0) + shortstr(exchange) + shortstr(queue) + b"\x00")
            + frame(2, 1, struct.pack(">HHQH", 60, 0, size, 0))
            + struct.pack(">BHI", 3, 1, size))
    pad = b"x" * 83 + b"\xce"
    clock, sleep, send = time.time, time.sleep, sock.sendall
    start = clock()
    for i in range(n):
        if rate:
            wait = start + i / rate - clock()
            if wait > 0:
                sleep(wait)
        send(head + b"%17.6f" % clock() + pad)
    sock.sendall(method(0, 10, 50, struct.pack(">H", 200) + shortstr(b"bye") + struct.pack(">HH", 0, 0)))
    while reader.method()[:2] != (10, 51):
        pass
    sock.close()


if __name__ == "__main__":
    main()
