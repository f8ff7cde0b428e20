"""Websocket authentication beside the session: Bearer tokens for API clients (Docker's attach/ws).

Browsers authenticate websockets with their session cookie, so their Origin must be one of ours
(AllowedHostsOriginValidator: a page on another site cannot use the cookie). An API client sends
``Authorization: Bearer <token>`` instead and no cookie is used for it, so no Origin is needed.
"""

from channels.db import database_sync_to_async
from channels.security.websocket import AllowedHostsOriginValidator


def _bearer(scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


@database_sync_to_async
def _token_user(token: str):
    from .models import ApiToken

    api_token = ApiToken.objects.authenticate(token)
    return api_token.user if api_token is not None else None


class TokenAuthMiddleware:
    """Put the token's user in ``scope["user"]`` when a Bearer token comes (after the session's)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        token = _bearer(scope)
        if token is not None:
            from django.contrib.auth.models import AnonymousUser

            scope = dict(scope, user=await _token_user(token) or AnonymousUser(), token_auth=True)
        return await self.app(scope, receive, send)


class OriginOrTokenValidator:
    """Token requests pass; everything else must come from one of our own pages."""

    def __init__(self, app):
        self.app = app
        self.checked = AllowedHostsOriginValidator(app)

    async def __call__(self, scope, receive, send):
        if _bearer(scope) is not None:
            return await self.app(scope, receive, send)
        return await self.checked(scope, receive, send)
