"""What the bench's plain ASGI apps share: the lifespan protocol, and a 200 for the bench's
readiness check. The same code for every server."""

OK_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"3")]


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def ok(send):
    await send({"type": "http.response.start", "status": 200, "headers": OK_HEADERS})
    await send({"type": "http.response.body", "body": b"ok\n"})
