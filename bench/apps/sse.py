"""Server-sent events for the `sse` scenario: GET /sse is an endless stream with one event every
10 ms whose data is the server's Unix time when sent (the load client measures the lag from it);
GET / answers 200 for the bench's readiness check. The same app for every server."""

import asyncio
import time

INTERVAL_S = 0.01
HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] != "/sse":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"ok\n"})
        return
    while (await receive()).get("more_body"):  # the request's (empty) body
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    gone = asyncio.ensure_future(receive())  # http.disconnect when the client goes
    try:
        while not gone.done():
            await send({"type": "http.response.body", "body": b"data: %.6f\n\n" % time.time(),
                        "more_body": True})
            await asyncio.sleep(INTERVAL_S)
    finally:
        gone.cancel()
