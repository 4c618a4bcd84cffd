"""`python manage.py serve [options]`: run this project under the hurricane binary, as
`hurricane serve` with `-w` from the project's WSGI_APPLICATION (see ``passthrough``)."""

from __future__ import annotations

from typing import List

from django.conf import settings  # type: ignore[import-not-found]
from django.core.management.base import CommandError  # type: ignore[import-not-found]

from hurricane.management.passthrough import PassThroughCommand, given


class Command(PassThroughCommand):
    help = "Serve this project with hurricane; every option of `hurricane serve --help` is accepted."
    subcommand = "serve"
    usage = "python manage.py serve [OPTIONS]"
    fills_in = ("Filled in from the project unless given: -w from WSGI_APPLICATION, --python with this\n"
                "interpreter, --chdir with the directory of manage.py. HURRICANE_* Django settings\n"
                "apply too (command line first, then settings, then the environment).")

    def project_args(self, args: List[str]) -> List[str]:
        if given(args, "-w", "--wsgi", "-V", "--version"):
            return []
        wsgi = getattr(settings, "WSGI_APPLICATION", None)
        if not wsgi:
            raise CommandError("set WSGI_APPLICATION in the settings, or pass -w MODULE[:ATTR]")
        module, _, attr = str(wsgi).rpartition(".")
        return ["-w", f"{module}:{attr}"]
