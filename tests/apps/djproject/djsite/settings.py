"""The Django project the integration tests serve: SQLite at $HURRICANE_TEST_DB, two tagged checks."""

import os

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djsite.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "hurricane", "djsite"]
WSGI_APPLICATION = "djsite.wsgi.application"
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("HURRICANE_TEST_DB", "/tmp/hurricane-test-db.sqlite3"),
    }
}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# `manage.py consume` reads the broker from here first (as django-hurricane does); the consume test
# sets this, other tests leave it unset.
if os.environ.get("HURRICANE_TEST_AMQP_HOST"):
    AMQP_HOST = os.environ["HURRICANE_TEST_AMQP_HOST"]

# `hurricane celery -- celery -A djsite worker`: the broker and queue the celery test gives.
CELERY_BROKER_URL = os.environ.get("CELERY_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TEST_QUEUE", "hurricane-test")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
