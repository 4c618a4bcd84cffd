"""The bench Django project under ASGI: the same views as benchsite.wsgi (sync /json, async /ajson,
the database views), and a Channels AsyncWebsocketConsumer echo on /ws."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from benchsite.consumers import Echo  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_application,
    "websocket": URLRouter([path("ws", Echo.as_asgi())]),
})
