"""The smallest WSGI app: what `cargo run --release -- -w hello --chdir examples` serves."""


def application(environ, start_response):
    body = b"Hello, world!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
