"""Every way the worker refuses a request, by name, and how a refusal is logged and answered.

Why one place: the parser and the body readers raise these names, the server answers and counts
them, the master exports each as `hurricane_requests_rejected_total{reason}` at 0 from the start;
a name changed here changes everywhere at once.
"""

from __future__ import annotations

import time
from typing import Dict

from hurricane.http.response import http_date
from hurricane.log import log_line as _log_line

# Every way a request is refused, by a stable name: the status it is answered with. The name is
# logged (`event=reject reason=NAME`, rate-limited), counted (hurricane_requests_rejected_total)
# and sent as the body, so an operator can tell a smuggling attempt from a broken client. The
# master learns the names from the ready message and exports each at 0 from the start.
REJECTIONS: Dict[str, str] = {
    # Request line (RFC 9112 3)
    "bad_request_line": "400 Bad Request",
    "bad_method": "400 Bad Request",
    "bad_target": "400 Bad Request",
    "fragment_in_target": "400 Bad Request",
    "request_line_too_long": "414 URI Too Long",
    "unsupported_version": "505 HTTP Version Not Supported",
    # Header fields (RFC 9112 5, RFC 9110 5)
    "bare_lf": "400 Bad Request",
    "obs_fold": "400 Bad Request",
    "space_before_colon": "400 Bad Request",
    "bad_header_name": "400 Bad Request",
    "header_without_colon": "400 Bad Request",
    "bad_header_value": "400 Bad Request",
    "missing_host": "400 Bad Request",
    "too_many_headers": "431 Request Header Fields Too Large",
    "header_too_large": "431 Request Header Fields Too Large",
    "unsupported_expectation": "417 Expectation Failed",
    # Body framing (RFC 9112 6, 7)
    "cl_conflict": "400 Bad Request",
    "bad_content_length": "400 Bad Request",
    "cl_te_conflict": "400 Bad Request",
    "te_in_http10": "400 Bad Request",
    "unsupported_transfer_coding": "501 Not Implemented",
    "body_too_large": "413 Content Too Large",
    "bad_chunk_size": "400 Bad Request",
    "bad_chunk_extension": "400 Bad Request",
    "chunk_line_too_long": "400 Bad Request",
    "bare_lf_in_chunk": "400 Bad Request",
    "chunk_longer_than_size": "400 Bad Request",
    # Time (the client stalled mid-request past --keep-alive, or sent its body below --min-body-rate)
    "head_timeout": "408 Request Timeout",
    "body_too_slow": "408 Request Timeout",
}


class HTTPError(Exception):
    """A request we refuse: the status is sent with ``Connection: close`` and the app never runs.

    ``reason`` is a key of REJECTIONS, which decides the status.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = REJECTIONS[reason]


# An attack sends thousands of bad requests a second; the log gets at most this many lines a second
# per worker, then one line with the count of those it left out.
REJECT_LOG_PER_S = 10


class RejectLog:
    """`event=reject` and `event=write_timeout` lines, rate-limited per wall-clock second (any
    thread may call `note`)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.second = 0
        self.logged = 0
        self.suppressed = 0

    def note(self, status: str, reason: str, remote: str) -> None:
        self._line("reject", {"status": status[:3], "reason": reason, "remote": remote or "-"})

    def write_timeout(self, remote: str, unsent: int) -> None:
        """A client that read nothing for --write-timeout: its connection was cut."""
        self._line("write_timeout", {"remote": remote or "-", "unsent_bytes": unsent})

    def _line(self, event: str, fields: Dict[str, object]) -> None:
        self.tick()
        if self.logged < REJECT_LOG_PER_S:
            self.logged += 1
            _log_line("WARN", event, fields, self.as_json)
        else:
            self.suppressed += 1

    def tick(self) -> None:
        """A new second: say how many lines the last one left out, and start counting again."""
        second = int(time.monotonic())
        if second == self.second:
            return
        self.second = second
        if self.suppressed:
            _log_line("WARN", "reject_suppressed", {"count": self.suppressed}, self.as_json)
        self.logged = self.suppressed = 0


def error_response(status: str, reason: str = "") -> bytes:
    body = (f"{status}: {reason}\n" if reason else f"{status}\n").encode("latin-1")
    return (
        b"HTTP/1.1 %b\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n"
        b"%bServer: hurricane\r\n\r\n%b"
        % (status.encode("latin-1"), len(body), http_date().encode("latin-1"), body)
    )


