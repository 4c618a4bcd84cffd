"""http/threads.py's idle pool connections, with no event loop running: what a pool thread does
with a connection it watches (tests/http.rs runs this and checks the JSON it prints).

Usage: pool_idle.py PYTHON_PACKAGE_DIR
"""

import json
import socket
import sys
import threading
import time

sys.path.insert(0, sys.argv[1])

import pool_harness  # noqa: E402
from hurricane.http.wire import CLOSED, POOL_IDLE  # noqa: E402
from pool_harness import loopless_server, wait  # noqa: E402


def app(environ, start_response):
    body = (threading.current_thread().name + " " + environ["PATH_INFO"] + " "
            + environ["wsgi.input"].read().decode()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def response(client):
    """One Content-Length response from `client`, or what was there when it closed or went quiet."""
    data = b""
    client.settimeout(5)
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].decode()
            length = int(head.split("Content-Length: ")[1].split("\r\n")[0])
            if len(data) >= end + 4 + length:
                return data[end + 4:end + 4 + length].decode()
        try:
            chunk = client.recv(65536)
        except socket.timeout:
            return "timeout: " + data.decode()
        if not chunk:
            return "closed: " + data.decode()
        data += chunk


server = loopless_server(app)
out = {}
listener = socket.create_server(("127.0.0.1", 0))


def idle_connection():
    return pool_harness.idle_connection(server, listener)


conn, client = idle_connection()
out["idle"] = [conn.state is POOL_IDLE, server.conns.get(conn.fd) is conn]
# Two requests in a row, each read and run by a pool thread, the loop never involved.
client.sendall(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n")
first = response(client)
client.sendall(b"POST /two HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody")
second = response(client)
out["served"] = [first.split(" ", 1)[0].startswith("hurricane-app-"), first.split(" ", 1)[1],
                 second.split(" ", 1)[1]]
out["idle_again"] = wait(lambda: conn.state is POOL_IDLE) and not server._done
# Half a head: the thread gives the connection and its bytes to the loop, which reads the rest.
client.sendall(b"GET /half HTTP/1.1\r\n")
out["half"] = wait(lambda: bool(server._done))
if out["half"]:
    given, state = server._done.popleft()
    out["half"] = [given is conn, state.value, given.buf.decode(), given.fd in server.conns]
# A pipeline goes to the loop whole, in order.
conn2, client2 = idle_connection()
client2.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
out["pipeline"] = wait(lambda: bool(server._done))
if out["pipeline"]:
    given, state = server._done.popleft()
    out["pipeline"] = [given is conn2, state.value, given.buf.count(b"GET /")]
# A client that closes: handed to the loop to close.
conn3, client3 = idle_connection()
client3.close()
out["gone"] = wait(lambda: bool(server._done))
if out["gone"]:
    given, state = server._done.popleft()
    out["gone"] = [given is conn3, state.value]
# The loop closes an idle one (its sweep): no thread touches it after, even when bytes arrive.
conn4, client4 = idle_connection()
server._close(conn4, server._epoll)
client4.sendall(b"GET /late HTTP/1.1\r\nHost: t\r\n\r\n")
time.sleep(0.2)
out["closed_by_loop"] = [conn4.state is CLOSED, conn4.fd not in server.conns, not server._done]
print(json.dumps(out))
