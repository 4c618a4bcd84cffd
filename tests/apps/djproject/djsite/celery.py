"""The test project as a Celery app, configured from the Django settings (CELERY_* names)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings")
app = Celery("djsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task
def count_sites():
    from django.contrib.contenttypes.models import ContentType

    return ContentType.objects.count()
