"""The integration tests' main app: one view per behaviour a test needs to provoke."""

import json
import os
import threading
import time
import warnings
from wsgiref.validate import WSGIWarning, validator
from urllib.parse import parse_qs


def _fd_snapshot():
    """The fds this worker inherited, taken at import, before the server opens its own."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the directory handle listdir used, already closed
        fds[int(name)] = target
    return fds


INHERITED_FDS = _fd_snapshot()
CALLS = 0  # how often the app ran: strictness tests prove a rejected request never reached it
_HOARD = []
_BIG = {}


def _touch(path):
    if path:
        with open(path, "a"):
            pass


def _application(environ, start_response):
    global CALLS
    CALLS += 1
    path = environ["PATH_INFO"]
    query = {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    status, body = "200 OK", b""
    if path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/sleep":
        _touch(query.get("mark"))
        time.sleep(float(query.get("s", "1")))
        body = b"slept " + str(os.getpid()).encode()
    elif path == "/exit":
        os._exit(1)
    elif path == "/fds":
        body = json.dumps(INHERITED_FDS).encode()
    elif path == "/doublefork":
        # An orphan for the master to reap: the child forks a grandchild and exits at once; the
        # grandchild is re-parented to the master (subreaper or PID 1) and lives until the test
        # creates the `release` file (or 20 s pass).
        read, write = os.pipe()
        child = os.fork()
        if child == 0:
            grandchild = os.fork()
            if grandchild == 0:
                release = query.get("release", "")
                for _ in range(2000):
                    if os.path.exists(release):
                        break
                    time.sleep(0.01)
                os._exit(0)
            os.write(write, str(grandchild).encode())
            os._exit(0)
        os.waitpid(child, 0)
        body = os.read(read, 100)
        os.close(read)
        os.close(write)
    elif path == "/mark":
        # Reports whether an earlier request's environ leaked into this one, then marks this one.
        body = b"leaked" if "hurricane.test.mark" in environ else b"fresh"
        environ["hurricane.test.mark"] = True
    elif path == "/calls":
        body = str(CALLS).encode()
    elif path == "/echo":
        # read(n) until EOF: the validator allows only read with a size, as PEP 3333 requires.
        chunks = []
        while True:
            chunk = environ["wsgi.input"].read(65536)
            if not chunk:
                break
            chunks.append(chunk)
        body = b"".join(chunks)
    elif path == "/digest":
        # The body's length and sha256, read in 64 KiB pieces: a big upload never sits in memory here.
        import hashlib

        digest, size = hashlib.sha256(), 0
        while True:
            chunk = environ["wsgi.input"].read(65536)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
        body = f"{size} {digest.hexdigest()}".encode()
    elif path == "/status":
        code = query.get("code", "204")
        start_response(f"{code} Whatever", [])
        return []
    elif path == "/inject":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Bad", "a\r\nX-Evil: 1")])
        return [b"never"]
    elif path == "/file":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"), 8192)
    elif path == "/late-error":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _late_error()
    elif path == "/environ":
        keys = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL", "REMOTE_ADDR",
                "CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_X_TEST", "wsgi.url_scheme", "SCRIPT_NAME",
                "wsgi.multithread")
        body = json.dumps({k: environ.get(k) for k in keys}).encode()
    elif path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (part for part in (b"one ", b"two ", b"three"))
    elif path == "/big":
        # `mb` MiB, the same bytes object every time (a cached page): a parked response holds a
        # view of it, not a copy.
        size = int(query.get("mb", "4")) << 20
        body = _BIG.get(size)
        if body is None:
            body = _BIG[size] = bytes(range(256)) * (size // 256)
    elif path == "/bigfile":
        # `mb` MiB from a real file through wsgi.file_wrapper: sendfile, resumed from its offset.
        size = int(query.get("mb", "8")) << 20
        name = f"/tmp/hurricane-test-bigfile-{os.getpid()}-{size}"
        if not os.path.exists(name):
            part = f"{name}.{threading.get_ident()}.part"  # --threads: each writes its own
            with open(part, "wb") as f:
                f.write(bytes(range(256)) * (size // 256))
            os.replace(part, name)
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(size))])
        return environ["wsgi.file_wrapper"](open(name, "rb"), 65536)
    elif path == "/bigstream":
        # `mb` MiB in fresh 64 KiB pieces from a generator: never all in memory at once.
        count = int(query.get("mb", "200")) * 16
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (bytes([i % 256]) * 65536 for i in range(count))
    elif path == "/writecall":
        # PEP 3333's write() callable, `mb` MiB in 64 KiB pieces: each call returns once sent.
        count = int(query.get("mb", "8")) * 16
        write = start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                          ("Content-Length", str(count * 65536))])
        for i in range(count):
            write(bytes([i % 256]) * 65536)
        return []
    elif path == "/alloc":
        # Memory that stays: the worker's resident set grows by `mb` MiB for good.
        _HOARD.append(b"\x01" * (int(query.get("mb", "100")) << 20))  # written, so resident
        body = str(os.getpid()).encode()
    elif path == "/error":
        raise RuntimeError("boom from the test app")
    elif path == "/slowclose":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
        return _SlowClose(b"closing", float(query.get("s", "1")))
    else:
        body = b"hello"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class _SlowClose:
    """A response whose close() takes `seconds`: cleanup after the response (PEP 3333)."""

    def __init__(self, body, seconds):
        self.body = body
        self.seconds = seconds

    def __iter__(self):
        return iter([self.body])

    def close(self):
        time.sleep(self.seconds)


def _late_error():
    # Two chunks: the server holds a first chunk back (it may be the only one), a second forces
    # the headers out before the error.
    yield b"partial "
    yield b"more "
    raise RuntimeError("after the headers")


# Every test runs under PEP 3333's referee: a server or app slip is an error, not a warning.
warnings.simplefilter("error", WSGIWarning)
application = validator(_application)
