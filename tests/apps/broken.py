"""An app that cannot be imported: hurricane must stop with exit code 3, not respawn forever."""

import hurricane_test_no_such_module  # noqa: F401


def application(environ, start_response):
    start_response("200 OK", [])
    return [b"unreachable"]
