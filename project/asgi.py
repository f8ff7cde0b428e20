"""ASGI entry point: Django for HTTP; authenticated websockets through Channels (session + Origin for
pages, Bearer token for API clients: project/wsauth.py)."""

import os

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_started
from django.db import close_old_connections, reset_queries

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler, with the middleware and a sync view run in one thread hop.

    Django's own builds an async chain down to the view when the innermost middleware can run
    async, and then moves every sync step to a thread and back on its own: each MiddlewareMixin's
    process_request and process_response, then the view. The chain here is Django's sync one
    (what WSGI runs), called in one ``sync_to_async``: a trivial API request costs Daphne 1.3 ms of
    CPU instead of 2.3, on every request of docker run. An async view (init-wait, exec-finish)
    runs on the event loop as under WSGI (async_to_sync); streamed responses are sent as before.
    The database receivers of request_started run in that hop too (disconnected below).
    """

    def load_middleware(self, is_async=False):
        super().load_middleware(is_async=False)
        chain = self._middleware_chain

        def request_started_then_chain(request):
            # What request_started's receivers do (see below), in the request's own thread.
            reset_queries()
            close_old_connections()
            return chain(request)

        self._middleware_chain = sync_to_async(request_started_then_chain, thread_sensitive=True)


django.setup(set_prefix=False)
# Django's database receivers of request_started would cost every request a thread hop of its own
# before the chain: the chain calls them (Daphne's process serves no other kind of request).
request_started.disconnect(reset_queries)
request_started.disconnect(close_old_connections)
django_asgi_app = OneHopASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from project.routing import websocket_urlpatterns  # noqa: E402
from project.wsauth import OriginOrTokenValidator, TokenAuthMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": OriginOrTokenValidator(AuthMiddlewareStack(TokenAuthMiddleware(URLRouter(websocket_urlpatterns)))),
    }
)
