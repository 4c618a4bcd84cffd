"""The test project with Channels: a Redis channel layer (the test's own database and group)."""

import os

from djsite.settings import *  # noqa: F401,F403

ASGI_APPLICATION = "djsite.channels_asgi.application"
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("CHANNELS_TEST_REDIS", "redis://127.0.0.1:6379/13")]},
    }
}
