"""The Celery app of the `hurricane celery` tests: broker and queue from the environment (each test
its own queue), tasks that succeed, fail, retry, take their time or block, a beat schedule, and
more distinct task names than the metrics keep."""

import os
import time

from celery import Celery

app = Celery("celeryapp", broker=os.environ.get("CELERY_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(
    task_default_queue=os.environ.get("CELERY_TEST_QUEUE", "hurricane-test"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    beat_schedule={
        "every-second": {"task": "celeryapp.add", "schedule": 1.0, "args": (1, 2)},
    },
)
OUT = os.environ.get("CELERY_TEST_OUT", "/tmp")


@app.task
def add(x, y):
    return x + y


@app.task
def fail():
    raise ValueError("this task fails")


@app.task(bind=True, max_retries=1, default_retry_delay=0.1)
def retry_once(self):
    if self.request.retries == 0:
        raise self.retry()
    return "retried"


@app.task
def slow(seconds, name):
    time.sleep(float(seconds))
    open(os.path.join(OUT, f"done.{name}"), "w").close()
    return name


def _numbered(i):
    def run():
        return i
    return app.task(name=f"celeryapp.n{i}")(run)


# More distinct names than the metrics' bound (200, src/celery.rs).
MANY = [_numbered(i) for i in range(205)]


def send_many():
    for task in MANY:
        task.delay()


def send_adds(n):
    """n tasks, every other one with a priority (on Redis, kombu keeps those in sub-queues)."""
    for i in range(n):
        add.apply_async((i, i), priority=5 if i % 2 else None)
