"""HTTP/1.1 for WSGI apps: the worker's hot path, one module per duty (shaped like h11).

- ``wire``: the connection, its state, sockets in and out; output parks instead of blocking.
- ``request``: the request-head parser (RFC 9112, strict) and its caches.
- ``body``: request bodies, read on the event loop or streamed to the app.
- ``response``: framing and writing the app's response; a slow reader's ``Tail``.
- ``rejections``: every way a request is refused, by name; how refusals are logged.
- ``server``: the event loop that ties them together.

Why hand-written: the worker runs in the user's interpreter with the stdlib only, and its speed is
the product's speed. Imports point down the list above: nothing imports ``server``.
"""
