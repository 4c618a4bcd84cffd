"""Static and media files: served by the worker itself, with sendfile, never from outside the root.

Why in the worker and not the app: a Django project otherwise needs whitenoise or a separate web
server for STATIC_ROOT, and a Python view reading files costs a copy through userspace per request.
Here a file goes from the page cache to the socket with os.sendfile, with ETag/Last-Modified
revalidation (304), HEAD and a single byte range (206/416).

Safety first: the decoded path is split into segments and any ``..``, ``.``, NUL or backslash is a
404; encoded slashes in the raw target are a 404; the resolved real path (symlinks followed) must lie
inside the real root; only regular files are served. Every refusal is a plain 404, which says
nothing about what exists.
"""

from __future__ import annotations

import mimetypes
import os
import re
import stat
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, Dict, List, Optional, Tuple

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_TYPES: Dict[str, str] = {}


def _content_type(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    ctype = _TYPES.get(ext)
    if ctype is None:
        guessed, encoding = mimetypes.guess_type("x" + ext)
        ctype = guessed or "application/octet-stream"
        if encoding:
            ctype = "application/octet-stream"  # never let a browser transparently decode .gz
        elif ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        if len(_TYPES) < 512:
            _TYPES[ext] = ctype
    return ctype


class Reply:
    """What to send: status, headers, and the byte range of an open file (fd closed by the caller)."""

    __slots__ = ("status", "headers", "fd", "offset", "count")

    def __init__(self, status: str, headers: List[Tuple[str, str]], fd: int = -1,
                 offset: int = 0, count: int = 0) -> None:
        self.status = status
        self.headers = headers
        self.fd = fd
        self.offset = offset
        self.count = count


def _plain(status: str, extra: Optional[List[Tuple[str, str]]] = None) -> Reply:
    return Reply(status, [("Content-Type", "text/plain"), ("Content-Length", "0")] + (extra or []))


NOT_FOUND = "404 Not Found"


class Mount:
    """One URL prefix served from one directory."""

    def __init__(self, url: str, root: Optional[str], finders: bool = False) -> None:
        if not url.startswith("/"):
            url = "/" + url
        self.url = url if url.endswith("/") else url + "/"
        self.root = os.path.realpath(root) if root else ""
        # DEBUG with django.contrib.staticfiles: look files up in the apps' static dirs, as
        # runserver does, before (or instead of) STATIC_ROOT.
        self.finders = finders

    def matches(self, path: str) -> bool:
        return path.startswith(self.url)

    def resolve(self, path: str, raw_target: bytes) -> Optional[str]:
        """The real file for a decoded request path, or None for anything that could escape."""
        lowered = raw_target.lower()
        if b"%2f" in lowered or b"%5c" in lowered or b"%00" in lowered:
            return None
        rel = path[len(self.url):]
        if "\0" in rel or "\\" in rel:
            return None
        parts = [p for p in rel.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            return None
        if self.finders:
            from django.contrib.staticfiles import finders  # type: ignore[import-not-found]

            found = finders.find("/".join(parts))  # joins safely under each finder's own dirs
            if isinstance(found, str):
                return os.path.realpath(found)
        if not self.root:
            return None
        full = os.path.realpath(os.path.join(self.root, *parts))
        if not full.startswith(self.root + os.sep):
            return None  # a symlink (or anything else) pointing outside the root
        return full

    def reply(self, env: Dict[str, Any], raw_target: bytes) -> Reply:
        method = env["REQUEST_METHOD"]
        if method not in ("GET", "HEAD"):
            return _plain("405 Method Not Allowed", [("Allow", "GET, HEAD")])
        full = self.resolve(env["PATH_INFO"], raw_target)
        if full is None:
            return _plain(NOT_FOUND)
        try:
            fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return _plain(NOT_FOUND)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return _plain(NOT_FOUND)
            return self._reply_file(env, fd, st, full)
        except BaseException:
            os.close(fd)
            raise

    def _reply_file(self, env: Dict[str, Any], fd: int, st: os.stat_result, full: str) -> Reply:
        size = st.st_size
        etag = f'"{st.st_mtime_ns:x}-{size:x}"'
        headers = [
            ("Content-Type", _content_type(full)),
            ("ETag", etag),
            ("Last-Modified", formatdate(st.st_mtime, usegmt=True)),
            ("Accept-Ranges", "bytes"),
        ]
        if self._not_modified(env, etag, st.st_mtime):
            os.close(fd)
            return Reply("304 Not Modified", headers[1:3])
        rng = env.get("HTTP_RANGE")
        if_range = env.get("HTTP_IF_RANGE")
        if rng and (if_range is None or if_range == etag):
            span = self._range(rng, size)
            if span == "unsatisfiable":
                os.close(fd)
                return _plain("416 Range Not Satisfiable", [("Content-Range", f"bytes */{size}")])
            if span is not None:
                start, end = span
                headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
                headers.append(("Content-Length", str(end - start + 1)))
                return Reply("206 Partial Content", headers, fd, start, end - start + 1)
        headers.append(("Content-Length", str(size)))
        return Reply("200 OK", headers, fd, 0, size)

    @staticmethod
    def _not_modified(env: Dict[str, Any], etag: str, mtime: float) -> bool:
        inm = env.get("HTTP_IF_NONE_MATCH")
        if inm is not None:  # RFC 9110 13.1.2: If-None-Match wins over If-Modified-Since
            tags = [t.strip() for t in inm.split(",")]
            return "*" in tags or etag in tags or ("W/" + etag) in tags
        ims = env.get("HTTP_IF_MODIFIED_SINCE")
        if ims:
            try:
                return int(mtime) <= parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError, IndexError, OverflowError):
                return False
        return False

    @staticmethod
    def _range(value: str, size: int) -> Any:
        """(start, end) inclusive, "unsatisfiable", or None to ignore the header (RFC 9110 14.2)."""
        match = _RANGE.fullmatch(value.strip())
        if match is None:
            return None  # several ranges or another unit: a full 200 is always allowed
        first, last = match.groups()
        if not first and not last:
            return None
        if not first:  # suffix: the last N bytes
            length = int(last)
            if length == 0:
                return "unsatisfiable"
            return (max(0, size - length), size - 1) if size else "unsatisfiable"
        start = int(first)
        end = int(last) if last else size - 1
        if last and end < start:
            return None
        if start >= size:
            return "unsatisfiable"
        return (start, min(end, size - 1))


def mounts_from_config(http: Dict[str, Any]) -> List[Mount]:
    """Builds the --static/--media mounts; roots and URLs not given come from Django's settings."""
    mounts = []
    for kind in ("static", "media"):
        spec = http.get(kind)
        if not spec:
            continue
        url, root = spec.get("url"), spec.get("root")
        finders = kind == "static" and _django_debug_finders()
        if url is None or root is None:
            django_url, django_root = _django_setting(kind)
            url = url or django_url
            root = root or django_root
        if finders:
            mounts.append(Mount(url or spec.get("default_url", "/static/"), root, finders=True))
            continue
        if not root:
            raise ValueError(
                f"--{kind} needs a directory: pass --{kind}-root DIR or set "
                f"{kind.upper()}_ROOT in the Django settings (DJANGO_SETTINGS_MODULE)"
            )
        if not os.path.isdir(root):
            raise ValueError(f"--{kind}-root '{root}' is not a directory")
        mounts.append(Mount(url or spec.get("default_url", f"/{kind}/"), root))
    return mounts


def _django_debug_finders() -> bool:
    """DEBUG=True with django.contrib.staticfiles installed: serve through the finders."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return False
    try:
        from django.conf import settings  # type: ignore[import-not-found]

        return bool(settings.DEBUG) and "django.contrib.staticfiles" in settings.INSTALLED_APPS
    except Exception:  # noqa: BLE001 - Django missing or misconfigured
        return False


def _django_setting(kind: str) -> Tuple[Optional[str], Optional[str]]:
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return None, None
    try:
        from django.conf import settings  # type: ignore[import-not-found]

        url = getattr(settings, f"{kind.upper()}_URL", None)
        root = getattr(settings, f"{kind.upper()}_ROOT", None)
    except Exception:  # noqa: BLE001 - Django missing or misconfigured: fall back to the flags
        return None, None
    return (str(url) if url else None), (str(root) if root else None)
