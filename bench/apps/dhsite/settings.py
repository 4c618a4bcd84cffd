"""Settings for django-hurricane's `manage.py consume`, the consume bench's anchor."""

SECRET_KEY = "bench-only"
INSTALLED_APPS = ["hurricane"]
DATABASES = {}
USE_TZ = True
