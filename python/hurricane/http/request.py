"""Request heads: RFC 9112 parsing, as strict as h11, into a WSGI environ template.

Why cached: a keep-alive client sends the same head (a poller, a health check, a page's assets) or
at least the same header lines again and again, and a parse is a pure function of the bytes; so a
head, a header line and a header name are each parsed and validated once, then looked up (bounded
caches; heads carrying credentials are never kept). Every refusal raises HTTPError with a name from
rejections.py, and nothing ambiguous ever reaches the app.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple
from urllib.parse import unquote_to_bytes

from hurricane.http.rejections import HTTPError

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# field-value per RFC 9110 5.5: visible chars and obs-text, inner spaces/tabs; no CTLs, no NUL.
_FIELD_VALUE = re.compile(rb"[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
# Methods that get their own label in hurricane_requests_total; anything else counts as "other".
METRIC_METHODS = frozenset(_METHODS.values())

# (environ template, method, HTTP/1.1?, keep-alive?, chunked?, Content-Length,
#  Expect: 100-continue?, request target)
Parsed = Tuple[Dict[str, Any], str, bool, bool, bool, int, bool, bytes]


# Request header name (raw bytes) -> environ key; None for names we drop (see _environ_key).
_ENV_KEYS: Dict[bytes, Optional[str]] = {}


def _environ_key(name: bytes) -> Optional[str]:
    key = _ENV_KEYS.get(name)
    if key is None and name not in _ENV_KEYS:
        if not _TOKEN.fullmatch(name):
            raise HTTPError("bad_header_name")
        upper = name.decode("latin-1").upper()
        if "_" in upper:
            # HTTP_X_USER would be spoofable through "X_User"; gunicorn and nginx drop these too.
            key = None
        elif upper == "CONTENT_TYPE" or upper == "CONTENT-TYPE":
            key = "CONTENT_TYPE"
        elif upper == "CONTENT-LENGTH":
            key = "CONTENT_LENGTH"
        else:
            key = "HTTP_" + upper.replace("-", "_")
        if len(_ENV_KEYS) < 4096:
            _ENV_KEYS[name] = key
    return key


# Request head (bytes) -> its parse (see HeadParser.parse). Bounded; heads with credentials excluded.
HEAD_CACHE: Dict[bytes, Parsed] = {}
HEAD_CACHE_MAX = 512
HEAD_CACHE_MAX_BYTES = 4096

_FRAMING_KEYS = frozenset(
    ("CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING", "HTTP_CONNECTION", "HTTP_EXPECT", "HTTP_HOST")
)
# Raw header line -> (environ key or None, decoded value, raw value). Bounded; valid lines only.
_LINE_CACHE: Dict[bytes, Tuple[Optional[str], str, bytes]] = {}
_LINE_CACHE_MAX = 1024
# A WebSocket handshake's key is a nonce, new on every connection: its line and its head are never
# seen again, so caching them would only hold memory (a worker with 1,000 websockets held 1,000
# such heads and lines, and evicted the heads that do repeat).
_NONCE_KEY = "HTTP_SEC_WEBSOCKET_KEY"


def _parse_field(line: bytes) -> Tuple[Optional[str], str, bytes]:
    if line[:1] in (b" ", b"\t"):
        raise HTTPError("obs_fold")  # RFC 9112 5.2: a server rejects line folding in requests
    name, sep, value = line.partition(b":")
    if not sep:
        raise HTTPError("header_without_colon")
    if name[-1:] in (b" ", b"\t"):
        raise HTTPError("space_before_colon")  # RFC 9112 5.1: a smuggling vector
    value = value.strip(b" \t")
    if value and not _FIELD_VALUE.fullmatch(value):
        raise HTTPError("bad_header_value")
    key = _environ_key(name)  # raises for obs-fold, whitespace before the colon, non-tokens
    parsed = (key, value.decode("latin-1"), value)
    if key == _NONCE_KEY:
        return parsed
    if len(_LINE_CACHE) >= _LINE_CACHE_MAX:
        _LINE_CACHE.clear()  # cookies and the like vary; start over rather than grow
    _LINE_CACHE[line] = parsed
    return parsed


class HeadParser:
    """The limits of --limit-request-* and --max-body-size, and the server's base environ."""

    def __init__(self, limit_line: int, limit_fields: int, limit_field_size: int, max_body: int) -> None:
        self.limit_line = limit_line
        self.limit_fields = limit_fields
        self.limit_field_size = limit_field_size
        self.max_body = max_body
        self.base_environ: Dict[str, Any] = {}

    def parse(self, head: bytes) -> Parsed:
        """Validate a request head and build its environ (without the connection's own keys).

        Returns (environ template, method, HTTP/1.1?, keep-alive?, chunked?, Content-Length,
        Expect: 100-continue?, request target). Raises HTTPError for anything RFC 9112 forbids.
        """
        lines = head.split(b"\r\n")
        # Every LF and CR in the head must belong to a CRLF we split on (no bare LF/CR, RFC 9112 2.2).
        if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1:
            raise HTTPError("bare_lf")
        request_line = lines[0]
        if len(request_line) > self.limit_line:
            raise HTTPError("request_line_too_long")
        if len(lines) - 1 > self.limit_fields:
            raise HTTPError("too_many_headers")
        # Only a head longer than the field limit can hold a field over it: one length check saves a loop.
        if len(head) > self.limit_field_size and max(map(len, lines[1:]), default=0) > self.limit_field_size:
            raise HTTPError("header_too_large")
        parts = request_line.split(b" ")
        if len(parts) != 3:
            raise HTTPError("bad_request_line")
        method_b, target, version = parts
        if version == b"HTTP/1.1":
            version11 = True
        elif version == b"HTTP/1.0":
            version11 = False
        elif _VERSION.fullmatch(version):
            raise HTTPError("unsupported_version")
        else:
            raise HTTPError("bad_request_line")
        method = _METHODS.get(method_b)
        if method is None:
            if not _TOKEN.fullmatch(method_b):
                raise HTTPError("bad_method")
            method = method_b.decode("ascii")

        env = self.base_environ.copy()
        content_length: Optional[bytes] = None
        transfer_encoding: Optional[bytes] = None
        connection = b""
        expect = b""
        hosts = 0
        line_cache = _LINE_CACHE
        for line in lines[1:]:
            # A keep-alive client repeats its header lines byte for byte: a line parsed and
            # validated once is a single dict lookup after that (the cache holds only valid lines).
            parsed = line_cache.get(line)
            if parsed is None:
                parsed = _parse_field(line)
            key, decoded, value = parsed
            if key is None:
                continue
            if key in _FRAMING_KEYS:
                if key == "CONTENT_LENGTH":
                    if content_length is not None and content_length != value:
                        raise HTTPError("cl_conflict")
                    content_length = value
                elif key == "HTTP_TRANSFER_ENCODING":
                    transfer_encoding = value if transfer_encoding is None else transfer_encoding + b"," + value
                elif key == "HTTP_CONNECTION":
                    connection = value.lower()
                elif key == "HTTP_EXPECT":
                    expect = value.lower()
                else:
                    hosts += 1
            if key in env:
                env[key] += "," + decoded
            else:
                env[key] = decoded
        if version11 and hosts != 1:
            raise HTTPError("missing_host")

        if version11:
            keep_alive = connection != b"close" and b"close" not in connection.split(b",")
        else:
            keep_alive = connection == b"keep-alive"

        # Body framing, RFC 9112 6: Transfer-Encoding wins, and with Content-Length it is an attack.
        chunked = False
        length = 0
        if transfer_encoding is not None:
            if content_length is not None:
                raise HTTPError("cl_te_conflict")
            if not version11:
                raise HTTPError("te_in_http10")
            codings = [c.strip().lower() for c in transfer_encoding.split(b",")]
            if codings[-1] != b"chunked":
                raise HTTPError("unsupported_transfer_coding")
            if len(codings) > 1:
                raise HTTPError("unsupported_transfer_coding")
            env.pop("CONTENT_LENGTH", None)
            chunked = True
        elif content_length is not None:
            if not content_length.isdigit() or len(content_length) > 18:
                raise HTTPError("bad_content_length")
            length = int(content_length)
            if length > self.max_body:
                raise HTTPError("body_too_large")
        if expect and expect != b"100-continue":
            raise HTTPError("unsupported_expectation")
        expect_continue = version11 and expect == b"100-continue"

        # Request target, RFC 9112 3.2: origin-form, absolute-form (proxies), asterisk for OPTIONS.
        if target[:1] != b"/":
            if target == b"*" and method == "OPTIONS":
                pass
            elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
                slash = target.find(b"/", target.find(b"//") + 2)
                target = target[slash:] if slash >= 0 else b"/"
            else:
                raise HTTPError("bad_target")
        path, _, query = target.partition(b"?")
        if b"%" in path:
            path = unquote_to_bytes(path)
        if b"#" in target:
            raise HTTPError("fragment_in_target")
        env["REQUEST_METHOD"] = method
        env["PATH_INFO"] = path.decode("latin-1")
        env["QUERY_STRING"] = query.decode("latin-1")
        env["SERVER_PROTOCOL"] = "HTTP/1.1" if version11 else "HTTP/1.0"
        parsed = (env, method, version11, keep_alive, chunked, length, expect_continue, target)
        # Heads with credentials are not kept past their request; the rest are, boundedly.
        if (len(head) <= HEAD_CACHE_MAX_BYTES and b"ookie:" not in head and b"uthorization:" not in head
                and _NONCE_KEY not in env):
            if len(HEAD_CACHE) >= HEAD_CACHE_MAX:
                HEAD_CACHE.clear()
            HEAD_CACHE[head] = parsed
        return parsed
