"""The consume bench's handler: acks each message at once and records its latency.

One 8-byte write per message to a per-process file (the publish-to-handler latency, from the
publish time at the start of the body): the bench counts messages by file size, so every consumer
it compares (hurricane's handler workers, django-hurricane's consumer, bare pika) pays the same.
Works under hurricane and under django-hurricane: both provide hurricane.amqp.basehandler.
"""

from hurricane.amqp.basehandler import TopicHandler
from latency_record import record


class Counting(TopicHandler):
    def on_message(self, _unused_channel, basic_deliver, properties, body):
        record(body)
        self.acknowledge_message(basic_deliver.delivery_tag)
