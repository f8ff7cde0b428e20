"""What every Docker API endpoint shares: version check, method check, error mapping, headers."""

import functools
import json
import logging

from django.http import HttpResponse, JsonResponse

from runtime import errors
from runtime.info import API_VERSION, MIN_API_VERSION

from .. import audit
from ..auth import api_error

logger = logging.getLogger(__name__)

# Engine errors and the HTTP status the Docker API gives them.
ERROR_STATUS = (
    (errors.NotFound, 404),
    (errors.AlreadyExists, 409),
    (errors.InvalidState, 409),
    (errors.InvalidArgument, 400),
    (errors.UnsafeArchive, 400),
    (errors.Unauthorized, 401),
    (errors.RegistryError, 502),
    (errors.DigestMismatch, 502),
)


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split(".")
    return int(major), int(minor)


def api_headers(response: HttpResponse) -> HttpResponse:
    """Add the headers dockerd puts on every answer."""
    response["Api-Version"] = API_VERSION
    response["Docker-Experimental"] = "false"
    response["Ostype"] = "linux"
    response["Server"] = "Berth (linux)"
    return response


def error_status(exc: errors.EngineError) -> int:
    for cls, status in ERROR_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def docker_endpoint(*methods: str):
    """Decorate a Docker API view.

    1. Refuse an API version newer than ours (400) or older than the minimum, as dockerd does.
    2. Refuse other HTTP methods (405).
    3. Turn engine errors into ``{"message": ...}`` answers with Docker's status codes.
    4. Add Api-Version and the other headers the CLI reads.
    """
    allowed = {m.upper() for m in methods}
    if "GET" in allowed:
        allowed.add("HEAD")

    def decorator(view):
        @functools.wraps(view)
        def wrapper(request, *args, version=None, **kwargs):
            if version is not None:
                if _version_tuple(version) > _version_tuple(API_VERSION):
                    return api_headers(api_error(
                        f"client version {version} is too new. Maximum supported API version is {API_VERSION}",
                        400,
                    ))
                if _version_tuple(version) < _version_tuple(MIN_API_VERSION):
                    return api_headers(api_error(
                        f"client version {version} is too old. Minimum supported API version is "
                        f"{MIN_API_VERSION}, please upgrade your client to a newer version",
                        400,
                    ))
            request.api_version = version or API_VERSION
            if request.method not in allowed:
                return api_headers(api_error(f"method {request.method} not allowed", 405))
            audit.defer(request)  # written once the answer is sent
            try:
                response = view(request, *args, **kwargs)
            except errors.EngineError as e:
                response = api_error(str(e), error_status(e))
            except ApiError as e:
                response = api_error(e.message, e.status)
            except BaseException:
                audit.write_now(request)
                raise
            audit.write_after(request)
            return api_headers(response)

        wrapper.docker_api = True
        return wrapper

    return decorator


class ApiError(Exception):
    """An answer other than 2xx that a view decides itself (bad query, missing permission)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def require_perm(request, perm: str) -> None:
    """Raise a 403 ApiError unless the user holds ``perm``."""
    if not request.user.has_perm(perm):
        raise ApiError(f"permission denied: {request.user} may not do this ({perm})", 403)


def json_body(request) -> dict:
    """Parse a JSON request body (empty body -> {}); malformed JSON is a 400."""
    if not request.body:
        return {}
    try:
        value = json.loads(request.body)
    except ValueError as e:
        raise ApiError(f"invalid JSON body: {e}") from None
    if not isinstance(value, dict):
        raise ApiError("invalid JSON body: expected an object")
    return value


def json_response(data, status: int = 200) -> JsonResponse:
    return JsonResponse(data, status=status, safe=False)


#
# Query parameters, as dockerd reads them
#

def query_bool(request, name: str, default: bool = False) -> bool:
    """``?name=1|true|yes`` (absent: ``default``)."""
    value = request.GET.get(name)
    if value is None:
        return default
    return value.lower() in ("1", "true", "yes")


def query_int(request, name: str, default=None):
    """An integer parameter; a bad one is a 400 naming it."""
    value = request.GET.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ApiError(f"invalid value for {name}: {value}") from None


def query_filters(request) -> dict:
    """Docker's ``filters`` parameter: JSON of {name: [values]} (or {name: {value: true}})."""
    raw = request.GET.get("filters")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise ApiError(f"invalid filters: {raw}") from None
    if not isinstance(value, dict):
        raise ApiError(f"invalid filters: {raw}")
    return {k: (list(v) if isinstance(v, (dict, list)) else [v]) for k, v in value.items()}
