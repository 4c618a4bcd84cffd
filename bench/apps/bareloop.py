"""The reference point, not a server: a bare 40-line selectors loop speaking just enough HTTP/1.1.

No checks, no limits, no chunking, no error handling: the ceiling a pure-Python WSGI server reaches
when it does one recv and one send per request. bench/run.py runs it beside the real servers so the
table shows how much of that ceiling each one keeps.  Usage: bareloop.py module[:callable] port
"""
import importlib
import io
import selectors
import socket
import sys


def serve(app, port):
    sel = selectors.DefaultSelector()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ)
    base = {"wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": False,
            "wsgi.run_once": False, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": str(port), "SCRIPT_NAME": ""}
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if sock is listener:
                conn, _ = listener.accept()
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()
                continue
            line, _, rest = data.partition(b"\r\n")
            method, target, protocol = line.decode().split(" ")
            path, _, query = target.partition("?")
            environ = dict(base, REQUEST_METHOD=method, PATH_INFO=path, QUERY_STRING=query, SERVER_PROTOCOL=protocol)
            for header in rest.split(b"\r\n"):
                if header:
                    name, _, value = header.decode().partition(":")
                    environ["HTTP_" + name.upper().replace("-", "_")] = value.strip()
            head = []
            result = app(environ, lambda status, headers, exc_info=None: head.append(
                "HTTP/1.1 %s\r\n%s\r\n" % (status, "".join("%s: %s\r\n" % h for h in headers))))
            body = b"".join(result)
            getattr(result, "close", lambda: None)()
            try:
                sock.sendall(head[0].encode() + body)
            except OSError:
                sel.unregister(sock)
                sock.close()


if __name__ == "__main__":
    module, _, attr = sys.argv[1].partition(":")
    serve(getattr(importlib.import_module(module), attr or "application"), int(sys.argv[2]))
