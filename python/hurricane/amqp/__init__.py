"""AMQP handlers under `hurricane consume`: django-hurricane's `TopicHandler` API, served by
hurricane's handler workers (the broker connection itself lives in the Rust master)."""
