"""hurricane as a Django app: `INSTALLED_APPS += ["hurricane"]` gives a project `manage.py serve`."""

import os

from django.apps import AppConfig  # type: ignore[import-not-found]


class HurricaneConfig(AppConfig):
    name = "hurricane"
    verbose_name = "hurricane"
    # Inside a worker the package is embedded in the binary and has no directory; Django insists on
    # one, and needs it only for management commands, which workers never run.
    path = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else "/nonexistent/hurricane"
