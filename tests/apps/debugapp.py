"""A WSGI app for the debugger tests (tests/debugger.rs): they set a breakpoint on the line
marked BREAK and expect the stop there."""


def application(environ, start_response):
    x = 41
    answer = x + 1  # BREAK
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"answer {answer}\n".encode()]
