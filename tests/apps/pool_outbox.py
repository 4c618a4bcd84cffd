"""http/threads.py's outbox for a pool's responses, with no event loop running: when a thread's
response waits for a burst and when it leaves (tests/http.rs runs this and checks the JSON it prints).

Usage: pool_outbox.py PYTHON_PACKAGE_DIR
"""

import json
import math
import socket
import sys
import threading
import time

sys.path.insert(0, sys.argv[1])

import hurricane.http.threads as threads  # noqa: E402
import hurricane.http.wire as wire  # noqa: E402
import pool_harness  # noqa: E402
from hurricane.http.wire import POOL_IDLE, READING  # noqa: E402
from pool_harness import loopless_server, wait  # noqa: E402


def app(environ, start_response):
    body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def response(client, timeout=5.0):
    """One Content-Length response's body from `client`, or None if none came within `timeout`."""
    data = b""
    client.settimeout(timeout)
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            length = int(data[:end].decode().split("Content-Length: ")[1].split("\r\n")[0])
            if len(data) >= end + 4 + length:
                return data[end + 4:end + 4 + length].decode()
        try:
            chunk = client.recv(65536)
        except socket.timeout:
            return None
        if not chunk:
            return None
        data += chunk


server = loopless_server(app)
outbox = server.pool_outbox
added = []  # the connections the outbox was given
flushes = []  # per flush: (its thread's name, how many connections it sent)
add, flush = outbox.add, outbox.flush


def counting_add(conn):
    added.append(conn)
    return add(conn)


def counting_flush():
    flushes.append((threading.current_thread().name, len(outbox.held)))
    flush()


outbox.add, outbox.flush = counting_add, counting_flush
listener = socket.create_server(("127.0.0.1", 0))
out = {}


def idle_connection():
    return pool_harness.idle_connection(server, listener)


def cpu_bound(busy):
    """What the load measure would decide; held there (the next measure in an hour)."""
    server._thread_hold = threads._keep_back if busy else None
    server._load_until = math.inf


# How many clients a response waits for is tested at the end; until then any number will do, and
# a burst never goes early for want of clients.
threads.HOLD_CLIENTS_PER_THREAD = 0
server.threads = 0

# Not CPU-bound: the response leaves from its thread at once, the outbox never sees it.
cpu_bound(False)
conn, client = idle_connection()
client.sendall(b"GET /direct HTTP/1.1\r\nHost: t\r\n\r\n")
out["direct"] = [response(client), len(added), wait(lambda: conn.state is POOL_IDLE)]

# CPU-bound, no other request running: not held (it would wait for nothing).
cpu_bound(True)
client.sendall(b"GET /alone HTTP/1.1\r\nHost: t\r\n\r\n")
body = response(client)
out["alone"] = [body, len(added), len(flushes), wait(lambda: conn.state is POOL_IDLE)]

# CPU-bound while another request runs: held until the oldest is FLUSH_AFTER_S old, sent by the
# outbox's flusher thread when no request ends to send it.
del flushes[:]
server._submitted += 1  # as if a thread were running a request
client.sendall(b"GET /aged HTTP/1.1\r\nHost: t\r\n\r\n")
out["aged"] = [response(client), [name for name, _ in flushes]]

# Three responses wait for the running request; when it ends, all four leave in one burst, and each
# connection then waits for its next request in the pool.
wire.FLUSH_AFTER_S = threads.FLUSH_AFTER_S = 3600.0
del flushes[:]
others = [idle_connection() for _ in range(3)]
for i, (_, other) in enumerate(others):
    other.sendall(b"GET /held%d HTTP/1.1\r\nHost: t\r\n\r\n" % i)
held = wait(lambda: len(outbox.held) == 3)
early = [response(other, 0.2) for _, other in others]
server._submitted -= 1  # the running request ended ...
client.sendall(b"GET /last HTTP/1.1\r\nHost: t\r\n\r\n")  # ... this one, alone, is not held, and sends them
bodies = [response(client)] + [response(other) for _, other in others]
out["burst"] = [held, early, bodies, [n for _, n in flushes],
                wait(lambda: all(c.state is POOL_IDLE for c, _ in others + [(conn, client)]))]
others[0][1].sendall(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n")
out["again"] = response(others[0][1])

# A connection whose thread leaves it to the loop (here: bytes of a next request already read)
# takes its kept-back response along, first in line, for the loop to send.
cpu_bound(True)
conn5, client5 = idle_connection()
conn5.state = threads.IN_THREAD
conn5.out = b"HTTP/1.1 200 OK\r\n\r\n"
conn5.buf = b"GET /next"
server._let_go(conn5, READING)
given, state = server._done.popleft() if server._done else (None, None)
out["to_loop"] = [given is conn5, state is READING, conn5.out.decode(),
                  b"".join(bytes(d) for d in conn5.parked).decode()]

# The outbox's sends: a client gone (CLOSED), one that reads nothing (the rest parked, READING).
settled = []
box = threads.PoolOutbox(lambda: None, lambda c, s: settled.append((c, s.value)))
gone_conn, gone_client = idle_connection()
gone_client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
gone_client.close()  # a reset
time.sleep(0.05)
slow_conn, slow_client = idle_connection()
slow_conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
slow_client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
for c, data in ((gone_conn, b"x" * 100), (slow_conn, b"y" * 60000)):
    c.out = data
    box.add(c)
box.flush()
out["sends"] = [[s for c, s in settled if c is gone_conn], [s for c, s in settled if c is slow_conn],
                0 < sum(len(d) for d in slow_conn.parked) < 60000, box.held, slow_conn.out.decode()]
# The load measure: CPU-bound at 90 % of what the worker may use, one CPU or its cgroup's quota.
clock = [0.0]
threads._process_time = lambda: clock[0]
decisions = []
for busy_cpu, used in ((0.9, 0.0095), (0.9, 0.005), (0.45, 0.005), (0.45, 0.004)):
    server._busy_cpu = busy_cpu
    server._load_mark, clock[0] = (100.0, 1.0), 1.0 + used  # `used` CPU seconds in 10 ms
    server._measure_load(100.01)
    decisions.append(server._thread_hold is threads._keep_back)
out["load"] = decisions

# How many clients: with 4 threads a response waits only with more than 16 connections (4 a
# thread) and another request running; a burst goes once nothing else runs or the clients it does
# not hold are no more than the threads.
threads.HOLD_CLIENTS_PER_THREAD = 4
server.threads = 4
saved = (server.conns, server._submitted, server._returned)


def rules(conns, running, held):
    server.conns = {-1 - i: None for i in range(conns)}
    server._submitted, server._returned = running + held, 0
    outbox.held, outbox.since = [None] * held, time.monotonic()
    return [server._worth_holding(), server._burst_due(time.monotonic())]


out["rules"] = [rules(15, 2, 0), rules(14, 2, 0), rules(20, 1, 0), rules(2, 2, 5), rules(20, 0, 5),
                rules(20, 2, 5)]
server.conns, server._submitted, server._returned = saved
outbox.held = []
print(json.dumps(out))
