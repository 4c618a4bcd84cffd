import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings_channels")

from django.core.asgi import get_asgi_application  # noqa: E402

django_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from djsite.consumers import Echo, Room  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_app,
    "websocket": URLRouter([path("ws/echo", Echo.as_asgi()), path("ws/room", Room.as_asgi())]),
})
