"""The handler base classes, with django-hurricane 1.6's module path and API, so existing handlers
run unchanged under `hurricane consume`::

    from hurricane.amqp.basehandler import TopicHandler

    class MyHandler(TopicHandler):
        def get_routing_keys(self, queue_name):
            return ["orders.*"]

        def on_message(self, _unused_channel, basic_deliver, properties, body):
            ...
            self.acknowledge_message(basic_deliver.delivery_tag)

Unlike the original, a handler never talks to the broker: the master holds the one connection,
declares the exchange and queue, binds and consumes; `acknowledge_message` and `reject_message`
(and the channel's `basic_ack`, `basic_nack`, `basic_reject`) travel back to the master, which
settles the delivery on the broker. Nothing is acked before the handler said so.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

# Set by the consumer loop: settle(delivery_tag, ack, requeue).
Settle = Callable[[int, bool, bool], None]


class _AMQPConsumer:
    """django-hurricane's base consumer: its constructor, attributes and handler methods."""

    EXCHANGE_TYPE: str = "topic"

    def __init__(
        self,
        queue_name: str,
        exchange_name: str,
        host: str,
        port: int,
        vhost: Optional[str] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
    ) -> None:
        self._queue_name = queue_name
        self._exchange_name = exchange_name
        self._host = host
        self._port = port
        self._vhost = vhost or "/"
        self._username = username
        self._password = password
        self._prefetch_count = 1
        self._hurricane_settle: Optional[Settle] = None

    def get_routing_keys(self, queue_name: str) -> List[str]:
        """The binding keys of the queue; none means the queue is bound with its own name."""
        return []

    def on_message(self, _unused_channel: Any, basic_deliver: Any, properties: Any, body: bytes) -> None:
        self.reject_message(basic_deliver.delivery_tag)
        raise NotImplementedError("The on_message method must be implemented by a handler class")

    def acknowledge_message(self, delivery_tag: int) -> None:
        """The message was handled: the master acks it on the broker."""
        if self._hurricane_settle is not None:
            self._hurricane_settle(delivery_tag, True, False)

    def reject_message(self, delivery_tag: int, requeue: bool = False) -> None:
        """The message was not handled: the broker drops it (or dead-letters it), or requeues it."""
        if self._hurricane_settle is not None:
            self._hurricane_settle(delivery_tag, False, requeue)


class TopicHandler(_AMQPConsumer):
    """A handler of a topic exchange's messages (``EXCHANGE_TYPE = "topic"``)."""

    EXCHANGE_TYPE = "topic"
