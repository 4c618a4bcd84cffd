"""DEBUG with django.contrib.staticfiles: --static serves through the finders, like runserver."""

from djsite.settings import *  # noqa: F401,F403
from djsite.settings import INSTALLED_APPS

DEBUG = True
INSTALLED_APPS = INSTALLED_APPS + ["django.contrib.staticfiles"]
STATIC_URL = "/static/"
