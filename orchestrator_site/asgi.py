import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")
django_asgi_app = get_asgi_application()

# The imports below need Django set up first.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import re_path  # noqa: E402

from dashboard.event_stream import http_urlpatterns as event_streams  # noqa: E402
from dashboard.routing import websocket_urlpatterns as dashboard_websockets  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Event streams are served before Django's handler, which would hold a
        # thread for each open stream (dashboard/event_stream.py); the rest is Django.
        # django-stubs types re_path's view as a Django view; channels' URLRouter
        # routes to ASGI applications with the same function.
        "http": URLRouter([*event_streams, re_path(r"", django_asgi_app)]),  # type: ignore[arg-type]
        # Browsers send the session cookie with a WebSocket from any page, so
        # only our own origins (ALLOWED_HOSTS) may open one.
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(dashboard_websockets))
        ),
    }
)
