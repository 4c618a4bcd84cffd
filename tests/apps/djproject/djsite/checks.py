"""Checks tagged the way django-hurricane users tag them: `liveness` and `readiness`."""

import os

from django.core.checks import Error, register


@register("liveness")
def liveness_flag(app_configs, **kwargs):
    """Fails while the file named by HURRICANE_TEST_LIVENESS_FLAG exists."""
    if os.path.exists(os.environ.get("HURRICANE_TEST_LIVENESS_FLAG", "")):
        return [Error("the liveness flag is set", id="djsite.E001")]
    return []


@register("readiness")
def count_runs(app_configs, **kwargs):
    """Passes, and appends a line to HURRICANE_TEST_CHECK_COUNTER: tests count how often checks ran."""
    path = os.environ.get("HURRICANE_TEST_CHECK_COUNTER")
    if path:
        with open(path, "a") as f:
            f.write("run\n")
    return []
