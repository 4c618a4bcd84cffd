"""Django's system checks and a database round trip, run for the master's probes.

Why in a worker: only a worker has the app (and its database settings) loaded. The master asks
over the control pipe at most once per --check-interval; the answer goes back over the status
pipe and the probes answer from it. Checks run on the worker's control thread, so they never wait
for a busy request, and use that thread's own database connections.

Tags are django-hurricane's: checks tagged ``liveness`` decide /alive, checks tagged ``readiness``
plus a ``SELECT 1`` on every configured database decide /ready. Errors fail a probe, warnings don't.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List


def is_django() -> bool:
    return bool(os.environ.get("DJANGO_SETTINGS_MODULE")) and _django_ready()


def _django_ready() -> bool:
    try:
        from django.apps import apps  # type: ignore[import-not-found]
    except ImportError:
        return False
    return apps.ready


def _run(tag: str) -> List[str]:
    from django.core import checks  # type: ignore[import-not-found]

    messages = checks.run_checks(tags=[tag], include_deployment_checks=False)
    return [str(m) for m in messages if m.level >= checks.ERROR]


def _databases() -> List[str]:
    from django.db import connections  # type: ignore[import-not-found]

    failures = []
    for alias in connections:
        connection = connections[alias]
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        except Exception as exc:  # noqa: BLE001 - any driver error means "not reachable"
            failures.append(f"{alias}: {type(exc).__name__}: {exc}")
        finally:
            # A fresh connection each time: a kept one can outlive the server it talked to (or,
            # with SQLite, the file), and the probe would say "reachable" when nothing else could.
            try:
                connection.close()
            except Exception:  # noqa: BLE001
                pass
    return failures


def run() -> Dict[str, Any]:
    """{"alive": {"ok", "error", "messages"}, "ready": {...}} for the master."""
    result: Dict[str, Any] = {}
    try:
        failed = _run("liveness")
        result["alive"] = {"ok": not failed, "error": "check error" if failed else "", "messages": failed}
    except Exception as exc:  # noqa: BLE001 - a crashing check is a failing check
        result["alive"] = {"ok": False, "error": "check error", "messages": [f"{type(exc).__name__}: {exc}"]}
    try:
        db = _databases()
        failed = _run("readiness")
        if db:
            result["ready"] = {"ok": False, "error": "database error", "messages": db + failed}
        else:
            result["ready"] = {"ok": not failed, "error": "check error" if failed else "", "messages": failed}
    except Exception as exc:  # noqa: BLE001
        result["ready"] = {"ok": False, "error": "check error", "messages": [f"{type(exc).__name__}: {exc}"]}
    return result
