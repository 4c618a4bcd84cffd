"""`python manage.py serve [options]`: run this project under the hurricane binary, as
`hurricane serve` with `-w` from the project's WSGI_APPLICATION (see ``passthrough``)."""

from __future__ import annotations

import os
from typing import List

from django.conf import settings  # type: ignore[import-not-found]
from django.core.management.base import CommandError  # type: ignore[import-not-found]

from hurricane.management.passthrough import PassThroughCommand, given


class Command(PassThroughCommand):
    help = "Serve this project with hurricane; every option of `hurricane serve --help` is accepted."
    subcommand = "serve"
    usage = "python manage.py serve [OPTIONS]"
    fills_in = ("Filled in from the project unless given: -w from WSGI_APPLICATION, --python with this\n"
                "interpreter, --chdir with the directory of manage.py; --asgi alone serves ASGI_APPLICATION\n"
                "(Channels' setting), else <settings package>.asgi:application. HURRICANE_* Django\n"
                "settings apply too (command line first, then settings, then the environment).")

    def complete(self, args: List[str]) -> List[str]:
        """A bare ``--asgi`` names the project's ASGI app."""
        out = list(args)
        for i, arg in enumerate(out):
            if arg == "--asgi" and (i + 1 == len(out) or out[i + 1].startswith("-")):
                out.insert(i + 1, asgi_application())
                break
        return out

    def project_args(self, args: List[str]) -> List[str]:
        if given(args, "-w", "--wsgi", "--asgi", "-V", "--version"):
            return []
        wsgi = getattr(settings, "WSGI_APPLICATION", None)
        if not wsgi:
            raise CommandError("set WSGI_APPLICATION in the settings, or pass -w MODULE[:ATTR]")
        module, _, attr = str(wsgi).rpartition(".")
        return ["-w", f"{module}:{attr}"]


def asgi_application() -> str:
    """``settings.ASGI_APPLICATION`` (``module.attr``, Channels' setting), else the ``asgi`` module
    beside the settings module, as ``startproject`` lays it out."""
    configured = getattr(settings, "ASGI_APPLICATION", None)
    if configured:
        module, _, attr = str(configured).rpartition(".")
        return f"{module}:{attr}"
    package = os.environ.get("DJANGO_SETTINGS_MODULE", "").rpartition(".")[0]
    if not package:
        raise CommandError("set ASGI_APPLICATION in the settings, or pass --asgi MODULE[:ATTR]")
    return f"{package}.asgi:application"
