"""Bare pika consumer, the bench's anchor: `pika_consumer.py QUEUE PREFETCH [ACK_EVERY]`.

Acks each message (or one `multiple` ack per ACK_EVERY), recording latency as consumers.py does.
"""

import sys

import pika

from latency_record import record

queue, prefetch = sys.argv[1], int(sys.argv[2])
ack_every = int(sys.argv[3]) if len(sys.argv) > 3 else 1
conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
ch = conn.channel()
ch.basic_qos(prefetch_count=prefetch)
seen = [0]


def on_message(channel, method, properties, body):
    record(body)
    seen[0] += 1
    if seen[0] % ack_every == 0:
        channel.basic_ack(method.delivery_tag, multiple=ack_every > 1)


ch.basic_consume(queue, on_message)
try:
    ch.start_consuming()
except KeyboardInterrupt:
    pass
