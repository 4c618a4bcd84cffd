"""AMQP handlers for the consume tests: each records what it handled in HANDLED_DIR (one file per
message, named by its message_id or body), so tests can count exactly-once handling."""

import json
import os
import time

from hurricane.amqp.basehandler import TopicHandler

OUT = os.environ.get("HANDLED_DIR", "/tmp")


def _record(properties, body, deliver):
    name = properties.message_id or body.decode("latin-1")[:60].replace("/", "_")
    # O_EXCL: a second handling of the same message fails loudly instead of overwriting.
    fd = os.open(os.path.join(OUT, f"{name}.{os.getpid()}.{deliver.delivery_tag}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(fd, "wb") as f:
        f.write(body)
    with open(os.path.join(OUT, f"{name}.meta.{deliver.delivery_tag}"), "w") as f:
        json.dump({
            "routing_key": deliver.routing_key, "exchange": deliver.exchange,
            "redelivered": deliver.redelivered, "message_id": properties.message_id,
            "headers": properties.headers, "content_type": properties.content_type, "pid": os.getpid(),
        }, f)


class Recorder(TopicHandler):
    """Acks every message after recording it; sleeps `sleep` header seconds first if set."""

    def get_routing_keys(self, queue_name):
        return [f"{queue_name}.#"]

    def on_message(self, _unused_channel, basic_deliver, properties, body):
        headers = properties.headers or {}
        if headers.get("sleep"):
            open(os.path.join(OUT, f"started.{properties.message_id}"), "w").close()
            time.sleep(float(headers["sleep"]))
        if headers.get("die") and not os.path.exists(os.path.join(OUT, f"died.{properties.message_id}")):
            open(os.path.join(OUT, f"died.{properties.message_id}"), "w").close()
            os._exit(9)
        _record(properties, body, basic_deliver)
        self.acknowledge_message(basic_deliver.delivery_tag)


class DjangoAware(Recorder):
    """Records a message only when Django's app registry is ready (as under django-hurricane's
    manage.py consume): a handler may use its models."""

    def on_message(self, _unused_channel, basic_deliver, properties, body):
        from django.apps import apps

        apps.get_models()  # raises AppRegistryNotReady unless django.setup() ran
        super().on_message(_unused_channel, basic_deliver, properties, body)


class NoOp(TopicHandler):
    """The bench's handler: acks at once."""

    def on_message(self, _unused_channel, basic_deliver, properties, body):
        self.acknowledge_message(basic_deliver.delivery_tag)


class Raiser(TopicHandler):
    def on_message(self, _unused_channel, basic_deliver, properties, body):
        open(os.path.join(OUT, f"raised.{body.decode()}.{os.getpid()}.{time.monotonic_ns()}"), "w").close()
        raise ValueError(f"cannot handle {body!r}")


class Forgetful(TopicHandler):
    def on_message(self, _unused_channel, basic_deliver, properties, body):
        open(os.path.join(OUT, f"forgot.{body.decode()}.{time.monotonic_ns()}"), "w").close()


class ChannelAcker(TopicHandler):
    """Settles through the channel it is given, as pika code does."""

    def on_message(self, channel, basic_deliver, properties, body):
        _record(properties, body, basic_deliver)
        channel.basic_ack(delivery_tag=basic_deliver.delivery_tag)
