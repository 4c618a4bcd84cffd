"""What the scripts that drive http/threads.py's pool with no event loop running share
(pool_idle.py, pool_outbox.py): a server whose pool runs but whose loop never polls, and idle
keep-alive connections handed to that pool as a thread hands one back.

The script puts hurricane's package directory on sys.path before importing this.
"""

import select
import socket
import time

from hurricane.http.server import Server
from hurricane.http.wire import Conn
from hurricane.supervision import Activity


def wait(predicate):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def loopless_server(app):
    """A server with a pool of 2 running `app`; its loop's epoll exists and is never polled."""
    server = Server({"http": {"threads": "2"}}, Activity([0.1], [100.0]))
    server.base_environ = {"wsgi.url_scheme": "http", "SCRIPT_NAME": "", "SERVER_NAME": "t", "SERVER_PORT": "1"}
    server.parser.base_environ = server.base_environ
    server._app = app
    server._epoll = select.epoll()  # the loop's; never polled here
    server.pool.submit(lambda: None)  # the pool's threads start with its first call
    return server


def idle_connection(server, listener):
    """(our side, the client's) of a new connection, idle in the pool as after a keep-alive request."""
    client = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    ours.setblocking(False)
    conn = Conn(ours, ("127.0.0.1", 1), time.monotonic())
    server._submitted += 1  # as if a thread had claimed it ...
    server._rearm(conn)  # ... and finished a keep-alive request on it
    return conn, client
