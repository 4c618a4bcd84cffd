"""ASGI apps for the `serve --asgi` tests (tests/asgi.rs): HTTP, streaming, lifespan and WebSockets."""

import asyncio
import json
import os
import sys
import time

STARTUP_FAILS = os.environ.get("ASGI_TEST_STARTUP_FAILS") == "1"
MARKS = os.environ.get("ASGI_TEST_MARKS", "/tmp")


def _mark(name):
    with open(os.path.join(MARKS, name), "w") as f:
        f.write(str(os.getpid()))


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if STARTUP_FAILS:
                    await send({"type": "lifespan.startup.failed", "message": "the database is not there"})
                    return
                scope["state"]["greeting"] = "hello from lifespan"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                _mark("lifespan-shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
        return
    path = scope["path"]
    if path == "/echo":
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"x-parts", str(len(chunks)).encode())]})
        await send({"type": "http.response.body", "body": body})
    elif path == "/sse":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(3):
            await send({"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True})
            await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/forever":
        # A stream that ends only when the client goes away (or the worker drains).
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
        message = await receive()
        while message["type"] == "http.request":  # the (empty) request body first, as the spec says
            message = await receive()
        _mark("disconnect-" + message["type"])
    elif path == "/state":
        body = json.dumps({"state": scope.get("state", {}), "scheme": scope["scheme"],
                           "query": scope["query_string"].decode(), "client": scope["client"][0]}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    elif path == "/mutate":
        # What a middleware may do to its scope: none of it may reach the next request.
        seen = {"headers": len(scope["headers"]), "asgi": sorted(scope["asgi"]), "state": sorted(scope["state"])}
        scope["headers"].append((b"x-added", b"1"))
        scope["asgi"]["added"] = True
        scope["state"]["added"] = True
        scope["path"] = "/changed"
        body = json.dumps(seen).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    elif path == "/callers":
        # The functions this first step was called from: the server's own when its task started
        # eagerly (Python 3.12+), the event loop's task step otherwise.
        frame, names = sys._getframe(1), []
        while frame is not None:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        body = " ".join(names).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
    elif path == "/block":
        # A sync call in an async view: the whole loop stops (the classic ASGI mistake).
        time.sleep(float(scope["query_string"].decode() or "1"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"unblocked\n"})
    elif path == "/error":
        raise RuntimeError("this view fails")
    else:
        body = b"x" * 10240 if path == "/10k" else b"Hello, ASGI!\n"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


async def websocket(scope, receive, send):
    message = await receive()
    assert message["type"] == "websocket.connect"
    if scope["path"] == "/ws-deny":
        await send({"type": "websocket.close", "code": 1008})
        return
    subprotocol = scope["subprotocols"][0] if scope["subprotocols"] else None
    await send({"type": "websocket.accept", "subprotocol": subprotocol})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _mark(f"ws-disconnect-{message['code']}")
            return
        if message.get("text") == "close-4001":
            await send({"type": "websocket.close", "code": 4001, "reason": "asked"})
            continue
        if "text" in message and message["text"] is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


def wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"a WSGI app\n"]
