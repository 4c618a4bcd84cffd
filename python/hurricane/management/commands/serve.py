"""`python manage.py serve [options]`: run this project under the hurricane binary.

Why exec: the hurricane master then *is* this process (same pid), so signals, exit codes and PID 1
duties behave exactly as with `hurricane -w ...`. Every option of the binary is accepted and passed
through untouched; `-w` defaults to the project's WSGI_APPLICATION, `--python` to this interpreter,
and `--chdir` to the directory of manage.py.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import List, Optional

from django.conf import settings  # type: ignore[import-not-found]
from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-not-found]


def find_binary() -> Optional[str]:
    """The `hurricane` that `pip install hurricane` put next to this interpreter (the virtualenv's
    bin/, even when it is not activated), so the binary always matches this Python package; else
    $HURRICANE_BINARY; else `hurricane` on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "hurricane")
    if os.access(beside, os.X_OK) and not os.path.isdir(beside):
        return beside
    explicit = os.environ.get("HURRICANE_BINARY")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("hurricane")


def given(args: List[str], *names: str) -> bool:
    return any(a == n or a.startswith(n + "=") for a in args for n in names)


def hurricane_argv(binary: str, args: List[str], manage_py: str) -> List[str]:
    argv = [binary, "serve"]
    if not given(args, "-w", "--wsgi", "-h", "--help", "-V", "--version"):
        wsgi = getattr(settings, "WSGI_APPLICATION", None)
        if not wsgi:
            raise CommandError("set WSGI_APPLICATION in the settings, or pass -w MODULE[:ATTR]")
        module, _, attr = str(wsgi).rpartition(".")
        argv += ["-w", f"{module}:{attr}"]
    if not given(args, "--python"):
        argv += ["--python", sys.executable]
    if not given(args, "--chdir") and manage_py:
        argv += ["--chdir", os.path.dirname(os.path.abspath(manage_py))]
    return argv + args


class Command(BaseCommand):
    help = "Serve this project with hurricane; every option of `hurricane serve --help` is accepted."

    def run_from_argv(self, argv: List[str]) -> None:
        # Not Django's argument parser: the binary's own options (and --help) pass through as given.
        binary = find_binary()
        if binary is None:
            sys.stderr.write(
                "error: cannot find the hurricane binary; pip install hurricane into this environment, "
                "put it on PATH, or set HURRICANE_BINARY\n"
            )
            sys.exit(1)
        args = argv[2:]
        try:
            command = hurricane_argv(binary, args, argv[0])
        except CommandError as exc:
            sys.stderr.write(f"error: {exc}\n")
            sys.exit(2)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(binary, command)

    def handle(self, *args: str, **options: object) -> None:  # call_command("serve") lands here
        self.run_from_argv(["manage.py", "serve", *args])
