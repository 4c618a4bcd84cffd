"""The ASGI kind (``hurricane serve --asgi``): one asyncio loop per worker, many connections each,
HTTP/1.1 with the WSGI worker's own parser and limits, lifespan, and WebSockets.

Why a package apart from ``http``: the WSGI worker's loop calls the app synchronously, once the
whole request is in; an ASGI app is a coroutine that streams both ways, so the connection's life is
an asyncio protocol here (``server``), a WebSocket is a session of its own (``websocket``, framing
by the ``websockets`` library's Sans-I/O layer), and the app's startup and shutdown are its
``lifespan``. What the two kinds share is below both: the head parser, the rejections, the pipe
protocol (``supervision``).
"""

from __future__ import annotations

from hurricane.asgi.server import WATCH_CONTROL_WHILE_LOADING, load, serve

__all__ = ["WATCH_CONTROL_WHILE_LOADING", "load", "serve"]
