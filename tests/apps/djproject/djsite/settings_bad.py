"""A wrongly typed hurricane setting: startup must fail clearly."""

from djsite.settings import *  # noqa: F401,F403

HURRICANE_WORKERS = "four"
