"""Server-sent events for the `sse` scenario: GET /sse is an endless stream with one event every
10 ms whose data is the server's Unix time when sent (the load client measures the lag from it);
GET / answers 200 for the bench's readiness check. The same app for every server."""

import asyncio
import time

from lifespan import lifespan, ok

INTERVAL_S = 0.01
HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if scope["path"] != "/sse":
        return await ok(send)
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
