"""Authentication for every request: sessions for the UI, Bearer tokens for the APIs.

Nothing in Berth is public. A browser without a session is sent to the login page; an API
client without a valid token gets 401 with a JSON message, as the Docker Engine API answers.
"""

import re

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import JsonResponse

from .models import ApiToken

# The Docker Engine API (versioned, plus the three unversioned calls the CLI makes first)
# and Berth's own API.
API_PATH = re.compile(r"^/(?:_ping|version|info)$|^/v\d+\.\d+/|^/api/")
PUBLIC_PATHS = ("/accounts/login/", "/static/", "/favicon.ico")


def is_api_path(path: str) -> bool:
    """Return True for paths of the Docker Engine API and of /api/."""
    return bool(API_PATH.match(path))


def bearer_token(request) -> str | None:
    """Return the token of an ``Authorization: Bearer <token>`` header, if any."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def api_error(message: str, status: int) -> JsonResponse:
    """An error in the Docker Engine API's shape: ``{"message": "..."}``."""
    return JsonResponse({"message": message}, status=status)


class TokenAuthenticationMiddleware:
    """Authenticate ``Authorization: Bearer`` requests by API token.

    Runs after AuthenticationMiddleware. A request that carries a token is authenticated by that
    token alone (never by a session cookie beside it), so CSRF does not apply to it.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.api_token = None
        token = bearer_token(request)
        if token is not None:
            api_token = ApiToken.objects.authenticate(token)
            if api_token is None:
                return api_error("invalid or revoked token", 401)
            request.user = api_token.user
            request.api_token = api_token
            request._dont_enforce_csrf_checks = True
        return self.get_response(request)


class LoginRequiredMiddleware:
    """Refuse every request of an anonymous user, but for the login page and static files."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        path = request.path_info
        if not request.user.is_authenticated and not path.startswith(PUBLIC_PATHS):
            if is_api_path(path):
                return api_error("authentication required: send Authorization: Bearer <token>", 401)
            return redirect_to_login(request.get_full_path(), settings.LOGIN_URL)
        return self.get_response(request)
