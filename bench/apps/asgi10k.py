"""A plain ASGI app for the `asgi` scenario: a 10 KB body for GET /, the same bytes for every server."""

from lifespan import lifespan

BODY = b"x" * 10240
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
