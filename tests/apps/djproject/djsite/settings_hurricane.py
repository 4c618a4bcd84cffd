"""The test project's settings plus hurricane options, one of them misspelled."""

from djsite.settings import *  # noqa: F401,F403

HURRICANE_WORKERS = 3
HURRICANE_WORKRES = 4  # a typo: hurricane warns and names the nearest setting
